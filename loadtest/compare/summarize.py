#!/usr/bin/env python3
"""Summarises loadtest/compare.sh's raw results as markdown.

    python3 loadtest/compare/summarize.py /tmp/resonant-compare > summary.md

Reads OUT/raw/<scenario>/<server>/run<N>/result.json (resonant-loadtest --json), prints the
median of each metric over the runs per scenario and server, each server's CPU per update as
a multiple of the floor's (resonant-floor, when it ran), the ratios Resonant/peer, and
Resonant against the spec's targets.
"""

import json
import statistics
import sys
from pathlib import Path

SCENARIO_ORDER = [
    "fanout-1x1",
    "fanout-1x100",
    "fanout-1x1000",
    "fanout-250x2",
    "fanout-1000x2",
    "connections-5000",
    "awareness",
    "coldload",
    "churn",
    "fanout-1x50",
    "fanout-10x10",
    "awareness-20x20",
    "connections-1000",
    "coldload-5mb",
    "churn-joins",
]
FLOOR = "floor"
SERVER_ORDER = [
    FLOOR,
    "resonant-sqlite",
    "resonant-memory",
    "resonant-before-sqlite",
    "resonant-before-memory",
    "y-websocket-server",
    "y-sweet",
    "y-sweet-memory",
]
OURS = [s for s in SERVER_ORDER if s.startswith("resonant")]
MODE = {
    FLOOR: "no document: relay only",
    "resonant-sqlite": "durable (SQLite, fsync/commit)",
    "resonant-memory": "memory only",
    "resonant-before-sqlite": "another build (RESONANT_BEFORE), durable",
    "resonant-before-memory": "another build (RESONANT_BEFORE), memory only",
    "y-websocket-server": "memory only",
    "y-sweet": "dir store, 10 s checkpoints",
    "y-sweet-memory": "memory only",
}
SIZES = {
    "fanout-1x1": "1 room × 1 reader, 1 writer @ 20 edits/s, 10 s (the server hop without driver fan-in cost)",
    "fanout-1x100": "1 room × 100 readers, 1 writer @ 20 edits/s, 10 s",
    "fanout-1x1000": "1 room × 1000 readers, 1 writer @ 50 edits/s, 10 s",
    "fanout-250x2": "250 rooms × (1 writer @ 25 edits/s + 2 readers), 10 s (a load the driver's one core keeps up with)",
    "fanout-1000x2": "1000 rooms × (1 writer @ 25 edits/s + 2 readers), 10 s",
    "connections-5000": "10 rooms × 500 idle synced connections, held 3 s",
    "fanout-1x50": "1 room × 50 readers, 1 writer @ 50 edits/s, 10 s",
    "fanout-10x10": "10 rooms × (1 writer @ 50 edits/s + 10 readers), 10 s",
    "awareness-20x20": "1 room, 20 clients moving cursors @ 20 Hz + a writer @ 20 edits/s, 10 s",
    "connections-1000": "10 rooms × 100 idle synced connections, held 3 s",
    "coldload-5mb": "a 5 MB document loaded by 1 client after the room left memory",
    "churn-joins": "50 stable readers of a 20/s writer while clients join at JOIN_RATE/s (default 200) and leave after 0.5-3 s",
}


def order(items, canonical):
    return [x for x in canonical if x in items] + sorted(x for x in items if x not in canonical)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def get(report, *path):
    cur = report
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def metrics(report):
    """The numbers the tables show, from one run's JSON."""
    dur = report.get("duration_secs") or 0
    cpu = get(report, "server", "cpu_secs")
    return {
        "p50": report.get("p50_ms") if report.get("scenario") != "connections" else None,
        "p99": report.get("p99_ms") if report.get("scenario") != "connections" else None,
        "max": report.get("max_ms") if report.get("scenario") != "connections" else None,
        "delivered": report.get("delivered_ratio"),
        "errors": report.get("errors"),
        # /proc counts CPU in 10 ms ticks: below ~2000 deliveries the per-update figure is
        # mostly rounding and idle work (timers, pings), so it is not shown.
        "cpu_us": get(report, "server", "cpu_us_per_delivered")
        if (report.get("delivered") or 0) >= 2000 else None,
        "cores": (cpu / dur) if cpu is not None and dur and report.get("scenario") != "connections" else None,
        "rss_conn": get(report, "server", "rss_per_connection_bytes"),
        "rss_after": get(report, "server", "rss_after_bytes"),
    }


def driver_us(run_dir, report):
    """The driver's own CPU time (user+sys, whole run incl. connecting) per delivered update."""
    try:
        wall, user, sys_ = (float(x) for x in (run_dir / "driver.time").read_text().split()[-3:])
    except (OSError, ValueError):
        return None
    delivered = report.get("delivered") or 0
    if report.get("scenario") == "connections" or delivered < 2000:
        return None
    return (user + sys_) * 1e6 / delivered


def machine_load(run_dir):
    """(driver cores, other processes' cores) averaged over the driver's whole run."""
    try:
        wall, user, sys_ = (float(x) for x in (run_dir / "driver.time").read_text().split()[-3:])
        driver = (user + sys_) / wall if wall else None
    except (OSError, ValueError):
        wall, driver = None, None
    try:
        _server, other, wall2 = (float(x) for x in (run_dir / "machine.cpu").read_text().split())
        other = other / wall2 if wall2 else None
    except (OSError, ValueError):
        other = None
    return driver, other


def fmt(v, kind):
    if v is None:
        return "–"
    if kind == "ms":
        return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"
    if kind == "ratio":
        return f"{v * 100:.2f} %" if v < 1 else "100 %"
    if kind == "us":
        return f"{v:.1f}" if v < 100 else f"{v:.0f}"
    if kind == "cores":
        return f"{v:.2f}"
    if kind == "bytes":
        return f"{v / 1000:.1f} kB"
    if kind == "mb":
        return f"{v / 1e6:.0f} MB"
    if kind == "x":
        return f"{v:.2f}×"
    return str(v)


def print_ratios(med):
    print("## Ratios Resonant / peer (medians; < 1 means Resonant is lower, i.e. better)\n")
    print("| scenario | ours | theirs | p50 | p99 | CPU/upd | RSS/conn |")
    print("|---|---|---|---|---|---|---|")
    for sc in order(med.keys(), SCENARIO_ORDER):
        for ours in [s for s in order(med[sc].keys(), SERVER_ORDER) if s in OURS]:
            # The floor is no peer: every server's ratio to it is in the scenario tables.
            for theirs in [s for s in order(med[sc].keys(), SERVER_ORDER) if s not in OURS + [FLOOR]]:
                a, b = med[sc][ours], med[sc][theirs]

                def ratio(k):
                    x, y = a.get(k), b.get(k)
                    return fmt(x / y, "x") if x is not None and y else "–"

                print(
                    f"| {sc} | {ours} | {theirs} | {ratio('p50')} | {ratio('p99')} | "
                    f"{ratio('cpu_us')} | {ratio('rss_conn')} |"
                )
    print()


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/resonant-compare")
    raw = out / "raw"
    results = {}  # scenario -> server -> [metrics]
    attempts = {}  # scenario -> server -> runs attempted
    extras = {}  # scenario -> server -> {key: [values]}
    cpu_by_run = {}  # scenario -> server -> {run name: CPU/upd}, to pair runs with the floor's
    not_applicable = {}  # scenario -> server -> why compare.sh did not run it
    for sc_dir in sorted(p for p in raw.glob("*") if p.is_dir()):
        for srv_dir in sorted(p for p in sc_dir.glob("*") if p.is_dir()):
            if (srv_dir / "n-a").exists():
                why = (srv_dir / "n-a").read_text().strip()
                not_applicable.setdefault(sc_dir.name, {})[srv_dir.name] = why
            for run_dir in sorted(srv_dir.glob("run*")):
                attempts.setdefault(sc_dir.name, {}).setdefault(srv_dir.name, 0)
                attempts[sc_dir.name][srv_dir.name] += 1
                try:
                    report = json.loads((run_dir / "result.json").read_text())
                except (OSError, ValueError):
                    continue
                m = metrics(report)
                m["driver_us"] = driver_us(run_dir, report)
                m["driver_cores"], m["other_cores"] = machine_load(run_dir)
                results.setdefault(sc_dir.name, {}).setdefault(srv_dir.name, []).append(m)
                if m["cpu_us"] is not None:
                    cpu_by_run.setdefault(sc_dir.name, {}).setdefault(srv_dir.name, {})[run_dir.name] = m["cpu_us"]
                ex = extras.setdefault(sc_dir.name, {}).setdefault(srv_dir.name, {})
                for k, v in (report.get("extra") or {}).items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        ex.setdefault(k, []).append(v)

    print("# Resonant vs. y-websocket-server vs. y-sweet\n")
    env = out / "environment.txt"
    if env.exists():
        print("```")
        print(env.read_text().rstrip())
        print("```\n")
    print(
        "Medians over the runs that produced a report. Latency: writer's scheduled send → "
        "reader applied the edit, over every reader. *delivered*: smallest ratio of any run. "
        "*CPU/upd*: server CPU time (user+sys) per delivered update, µs. *cores*: server CPU "
        "seconds per wall second of the window (≤ 1: pinned to one core). *RSS/conn*: server "
        "RSS growth per idle connection. *driver µs/upd*: the load generator's own CPU (whole "
        "run, connecting included) per delivered update, on its one core; *driver cores*: its CPU seconds per wall second (1.00 = its "
        "core is saturated, so latencies include queueing in the driver). *other load*: cores "
        "used meanwhile by other processes on the machine (other people's builds and tests), "
        "a quality flag: a run with other load ≳ 0.3 is disturbed. *× floor*: CPU/upd as a "
        "multiple of the floor's (resonant-floor: each frame written to every other socket of "
        "the room by one blocking thread, nothing else; the least work any server can do per "
        "delivery), median over runs paired by run number in this same comparison. *n/a*: a "
        "scenario the server cannot serve.\n"
    )

    def floor_ratio(sc, srv):
        """srv's CPU/upd over the floor's: median over the runs both have, else of medians."""
        by_run = cpu_by_run.get(sc, {})
        mine, floor = by_run.get(srv, {}), by_run.get(FLOOR, {})
        if srv == FLOOR or not mine or not floor:
            return None
        pairs = [mine[r] / floor[r] for r in mine.keys() & floor.keys() if floor[r]]
        if pairs:
            return statistics.median(pairs)
        f = median(floor.values())
        return median(mine.values()) / f if f else None

    def cpu_cell(sc, srv, cpu_us):
        r = floor_ratio(sc, srv) if cpu_us is not None else None
        if r is None:
            return fmt(cpu_us, "us")
        return f"{fmt(cpu_us, 'us')} ({r:.1f}× floor)" if r < 10 else f"{fmt(cpu_us, 'us')} ({r:.0f}× floor)"

    med = {}
    for sc in order(results.keys() | attempts.keys() | not_applicable.keys(), SCENARIO_ORDER):
        print(f"## {sc}\n")
        if sc in SIZES:
            print(f"{SIZES[sc]}.\n")
        conn = sc.startswith("connections")
        if conn:
            print("| server | mode | runs | RSS/conn | RSS after | alive | errors | other load |")
            print("|---|---|---|---|---|---|---|---|")
        else:
            print("| server | mode | runs | p50 ms | p99 ms | max ms | delivered | CPU/upd µs | cores | errors | driver µs/upd | driver cores | other load |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        servers = order(attempts.get(sc, {}).keys() | not_applicable.get(sc, {}).keys(), SERVER_ORDER)
        for srv in servers:
            if srv not in attempts.get(sc, {}):
                cols = 5 if conn else 10
                print(f"| {srv} | {MODE.get(srv, '')} | n/a: {not_applicable[sc][srv]} |" + " – |" * cols)
                continue
            runs = results.get(sc, {}).get(srv, [])
            n = f"{len(runs)}/{attempts[sc][srv]}"
            m = {k: median([r[k] for r in runs]) for k in (runs[0] if runs else {})}
            if runs:
                m["delivered"] = min(r["delivered"] for r in runs if r["delivered"] is not None)
                m["errors"] = max((r["errors"] or 0) for r in runs)
            med.setdefault(sc, {})[srv] = m
            g = m.get
            if conn:
                print(
                    f"| {srv} | {MODE.get(srv, '')} | {n} | {fmt(g('rss_conn'), 'bytes')} | "
                    f"{fmt(g('rss_after'), 'mb')} | {fmt(g('delivered'), 'ratio')} | {fmt(g('errors'), '')} | "
                    f"{fmt(g('other_cores'), 'cores')} |"
                )
            else:
                print(
                    f"| {srv} | {MODE.get(srv, '')} | {n} | {fmt(g('p50'), 'ms')} | {fmt(g('p99'), 'ms')} | "
                    f"{fmt(g('max'), 'ms')} | {fmt(g('delivered'), 'ratio')} | {cpu_cell(sc, srv, g('cpu_us'))} | "
                    f"{fmt(g('cores'), 'cores')} | {fmt(g('errors'), '')} | {fmt(g('driver_us'), 'us')} | "
                    f"{fmt(g('driver_cores'), 'cores')} | {fmt(g('other_cores'), 'cores')} |"
                )
        print()
        ex = extras.get(sc, {})
        keys = sorted({k for srv in ex for k in ex[srv]} - {"edits_sent", "connections"})
        if keys and not conn:
            print("Scenario-specific numbers (medians):\n")
            print("| server | " + " | ".join(keys) + " |")
            print("|---|" + "---|" * len(keys))
            for srv in order(ex.keys(), SERVER_ORDER):
                vals = [median(ex[srv].get(k, [])) for k in keys]
                print(f"| {srv} | " + " | ".join("–" if v is None else f"{v:.4g}" for v in vals) + " |")
            print()

    # Ratios ours / theirs (none when only Resonant and the floor ran).
    if any(s not in OURS + [FLOOR] for sc in med for s in med[sc]):
        print_ratios(med)

    # Targets.
    print("## Resonant against the targets\n")
    print("| target | server | measured | met |")
    print("|---|---|---|---|")

    def row(target, srv, measured, ok):
        print(f"| {target} | {srv} | {measured} | {'yes' if ok else 'NO'} |")

    for srv in OURS:
        m = med.get("fanout-1x100", {}).get(srv)
        if m and m.get("p50") is not None:
            row("fanout 1×100 @ 20/s: p50 ≤ 0.5 ms", srv, f"{m['p50']:.3f} ms", m["p50"] <= 0.5)
            row("fanout 1×100 @ 20/s: p99 ≤ 2 ms", srv, f"{m['p99']:.3f} ms", m["p99"] <= 2)
            row("fanout 1×100 @ 20/s: 100 % delivered", srv, fmt(m["delivered"], "ratio"), m["delivered"] >= 1)
        m = med.get("fanout-1x1000", {}).get(srv)
        if m and m.get("p99") is not None:
            row("fanout 1×1000 @ 50/s: p99 ≤ 20 ms", srv, f"{m['p99']:.2f} ms", m["p99"] <= 20)
        m = med.get("fanout-1000x2", {}).get(srv)
        if m and m.get("p99") is not None:
            row("1000 rooms × 25 edits/s: p99 ≤ 10 ms", srv, f"{m['p99']:.2f} ms", m["p99"] <= 10)
            if m.get("cores") is not None:
                row("1000 rooms × 25 edits/s: within one core", srv,
                    f"{m['cores']:.2f} cores, {fmt(m['delivered'], 'ratio')} delivered",
                    m["cores"] < 0.95 and m["delivered"] >= 1)
        m = med.get("connections-5000", {}).get(srv)
        if m and m.get("rss_conn") is not None:
            row("≤ 10 KB RSS per idle synced connection", srv, fmt(m["rss_conn"], "bytes"), m["rss_conn"] <= 10_000)
        # One reader at 20/s delivers 200 updates: too few for /proc's 10 ms CPU ticks.
        for sc in [s for s in order(med.keys(), SCENARIO_ORDER)
                   if s.startswith("fanout") and s != "fanout-1x1"]:
            a = med[sc].get(srv, {}).get("cpu_us")
            y = med[sc].get("y-websocket-server", {}).get("cpu_us")
            s = med[sc].get("y-sweet", {}).get("cpu_us")
            if a is not None and y:
                row(f"{sc}: CPU/upd ≤ 1/3 of y-websocket-server", srv,
                    f"{a:.1f} vs {y:.1f} µs ({a / y:.2f}×)", a <= y / 3)
            if a is not None and s:
                row(f"{sc}: CPU/upd below y-sweet", srv, f"{a:.1f} vs {s:.1f} µs ({a / s:.2f}×)", a < s)
    print()


if __name__ == "__main__":
    main()
