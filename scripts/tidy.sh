#!/usr/bin/env bash
# clang-tidy with the repo's .clang-tidy (bug-prone patterns, needless copies, the static
# analyzer), warnings as errors, over the library and CLI C++ sources of a configured build.
# Usage: scripts/tidy.sh [build-dir]   (default: build; needs its compile_commands.json)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
db="$build/compile_commands.json"
[ -f "$db" ] || { echo "tidy: $db not found (configure the build first)" >&2; exit 2; }
root=$(pwd -P)  # CMake records the physical path of the source tree
files=$(grep -o '"file": "[^"]*"' "$db" | sed 's/"file": "//; s/"$//' |
  grep -E "^$root/(src|tools)/.*\.cpp$" | sort -u)
[ -n "$files" ] || { echo "tidy: no src/ or tools/ sources in $db" >&2; exit 2; }
# clang-tidy counts the diagnostics it suppressed in system headers on stderr: drop those lines.
echo "$files" | xargs -P "$(nproc)" -n 4 clang-tidy -p "$build" --quiet --warnings-as-errors='*' \
  2> >(grep -v 'warnings generated\.$' >&2)
