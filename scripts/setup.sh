#!/usr/bin/env bash
# Installs the Debian packages ckpt builds with, only those missing. Idempotent; silent when all is there.
# Usage: scripts/setup.sh [--bench | --fuzz]   (--bench adds the tools the benchmarks use, --fuzz
# clang and its libFuzzer/sanitizer runtimes for `make test-fuzz`)
set -euo pipefail
pkgs=(build-essential cmake pkg-config libboost1.81-dev libboost-json1.81-dev liburing-dev
      libflatbuffers-dev flatbuffers-compiler libspdlog-dev doctest-dev libisal-dev libxxhash-dev libcli11-dev
      pybind11-dev python3-dev python3-numpy python3-torch python3-torchvision python3-pytest
      libopenmpi-dev openmpi-bin)
if [[ "${1:-}" == "--bench" ]]; then pkgs+=(fio gnuplot-nox python3-h5py); fi
if [[ "${1:-}" == "--fuzz" ]]; then pkgs+=(clang libclang-rt-14-dev); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo "setup: installing ${missing[*]}"
sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
