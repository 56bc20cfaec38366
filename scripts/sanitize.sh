#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer (and LeakSanitizer) over the CPU test suite, in a
# build of its own. Any report fails its test: UBSan does not recover (-fno-sanitize-recover=all),
# ASan halts on the first error, leaks are checked at exit.
# Usage: scripts/sanitize.sh [build-dir]   (default: build-asan)
#
# The flags go in through CMAKE_CXX_FLAGS and the linker flags rather than a CMake option, so that
# every target of the build (library, CLI, tests) is instrumented alike and the project's CMake
# (and what it installs and exports) carries no sanitizer settings. RelWithDebInfo: -O2 keeps the
# suite fast enough for CI, -g gives the reports file and line; -fno-omit-frame-pointer gives
# ASan's fast unwinder whole stacks. No -Werror here (scripts/test.sh's build has it): GCC's flow
# analysis under -fsanitize gives false -Wmaybe-uninitialized warnings (in libstdc++'s <regex>).
#
# The whole CPU suite runs (about 50 s under the sanitizers on 2 cores; the build takes longer).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-asan}
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMIXTRAIN_CUDA=OFF \
  -DMIXTRAIN_EXAMPLES=OFF -DMIXTRAIN_WERROR=OFF \
  -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined"
cmake --build "$build" --target mixtrain_tests
# halt_on_error: the first ASan report ends the process with an error; detect_leaks: LeakSanitizer
# at exit (it works here, no suppressions needed: what libgomp and OpenBLAS keep at exit is still
# reachable, which LeakSanitizer does not report); stack-use-after-return and initialization
# order checks on. UBSan: halt (with -fno-sanitize-recover=all it aborts anyway) and print stacks.
# A heap overflow, a signed overflow and a leak planted in a test each fail it under ctest.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
ctest --test-dir "$build" -L cpu --output-on-failure -j "$(nproc)"
