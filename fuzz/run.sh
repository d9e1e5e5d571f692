#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS seconds each (default 60), starting from the
# committed seed corpus, and exits non-zero if any target finds a crash, a timeout or a
# huge allocation. Usage: bash fuzz/run.sh [SECONDS]. Installs cargo-fuzz from crates.io if
# it is missing. New inputs found are kept in a scratch directory (printed), not in
# fuzz/corpus/; crashes are written to fuzz/artifacts/<target>/. Targets run FUZZ_JOBS at
# a time (default: one per core).
set -euo pipefail
secs="${1:-60}"
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/resonant-fuzz-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# cargo-fuzz passes nightly-only flags (-Zsanitizer=address). Use the nightly toolchain when
# there is one; otherwise unlock them on stable, which ships the sanitizer runtimes too.
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
else
  echo "no nightly toolchain: using stable with RUSTC_BOOTSTRAP=1"
  toolchain=()
  export RUSTC_BOOTSTRAP=1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets=(frame_decode session yrs_updates rest_content graph_validate)
# libFuzzer options: a single allocation over 512 MB or a resident set over 2 GB is a
# finding (an allocation bomb), as is one input running for more than 10 s.
fuzz_opts=(
  -max_total_time="$secs"
  -rss_limit_mb=2048
  -malloc_limit_mb=512
  -timeout=10
  -print_final_stats=1
)
# FUZZ_SEED fixes libFuzzer's random seed, so a run explores the same inputs each time (CI
# uses it: a finding then reproduces on the next run instead of appearing by luck). Leave it
# unset for exploratory runs.
if [[ -n ${FUZZ_SEED:-} ]]; then
  fuzz_opts+=(-seed="$FUZZ_SEED")
fi

# Prints the entry of fuzz/known_findings.txt that the report in $2 matches, for target $1.
known_finding() {
  local target=$1 log=$2 t text
  while IFS=$'\t' read -r t text; do
    [[ -z $t || $t == \#* ]] && continue
    if [[ $t == "$target" ]] && grep -qF -- "$text" "$log"; then
      echo "$text"
      return 0
    fi
  done <fuzz/known_findings.txt
  return 1
}

build_start=$SECONDS
cargo "${toolchain[@]}" fuzz build
echo "fuzz build: $((SECONDS - build_start)) s"
# FUZZ_BUILD_ONLY=1: build the targets and stop (CI builds them early, in the background).
if [[ -n ${FUZZ_BUILD_ONLY:-} ]]; then
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/resonant-fuzz.XXXXXX")
# Runs target $1 for $secs s; writes its verdict (ok, known or failed) to $work/$1.status
# and what to print about it to $work/$1.report.
fuzz_one() {
  local t=$1 log="$work/$1.log" report="$work/$1.report" known extra asan_options
  mkdir -p "$work/$t"
  # The first corpus directory receives new inputs; the committed seeds are only read.
  extra=()
  asan_options=${ASAN_OPTIONS:-}
  if [[ $t == session ]]; then
    # yrs never frees a document that holds a subdocument (fuzz/findings/README.md): leak
    # checks, per input and at exit, would flag every subdocument the fuzzer builds.
    extra=(-detect_leaks=0)
    asan_options="detect_leaks=0${asan_options:+:$asan_options}"
  fi
  echo "--- $t: ${secs} s" >"$report"
  if ASAN_OPTIONS="$asan_options" cargo "${toolchain[@]}" fuzz run "$t" "$work/$t" "fuzz/corpus/$t" \
    -- "${fuzz_opts[@]}" "${extra[@]}" >"$log" 2>&1; then
    grep -E '^Done [0-9]+ runs' "$log" >>"$report" || true
    grep -E '^stat::(number_of_executed_units|peak_rss_mb):' "$log" >>"$report" || true
    echo ok >"$work/$t.status"
  elif known=$(known_finding "$t" "$log"); then
    {
      echo "$t: KNOWN OPEN FINDING (not failing the run; see fuzz/findings/README.md): $known"
      grep -E 'ERROR|SUMMARY|Test unit written|^Done [0-9]+ runs' "$log" | head -n 5 || true
    } >>"$report"
    echo known >"$work/$t.status"
  else
    {
      echo "$t FAILED ($log):"
      grep -E 'ERROR|panicked|escaped|SUMMARY|Test unit written|^Done [0-9]+ runs' "$log" | head -n 20 || true
      tail -n 40 "$log"
    } >>"$report"
    echo failed >"$work/$t.status"
  fi
}

# libFuzzer runs on one core, and -max_total_time is wall-clock time: targets run side by
# side, FUZZ_JOBS at a time (default: one per core), each still getting its full time.
jobs=${FUZZ_JOBS:-$(nproc)}
running=0
for t in "${targets[@]}"; do
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
wait || true
failed=()
for t in "${targets[@]}"; do
  cat "$work/$t.report"
  if [[ ! -f $work/$t.status || $(cat "$work/$t.status") == failed ]]; then
    failed+=("$t")
  fi
done
echo "new corpus entries and logs: $work"

if ((${#failed[@]})); then
  echo "fuzz findings in: ${failed[*]} (reproduce: cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/FILE)" >&2
  exit 1
fi
