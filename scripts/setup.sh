#!/usr/bin/env bash
# Installs the Debian packages mixtrain builds and runs with, then configures and builds it.
# Usage: scripts/setup.sh [build-dir]   (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}

packages=(
  g++ cmake ninja-build pkg-config
  libopenblas-dev libopenblas0-openmp  # GEMMs on the CPU; the OpenMP build shares our thread pool
  nlohmann-json3-dev                   # model specs and benchmark reports
  libcli11-dev                         # the command line
  libfmt-dev                           # formatting
  zlib1g-dev                           # gzip-compressed IDX files
  libgtest-dev libgmock-dev            # tests
  dataset-fashion-mnist                # the data set of the main job
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release ${MIXTRAIN_CMAKE_ARGS:-}
cmake --build "$build_dir"
