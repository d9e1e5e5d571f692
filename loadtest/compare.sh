#!/usr/bin/env bash
# Side-by-side benchmark: Resonant against the servers people would pick instead, driven by
# the same `resonant-loadtest` scenarios over plain y-websocket.
#
#   bash loadtest/compare.sh                 # everything, RUNS=3 (about 20 minutes)
#   RUNS=1 SCENARIOS="fanout-1x100" SERVERS="resonant-memory y-sweet" bash loadtest/compare.sh
#
# Servers (SERVERS, space separated):
#   resonant-sqlite      resonant serve, embedded SQLite store (durable: fsync per commit)
#   resonant-memory      resonant serve --database-url memory: (keeps nothing; benchmarks only)
#   y-websocket-server   npm @y/websocket-server (node; documents in memory only)
#   y-sweet              crates.io y-sweet, `y-sweet serve DIR` dev mode (local dir store,
#                        checkpointed every 10 s)
#   y-sweet-memory       y-sweet serve without a store (memory only; not in the default list,
#                        add it for a like-for-like row against resonant-memory)
#   resonant-before-sqlite, resonant-before-memory
#                        the same two modes of another build of resonant: RESONANT_BEFORE=path
#                        to its binary (for a before/after table in one run)
#   floor                resonant-floor (loadtest/src/bin/floor.rs): relays each frame to the
#                        room's other sockets from one blocking thread and does nothing else,
#                        the least work any server can do per delivery. No document, so
#                        scenarios that need one (coldload) are n/a for it; the summary gives
#                        every server's CPU per update as a multiple of the floor's.
#
# Scenarios (SCENARIOS): fanout-1x1 (one reader: the server hop alone, without the driver's
# own fan-in cost), fanout-1x100 fanout-1x1000 fanout-250x2 (many rooms at a load the
# one-core driver keeps up with) fanout-1000x2 connections-5000, and
# awareness, coldload, churn when this build of resonant-loadtest has them (EXTRA_RUNS runs
# each, default 1). The performance pass's table (issue 19) uses fanout-1x50 fanout-10x10
# awareness-20x20 connections-1000 coldload-5mb churn-joins (the last five also EXTRA_RUNS).
# Each server runs pinned to core SERVER_CPU (0), the driver to DRIVER_CPU
# (1); every run gets a fresh server process and data dir, and a bounded time.
#
# Peers are installed once under PEERS_DIR (default ~/.cache/resonant-peers) from npm and
# crates.io; nothing is written into the repository. Raw JSON, logs and the summary go under
# OUT (default /tmp/resonant-compare); the summary is OUT/summary.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/resonant-target}"
PEERS_DIR="${PEERS_DIR:-$HOME/.cache/resonant-peers}"
OUT="${OUT:-/tmp/resonant-compare}"
RUNS="${RUNS:-3}"
FIRST_RUN="${FIRST_RUN:-1}" # redo runs FIRST_RUN..RUNS only, keeping the others' results
EXTRA_RUNS="${EXTRA_RUNS:-1}"
SERVERS="${SERVERS:-floor resonant-sqlite resonant-memory y-websocket-server y-sweet}"
SCENARIOS="${SCENARIOS:-fanout-1x1 fanout-1x100 fanout-1x1000 fanout-250x2 fanout-1000x2 connections-5000 awareness coldload churn}"
SERVER_CPU="${SERVER_CPU:-0}"
DRIVER_CPU="${DRIVER_CPU:-1}"
BASE_PORT="${BASE_PORT:-17100}"
BUILD="${BUILD:-1}"
# This machine is shared: before each run wait (up to QUIET_WAIT s) until other processes use
# less than QUIET_CORES; a run during which others used more than that (averaged) is redone
# once (RETRY_DISTURBED=1). Both are recorded per run and shown in the summary.
QUIET_WAIT="${QUIET_WAIT:-60}"
QUIET_CORES="${QUIET_CORES:-0.3}"
RETRY_DISTURBED="${RETRY_DISTURBED:-1}"
# @y/websocket-server 0.1.5 (npm "latest") needs yjs 14 pre-releases and @y/protocols, which
# needs @y/y: not published on the npm registry, so it cannot install. 0.1.1 is the newest
# release that installs; it runs on the stable yjs 13.
YWS_VERSION="${YWS_VERSION:-0.1.1}"
YJS_VERSION="${YJS_VERSION:-13.6.33}"
YSWEET_VERSION="${YSWEET_VERSION:-0.9.1}"
# Resonant limits a room to 1000 connections by default; fanout 1x1000 needs 1001. Every
# client connects from 127.0.0.1, so the per-address cap on connections still in their
# handshake (64) is lifted too. The coldload scenario builds documents of more than the
# default 100,000 items (`--doc-bytes 5000000`), which the server would refuse (1009).
RESONANT_ARGS="${RESONANT_ARGS:---max-connections-per-room 5000 --max-http-connections-per-ip 0 --max-room-items 2000000}"

LT="$CARGO_TARGET_DIR/release/resonant-loadtest"
RESONANT="$CARGO_TARGET_DIR/release/resonant"
FLOOR="$CARGO_TARGET_DIR/release/resonant-floor"
YWS_DIR="$PEERS_DIR/y-websocket-server"
YWS_JS="$YWS_DIR/node_modules/@y/websocket-server/src/server.js"
YSWEET="$PEERS_DIR/bin/y-sweet"

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- installs (idempotent) ---------------------------------------------------------------

install_y_websocket_server() {
  local have=""
  [[ -f "$YWS_DIR/node_modules/@y/websocket-server/package.json" ]] &&
    have="$(node -p "require('$YWS_DIR/node_modules/@y/websocket-server/package.json').version")"
  if [[ "$have" == "$YWS_VERSION" && -f "$YWS_DIR/node_modules/yjs/package.json" ]]; then
    log "@y/websocket-server $have already installed"
    return
  fi
  log "installing @y/websocket-server@$YWS_VERSION yjs@$YJS_VERSION under $YWS_DIR"
  mkdir -p "$YWS_DIR"
  [[ -f "$YWS_DIR/package.json" ]] || echo '{"private": true}' >"$YWS_DIR/package.json"
  (cd "$YWS_DIR" && npm install --no-audit --no-fund --loglevel=error \
    "@y/websocket-server@$YWS_VERSION" "yjs@$YJS_VERSION")
}

install_y_sweet() {
  if [[ -x "$YSWEET" && "$("$YSWEET" version 2>/dev/null)" == "$YSWEET_VERSION" ]]; then
    log "y-sweet $YSWEET_VERSION already installed"
    return
  fi
  log "installing y-sweet $YSWEET_VERSION from crates.io under $PEERS_DIR (a few minutes)"
  CARGO_TARGET_DIR="$PEERS_DIR/target" cargo install y-sweet --version "=$YSWEET_VERSION" \
    --locked --root "$PEERS_DIR"
}

wants() { [[ " $SERVERS " == *" $1 "* ]]; }

if wants y-websocket-server; then install_y_websocket_server; fi
if wants y-sweet || wants y-sweet-memory; then install_y_sweet; fi
if [[ "$BUILD" == 1 ]]; then
  log "building resonant and resonant-loadtest (release; resonant-floor is one of its binaries)"
  (cd "$ROOT" && cargo build --release -p resonant -p resonant-loadtest)
fi
[[ -x "$LT" && -x "$RESONANT" ]] || { echo "missing $LT or $RESONANT" >&2; exit 1; }
if wants resonant-before-sqlite || wants resonant-before-memory; then
  [[ -x "${RESONANT_BEFORE:-}" ]] || {
    echo "resonant-before-* needs RESONANT_BEFORE=path to another resonant binary" >&2
    exit 1
  }
  mkdir -p "$OUT/bin"
  cp -f "$RESONANT_BEFORE" "$OUT/bin/resonant-before"
  RESONANT_BEFORE="$OUT/bin/resonant-before"
fi
if wants floor; then [[ -x "$FLOOR" ]] || { echo "missing $FLOOR" >&2; exit 1; }; fi
# Run copies, so that a rebuild in the shared target dir during the run changes nothing.
mkdir -p "$OUT/bin"
cp -f "$LT" "$RESONANT" "$OUT/bin/"
if wants floor; then cp -f "$FLOOR" "$OUT/bin/"; fi
LT="$OUT/bin/resonant-loadtest"
RESONANT="$OUT/bin/resonant"
FLOOR="$OUT/bin/resonant-floor"

# --- scenarios ---------------------------------------------------------------------------

# Scenarios this driver build knows (`resonant-loadtest --help` lists them).
AVAILABLE="$("$LT" --help | awk '/Possible values:/ {p = 1; next}
  p && /^[^ ]/ {p = 0}
  p && /^ *- [a-z-]+:/ {name = $2; sub(/:$/, "", name); print name}' | tr '\n' ' ')"

# scenario id -> "driver-scenario args…", time limit (s), runs
scenario_args() {
  case "$1" in
  fanout-1x1) echo "fanout --rooms 1 --clients 1 --rate 20 --duration 10" ;;
  fanout-1x100) echo "fanout --rooms 1 --clients 100 --rate 20 --duration 10" ;;
  fanout-1x1000) echo "fanout --rooms 1 --clients 1000 --rate 50 --duration 10" ;;
  fanout-250x2) echo "fanout --rooms 250 --clients 2 --rate 25 --duration 10" ;;
  fanout-1000x2) echo "fanout --rooms 1000 --clients 2 --rate 25 --duration 10" ;;
  fanout-1x50) echo "fanout --rooms 1 --clients 50 --rate 50 --duration 10" ;;
  fanout-10x10) echo "fanout --rooms 10 --clients 10 --rate 50 --duration 10" ;;
  awareness-20x20) echo "awareness --rooms 1 --clients 20 --rate 20 --doc-rate 20 --duration 10" ;;
  connections-1000) echo "connections --rooms 10 --clients 100 --connect-rate 1000 --duration 3" ;;
  # Past the servers' room grace (Resonant: 5 s), so the document is loaded from the store.
  coldload-5mb) echo "coldload --clients 1 --doc-bytes 5000000 --wait-unload 7 --duration 10" ;;
  # Joins per second beside 50 stable readers of a 20/s writer (their p99 is the figure).
  churn-joins) echo "churn --rooms 1 --clients 50 --rate 20 --churn-rate ${JOIN_RATE:-200} --duration 10" ;;
  connections-5000) echo "connections --rooms 10 --clients 500 --connect-rate 2000 --duration 3 --source-addrs 4" ;;
  awareness) echo "awareness ${ARGS_awareness:---rooms 1 --clients 50 --rate 10 --doc-rate 20 --duration 10}" ;;
  coldload) echo "coldload ${ARGS_coldload:---clients 20 --doc-bytes 1000000 --duration 10}" ;;
  churn) echo "churn ${ARGS_churn:---rooms 1 --clients 50 --rate 20 --churn-rate 10 --duration 10}" ;;
  *) return 1 ;;
  esac
}
scenario_limit() {
  case "$1" in
  fanout-1x1 | fanout-1x100) echo 60 ;; fanout-1x1000 | fanout-250x2) echo 120 ;; fanout-1000x2) echo 180 ;;
  connections-5000) echo 120 ;; *) echo 150 ;;
  esac
}
scenario_runs() {
  case "$1" in
  awareness* | coldload* | churn* | fanout-10x10 | connections-1000) echo "$EXTRA_RUNS" ;;
  *) echo "$RUNS" ;;
  esac
}
# Rooms to create up front (y-sweet's HTTP API) for a scenario id.
scenario_rooms() {
  local args rooms
  args="$(scenario_args "$1")"
  rooms="$(sed -nE 's/.*--rooms ([0-9]+).*/\1/p' <<<"$args")"
  echo "${rooms:-1}"
}

# --- servers -----------------------------------------------------------------------------

SERVER_PID=""
URL=""
PORT="$BASE_PORT"

server_mode() {
  case "$1" in
  resonant-sqlite | resonant-before-sqlite) echo "durable: SQLite, fsync per commit (--sqlite-sync full)" ;;
  resonant-memory | resonant-before-memory) echo "not durable: --database-url memory:" ;;
  y-websocket-server) echo "not durable: in-memory documents (no YPERSISTENCE)" ;;
  y-sweet) echo "durable-ish: local dir store, checkpoint every 10 s (dev mode)" ;;
  y-sweet-memory) echo "not durable: no store" ;;
  floor) echo "no document: relays frames; a joiner is synced by the room's oldest peer" ;;
  esac
}

# Why server $1 cannot serve scenario $2 (exit 1 when it can).
server_cannot() {
  case "$1:$2" in
  floor:coldload*) echo "the floor keeps no document, and a cold load has no peer left to sync from" ;;
  *) return 1 ;;
  esac
}

server_version() {
  case "$1" in
  resonant-before-*) echo "$("$RESONANT_BEFORE" --version 2>/dev/null | head -n1) (RESONANT_BEFORE)" ;;
  resonant-*) "$RESONANT" --version 2>/dev/null | head -n1 ;;
  y-websocket-server)
    echo "@y/websocket-server $(node -p "require('$YWS_DIR/node_modules/@y/websocket-server/package.json').version") (yjs $(node -p "require('$YWS_DIR/node_modules/yjs/package.json').version"), ws $(node -p "require('$YWS_DIR/node_modules/ws/package.json').version"), node $(node --version))"
    ;;
  y-sweet*) echo "y-sweet $("$YSWEET" version)" ;;
  floor) echo "$("$FLOOR" --version 2>/dev/null | head -n1) (loadtest/src/bin/floor.rs)" ;;
  esac
}

start_server() { # name dir log
  local name="$1" dir="$2" logf="$3"
  PORT=$((PORT + 1))
  case "$name" in
  resonant-sqlite | resonant-before-sqlite)
    bin="$RESONANT"
    [[ "$name" == resonant-before-* ]] && bin="$RESONANT_BEFORE"
    # shellcheck disable=SC2086
    taskset -c "$SERVER_CPU" "$bin" serve --port "$PORT" --data-dir "$dir" --log warn \
      $RESONANT_ARGS >"$logf" 2>&1 &
    URL="ws://127.0.0.1:$PORT/sync/{room}"
    ;;
  resonant-memory | resonant-before-memory)
    bin="$RESONANT"
    [[ "$name" == resonant-before-* ]] && bin="$RESONANT_BEFORE"
    # shellcheck disable=SC2086
    taskset -c "$SERVER_CPU" "$bin" serve --port "$PORT" --database-url memory: \
      --log warn $RESONANT_ARGS >"$logf" 2>&1 &
    URL="ws://127.0.0.1:$PORT/sync/{room}"
    ;;
  y-websocket-server)
    HOST=127.0.0.1 PORT="$PORT" taskset -c "$SERVER_CPU" node "$YWS_JS" >"$logf" 2>&1 &
    URL="ws://127.0.0.1:$PORT/{room}"
    ;;
  y-sweet)
    RUST_LOG=warn taskset -c "$SERVER_CPU" "$YSWEET" serve "$dir" --port "$PORT" >"$logf" 2>&1 &
    URL="ws://127.0.0.1:$PORT/d/{room}/ws/{room}"
    ;;
  y-sweet-memory)
    RUST_LOG=warn taskset -c "$SERVER_CPU" "$YSWEET" serve --port "$PORT" >"$logf" 2>&1 &
    URL="ws://127.0.0.1:$PORT/d/{room}/ws/{room}"
    ;;
  floor)
    taskset -c "$SERVER_CPU" "$FLOOR" --listen "127.0.0.1:$PORT" >"$logf" 2>&1 &
    URL="ws://127.0.0.1:$PORT/{room}"
    ;;
  *)
    echo "unknown server $name" >&2
    return 1
    ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name did not start listening on $PORT; log:" >&2
  cat "$logf" >&2
  stop_server
  return 1
}

stop_server() {
  [[ -n "$SERVER_PID" ]] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# y-sweet documents are created through its HTTP API before clients connect (dev mode would
# also create them on connect; this is the flow its SDK uses). One curl, keep-alive.
create_y_sweet_docs() { # prefix rooms
  local cfg="$RUN_DIR/create-docs.curl" i
  : >"$cfg"
  for ((i = 0; i < $2; i++)); do
    ((i > 0)) && echo next >>"$cfg"
    printf 'url = "http://127.0.0.1:%s/doc/new"\nrequest = "POST"\nheader = "Content-Type: application/json"\ndata = "{\\"docId\\":\\"%s-%d\\"}"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n' \
      "$PORT" "$1" "$i" >>"$cfg"
  done
  local bad
  bad="$(curl -sS -K "$cfg" | grep -vc '^200$' || true)"
  [[ "$bad" == 0 ]] || { echo "y-sweet: $bad of $2 docs not created" >&2; return 1; }
}

# CPU accounting from /proc, in clock ticks.
HZ="$(getconf CLK_TCK)"
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
proc_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Waits until the whole machine (nothing of ours runs now but an idle server) is below
# QUIET_CORES over one second, at most QUIET_WAIT seconds.
wait_quiet() {
  local deadline=$((SECONDS + QUIET_WAIT)) a b
  while :; do
    a="$(busy_ticks)"
    sleep 1
    b="$(busy_ticks)"
    if awk -v a="$a" -v b="$b" -v hz="$HZ" -v q="$QUIET_CORES" 'BEGIN{exit !((b-a)/hz < q)}'; then
      return 0
    fi
    ((SECONDS < deadline)) || { log "machine still busy ($(awk -v a="$a" -v b="$b" -v hz="$HZ" 'BEGIN{printf "%.2f", (b-a)/hz}') cores), running anyway"; return 0; }
  done
}

# --- runs --------------------------------------------------------------------------------

mkdir -p "$OUT/raw"
RUNS_TSV="$OUT/runs.tsv"
[[ -f "$RUNS_TSV" ]] || printf 'scenario\tserver\trun\texit\tserver_pid\tloadavg_before\tdriver_wall_s\tdriver_user_s\tdriver_sys_s\tserver_cpu_s\tother_cpu_s\tjson\n' >"$RUNS_TSV"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(nproc) CPUs, $(lscpu | sed -nE 's/^Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "kernel: $(uname -r)"
  echo "resonant commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (work tree modified)')"
  for s in $SERVERS; do echo "$s: $(server_version "$s") — $(server_mode "$s")"; done
  echo "driver scenarios available: $AVAILABLE"
  echo "RUNS=$RUNS EXTRA_RUNS=$EXTRA_RUNS SERVER_CPU=$SERVER_CPU DRIVER_CPU=$DRIVER_CPU"
} >"$OUT/environment.txt"
cat "$OUT/environment.txt" >&2

# One run of scenario $sc on server $srv, number $run (uses the loop's variables); sets
# OTHER_CORES to the other processes' average load during it.
run_one() {
  RUN_DIR="$OUT/raw/$sc/$srv/run$run"
  rm -rf "$RUN_DIR"
  mkdir -p "$RUN_DIR/data"
  prefix="cmp$run$RANDOM"
  wait_quiet
  start_server "$srv" "$RUN_DIR/data" "$RUN_DIR/server.log" || {
    printf '%s\t%s\t%s\tstart-failed\n' "$sc" "$srv" "$run" >>"$RUNS_TSV"
    OTHER_CORES=0
    return 0
  }
  pid="$SERVER_PID"
  if [[ "$srv" == y-sweet* ]]; then
    create_y_sweet_docs "$prefix" "$rooms" || true
  fi
  load="$(cut -d' ' -f1 /proc/loadavg)"
  log "$sc $srv run $run/$nruns (pid $pid, load $load): $driver_scenario ${args#* }"
  busy0="$(busy_ticks)"
  srv0="$(proc_ticks "$pid")"
  set +e
  # shellcheck disable=SC2086
  timeout -k 5 "$limit" taskset -c "$DRIVER_CPU" /usr/bin/time -o "$RUN_DIR/driver.time" \
    -f '%e %U %S' "$LT" $args --url "$URL" --room-prefix "$prefix" \
    --server-pid "$SERVER_PID" --json >"$RUN_DIR/result.json" 2>"$RUN_DIR/driver.log"
  rc=$?
  set -e
  busy1="$(busy_ticks)"
  srv1="$(proc_ticks "$pid")"
  stop_server
  rm -rf "$RUN_DIR/data"
  read -r wall user sys < <(grep -E '^[0-9.]+ [0-9.]+ [0-9.]+$' "$RUN_DIR/driver.time" 2>/dev/null || echo "- - -")
  # CPU time spent on this machine during the run by anything but this server and driver
  # (other people's builds and tests): a quality flag for the run.
  server_cpu="$(awk -v a="$srv0" -v b="$srv1" -v hz="$HZ" 'BEGIN{printf "%.2f", (b-a)/hz}')"
  other_cpu="$(awk -v a="$busy0" -v b="$busy1" -v s="$server_cpu" -v u="$user" -v y="$sys" -v hz="$HZ" \
    'BEGIN{o=(b-a)/hz-s-u-y; if (u=="-") o=(b-a)/hz-s; printf "%.2f", (o<0?0:o)}')"
  printf '%s %s %s\n' "$server_cpu" "$other_cpu" "$wall" >"$RUN_DIR/machine.cpu"
  OTHER_CORES="$(awk -v o="$other_cpu" -v w="$wall" 'BEGIN{printf "%.2f", (w+0 > 0 ? o/w : 0)}')"
  ok=no
  jq -e .scenario "$RUN_DIR/result.json" >/dev/null 2>&1 && ok=yes
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$srv" "$run" "$rc" "$pid" \
    "$load" "$wall" "$user" "$sys" "$server_cpu" "$other_cpu" "$ok" >>"$RUNS_TSV"
  if [[ "$ok" == yes ]]; then
    log "  -> exit $rc, other load ${OTHER_CORES} cores, $(jq -r '"p50 \(.p50_ms) ms, p99 \(.p99_ms) ms, delivered \(.delivered_ratio), cpu/delivered \(.server.cpu_us_per_delivered // "-") µs, rss/conn \(.server.rss_per_connection_bytes // "-") B"' "$RUN_DIR/result.json")"
  else
    log "  -> exit $rc, no JSON (see $RUN_DIR/driver.log)"
  fi
}

for sc in $SCENARIOS; do
  args="$(scenario_args "$sc")" || { log "unknown scenario $sc, skipped"; continue; }
  driver_scenario="${args%% *}"
  if [[ " $AVAILABLE " != *" $driver_scenario "* ]]; then
    log "scenario $driver_scenario is not in this resonant-loadtest build, skipped"
    continue
  fi
  limit="$(scenario_limit "$sc")"
  rooms="$(scenario_rooms "$sc")"
  nruns="$(scenario_runs "$sc")"
  # Runs interleave the servers (run 1 of each, then run 2 …) so that background load on the
  # machine drifts over all of them alike.
  for ((run = FIRST_RUN; run <= nruns; run++)); do
    for srv in $SERVERS; do
      if why="$(server_cannot "$srv" "$sc")"; then
        # Recorded for the summary, which shows the server's row as n/a.
        if ((run == FIRST_RUN)); then
          log "$sc $srv: n/a ($why)"
          mkdir -p "$OUT/raw/$sc/$srv"
          echo "$why" >"$OUT/raw/$sc/$srv/n-a"
          printf '%s\t%s\t-\tn/a\n' "$sc" "$srv" >>"$RUNS_TSV"
        fi
        continue
      fi
      for ((attempt = 0; attempt <= RETRY_DISTURBED; attempt++)); do
        run_one
        awk -v o="$OTHER_CORES" -v q="$QUIET_CORES" 'BEGIN{exit !(o > q)}' || break
        if ((attempt < RETRY_DISTURBED)); then
          log "  disturbed by other processes ($OTHER_CORES cores): once more"
        fi
      done
    done
  done
done

python3 "$ROOT/loadtest/compare/summarize.py" "$OUT" >"$OUT/summary.md"
log "summary: $OUT/summary.md"
cat "$OUT/summary.md"
