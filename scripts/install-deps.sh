#!/usr/bin/env bash
# Installs the Debian packages savepoint needs, if any is missing. Safe to run repeatedly.
# The same script serves Debian 12, Debian 13 and unstable: where a name differs by release
# (Catch2 v2 or v3, the clang version of the fuzzers) it picks what the release has.
#   SAVEPOINT_QUICK=1   ctest only: skip the fuzzers' clang toolchain
set -euo pipefail
packages=(cmake ninja-build g++ ccache pkgconf
          libtorch-dev nlohmann-json3-dev libfmt-dev libxxhash-dev
          libcli11-dev                 # the CLI's argument parser (header-only)
          libgloo-dev                  # Gloo headers for the multi-process tests (c10d::ProcessGroupGloo)
          python3-torch python3-numpy python3-xxhash  # the Python reader and the PyTorch interop tests
          python3-pip python3-setuptools              # `pip install ./python` (Debian 13's pip no longer pulls setuptools)
          iproute2)                    # `ip netns`: the memory tier's nodes in network namespaces (scripts/netns-nodes.sh)
# Each group: the first package the release has. Catch2 v3 is libcatch2-dev (Debian 13 on),
# v2 is catch2 (Debian 12; in 13 `catch2` is a transitional name for v3).
alternatives=("libcatch2-dev catch2")
# Only where the release has it: the tests that use it report Skipped without it.
optional=(python3-safetensors)  # safetensors.torch.load_file on savepoint's tensor files (Debian 13 on)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
available() { [ -n "$(apt-cache show --no-all-versions "$1" 2>/dev/null | head -1)" ]; }
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
lists_updated=""
update_lists() {
  [ -n "$lists_updated" ] && return 0
  $sudo apt-get update -qq
  lists_updated=1
}
apt_install() {
  echo "savepoint: installing $*"
  update_lists
  local log
  log=$(mktemp)
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
# Name look-ups need package lists: a fresh machine has none.
if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || [ ${#missing[@]} -gt 0 ]; then update_lists; fi
for group in "${alternatives[@]}"; do
  chosen=""
  for p in $group; do if installed "$p"; then chosen=$p; break; fi; done
  if [ -z "$chosen" ]; then
    for p in $group; do if available "$p"; then chosen=$p; missing+=("$p"); break; fi; done
    [ -n "$chosen" ] || { echo "savepoint: none of '$group' is in this release's archive" >&2; exit 1; }
  fi
done
for p in "${optional[@]}"; do
  if ! installed "$p" && available "$p"; then missing+=("$p"); fi
done
if [ -z "${SAVEPOINT_QUICK:-}" ]; then
  # libFuzzer: clang is the release's default version (14 in Debian 12, 19 in 13), and its
  # runtime package carries that version in its name.
  installed clang || missing+=(clang)
fi
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
if [ -z "${SAVEPOINT_QUICK:-}" ]; then
  llvm=$(readlink -f "$(command -v clang)" | sed -n 's|.*/llvm-\([0-9]*\)/.*|\1|p')
  [ -n "$llvm" ] || { echo "savepoint: cannot tell the version of $(command -v clang)" >&2; exit 1; }
  installed "libclang-rt-$llvm-dev" || apt_install "libclang-rt-$llvm-dev"
fi
echo "savepoint: all build dependencies are installed"
