#!/usr/bin/env python3
"""Per-function instructions per delivered update between two commits' callgrind dumps.

Usage: callgrind_diff.py OLD_LONG OLD_SHORT NEW_LONG NEW_SHORT DELIVERIES [ROWS]

The four files are the dumps `loadtest/compare-commits.sh` leaves under its OUT directory
(`<commit>-<run>-long.cg.1`, `...-short.cg.1`); DELIVERIES is the difference in delivered
updates between the long and the short window (5000 with the script's defaults). Each
function's cost is long minus short, divided by DELIVERIES (the marginal cost, without
start-up and joins), and rows are sorted by how much more the new commit spends. Costs are
callgrind_annotate's per-function figures, where inlined async code counts toward the
function it was inlined into.
"""
import collections
import re
import subprocess
import sys


def load(path):
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--inclusive=no", path], capture_output=True, text=True, check=True
    ).stdout
    costs = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = m.group(2)
        # The same function in two commits' builds: drop the worktree and registry paths.
        name = re.sub(r"^=> ", "", name)
        name = re.sub(r"[^ :]*/resonant-commits/[0-9a-f]+/(src/)?", "", name)
        name = re.sub(r"[^ :]*/registry/src/[^/]+/", "", name)
        name = re.sub(r"\s*\[.*\]$", "", name)
        name = re.sub(r"\s*\([\d,]+x\)$", "", name)
        costs[name] += int(m.group(1).replace(",", ""))
    return costs


def marginal(long_path, short_path, deliveries):
    long, short = load(long_path), load(short_path)
    return {k: (long[k] - short.get(k, 0)) / deliveries for k in long}


def main():
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    deliveries = float(sys.argv[5])
    rows = int(sys.argv[6]) if len(sys.argv) > 6 else 30
    old = marginal(sys.argv[1], sys.argv[2], deliveries)
    new = marginal(sys.argv[3], sys.argv[4], deliveries)
    keys = sorted(set(old) | set(new), key=lambda k: -(new.get(k, 0) - old.get(k, 0)))
    print("%8s %8s %8s  %s" % ("old", "new", "diff", "function"))
    for k in keys[:rows]:
        o, n = old.get(k, 0), new.get(k, 0)
        print("%8.0f %8.0f %8.0f  %s" % (o, n, n - o, k[:150]))


if __name__ == "__main__":
    main()
