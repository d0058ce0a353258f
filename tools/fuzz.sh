#!/usr/bin/env bash
# Runs every cargo-fuzz target in tools/fuzz for a bounded time, one after
# the other (the machine's cores are shared), and fails on any crash, hang
# (an input taking over 10 s) or memory blow-up (over 2 GiB). A "hang" whose
# input then replays in time three times over is reported as a stalled
# machine (seen here on a shared VM: 20-60 s pauses), not as a finding.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, all)
#
# Each target starts from its committed seeds (tools/fuzz/corpus/<target>)
# and regressions (tools/fuzz/regressions/<target>); what the fuzzer adds
# goes to a scratch directory ($FUZZ_WORK_DIR, default a temporary one), so
# the work tree stays clean. A crash is left in tools/fuzz/artifacts/<target>/
# (git-ignored); fix it, then commit it as tools/fuzz/regressions/<target>/
# <expected>--<what> so that tests/fuzz_regressions.rs replays it.
#
# Only the stable toolchain exists here: AddressSanitizer (-Zsanitizer) is a
# nightly flag, which a stable rustc accepts with RUSTC_BOOTSTRAP=1. The
# toolchain is probed on an empty crate first. Without AddressSanitizer the
# targets run with `--sanitizer none` (the harness's own asserts and Rust's
# bounds checks still apply). If it cannot build a libFuzzer binary at all
# (no sanitizer-coverage instrumentation, no C++ compiler for libFuzzer),
# this prints why and exits 0: a missing toolchain feature, not a bug. A
# build failure past the probe (a compile error in the harness, say), a
# failed cargo-fuzz install, or any finding exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
fuzz_dir=tools/fuzz
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
# cargo fuzz builds into tools/fuzz/target; a CARGO_TARGET_DIR meant for the
# root crate must not redirect it.
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  if ! cargo install cargo-fuzz --locked; then
    echo "fuzz.sh: could not install cargo-fuzz from crates.io" >&2
    exit 1
  fi
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir "$fuzz_dir")
fi

log=$(mktemp)
probe=$(mktemp -d)
trap 'rm -rf "$log" "$probe"' EXIT

# Does this toolchain have what a libFuzzer build needs? Probed on an empty
# crate, so that a failure here is the toolchain's and not the code's.
cov_flags=(-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares)
echo 'pub fn f(x: u8) -> u8 { x.wrapping_add(1) }' >"$probe/p.rs"
try_rustc() {
  rustc --edition 2021 --crate-type lib -o "$probe/p.rlib" "${cov_flags[@]}" "$@" "$probe/p.rs" \
    >"$probe/out" 2>&1
}
skip() {
  echo "fuzz.sh: SKIPPED: $1"
  echo "fuzz.sh: this is a missing toolchain feature; the corpora and regressions are"
  echo "fuzz.sh: still replayed by 'cargo test --test fuzz_regressions'."
  exit 0
}
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 \
    && ! command -v clang++ >/dev/null 2>&1; then
  skip "no C++ compiler, which libfuzzer-sys needs to build libFuzzer"
fi
if ! try_rustc; then
  cat "$probe/out"
  skip "rustc $(rustc --version | cut -d' ' -f2) cannot emit sanitizer-coverage instrumentation"
fi
sanitizer=address
if ! try_rustc -Zsanitizer=address; then
  cat "$probe/out"
  echo "fuzz.sh: this rustc has no AddressSanitizer for this target; running without one"
  sanitizer=none
fi

echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
if ! cargo fuzz build --fuzz-dir "$fuzz_dir" --sanitizer "$sanitizer" >"$log" 2>&1; then
  tail -n 40 "$log"
  echo "fuzz.sh: the fuzz targets do not build" >&2
  exit 1
fi

# After a failed run: true if the only new artifact is a timeout whose input
# replays within the time limit, three times in a row.
bin_dir="$fuzz_dir/target/$(rustc -vV | sed -n 's/^host: //p')/release"
stalled() {
  local t=$1 before=$2 new
  new=$(find "$fuzz_dir/artifacts/$t" -type f 2>/dev/null | sort | comm -13 "$before" -)
  [ "$(printf '%s\n' "$new" | grep -c .)" = 1 ] || return 1
  case "$(basename "$new")" in timeout-*) ;; *) return 1 ;; esac
  "$bin_dir/$t" -timeout=10 -runs=3 "$new" >/dev/null 2>&1 || return 1
  mv "$new" "$new.stalled"
}

work=${FUZZ_WORK_DIR:-$(mktemp -d)}
failed=()
summary=()
for t in "${targets[@]}"; do
  corpus="$fuzz_dir/corpus/$t"
  regressions="$fuzz_dir/regressions/$t"
  mkdir -p "$work/$t" "$regressions"
  args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  case "$t" in
    http_head | http_stream | api_rooms | http_query) args+=(-dict="$fuzz_dir/dict/http.dict") ;;
    ws_client_message) args+=(-dict="$fuzz_dir/dict/json.dict" -max_len=8192) ;;
    ws_frames) args+=(-dict="$fuzz_dir/dict/ws.dict") ;;
  esac
  echo "== fuzzing $t for ${secs}s (sanitizer: $sanitizer)"
  before=$(mktemp)
  find "$fuzz_dir/artifacts/$t" -type f 2>/dev/null | sort >"$before" || true
  if cargo fuzz run --fuzz-dir "$fuzz_dir" --sanitizer "$sanitizer" "$t" \
      "$work/$t" "$corpus" "$regressions" -- "${args[@]}" >"$log" 2>&1; then
    status=ok
  elif stalled "$t" "$before"; then
    # libFuzzer stopped on a "timeout", but the input runs in well under the
    # limit on its own: the process was starved (a shared or paused
    # machine), not hung. Say so, keep the input out of the way, go on.
    status=stalled
    grep -E 'ERROR: libFuzzer: timeout' "$log" || true
    echo "fuzz.sh: $t: the timeout input replays in time; the machine stalled, not the code"
  else
    status=FAILED
    failed+=("$t")
    # The finding (panic message or sanitizer report), then where it is.
    grep -E -A6 'panicked at|ERROR: (AddressSanitizer|libFuzzer)|==ERROR' "$log" | head -n 40 || true
    grep -E 'Test unit written|^SUMMARY' "$log" || true
    echo "fuzz.sh: $t found a problem; the input is in $fuzz_dir/artifacts/$t/"
    echo "fuzz.sh: read it with: (cd $fuzz_dir && cargo run --example replay -- $t artifacts/$t/<file>)"
  fi
  stats=$(grep -E '^#[0-9]+.*(DONE|cov:)' "$log" | tail -n 1 || true)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  new=$(find "$work/$t" -type f | wc -l)
  rm -f "$before"
  summary+=("$(printf '%-18s %-6s execs=%-10s new_inputs=%-6s %s' "$t" "$status" "${execs:-?}" "$new" "$stats")")
done

echo "== fuzzing summary (${secs}s per target, scratch corpus in $work)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: findings in: ${failed[*]}" >&2
  exit 1
fi
