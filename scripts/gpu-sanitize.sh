#!/usr/bin/env bash
# On the GPU machine: runs the CUDA test binary under compute-sanitizer's memcheck, initcheck and
# racecheck, the three at once (each is bound by its own host-side instrumentation, not the GPU),
# and writes one log per tool into an output folder. A tool that reports an error, or a test that
# fails under it, fails the script; the last lines are a table of the three.
# Usage: scripts/gpu-sanitize.sh [out-dir] [gtest-filter]   (default: $OUT, else ./out; all tests)
# The build folder is $MIXTRAIN_BUILD_DIR, else build-cuda. MIXTRAIN_SANITIZE_TOOLS picks the
# tools (default memcheck,initcheck,racecheck); MIXTRAIN_SANITIZE_TIMEOUT bounds each (seconds,
# default 540).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-${OUT:-./out}}
filter=${2:-*}
build=${MIXTRAIN_BUILD_DIR:-build-cuda}
test_bin="$build/tests/mixtrain_cuda_tests"
tools=${MIXTRAIN_SANITIZE_TOOLS:-memcheck,initcheck,racecheck}
limit=${MIXTRAIN_SANITIZE_TIMEOUT:-540}
mkdir -p "$out"
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ ! -x "$sanitizer" ] || [ ! -x "$test_bin" ]; then
  echo "need compute-sanitizer ($sanitizer) and $test_bin" >&2
  exit 1
fi
"$sanitizer" --version | tail -n 1

declare -A extra=(
  [memcheck]="--leak-check full"
  # Reads of device memory no kernel or copy wrote (cudaMalloc'ed, never initialised).
  [initcheck]=""
  [racecheck]="--racecheck-report all"
)
pids=()
IFS=, read -ra list <<<"$tools"
for tool in "${list[@]}"; do
  # shellcheck disable=SC2086  # the extra flags are words
  timeout "$limit" "$sanitizer" --tool "$tool" ${extra[$tool]} --error-exitcode 99 \
    --print-limit 200 "$test_bin" --gtest_filter="$filter" >"$out/sanitize-$tool.log" 2>&1 &
  pids+=($!)
done

status=0
printf '\n%-10s %-6s %-14s %s\n' "tool" "exit" "tests" "sanitizer summary"
for i in "${!list[@]}"; do
  tool=${list[$i]}
  wait "${pids[$i]}"
  code=$?
  [ "$code" = 0 ] || status=1
  log="$out/sanitize-$tool.log"
  tests=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | head -n 1)
  failed=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$log" | grep -oE '[0-9]+' | head -n 1)
  summary=$(grep -E '^========= (ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY)' "$log" | tail -n 2 |
    sed 's/^========= //' | tr '\n' ' ')
  printf '%-10s %-6s %-14s %s\n' "$tool" "$code" "${tests:-?} passed${failed:+, $failed failed}" \
    "${summary:-(no summary: see $log)}"
done
exit "$status"
