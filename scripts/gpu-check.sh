#!/usr/bin/env bash
# On the GPU machine: prints the environment (GPU, driver, toolkit and library versions) and runs
# the CUDA test suite of an existing build, writing every log into an output folder.
# Usage: scripts/gpu-check.sh [out-dir]   (default: $OUT, else ./out)
# The build folder is $MIXTRAIN_BUILD_DIR, else build-cuda (configure it with -DMIXTRAIN_CUDA=ON).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-${OUT:-./out}}
build=${MIXTRAIN_BUILD_DIR:-build-cuda}
mkdir -p "$out"
out=$(cd "$out" && pwd)

section() { printf '\n== %s\n' "$1"; }

{
  section "date"
  date -u '+%Y-%m-%dT%H:%M:%SZ'
  section "gpu"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    nvidia-smi
  else
    echo "nvidia-smi not found"
  fi
  section "toolkit"
  nvcc_bin=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  if [ -x "$nvcc_bin" ]; then "$nvcc_bin" --version; else echo "nvcc not found"; fi
  cmake --version | head -n 1
  g++ --version | head -n 1
  section "libraries"
  ldconfig -p 2>/dev/null | grep -E 'libcublasLt\.so|libcudart\.so|libcudnn\.so|libnccl\.so|libopenblas' || true
  test_bin="$build/tests/mixtrain_cuda_tests"
  if [ -x "$test_bin" ]; then
    echo "resolved by $test_bin:"
    ldd "$test_bin" | grep -E 'cublas|cudart|cudnn|nccl|openblas' || true
  else
    echo "$test_bin not built"
  fi
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  echo "MIXTRAIN_CUDA_GRAPHS=${MIXTRAIN_CUDA_GRAPHS:-<unset>}"
} 2>&1 | tee "$out/environment.txt"

section "ctest -L cuda ($build)" | tee "$out/ctest.log"
ctest --test-dir "$build" -L cuda --output-on-failure --output-junit "$out/ctest-cuda.xml" \
  2>&1 | tee -a "$out/ctest.log"
status=${PIPESTATUS[0]}

section "summary" | tee "$out/summary.txt"
{
  printf '%-12s %s\n' "check" "result"
  result=$(grep -E 'tests passed|No tests were found' "$out/ctest.log" | tail -n 1)
  printf '%-12s %s\n' "ctest cuda" "${result:-did not run (see ctest.log)}"
  printf '%-12s %s\n' "exit" "$status"
  printf '%-12s %s\n' "logs" "$out"
} | tee -a "$out/summary.txt"
exit "$status"
