#!/usr/bin/env bash
# Fuzzes every decoder of remote data and every parser of user input (the targets of fuzz/,
# cargo-fuzz with libFuzzer) for SECONDS each (default 20), starting from the committed corpus
# fuzz/corpus/<target>. Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#
# An input that panics, runs longer than FUZZ_TIMEOUT seconds (default 10: a hang) or takes
# more than FUZZ_RSS_MB of memory (default 2048) fails the run; libFuzzer saves it under
# fuzz/artifacts/<target>/ and the reproduction command is printed. New inputs found on the way
# go to a scratch corpus in the target directory, not into the committed one: copy the ones
# worth keeping (`cargo fuzz cmin` first) into fuzz/corpus/<target>.
#
# Runs on the stable toolchain: no sanitizer (`-s none`; the parsers are safe Rust, a panic or
# an overflow — debug assertions are on — is what is looked for), libFuzzer's coverage
# instrumentation only. Needs cargo-fuzz (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-20}
shift || true
timeout=${FUZZ_TIMEOUT:-10}
rss_mb=${FUZZ_RSS_MB:-2048}
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
export CARGO_TARGET_DIR=$target_dir
# Parallel code generation: the build takes about half as long on two cores, for runs a little
# slower. `run` must be given the same flags as `build` or it rebuilds.
flags=(-s none --codegen-units 16)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz not found; run scripts/setup.sh (or: cargo install cargo-fuzz --locked)" >&2
  exit 1
fi

if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "fuzz: building ${#targets[@]} targets"
cargo fuzz build "${flags[@]}"

passed=0
failed=0
summary=()
for t in "${targets[@]}"; do
  work="$target_dir/fuzz-corpus/$t"
  mkdir -p "$work" "artifacts/$t"
  log="$target_dir/fuzz-logs/$t.log"
  mkdir -p "$(dirname "$log")"
  seeds="corpus/$t"
  [[ -d $seeds ]] || { echo "fuzz: $t has no committed corpus ($seeds)" >&2; exit 1; }
  echo "== fuzz $t (${seconds}s)"
  status=ok
  if ! cargo fuzz run "${flags[@]}" "$t" "$work" "$seeds" -- \
      -max_total_time="$seconds" -timeout="$timeout" -rss_limit_mb="$rss_mb" \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    status=FAILED
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(find "$work" "$seeds" -type f | wc -l)
  line=$(printf '%-22s %-6s %12s runs %8s/s  cov %6s  corpus %6s' \
    "$t" "$status" "${runs:-?}" "${speed:-?}" "${cov:-?}" "$corpus")
  echo "$line"
  summary+=("$line")
  if [[ $status == ok ]]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -20 || true
    echo "   log: $log; reproduce: (cd fuzz && cargo fuzz run -s none --codegen-units 16 $t <artifact>)"
  fi
done

echo "== fuzz summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
echo "fuzz: $passed passed, $failed failed"
((failed == 0))
