#!/usr/bin/env bash
# One node against three on this machine, same load: what each accepted update costs the
# nodes, Postgres and Redis, and what readers see (issue 18's "3 vs 1"). Needs Postgres and
# Redis, and release builds of `resonant` and `resonant-loadtest`.
#
#   DATABASE_URL=postgres://127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 \
#     bash loadtest/cluster-nodes.sh
#
# Each run gets a fresh Postgres schema and Redis prefix and fresh nodes (all in cluster
# mode, so one node pays the same commit and XADD as three). With NODES=3, each room's
# writer is on node 1 and its readers alternate between nodes 2 and 3 (`--url` repeated).
# CPU is read from /proc: the nodes' own, every postgres process's, and Redis's INFO.
set -euo pipefail
export PGOPTIONS="--client-min-messages=warning"
: "${DATABASE_URL:?a postgres:// URL}"
: "${REDIS_URL:?a redis:// URL}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
BIN="${RESONANT_BIN:-$TARGET/resonant}"
LOADTEST="${LOADTEST_BIN:-$TARGET/resonant-loadtest}"
for b in "$BIN" "$LOADTEST"; do
  [ -x "$b" ] || { echo "build first: cargo build --release -p resonant -p resonant-loadtest" >&2; exit 1; }
done
ROOMS="${ROOMS:-10}" CLIENTS="${CLIENTS:-10}" RATE="${RATE:-50}" DURATION="${DURATION:-10}"
OUT="${OUT:-/tmp/resonant-cluster-nodes}"
mkdir -p "$OUT"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT

ticks() { # total utime+stime of the given pids, in clock ticks
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
postgres_ticks() { ticks $(pgrep -x postgres || true) $(pgrep -f '^postgres:' || true); }
redis_cpu() { redis-cli -u "$REDIS_URL" INFO cpu | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.3f", s}'; }
commands() { redis-cli -u "$REDIS_URL" INFO commandstats | awk -F'[:=,]' '/^cmdstat_(xadd|xread):/ {printf "%s=%s ", $1, $3}'; }
HZ=$(getconf CLK_TCK)

run() {
  local nodes=$1 tag="nodes$1" schema="bench_nodes_$$_$1" prefix="bench-nodes-$$-$1"
  psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema"
  local sep='?'; [[ "$DATABASE_URL" == *\?* ]] && sep='&'
  local db="${DATABASE_URL}${sep}options=-c%20search_path%3D${schema}"
  local urls=() node_pids=() port
  for i in $(seq "$nodes"); do
    port=$((17400 + i))
    "$BIN" serve --port "$port" --log warn --database-url "$db" --redis-url "$REDIS_URL" \
      --redis-prefix "$prefix" --node-name "n$i" >"$OUT/$tag-n$i.log" 2>&1 &
    node_pids+=($!); PIDS+=($!)
    urls+=(--url "ws://127.0.0.1:$port/sync/{room}")
  done
  for i in $(seq "$nodes"); do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((17400 + i))/readyz" >/dev/null && break; sleep 0.1; done
  done
  local n0 p0 r0 c0
  n0=$(ticks "${node_pids[@]}"); p0=$(postgres_ticks); r0=$(redis_cpu); c0=$(commands)
  "$LOADTEST" fanout "${urls[@]}" --rooms "$ROOMS" --clients "$CLIENTS" --rate "$RATE" \
    --duration "$DURATION" --json --quiet >"$OUT/$tag.json"
  local n1 p1 r1 c1
  n1=$(ticks "${node_pids[@]}"); p1=$(postgres_ticks); r1=$(redis_cpu); c1=$(commands)
  kill "${node_pids[@]}"; wait "${node_pids[@]}" 2>/dev/null || true
  psql "$DATABASE_URL" -qc "DROP SCHEMA IF EXISTS $schema CASCADE"
  python3 - "$OUT/$tag.json" "$nodes" "$(( n1 - n0 ))" "$(( p1 - p0 ))" "$r0" "$r1" "$HZ" "$c0" "$c1" <<'PY'
import json, sys
path, nodes, nt, pt, r0, r1, hz, c0, c1 = sys.argv[1:]
j = json.load(open(path))
hz = int(hz)
def cmd(s):
    return dict(kv.split("=") for kv in s.split())
a, b = cmd(c0), cmd(c1)
xadd = int(b.get("cmdstat_xadd", 0)) - int(a.get("cmdstat_xadd", 0))
print(f"| {nodes} | {j['p50_ms']:.2f} | {j['p99_ms']:.2f} | {j['delivered']}/{j['expected']} "
      f"| {int(nt)/hz:.2f} | {int(pt)/hz:.2f} | {float(r1)-float(r0):.2f} | {xadd} |")
PY
}

echo "fanout: $ROOMS rooms x $CLIENTS readers, $RATE edits/s per writer, $DURATION s"
echo "| nodes | p50 ms | p99 ms | delivered | nodes' CPU s | Postgres CPU s | Redis CPU s | XADD |"
echo "|---|---|---|---|---|---|---|---|"
for n in ${NODES:-1 3}; do run "$n"; done
