#!/usr/bin/env bash
# Installs the Debian packages savepoint needs, if any is missing. Safe to run repeatedly.
set -euo pipefail
packages=(cmake ninja-build g++ libtorch-dev nlohmann-json3-dev libfmt-dev catch2 libxxhash-dev
          clang-14 libclang-rt-14-dev  # libFuzzer
          libcli11-dev                 # the CLI's argument parser (header-only)
          libgloo-dev                  # Gloo headers for the multi-process tests (c10d::ProcessGroupGloo)
          python3-torch python3-numpy python3-xxhash  # the Python reader and the PyTorch interop tests
          python3-pip pkgconf)         # the tests of `pip install ./python` and of savepoint.pc
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "savepoint: all build dependencies are installed"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "savepoint: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
