#!/usr/bin/env bash
# A one-machine SLURM cluster on 127.0.0.1, for tests (Debian's slurm-wlm and munge packages,
# run as root, no systemd, no cgroups):
#   bash scripts/slurm-cluster.sh start STATE_DIR   # munged, slurmctld, slurmd; waits for the node
#   . STATE_DIR/env.sh                              # SLURM_CONF for sbatch, srun, squeue, ...
#   bash scripts/slurm-cluster.sh stop STATE_DIR    # cancels the jobs, ends every daemon it started
# Everything (munge key and socket, slurm.conf, state, spool, logs, pid files) lives under
# STATE_DIR; nothing under /etc or /run is touched. The clients reach the private munged through
# `AuthInfo=socket=...` in the generated slurm.conf, so no environment variable but SLURM_CONF.
# The node is the local host name (NodeAddr 127.0.0.1) with CPUs=max(nproc, 8) declared
# (SlurmdParameters=config_overrides), so 2-4 tasks fit on a 2-core machine; partition "debug".
# start prints `slurm ready: <version> ...` and exits 0, or, where a daemon cannot run here,
# stops what it started, prints `skipped: <the daemon's last log line>` and exits 77.
# Every daemon carries SAVEPOINT_SLURM_STATE=STATE_DIR in its environment, inherited by the
# slurmstepd processes slurmd starts; stop ends those (and their jobs' processes) as well.
set -uo pipefail

usage() { echo "usage: $0 start|stop STATE_DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
case $action in start | stop) ;; *) usage ;; esac
if [ "$action" = stop ] && [ ! -d "$2" ]; then echo "slurm stopped: $2 (nothing there)"; exit 0; fi
mkdir -p "$2" || exit 2
state=$(cd "$2" && pwd)
ready_timeout=${SLURM_CLUSTER_TIMEOUT:-60}

conf=$state/slurm.conf
pids=$state/pids

# The pids of the processes whose environment names this state directory, and their descendants.
marked_pids() {
  local p all=()
  for p in /proc/[0-9]*; do
    grep -qzxF "SAVEPOINT_SLURM_STATE=$state" "$p/environ" 2>/dev/null && all+=("${p#/proc/}")
  done
  [ ${#all[@]} -gt 0 ] || return 0
  # and their descendants (a job's tasks run with the job's environment, not the daemon's)
  ps -e -o pid=,ppid= | awk -v roots="${all[*]}" -v self="$$" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      do {
        changed = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
      } while (changed)
      for (p in keep) if (p != self) print p
    }'
}

alive() { kill -0 "$1" 2>/dev/null; }

# kill_wait <seconds> <pid>...: SIGTERM, then SIGKILL to what remains after <seconds>.
kill_wait() {
  local secs=$1 p left i
  shift
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null
  for ((i = 0; i < secs * 10; i++)); do
    left=0
    for p in "$@"; do alive "$p" && left=1; done
    [ $left -eq 1 ] || return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null
  sleep 0.2
}

stop_cluster() {
  local name pid list=()
  unset SAVEPOINT_SLURM_STATE  # the commands run from here on must not carry the mark
  if [ -f "$conf" ] && [ -f "$pids" ] && grep -q '^slurmctld ' "$pids" &&
     alive "$(awk '$1 == "slurmctld" { print $2 }' "$pids")"; then
    # cancel every job (whoever submitted it), give them a few seconds to end cleanly
    SLURM_CONF=$conf timeout 10 squeue -h -o %i 2>/dev/null | SLURM_CONF=$conf xargs -r timeout 10 scancel >/dev/null 2>&1
    local i
    for ((i = 0; i < 20; i++)); do
      [ -z "$(SLURM_CONF=$conf timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  # the daemons, all at once (each takes a second or two to shut down)
  if [ -f "$pids" ]; then
    while read -r name pid; do
      case $name in slurmd | slurmctld | munged) ;; *) continue ;; esac
      # only a process that is still the one we started (its environment names our state)
      if alive "$pid" && grep -qzxF "SAVEPOINT_SLURM_STATE=$state" "/proc/$pid/environ" 2>/dev/null; then
        list+=("$pid")
      fi
    done <"$pids"
    kill_wait 10 "${list[@]}"
  fi
  # whatever else carries our mark: slurmstepd and the tasks below it
  list=()
  mapfile -t list < <(marked_pids)
  kill_wait 5 "${list[@]}"
  rm -f "$pids"
}

# The last non-empty line of a log file.
last_line() { [ -f "$1" ] && grep -v '^[[:space:]]*$' "$1" | tail -n 1; }

skip() {
  stop_cluster
  echo "skipped: $*"
  exit 77
}

port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

start_cluster() {
  local bin
  for bin in munged munge unmunge slurmctld slurmd sinfo scontrol sbatch srun squeue scancel ss; do
    command -v "$bin" >/dev/null 2>&1 ||
      { echo "skipped: $bin is not installed (apt-get install slurm-wlm munge)"; exit 77; }
  done
  [ "$(id -u)" -eq 0 ] || { echo "skipped: the cluster runs its daemons as root (SlurmUser=root); run as root"; exit 77; }
  stop_cluster  # a cluster left behind in this state directory

  export SAVEPOINT_SLURM_STATE=$state
  local m=$state/munge c=$state/ctld d=$state/d
  rm -rf "$m" "$c" "$d"
  mkdir -p "$m" "$c/state" "$d/spool"
  chmod 0711 "$m"  # the socket needs execute permission on its directory
  local socket=$m/munge.socket

  # munge: a private key and socket
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile="$m/munge.key" >/dev/null 2>&1 || true
  fi
  [ -s "$m/munge.key" ] || dd if=/dev/urandom of="$m/munge.key" bs=1024 count=1 status=none
  chmod 0400 "$m/munge.key"
  setsid munged --foreground --force --socket="$socket" --key-file="$m/munge.key" \
    --pid-file="$m/munged.pid" --log-file="$m/munged.log" --seed-file="$m/munged.seed" \
    </dev/null >"$m/munged.out" 2>&1 &
  echo "munged $!" >>"$pids"
  local munged_pid=$! deadline=$((SECONDS + 15))
  while [ $SECONDS -lt $deadline ]; do
    [ -S "$socket" ] && timeout 5 munge -n --socket="$socket" 2>/dev/null |
      timeout 5 unmunge --socket="$socket" >/dev/null 2>&1 && break
    alive "$munged_pid" || break
    sleep 0.1
  done
  if ! timeout 5 munge -n --socket="$socket" 2>/dev/null | timeout 5 unmunge --socket="$socket" >/dev/null 2>&1; then
    skip "munged: $(last_line "$m/munged.out" || last_line "$m/munged.log")"
  fi

  # ports on 127.0.0.1: two consecutive free ones, the first derived from our pid
  local port=$((20000 + ($$ * 7) % 30000)) tries
  for ((tries = 0; tries < 100; tries++)); do
    port_free "$port" && port_free $((port + 1)) && break
    port=$((20000 + (port - 20000 + 2) % 30000))
  done

  local host cpus version
  host=$(hostname -s 2>/dev/null)
  [[ $host =~ ^[A-Za-z0-9][A-Za-z0-9-]*$ ]] || host=localhost
  cpus=$(nproc)
  [ "$cpus" -ge 8 ] || cpus=8
  version=$(slurmctld -V 2>/dev/null | awk '{ print $NF }')

  cat >"$conf" <<EOF
# Written by scripts/slurm-cluster.sh: a one-node test cluster, everything under $state
ClusterName=sp$$
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also delays the restart of a requeued job (default 120 s)
AuthInfo=socket=$socket,cred_expire=${SLURM_CLUSTER_CRED_EXPIRE:-10}
StateSaveLocation=$c/state
SlurmctldPidFile=$c/slurmctld.pid
SlurmctldLogFile=$c/slurmctld.log
SlurmdSpoolDir=$d/spool
SlurmdPidFile=$d/slurmd.pid
SlurmdLogFile=$d/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups: process tracking by parent/child, no task binding, no accounting
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
# several jobs per node, CPUs counted (declared CPUs beyond the real ones are honoured)
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
# fast turnaround for tests
JobRequeue=1
# Job ids of their own per cluster: two clusters side by side (ctest -j) would both start at 1,
# and a job's default MASTER_PORT derives from its id (savepoint/launch.hpp: 15000 + id mod
# 20000, here 16000-19902, below the cluster's own ports, 20000 on).
FirstJobId=$(( 1000 + $$ % 3900 ))
# pending jobs whose BeginTime passed (a requeued job) start within a second or two
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
MinJobAge=5
KillWait=2
OverTimeLimit=0
InactiveLimit=0
WaitTime=0
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=10
UnkillableStepTimeout=60
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  # Slurm reads cgroup.conf beside slurm.conf. None of its plugins is configured; from 24.05 on
  # slurmd would still load one unless told CgroupPlugin=disabled (CgroupAutomount is defunct there).
  if [ "$(printf '%s\n' "$version" 24.05 | sort -V | head -n 1)" = 24.05 ]; then
    echo "CgroupPlugin=disabled" >"$state/cgroup.conf"
  else
    echo "CgroupAutomount=no" >"$state/cgroup.conf"
  fi
  printf '%s\n' ConstrainCores=no ConstrainRAMSpace=no ConstrainDevices=no >>"$state/cgroup.conf"
  export SLURM_CONF=$conf
  printf 'export SLURM_CONF=%q\n' "$conf" >"$state/env.sh"

  setsid slurmctld -D -i -f "$conf" </dev/null >"$c/slurmctld.out" 2>&1 &
  local ctld_pid=$!
  echo "slurmctld $ctld_pid" >>"$pids"
  deadline=$((SECONDS + ready_timeout))
  until timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; do
    alive "$ctld_pid" || skip "slurmctld: $(last_line "$c/slurmctld.log" || last_line "$c/slurmctld.out")"
    [ $SECONDS -lt $deadline ] ||
      skip "slurmctld not answering after ${ready_timeout}s: $(last_line "$c/slurmctld.log" || last_line "$c/slurmctld.out")"
    sleep 0.2
  done

  setsid slurmd -D -f "$conf" -N "$host" </dev/null >"$d/slurmd.out" 2>&1 &
  local slurmd_pid=$!
  echo "slurmd $slurmd_pid" >>"$pids"
  local st=
  while :; do
    st=$(timeout 5 sinfo -h -N -n "$host" -o %T 2>/dev/null | head -n 1)
    case $st in idle | idle\~ | mixed | allocated) break ;; esac
    alive "$slurmd_pid" || skip "slurmd: $(last_line "$d/slurmd.log" || last_line "$d/slurmd.out")"
    alive "$ctld_pid" || skip "slurmctld: $(last_line "$c/slurmctld.log" || last_line "$c/slurmctld.out")"
    [ $SECONDS -lt $deadline ] ||
      skip "node $host is '${st:-unknown}' after ${ready_timeout}s: $(last_line "$d/slurmd.log" || last_line "$d/slurmd.out")"
    sleep 0.2
  done
  echo "slurm ready: $version node=$host cpus=$cpus partition=debug ports=$port,$((port + 1)) conf=$conf"
  echo "export SLURM_CONF=$conf  # also in $state/env.sh"
}

case $action in
  start) start_cluster ;;
  stop) stop_cluster; echo "slurm stopped: $state" ;;
esac
