#!/usr/bin/env bash
# Replays every reproducer in fuzz/findings/ under AddressSanitizer (with LeakSanitizer), once
# each, and exits non-zero if any of them reports a memory error, a leak, a panic that escapes
# or a reload that differs from the served document: *.session files through the `session`
# target (FUZZ_STRICT_RELOAD=1), *.updates files through `yrs_updates` twice: behind the
# validator, as rooms apply them, and with FUZZ_YRS_UNVALIDATED=1 (without the validator's
# rules on struct references), so that the vendor/yrs patches are tested on their own. This is the regression test for the yrs
# use-after-frees (docs/upstream/yrs-uaf.md), the subdocument leak
# and the reload divergence. Usage: bash fuzz/asan_regressions.sh. Builds like run.sh (the
# same CARGO_TARGET_DIR, so after `run.sh` the build is a no-op; from scratch about 6 min).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/resonant-fuzz-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

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

build_start=$SECONDS
cargo "${toolchain[@]}" fuzz build
echo "fuzz build: $((SECONDS - build_start)) s"

log=$(mktemp "${TMPDIR:-/tmp}/resonant-asan.XXXXXX")
failed=()
shopt -s nullglob
runs=()
for f in fuzz/findings/*.session; do runs+=("session validated $f"); done
for f in fuzz/findings/*.updates; do
  runs+=("yrs_updates validated $f" "yrs_updates unvalidated $f")
done
for run in "${runs[@]}"; do
  read -r target mode f <<<"$run"
  unvalidated=0
  [[ $mode == unvalidated ]] && unvalidated=1
  # Given files instead of a corpus directory, libFuzzer runs each input once and exits.
  if FUZZ_STRICT_RELOAD=1 FUZZ_YRS_UNVALIDATED=$unvalidated \
    ASAN_OPTIONS="detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
    cargo "${toolchain[@]}" fuzz run "$target" "$f" -- -detect_leaks=1 -rss_limit_mb=2048 \
    -malloc_limit_mb=512 -timeout=10 >"$log" 2>&1; then
    echo "ok      $target $mode $f"
  else
    failed+=("$mode $f")
    echo "FAILED  $target $mode $f:"
    grep -E 'ERROR|SUMMARY|panicked|escaped|differs' "$log" | head -n 10 || true
    tail -n 30 "$log"
  fi
done
rm -f "$log"

if ((${#failed[@]})); then
  echo "ASan regressions failed: ${failed[*]}" >&2
  exit 1
fi
