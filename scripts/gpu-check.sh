#!/usr/bin/env bash
# On the GPU machine: prints the environment (GPU, driver, toolkit and library versions), runs
# the CUDA test suite of an existing build, then benchmarks mixtrain and the PyTorch reference
# (BENCHMARKS.md's workloads that exist: small_mlp, large_mlp, resnet18_cifar) and prints them
# side by side, writing every log and JSON file into an output folder.
# Usage: scripts/gpu-check.sh [out-dir]   (default: $OUT, else ./out)
# The build folder is $MIXTRAIN_BUILD_DIR, else build-cuda (configure it with -DMIXTRAIN_CUDA=ON).
# MIXTRAIN_BENCH=0 skips the benchmarks; MIXTRAIN_TORCH_VARIANTS (default eager,compile,reduce-overhead) picks the
# PyTorch variants (eager alone is minutes faster), MIXTRAIN_WORKLOADS (default
# small_mlp,large_mlp,resnet18_cifar) the workloads and MIXTRAIN_TORCH_PRECISIONS (default
# fp32,tf32,fp16,bf16) PyTorch's precisions. The exit status is the tests', else the
# mixtrain benchmark's.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-${OUT:-./out}}
build=${MIXTRAIN_BUILD_DIR:-build-cuda}
test_bin="$build/tests/mixtrain_cuda_tests"
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
  if [ -x "$test_bin" ]; then
    echo "resolved by $test_bin:"
    ldd "$test_bin" | grep -E 'cublas|cudart|cudnn|nccl|openblas' || true
  else
    echo "$test_bin not built"
  fi
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  echo "MIXTRAIN_CUDA_GRAPHS=${MIXTRAIN_CUDA_GRAPHS:-<unset>}"
} 2>&1 | tee "$out/environment.txt"

# CTest files hold absolute paths of the machine that configured the build; when the build was
# configured elsewhere (or ctest cannot list the tests), run the test binary directly.
build_abs=$(cd "$build" 2>/dev/null && pwd -P)
configured=$(sed -n 's/^CMAKE_CACHEFILE_DIR:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null)
configured_abs=$(cd "$configured" 2>/dev/null && pwd -P)
use_ctest=1
if [ -z "$build_abs" ] || [ "$configured_abs" != "$build_abs" ]; then
  use_ctest=0
elif ! ctest --test-dir "$build" -N -L cuda 2>/dev/null | grep -qE 'Total Tests: [1-9]'; then
  use_ctest=0
fi

if [ "$use_ctest" = 1 ]; then
  section "ctest -L cuda ($build)" | tee "$out/ctest.log"
  ctest --test-dir "$build" -L cuda --output-on-failure --output-junit "$out/ctest-cuda.xml" \
    2>&1 | tee -a "$out/ctest.log"
  status=${PIPESTATUS[0]}
  result=$(grep -E 'tests passed|No tests were found' "$out/ctest.log" | tail -n 1)
else
  section "mixtrain_cuda_tests ($build; ctest unusable: configured in '${configured:-?}')" |
    tee "$out/ctest.log"
  if [ -x "$test_bin" ]; then
    "$test_bin" --gtest_output="xml:$out/gtest-cuda.xml" 2>&1 | tee -a "$out/ctest.log"
    status=${PIPESTATUS[0]}
  else
    echo "$test_bin not built" | tee -a "$out/ctest.log"
    status=1
  fi
  result=$(grep -E '^\[ +(PASSED|FAILED|SKIPPED) +\] [0-9]+ test' "$out/ctest.log" | head -n 3 |
    tr '\n' ' ')
fi

bench_status=0
workloads=${MIXTRAIN_WORKLOADS:-small_mlp,large_mlp,resnet18_cifar}
bench_result="skipped (MIXTRAIN_BENCH=0)"
if [ "${MIXTRAIN_BENCH:-1}" != 0 ]; then
  mixtrain_bin="$build/tools/mixtrain/mixtrain"
  section "mixtrain bench" | tee "$out/bench.log"
  if [ -x "$mixtrain_bin" ]; then
    "$mixtrain_bin" bench --device cuda --workloads "$workloads" \
      --precisions fp32,tf32,fp16,bf16 --steps 500 --json "$out/mixtrain_bench.json" \
      2>&1 | tee -a "$out/bench.log"
    bench_status=${PIPESTATUS[0]}
  else
    echo "$mixtrain_bin not built" | tee -a "$out/bench.log"
    bench_status=1
  fi
  section "PyTorch reference" | tee -a "$out/bench.log"
  if python3 -c 'import torch' 2>/dev/null; then
    python3 bench/pytorch_reference.py --workloads "$workloads" \
      --precisions "${MIXTRAIN_TORCH_PRECISIONS:-fp32,tf32,fp16,bf16}" --variants "${MIXTRAIN_TORCH_VARIANTS:-eager,compile,reduce-overhead}" --json "$out/torch_bench.json" \
      2>&1 | tee -a "$out/bench.log"
  else
    echo "python3 cannot import torch: no PyTorch figures" | tee -a "$out/bench.log"
  fi
  if [ -f "$out/mixtrain_bench.json" ]; then
    section "mixtrain vs PyTorch" | tee "$out/compare.txt"
    python3 bench/compare_tables.py "$out/mixtrain_bench.json" "$out/torch_bench.json" \
      2>&1 | tee -a "$out/compare.txt"
    python3 bench/compare_tables.py --markdown "$out/mixtrain_bench.json" \
      "$out/torch_bench.json" >"$out/compare.md" 2>/dev/null
    bench_result="exit $bench_status, table in compare.txt (Markdown: compare.md)"
  else
    bench_result="exit $bench_status, no mixtrain_bench.json (see bench.log)"
  fi
fi

section "summary" | tee "$out/summary.txt"
{
  printf '%-12s %s\n' "check" "result"
  printf '%-12s %s\n' "cuda tests" "${result:-did not run (see ctest.log)}"
  printf '%-12s %s\n' "tests exit" "$status"
  printf '%-12s %s\n' "bench" "$bench_result"
  printf '%-12s %s\n' "logs" "$out"
} | tee -a "$out/summary.txt"
if [ "$status" != 0 ]; then exit "$status"; fi
exit "$bench_status"
