#!/usr/bin/env bash
# CI entry point for fuzzing: tests/fuzz/run.sh [seconds=60]
#
# Configures build/fuzz with Clang (Debian 12: clang, libclang-rt-14-dev for libFuzzer),
# builds fuzz_star, and fuzzes for `seconds` from a scratch copy of the seed corpus
# tests/fuzz/corpus (new inputs go to the copy, never into the source tree). Exits non-zero
# on any crash, sanitizer report, timeout, leak or failed check; the input that failed is
# saved in build/fuzz/artifacts/. Prints the number of executions at the end.
set -euo pipefail

seconds=${1:-60}
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

build=build/fuzz
# -O2 with assertions (Eigen's among them) left on: the inputs are tiny, and an assertion
# is one more way to notice a bug.
cmake -S . -B "$build" \
  -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g" \
  -DSTAR_BUILD_FUZZERS=ON \
  -DSTAR_BUILD_TESTS=OFF \
  -DSTAR_BUILD_BENCHMARKS=OFF \
  -DSTAR_BUILD_EXAMPLES=OFF \
  -DSTAR_BUILD_DOCS=OFF
cmake --build "$build" --target fuzz_star -j 2

scratch=$build/scratch-corpus
artifacts=$build/artifacts
log=$build/fuzz.log
rm -rf "$scratch"
mkdir -p "$scratch" "$artifacts"
cp tests/fuzz/corpus/* "$scratch"/

# Input length: a seed holds only configuration bytes (55 at most); longer inputs let the
# fuzzer choose input values too (ties, cancellations) instead of the generator. libFuzzer
# starts its length limit at the longest seed and, with -len_control at its default (100),
# raises it only after hundreds of runs without a new input, which never happened in 10
# minutes: every input stayed at 55 bytes. -len_control=10 reaches -max_len in about 80 s
# (0, all of it at once, found fewer edges in 5 minutes). Cases of a few hundred tokens take
# 100x a small one; -entropic_scale_per_exec_time picks slow inputs less often, which
# quadrupled the executions of a 5-minute run. Measurements: tests/fuzz/README.md.
set +e
"$build/tests/fuzz/fuzz_star" \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
  -max_len=512 -len_control=10 -entropic_scale_per_exec_time=1 \
  -dict=tests/fuzz/fuzz_star.dict \
  -artifact_prefix="$artifacts/" -print_final_stats=1 \
  "$scratch" tests/fuzz/corpus 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
echo "fuzz_star: ${executions:-unknown} executions (time limit ${seconds} s; exit status ${status})"
if [ "$status" -ne 0 ]; then
  echo "fuzz_star: FAILED; reproduce with: $build/tests/fuzz/fuzz_star $artifacts/<file>" >&2
fi
exit "$status"
