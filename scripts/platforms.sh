#!/usr/bin/env bash
# Runs the README's test command (ctest only: SAVEPOINT_QUICK=1) inside a root of another
# Debian release, one stage per name given:
#   bash scripts/platforms.sh debian13 unstable      # LibTorch 2.6 (C++17), 2.14 (C++20)
#   bash scripts/platforms.sh debian12               # the host's release, from scratch
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

# Builds the root into a temporary directory and renames it into place: an interrupted build
# never leaves a half root that looks cached.
build_root() {
  local name=$1 dir=$2 suite options=()
  suite=$(suite_of "$name")
  if [ "$suite" = sid ]; then
    # unstable's Release file is often past its Valid-Until date on the mirror the machines use.
    options+=(--aptopt='Acquire::Check-Valid-Until "false"')
  fi
  rm -rf "$dir.new"
  echo "savepoint: building the $name root ($suite) in $dir"
  if ! mmdebstrap --quiet --variant=minbase "${options[@]}" "$suite" "$dir.new" "$(mirror)" >"$roots/$name.log" 2>&1; then
    tail -n 5 "$roots/$name.log" >&2
    rm -rf "$dir.new"
    return 1
  fi
  rm -rf "$dir"
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

run_stage() {
  local name=$1 dir=$roots/$1 cache=$roots/$1.ccache
  suite_of "$name" >/dev/null || return 1
  if [ "$(id -u)" -ne 0 ]; then skipped "$name" "chroot and mmdebstrap need root privileges"; return 0; fi
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null 2>&1 ||
      { skipped "$name" "mmdebstrap is not installed and could not be"; return 0; }
  fi
  mkdir -p "$roots"
  if [ ! -f "$dir/.savepoint-root" ] || [ -n "$(find "$dir/.savepoint-root" -mtime +$((max_age_days - 1)) 2>/dev/null)" ]; then
    build_root "$name" "$dir" || { skipped "$name" "its root could not be built: see $roots/$name.log"; return 0; }
  fi
  cp /etc/resolv.conf "$dir/etc/resolv.conf" 2>/dev/null || true
  # The work tree as it is (tracked and untracked files, not ignored ones), with its times, so
  # that the root's build directory only rebuilds what changed.
  rm -rf "$dir/src" && mkdir -p "$dir/src"
  (cd "$root" && git ls-files -z --cached --others --exclude-standard |
     xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
     tar --null -T - -cf -) | tar -xf - -C "$dir/src"
  mkdir -p "$cache"
  mount_in "$dir/proc" -t proc proc
  mount_in "$dir/sys" --bind /sys
  mount_in "$dir/dev" --bind /dev
  mount_in "$dir/dev/pts" --bind /dev/pts
  mount_in "$dir/dev/shm" -t tmpfs -o mode=1777 tmpfs
  mount_in "$dir/root/.cache/ccache" --bind "$cache"
  local status=0
  # A clean environment: the host's PATH (a pyenv, say) means nothing inside the root.
  env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
      CI="${CI:-}" SAVEPOINT_QUICK=1 SAVEPOINT_BUILD_DIR=/build \
      chroot "$dir" /bin/bash -c '
        set -euo pipefail
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get -y -qq upgrade >/dev/null
        cd /src && bash scripts/test.sh' || status=$?
  unmount_all
  if [ $status -ne 0 ]; then echo "platform $name: FAILED (exit code $status)"; fi
  return $status
}

[ $# -gt 0 ] || { echo "usage: platforms.sh debian12|debian13|unstable ..." >&2; exit 2; }
failed=0
for name in "$@"; do
  echo "=== platform $name"
  run_stage "$name" || failed=1
done
exit $failed
