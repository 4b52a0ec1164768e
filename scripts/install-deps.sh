#!/usr/bin/env bash
# Installs the Debian packages savepoint needs, if any is missing. Safe to run repeatedly.
# The same script serves Debian 12, Debian 13 and unstable: where a name differs by release
# (Catch2 v2 or v3, the clang version of the fuzzers) it picks what the release has.
#   install-deps.sh demo   what scripts/demo.sh needs: build savepoint, its CLI and examples
#   install-deps.sh        everything scripts/test.sh needs: the above, then the tests' Python
#                          packages and iproute2, and the fuzzers' clang toolchain
#   SAVEPOINT_QUICK=1      (test mode) ctest only: skip the fuzzers' clang toolchain
set -euo pipefail
mode=${1:-test}
case $mode in demo | test) ;; *) echo "usage: install-deps.sh [demo|test]" >&2; exit 2 ;; esac
# The demo: configure (with the tests, so that the test command reuses the same build: Catch2
# below), build and install savepoint, its CLI and the examples.
packages=(cmake ninja-build g++ ccache
          pkgconf                      # `pkg-config --cflags --libs savepoint` (README, "Using it from CMake")
          libtorch-dev nlohmann-json3-dev libfmt-dev libxxhash-dev
          libcli11-dev                 # the CLI's argument parser (header-only)
          libcurl4-openssl-dev         # object storage: HTTP with AWS SigV4 signing (CURLOPT_AWS_SIGV4)
          libtinyxml2-dev              # object storage: S3's XML replies (one small DOM parser, in every release)
          libgloo-dev)                 # Gloo headers: examples/train_ddp and the multi-process tests (c10d::ProcessGroupGloo)
if [ "$mode" = test ]; then
  packages+=(python3-torch python3-numpy python3-xxhash  # the Python reader, the PyTorch interop tests, torchrun
             python3-pip python3-setuptools              # `pip install ./python` (Debian 13's pip no longer pulls setuptools)
             iproute2                     # `ip netns`: the memory tier's nodes in network namespaces (scripts/netns-nodes.sh)
             slurm-wlm munge              # a one-machine SLURM cluster for the launcher tests (scripts/slurm-cluster.sh)
             python3-boto3)               # the Python reader's s3:// roots and their tests (python/tests/test_s3.py)
fi
# Each group: the first package the release has. Catch2 v3 is libcatch2-dev (Debian 13 on),
# v2 is catch2 (Debian 12; in 13 `catch2` is a transitional name for v3). Headers only, but
# the build is configured with its tests even for the demo.
alternatives=("libcatch2-dev catch2")
# Only where the release has it: the tests that use it report Skipped without it.
optional=()
[ "$mode" = demo ] || optional+=(python3-safetensors)  # safetensors.torch.load_file on savepoint's tensor files (Debian 13 on)
# A local S3 server for the object storage tests (scripts/with-s3-server.sh moto; Debian 13 on;
# its server mode needs flask and flask-cors). s3rver, the other one, comes from npm where npm is.
[ "$mode" = demo ] || optional+=(python3-moto python3-flask python3-flask-cors)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
available() { [ -n "$(apt-cache show --no-all-versions "$1" 2>/dev/null | head -1)" ]; }
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
lists_updated=""
update_lists() {
  [ -n "$lists_updated" ] && return 0
  echo "savepoint: updating the package lists (apt-get update) ..."
  $sudo apt-get update -qq
  lists_updated=1
}
# apt_phase <log> <what> <apt-get arguments...>: one line for the phase, apt's own progress
# (its status file descriptor) appended to it in steps of 10%, and the time it took; the
# output goes to <log>.
apt_phase() {
  local log=$1 what=$2 start=$SECONDS
  shift 2
  printf 'savepoint: %s ...' "$what"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -y -q --no-install-recommends -o APT::Status-Fd=3 "$@" \
    3>&1 >>"$log" 2>&1 |
    awk -F: '$1 ~ /^(dl|pm)status$/ { p = int($3 / 10) * 10; if (p > shown && p < 100) { shown = p; printf " %d%%", p; fflush() } }'
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] && echo " done ($((SECONDS - start)) s)" || echo " failed"
  return "$rc"
}
apt_install() {
  update_lists
  # What apt will do: the packages with their dependencies, and the bytes to download.
  local total downloads
  total=$(apt-get -s install --no-install-recommends "$@" 2>/dev/null | grep -c '^Inst' || true)
  downloads=$(apt-get install --print-uris -qq --no-install-recommends "$@" 2>/dev/null |
              awk '{ n++; s += $3 } END { printf "%d packages (%.0f MB)", n, s / 1e6 }')
  echo "savepoint: installing $# packages ($*): $total with their dependencies, $downloads to download"
  local log
  log=$(mktemp)
  if ! apt_phase "$log" "downloading $downloads" install --download-only "$@" ||
     ! apt_phase "$log" "unpacking and configuring $total packages" install "$@"; then
    tail -n 30 "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

missing=()
for p in "${packages[@]}"; do installed "$p" || missing+=("$p"); done
# Name look-ups need package lists: a fresh machine has none.
if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || [ ${#missing[@]} -gt 0 ]; then update_lists; fi
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
fuzzers=""
[ "$mode" = test ] && [ -z "${SAVEPOINT_QUICK:-}" ] && fuzzers=1
if [ -n "$fuzzers" ]; then
  # libFuzzer: clang is the release's default version (14 in Debian 12, 19 in 13), and its
  # runtime package carries that version in its name.
  installed clang || missing+=(clang)
fi
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
if [ -n "$fuzzers" ]; then
  llvm=$(readlink -f "$(command -v clang)" | sed -n 's|.*/llvm-\([0-9]*\)/.*|\1|p')
  [ -n "$llvm" ] || { echo "savepoint: cannot tell the version of $(command -v clang)" >&2; exit 1; }
  installed "libclang-rt-$llvm-dev" || apt_install "libclang-rt-$llvm-dev"
fi
if [ "$mode" = demo ]; then
  echo "savepoint: the demo's dependencies are installed (the test command adds the tests' and the fuzzers')"
else
  echo "savepoint: all build and test dependencies are installed"
fi
