#!/usr/bin/env bash
# Runs the README's test command (ctest only: SAVEPOINT_QUICK=1) inside a root of another
# Debian release, one stage per name given:
#   bash scripts/platforms.sh debian13 unstable      # LibTorch 2.6 (C++17), 2.14 (C++20)
#   bash scripts/platforms.sh debian12               # the host's release, from scratch
#   bash scripts/platforms.sh prepare debian13 ...   # only build/upgrade the roots, install deps
#   bash scripts/platforms.sh run debian13 'cd /src && ...'   # one command in a root (developers)
#   SAVEPOINT_ROOTS=/tmp/fresh bash scripts/platforms.sh --full debian13
#                                       # a new user's `bash scripts/test.sh` in a fresh root
#   SAVEPOINT_ROOTS=/tmp/fresh bash scripts/platforms.sh --demo debian13
#                                       # a new user's `bash scripts/demo.sh` in a fresh root (nothing
#                                       # installed first), then the install check (scripts/check-install.sh)
# In a root the build is a Release build and the crash tests run 50 rounds (the host runs 200).
# Each root is built with mmdebstrap and cached at $SAVEPOINT_ROOTS/<name> (default
# /var/cache/savepoint/roots), outside the clone; it is rebuilt when missing or older than a
# week, and upgraded at every run. Its ccache lives beside it and survives a rebuild.
# A stage that cannot run (no root privileges, no mmdebstrap, the archive unreachable) prints
# "platform <name>: skipped (why)", never "passed". Exits 1 if any stage failed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
roots=${SAVEPOINT_ROOTS:-/var/cache/savepoint/roots}
max_age_days=7

suite_of() {
  case $1 in
    debian12) echo bookworm ;;
    debian13) echo trixie ;;
    unstable) echo sid ;;
    *) echo "platforms.sh: unknown platform '$1' (debian12, debian13, unstable)" >&2; return 1 ;;
  esac
}

# The Debian mirror the host's apt already uses (the machines reach no other).
mirror() {
  local uri
  uri=$(apt-get indextargets --format '$(REPO_URI) $(ORIGIN) $(LABEL)' 2>/dev/null |
        awk '$2 == "Debian" && $3 == "Debian" { print $1; exit }')
  echo "${uri:-http://deb.debian.org/debian/}"
}

skipped() { echo "platform $1: skipped ($2)"; }

# Ends what still runs inside a root and unmounts everything below it, deepest first: a run that
# was killed (CI's time limit, say) leaves its bind mounts, and deleting a root through a bind of
# /dev would delete the host's.
release_root() {
  local dir=$1 p target
  for p in /proc/[0-9]*; do
    target=$(readlink "$p/root" 2>/dev/null) || continue
    case $target in "$dir" | "$dir"/*) kill -9 "${p#/proc/}" 2>/dev/null || true ;; esac
  done
  awk -v d="$dir" 'index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r | while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
  done
}

# Builds the root into a temporary directory and renames it into place: an interrupted build
# never leaves a half root that looks cached.
build_root() {
  local name=$1 dir=$2 suite options=()
  suite=$(suite_of "$name")
  if [ "$suite" = sid ]; then
    # unstable's Release file is often past its Valid-Until date on the mirror the machines use.
    options+=(--aptopt='Acquire::Check-Valid-Until "false"')
  fi
  release_root "$dir.new"
  rm -rf --one-file-system "$dir.new"
  echo "savepoint: building the $name root ($suite) in $dir"
  if ! mmdebstrap --quiet --variant=minbase "${options[@]}" "$suite" "$dir.new" "$(mirror)" >"$roots/$name.log" 2>&1; then
    tail -n 5 "$roots/$name.log" >&2
    rm -rf --one-file-system "$dir.new"
    return 1
  fi
  release_root "$dir"
  rm -rf --one-file-system "$dir"
  mv "$dir.new" "$dir"
  touch "$dir/.savepoint-root"
}

mounted=()
unmount_all() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount "${mounted[$i]}" 2>/dev/null || umount -l "${mounted[$i]}" 2>/dev/null || true
  done
  mounted=()
}
trap unmount_all EXIT INT TERM

mount_in() {  # mount_in <target> <mount arguments...>
  local target=$1
  shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounted+=("$target")
  mount --make-private "$target"  # nothing mounted below it reaches the host's tree
}

# Runs a bash command inside the root, with /proc, /sys, /dev and the ccache mounted, in a clean
# environment (the host's PATH, a pyenv say, means nothing there); unmounts afterwards.
in_root() {  # in_root <name> <command>
  local name=$1 command=$2 dir=$roots/$1 status=0
  mkdir -p "$roots/$name.ccache"
  cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
  # The root shares the host's network, so its names too: torchrun's rendezvous hands the
  # workers the host name as the store's address.
  cp /etc/hosts "$dir/etc/hosts" 2>/dev/null || true
  mount_in "$dir/proc" -t proc proc
  mount_in "$dir/sys" --bind /sys
  mount_in "$dir/dev" --bind /dev
  mount_in "$dir/dev/pts" --bind /dev/pts
  mount_in "$dir/dev/shm" -t tmpfs -o mode=1777 tmpfs
  mount_in "$dir/root/.cache/ccache" --bind "$roots/$name.ccache"
  env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
      CI="${CI:-}" DEBIAN_FRONTEND=noninteractive SAVEPOINT_BUILD_DIR=/build "${stage_env[@]}" \
      chroot "$dir" /bin/bash -c "set -euo pipefail; $command" || status=$?
  unmount_all
  release_root "$dir"  # anything the command left running
  return $status
}

# The work tree as it is (tracked and untracked files, not ignored ones), with its times, so that
# the root's build directory only rebuilds what changed.
copy_sources() {
  local dir=$1
  rm -rf --one-file-system "$dir/src" && mkdir -p "$dir/src"
  (cd "$root" && git ls-files -z --cached --others --exclude-standard |
     xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
     tar --null -T - -cf -) | tar -xf - -C "$dir/src"
}

# Makes the root ready: built if missing or a week old, upgraded, the build dependencies
# installed (by the project's own install-deps.sh, as a user would). Prints why not and
# returns 1 when the stage must be skipped.
prepare_root() {  # prepare_root <name> [bare: do not install the dependencies]
  local name=$1 dir=$roots/$1
  suite_of "$name" >/dev/null || exit 2
  if [ "$(id -u)" -ne 0 ]; then skipped "$name" "chroot and mmdebstrap need root privileges"; return 1; fi
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null 2>&1 ||
      { skipped "$name" "mmdebstrap is not installed and could not be"; return 1; }
  fi
  mkdir -p "$roots"
  release_root "$dir"
  if [ ! -f "$dir/.savepoint-root" ] || [ -n "$(find "$dir/.savepoint-root" -mtime +$((max_age_days - 1)) 2>/dev/null)" ]; then
    build_root "$name" "$dir" || { skipped "$name" "its root could not be built: see $roots/$name.log"; return 1; }
  fi
  copy_sources "$dir"
  [ "${2:-}" != bare ] || return 0
  in_root "$name" 'apt-get update -qq && apt-get -y -qq upgrade >/dev/null && bash /src/scripts/install-deps.sh' \
    >"$roots/$name.prepare.log" 2>&1 ||
    { tail -n 20 "$roots/$name.prepare.log"; skipped "$name" "apt could not upgrade it or install the dependencies: see $roots/$name.prepare.log"; return 1; }
}

run_stage() {
  local name=$1 status=0
  prepare_root "$name" || return 0
  copy_sources "$roots/$name"
  in_root "$name" 'cd /src && bash scripts/test.sh' || status=$?
  if [ $status -ne 0 ]; then echo "platform $name: FAILED (exit code $status)"; fi
  return $status
}

usage="usage: platforms.sh [prepare|--full|--demo] debian12|debian13|unstable ..."
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
if [ "$1" = run ]; then
  # A developer's command in a root, with the work tree copied to /src (no upgrade, no install):
  #   platforms.sh run debian13 'cd /src && bash scripts/configure.sh && cmake --build /build'
  [ $# -eq 3 ] || { echo "usage: platforms.sh run <platform> <bash command>" >&2; exit 2; }
  prepare_root "$2" bare || exit 1  # the sources copied; no upgrade
  stage_env=(CMAKE_BUILD_TYPE=Release)
  in_root "$2" "$3"
  exit $?
fi
if [ "$1" = --demo ]; then
  # The README's first command as a new user meets it, then cmake --install and a consumer.
  shift
  failed=0
  for name in "$@"; do
    echo "=== platform $name: the demo"
    prepare_root "$name" bare || continue
    in_root "$name" 'cd /src && bash scripts/demo.sh && bash scripts/check-install.sh' || { echo "platform $name: demo FAILED"; failed=1; }
  done
  exit $failed
fi
# What a stage runs: the ctest suite as a Release build, the crash tests at 50 rounds.
stage_env=(SAVEPOINT_QUICK=1 SAVEPOINT_CRASH_ROUNDS="${SAVEPOINT_CRASH_ROUNDS:-50}" CMAKE_BUILD_TYPE=Release)
if [ "$1" = --full ]; then
  # Or exactly what a new user of that release runs: `bash scripts/test.sh`, fuzzers and
  # sanitizers included. SAVEPOINT_ROOTS=<empty dir> gives it a fresh root.
  shift
  stage_env=()
fi
if [ "$1" = prepare ]; then
  # Only the roots (test.sh runs this in the background while the host builds).
  shift
  for name in "$@"; do prepare_root "$name" || true; done
  exit 0
fi
failed=0
for name in "$@"; do
  echo "=== platform $name"
  run_stage "$name" || failed=1
done
exit $failed
