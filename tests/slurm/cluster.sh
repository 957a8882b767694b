#!/usr/bin/env bash
# A real single-node SLURM cluster for tests (tests/test_slurm.py), started by hand without systemd.
#
#   tests/slurm/cluster.sh start [DIR]   install slurm-wlm + munge if missing, write the configuration
#                                        into DIR (default: a new temporary folder), start munged,
#                                        slurmctld and slurmd, wait until the node is idle, and print
#                                        `export SLURM_CONF=DIR/slurm.conf` (also linked from
#                                        /etc/slurm/slurm.conf while it runs, see below)
#   tests/slurm/cluster.sh stop DIR      stop every daemon started by `start DIR`, by its PID file,
#                                        and remove the /etc/slurm/slurm.conf link (see below)
#
# Needs root and apt-get (Debian 12: slurm-wlm 22.05). One node `localhost` with every CPU, 80 % of the
# free memory and 4 fake GPUs (gres over empty files in DIR: `--gpus=N` schedules, nothing is behind them),
# one partition `ci`. No slurmdbd: job status comes from squeue (the test profile sets
# `slurm-status-command: squeue`), and MinJobAge keeps finished jobs visible to `squeue --states=all`
# for an hour. Daemons that were already running (a munged of the host) are used and left alone.
# Facts behind each line: ../shared/reference/slurm-single-node.md.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
GPUS=4

log() { echo "cluster.sh: $*" >&2; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2
  shift 2
  for _ in $(seq "$((limit * 4))"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  log "timed out after ${limit} s waiting for $what"
  return 1
}

stop_pid_file() { # stop_pid_file FILE NAME: TERM, then KILL after 10 s, the process named in FILE
  local file=$1 name=$2 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) did not stop on TERM: KILL"
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return 0
  fi
  command -v apt-get >/dev/null || { log "slurm-wlm is not installed and there is no apt-get"; exit 2; }
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq slurm-wlm munge >&2
}

write_config() {
  local cpus mem
  cpus=$(nproc)
  mem=$(free -m | awk '/^Mem:/ {print int($7 * 0.8)}')
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  cat >"$dir/slurm.conf" <<EOF
ClusterName=ci
SlurmctldHost=localhost
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=3600
SchedulerParameters=sched_interval=1
GresTypes=gpu
NodeName=localhost CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=ci Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  # gres.conf sits beside slurm.conf; the "GPUs" are empty files: schedulable, nothing behind them
  local i
  for i in $(seq 0 $((GPUS - 1))); do : >"$dir/fakegpu$i"; done
  echo "NodeName=localhost Name=gpu File=$dir/fakegpu[0-$((GPUS - 1))]" >"$dir/gres.conf"
}

# The SLURM plugin runs each job's command through a nested srun with every SLURM_* variable removed
# (snakemake-executor-plugin-slurm-jobstep), SLURM_CONF included: srun then reads the system path.
# Link it to DIR's file while the cluster runs; a real SLURM configuration of the host is never touched.
SYSTEM_CONF=/etc/slurm/slurm.conf

link_system_config() {
  if [ -e "$SYSTEM_CONF" ] || [ -L "$SYSTEM_CONF" ]; then
    local target
    target=$(readlink "$SYSTEM_CONF" || true)
    if [ -z "$target" ] || { [ -e "$target" ] && [ "$target" != "$dir/slurm.conf" ]; }; then
      log "$SYSTEM_CONF exists (this host has its own SLURM configuration): not replacing it"
      exit 3
    fi
    rm -f "$SYSTEM_CONF" # a link left by an earlier test cluster whose folder is gone
  fi
  mkdir -p "$(dirname "$SYSTEM_CONF")"
  ln -s "$dir/slurm.conf" "$SYSTEM_CONF"
}

unlink_system_config() {
  if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$dir/slurm.conf" ]; then
    rm -f "$SYSTEM_CONF"
  fi
}

start() {
  [ "$(id -u)" = 0 ] || { log "needs root (starts slurmctld and slurmd)"; exit 2; }
  install_packages
  if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/rspo-slurm.XXXXXX); fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  write_config
  export SLURM_CONF=$dir/slurm.conf

  # munge: reuse a running munged (e.g. the host's); else start one and remember it in DIR
  if ! (munge -n | unmunge) >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
    install -d -o munge -g munge /run/munge
    # munged (user munge) writes its PID file where it may (DIR can be private to root); copied into DIR
    runuser -u munge -- munged --pid-file=/run/munge/munged.rspo-test.pid
    wait_for 20 munged sh -c 'munge -n | unmunge'
    cp /run/munge/munged.rspo-test.pid "$dir/munged.pid"
  fi

  link_system_config

  slurmctld -f "$SLURM_CONF"
  wait_for 30 slurmctld scontrol ping
  slurmd -f "$SLURM_CONF" -N localhost
  if ! wait_for 60 "the node to become idle" sh -c '[ "$(sinfo -h -o %T)" = idle ]'; then
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    stop
    exit 1
  fi
  log "cluster up in $dir ($(sinfo -h -o '%P %D %c CPUs %m MB %G %T'))"
  echo "export SLURM_CONF=$SLURM_CONF"
}

stop() {
  [ -n "$dir" ] || { log "usage: $0 stop DIR"; exit 2; }
  stop_pid_file "$dir/slurmd.pid" slurmd
  stop_pid_file "$dir/slurmctld.pid" slurmctld
  stop_pid_file "$dir/munged.pid" munged
  rm -f /run/munge/munged.rspo-test.pid
  unlink_system_config
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start [DIR] | stop DIR" >&2; exit 2 ;;
esac
