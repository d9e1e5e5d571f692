#!/usr/bin/env bash
# Did the fan-out hot path regress between two commits? Builds each commit's `resonant` in
# release (in its own worktree under CACHE), then runs today's
# `resonant-loadtest fanout` against each server under callgrind, alternating the commits,
# and prints instructions per delivered update. Instruction counts do not depend on what
# else the machine is doing, so one run each is enough; the marginal figure subtracts a
# short window from a long one, which removes the joins and the start-up.
#
#   bash loadtest/compare-commits.sh 8cccecf HEAD
#   RUNS=3 CLIENTS=50 RATE=10 SHORT=5 LONG=15 bash loadtest/compare-commits.sh A B [C ...]
#
# Each server: `serve --port 0 --data-dir <fresh> --log warn` (durable SQLite) plus
# SERVER_ARGS; callgrind instruments it only once it prints its address. Output: one line per
# run and a summary table on stdout; callgrind files and logs under OUT. Per-function
# differences between two commits: loadtest/compare/callgrind_diff.py on their dumps.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${CACHE:-$HOME/.cache/resonant-commits}"
OUT="${OUT:-/tmp/resonant-compare-commits}"
RUNS="${RUNS:-1}"
CLIENTS="${CLIENTS:-50}"
RATE="${RATE:-10}"
SHORT="${SHORT:-5}"
LONG="${LONG:-15}"
SERVER_ARGS="${SERVER_ARGS:-}"
LT_TARGET="${LT_TARGET:-$HOME/.cache/resonant-release}"

if (($# < 2)); then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 2; }
mkdir -p "$CACHE" "$OUT"

# Builds a commit's server once (one target directory for all commits, so commits with the
# same dependencies share their build); prints the path of its binary, kept per commit.
build() {
  local rev=$1 sha wt
  sha=$(git -C "$ROOT" rev-parse --short=12 "$rev^{commit}")
  wt="$CACHE/$sha/src"
  if [[ ! -x $CACHE/$sha/resonant ]]; then
    if [[ ! -d $wt ]]; then
      git -C "$ROOT" worktree add --detach "$wt" "$sha" >&2
    fi
    (cd "$wt" && CARGO_TARGET_DIR="$CACHE/target" cargo build -q --release --locked -p resonant 2>/dev/null)
    cp "$CACHE/target/release/resonant" "$CACHE/$sha/resonant"
  fi
  echo "$CACHE/$sha/resonant"
}

(cd "$ROOT" && CARGO_TARGET_DIR="$LT_TARGET" cargo build -q --release --locked -p resonant-loadtest 2>/dev/null)
LT="$LT_TARGET/release/resonant-loadtest"

declare -A BIN
for rev in "$@"; do
  BIN[$rev]=$(build "$rev")
done

# One measured window: prints "<instructions> <delivered>".
measure() {
  local rev=$1 secs=$2 tag=$3 dir pid addr out ir delivered
  dir=$(mktemp -d "$OUT/data.XXXXXX")
  rm -f "$OUT/$tag".cg*
  # shellcheck disable=SC2086
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$tag.cg" \
    "${BIN[$rev]}" serve --port 0 --data-dir "$dir" --log warn $SERVER_ARGS \
    >"$OUT/$tag.out" 2>"$OUT/$tag.err" &
  pid=$!
  addr=""
  for _ in $(seq 1 600); do
    addr=$(sed -n 's/^resonant listening on //p' "$OUT/$tag.out")
    [[ -n $addr ]] && break
    sleep 0.1
  done
  [[ -n $addr ]] || { echo "$rev did not start: $(tail -5 "$OUT/$tag.err")" >&2; kill "$pid"; exit 1; }
  callgrind_control -i on "$pid" >/dev/null
  out=$("$LT" fanout --url "ws://$addr/sync/{room}" --rooms 1 --clients "$CLIENTS" \
    --rate "$RATE" --duration "$secs" --json --quiet)
  callgrind_control -d "$pid" >/dev/null
  kill -TERM "$pid"
  wait "$pid" || true
  delivered=$(jq -r '.delivered' <<<"$out")
  ratio=$(jq -r '.delivered_ratio' <<<"$out")
  # The dump written by -d is the file with the highest part number.
  ir=$(ls "$OUT/$tag.cg".* 2>/dev/null | sort -t. -k3 -n | tail -1 | xargs grep -h '^summary:' | awk '{print $2}')
  rm -rf "$dir"
  [[ $ratio == 1 || $ratio == 1.0 ]] || echo "warning: $rev delivered $ratio of the updates" >&2
  echo "$ir $delivered"
}

declare -A SUM
printf '%-14s %4s %14s %9s %14s %9s %10s %10s\n' commit run "Ir short" "deliv" "Ir long" "deliv" "Ir/deliv" marginal
for run in $(seq 1 "$RUNS"); do
  for rev in "$@"; do
    read -r ir_s d_s < <(measure "$rev" "$SHORT" "$(git -C "$ROOT" rev-parse --short "$rev")-$run-short")
    read -r ir_l d_l < <(measure "$rev" "$LONG" "$(git -C "$ROOT" rev-parse --short "$rev")-$run-long")
    per=$(awk -v i="$ir_l" -v d="$d_l" 'BEGIN { printf "%.0f", i / d }')
    marg=$(awk -v a="$ir_l" -v b="$ir_s" -v c="$d_l" -v e="$d_s" 'BEGIN { printf "%.0f", (a - b) / (c - e) }')
    printf '%-14s %4s %14s %9s %14s %9s %10s %10s\n' "$rev" "$run" "$ir_s" "$d_s" "$ir_l" "$d_l" "$per" "$marg"
    SUM[$rev]+="$marg "
  done
done
echo
echo "marginal instructions per delivered update (each run):"
for rev in "$@"; do
  printf '  %-14s %s\n' "$rev" "${SUM[$rev]}"
done
