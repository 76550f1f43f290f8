#!/usr/bin/env bash
# A one-host Slurm cluster (controller + one node on this machine) for testing `ablate --backend
# slurm`: no systemd, no cgroups, no slurmdbd. Needs root and Debian's slurm-wlm and munge
# (scripts/setup.sh installs them).
#   scripts/slurm-local.sh start    write the config, start munged, slurmctld and slurmd, wait for an idle node
#   scripts/slurm-local.sh stop     stop the daemons this script started
#   scripts/slurm-local.sh status   sinfo and squeue
# State, spool and logs live under $SLURM_LOCAL_DIR (default /var/tmp/slmlab-slurm).
set -euo pipefail

dir="${SLURM_LOCAL_DIR:-/var/tmp/slmlab-slurm}"
conf=/etc/slurm/slurm.conf
host=$(hostname -s)
die() { echo "[slurm-local] error: $*" >&2; exit 1; }

write_conf() {
  mkdir -p "$dir"/{state,spool,log} /etc/slurm
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {m = int($2 / 1024 / 2); print (m > 4096 ? 4096 : m)}' /proc/meminfo)  # modest: half, at most 4 GiB
  if [[ -f "$conf" ]] && ! grep -q '^# written by slmlab scripts/slurm-local.sh' "$conf"; then
    die "$conf exists and was not written by this script; move it away first"
  fi
  cat >"$conf" <<EOF
# written by slmlab scripts/slurm-local.sh: one host, controller and node, for tests
# (addresses pinned to 127.0.0.1: a container's hostname need not resolve)
ClusterName=slmlab-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobRequeue=1
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=cred_expire=10
ReturnToService=2
KillWait=30
MinJobAge=300
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if ! munge -n </dev/null >/dev/null 2>&1; then
    if id munge >/dev/null 2>&1; then
      su -s /bin/sh munge -c munged || munged --force
    else
      munged --force
    fi
    for _ in $(seq 50); do munge -n </dev/null >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "munged does not answer (see /var/log/munge/munged.log)"
  fi
}

running() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  [[ $(id -u) -eq 0 ]] || die "needs root (slurmd runs jobs as their users)"
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null || die "slurm-wlm is not installed; run scripts/setup.sh"
  command -v munged >/dev/null || die "munge is not installed; run scripts/setup.sh"
  write_conf
  start_munge
  running "$dir/slurmctld.pid" || slurmctld || die "slurmctld did not start (see $dir/log/slurmctld.log)"
  running "$dir/slurmd.pid" || slurmd || die "slurmd did not start (see $dir/log/slurmd.log)"
  local state=""
  for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    if [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]]; then
      echo "[slurm-local] up: node $host ($state), $(nproc) CPUs, partition local; logs in $dir/log"
      return 0
    fi
    # a node left down by an earlier run comes back once the daemons answer
    [[ "$state" == down* || "$state" == drain* ]] && scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  die "node $host is not idle after 60 s (state '${state:-no answer}'); see $dir/log/slurmctld.log and slurmd.log"
}

stop() {
  for d in slurmd slurmctld; do
    if running "$dir/$d.pid"; then
      kill "$(cat "$dir/$d.pid")"
      for _ in $(seq 50); do running "$dir/$d.pid" || break; sleep 0.1; done
    fi
  done
  echo "[slurm-local] stopped (munged left running)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo && squeue ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
