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
if [[ -x "$tmp/consumer/consumer_mpi" ]]; then
  # Open MPI refuses root without these, and one node needs only shared memory.
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader \
    OMPI_MCA_btl_vader_single_copy_mechanism=none \
    mpirun --oversubscribe -np 2 "$tmp/consumer/consumer_mpi" "$tmp/mpi_run"
  "$tmp/prefix/bin/ckpt" verify "$tmp/mpi_run/step/1" >/dev/null
fi
pkg=$(find "$tmp/prefix" -path '*dist-packages/ckpt/__init__.py' -print -quit)
if [[ -n "$pkg" ]]; then
  PYTHONPATH=$(dirname "$(dirname "$pkg")") /usr/bin/python3 - "$tmp" <<'PY'
import sys
import numpy as np
import ckpt
tmp = sys.argv[1]
assert ckpt.__file__.startswith(tmp), f"imported {ckpt.__file__}, not the installed package"
w = np.arange(1000, dtype=np.float32)
with ckpt.Runtime() as rt:
    rt.save(f"{tmp}/py/step/1", {"w": w, "step": 1}).result()
    tree, _ = rt.restore(f"{tmp}/py/step/1")
assert tree["step"] == 1 and np.array_equal(tree["w"], w), "restored tree differs"
PY
  echo "install: python package imports, saves and restores from $(dirname "$pkg")"
fi
echo "install: consumer built with find_package(ckpt) and ran against $tmp/prefix"
