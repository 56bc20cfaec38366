#!/usr/bin/env bash
# Installs a built mixtrain into a temporary prefix and builds programs against that install alone,
# as another project would: the examples as a project of their own (find_package(mixtrain)), and
# one example compiled through `pkg-config --static mixtrain`. Runs one program of each, and
# checks that they load the OpenBLAS file the library was built with (the OpenMP build).
# Usage: scripts/check-install.sh [build-dir]   (default: build; it must be built already)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
fail() {
  echo "check-install: $*" >&2
  exit 1
}
[ -f "$build_dir/CMakeCache.txt" ] || fail "$build_dir is not a CMake build folder"
[ -f "$build_dir/cmake_install.cmake" ] || fail "$build_dir has no install rules"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
libdir=$(sed -n 's/^CMAKE_INSTALL_LIBDIR:PATH=//p' "$build_dir/CMakeCache.txt")
libdir=${libdir:-lib}

echo "== cmake --install $build_dir --prefix $prefix"
cmake --install "$build_dir" --prefix "$prefix" >"$work/install.log"
for f in "$libdir/libmixtrain.a" include/mixtrain/mixtrain.hpp bin/mixtrain \
  "$libdir/cmake/mixtrain/mixtrainConfig.cmake" "$libdir/cmake/mixtrain/mixtrainConfigVersion.cmake" \
  "$libdir/cmake/mixtrain/mixtrainTargets.cmake" "$libdir/pkgconfig/mixtrain.pc"; do
  [ -f "$prefix/$f" ] || fail "the install has no $f"
done
# The installed package must not point back into the source or build tree (src/ include paths,
# helper targets of the build).
for dir in "$(pwd -P)" "$(cd "$build_dir" && pwd -P)"; do
  if grep -rl --fixed-strings "$dir" "$prefix/$libdir/cmake" "$prefix/$libdir/pkgconfig"; then
    fail "the installed package files above mention $dir"
  fi
done

export PKG_CONFIG_PATH="$prefix/$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
openblas=$(pkg-config --variable=openblas_library mixtrain)
# A program linked with mixtrain must load that very OpenBLAS (by its run path), not whatever
# Debian's libopenblas.so.0 alternative points to (by default the pthreads build).
check_openblas() {
  case "$openblas" in *.so | *.so.*) ;; *) return 0 ;; esac # a static OpenBLAS: nothing to load
  local loaded
  loaded=$(ldd "$1" | awk '$1 ~ /^libopenblas/ { print $3 }')
  [ -n "$loaded" ] || fail "$1 does not load OpenBLAS"
  [ "$(realpath "$loaded")" = "$(realpath "$openblas")" ] ||
    fail "$1 loads $loaded, not the OpenBLAS mixtrain was built with ($openblas)"
  echo "$(basename "$1") loads $loaded"
}

echo "== the installed CLI"
"$prefix/bin/mixtrain" --help >/dev/null
check_openblas "$prefix/bin/mixtrain"

echo "== examples/ as a project of its own: find_package(mixtrain) from $prefix"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S examples -B "$work/examples" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON >"$work/configure.log" ||
  { cat "$work/configure.log" >&2; fail "configuring the examples against the install failed"; }
found=$(sed -n 's/^mixtrain_DIR:PATH=//p' "$work/examples/CMakeCache.txt")
[ "$found" = "$prefix/$libdir/cmake/mixtrain" ] || fail "find_package(mixtrain) found '$found'"
cmake --build "$work/examples" -j "$(nproc)"
"$work/examples/example_json_spec" # builds a model, saves and loads its JSON, trains one step
check_openblas "$work/examples/example_json_spec"

echo "== an example compiled through pkg-config --static mixtrain"
flags=$(pkg-config --cflags --libs --static mixtrain)
echo "pkg-config: $flags"
read -ra flag_array <<<"$flags"
"${CXX:-c++}" -std=c++20 -O2 examples/residual_mlp.cpp -o "$work/pkg_config_example" "${flag_array[@]}"
"$work/pkg_config_example"
check_openblas "$work/pkg_config_example"

echo "check-install: OK"
