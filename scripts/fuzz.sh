#!/usr/bin/env bash
# Fuzzes the readers with libFuzzer (clang, AddressSanitizer, UndefinedBehaviorSanitizer):
# the IDX reader, the CSV reader, model spec JSON + compile(), the weights file parser.
# Usage: scripts/fuzz.sh [seconds-per-target] [target...]   (default: 30 s, every target)
# Installs clang and libFuzzer's runtime through apt when missing, builds build-fuzz
# (-DMIXTRAIN_FUZZ=ON: the fuzz targets and the sources they need, nothing else), then runs each
# target on a copy of its seed corpus (tests/fuzz/corpus/<target>, never written to) for the
# given time. Fails when a target crashes; the crashing input is kept in build-fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_idx fuzz_csv fuzz_model_spec fuzz_weights_file)
build_dir=build-fuzz

packages=(
  clang               # the compiler (Debian 12: clang 14)
  libclang-rt-14-dev  # libFuzzer and the sanitizer runtimes (libclang_rt.fuzzer-x86_64.a)
  cmake ninja-build
  nlohmann-json3-dev libfmt-dev zlib1g-dev
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

cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=clang++ \
  -DMIXTRAIN_FUZZ=ON -DMIXTRAIN_CUDA=OFF -DMIXTRAIN_WERROR=ON >/dev/null
cmake --build "$build_dir" --target "${targets[@]}"

artifacts="$build_dir/artifacts"
mkdir -p "$artifacts"
status=0
for t in "${targets[@]}"; do
  # A fresh working corpus seeded from the checked-in one: new inputs go there, not into git.
  work="$build_dir/corpus/$t"
  rm -rf "$work"
  mkdir -p "$work"
  cp tests/fuzz/corpus/"$t"/* "$work"/
  log="$build_dir/$t.log"
  echo "fuzz: $t for ${seconds}s"
  if "$build_dir/tests/fuzz/$t" "$work" -max_total_time="$seconds" -rss_limit_mb=2048 \
    -timeout=10 -print_final_stats=1 -artifact_prefix="$artifacts/$t-" >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz: $t ok: ${execs:-?} executions, corpus $(ls "$work" | wc -l) files"
  else
    status=1
    echo "fuzz: $t FAILED; the end of $log:"
    tail -n 40 "$log"
    ls "$artifacts"/"$t"-* 2>/dev/null | sed 's/^/fuzz: crashing input: /' || true
  fi
done
exit $status
