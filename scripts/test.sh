#!/usr/bin/env bash
# Builds with warnings as errors and runs the CPU test suite (the CUDA tests need a GPU: run
# them with `ctest --test-dir build -L cuda` on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
MIXTRAIN_CMAKE_ARGS="-DMIXTRAIN_WERROR=ON ${MIXTRAIN_CMAKE_ARGS:-}" scripts/setup.sh build
ctest --test-dir build -L cpu --output-on-failure -j "$(nproc)"
