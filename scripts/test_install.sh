#!/usr/bin/env bash
# Installs the build in BUILD (default build/) into a temporary prefix, then builds and runs
# tests/install/consumer against it through find_package(ckpt CONFIG), and runs the installed
# `ckpt` tool on what the consumer saved. With the Python package built, it also imports the
# installed package. Usage: scripts/test_install.sh [BUILD]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$root/tests/install/consumer" -B "$tmp/consumer" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/consumer" -j"$(nproc)" >/dev/null
"$tmp/consumer/consumer" "$tmp/run"
"$tmp/prefix/bin/ckpt" verify "$tmp/run/step/42" >/dev/null
pkg=$(find "$tmp/prefix" -path '*dist-packages/ckpt/__init__.py' -print -quit)
if [[ -n "$pkg" ]]; then
  PYTHONPATH=$(dirname "$(dirname "$pkg")") /usr/bin/python3 -c \
    "import ckpt, sys; sys.exit(0 if ckpt.__file__.startswith('$tmp') else 1)"
  echo "install: python package imports from $(dirname "$pkg")"
fi
echo "install: consumer built with find_package(ckpt) and ran against $tmp/prefix"
