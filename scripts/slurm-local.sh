#!/usr/bin/env bash
# slurm-local.sh -- start/stop a throw-away single-node Slurm cluster for tests.
#
# Usage:
#   scripts/slurm-local.sh start DIR   # DIR must be an absolute path
#   scripts/slurm-local.sh stop  DIR
#
# `start` creates DIR (config, state, spool, logs, fake GPUs), starts munged if
# it is not already running, starts `slurmctld -D` and `slurmd -D` in the
# background (pids in DIR/slurmctld.pid and DIR/slurmd.pid, logs in
# DIR/slurmctld.log and DIR/slurmd.log; raw stderr in DIR/*.out), waits until
# the controller answers and the node is idle (~1 s; up to 30 s), and prints
# as its ONLY/LAST line on stdout (messages go to stderr):
#
#   export SLURM_CONF=DIR/slurm.conf
#
# Clients (sbatch, squeue, scancel, scontrol, sinfo) only need that variable.
# Typical use:   eval "$(scripts/slurm-local.sh start /tmp/slurm | tail -n1)"
#
# The cluster:
#   * one node named `hostname -s`, CPUs=8 (more than the hardware; accepted
#     thanks to SlurmdParameters=config_overrides), Gres=gpu:4 backed by fake
#     device files DIR/dev/nvidia0..3 (symlinks to /dev/null), so
#     `--gres=gpu:1` jobs get CUDA_VISIBLE_DEVICES / SLURM_JOB_GPUS;
#   * one default partition `local`, no accounting (no sacct), no cgroups;
#   * ports 16817 (slurmctld) and 16818 (slurmd), so a system Slurm on the
#     default ports 6817/6818 is not disturbed;
#   * fresh state on each start (StateSaveLocation is wiped: job ids restart);
#   * finished jobs stay visible in squeue/scontrol for MinJobAge=300 s (purge
#     runs periodically: observed 300-350 s); after that `squeue -j ID` and
#     `scontrol show job ID` exit 1 with "Invalid job id specified".
#
# `stop` cancels all jobs still in the cluster (waits up to ~10 s for them to
# end), then kills the daemons recorded in DIR/*.pid and waits for them to exit
# (SIGKILL after ~15 s). munged is left running. The daemons run in their own
# session (setsid), so they outlive the caller: always call `stop`.
#
# Requires the Debian packages slurmctld slurmd slurm-client munge; this
# script never installs anything (it fails, naming the missing command).
# Must run as root (daemons run as root, munged as the munge user).
set -euo pipefail

CTLD_PORT=16817
SLURMD_PORT=16818
START_TIMEOUT=30

die() { echo "slurm-local.sh: error: $*" >&2; exit 1; }
log() { echo "slurm-local.sh: $*" >&2; }

usage() {
    echo "usage: $0 {start|stop} DIR   (DIR: absolute path)" >&2
    exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
DIR=$2
case "$DIR" in
    /*) ;;
    *) die "DIR must be an absolute path, got '$DIR'" ;;
esac
DIR=${DIR%/}
[ -n "$DIR" ] || die "refusing to use / as DIR"

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Stop the daemon whose pid is in DIR/$1.pid, if any; wait for it to exit.
stop_daemon() {
    local name=$1 pidfile="$DIR/$1.pid" pid i
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if pid_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        if pid_alive "$pid"; then
            log "$name (pid $pid) did not exit after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                pid_alive "$pid" || break
                sleep 0.1
            done
        fi
        pid_alive "$pid" && die "$name (pid $pid) is still running"
    fi
    rm -f "$pidfile"
}

# Cancel every job still known to the controller and give the job steps a
# moment to die; otherwise slurmstepd and the job scripts (which are not
# children of slurmd) would outlive the cluster.
cancel_jobs() {
    local pid i
    pid=$(cat "$DIR/slurmctld.pid" 2>/dev/null || true)
    pid_alive "$pid" || return 0
    [ -f "$DIR/slurm.conf" ] || return 0
    command -v scancel >/dev/null 2>&1 || return 0
    export SLURM_CONF="$DIR/slurm.conf"
    timeout 10 scancel --partition=local >/dev/null 2>&1 || true
    for ((i = 0; i < 100; i++)); do
        [ -z "$(timeout 5 squeue -h -t PD,R,CG,S -o %i 2>/dev/null || true)" ] && break
        sleep 0.1
    done
}

do_stop() {
    cancel_jobs
    # slurmd first so it does not log errors about a vanished controller for long.
    stop_daemon slurmd
    stop_daemon slurmctld
}

require_cmds() {
    local c missing=()
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || missing+=("$c")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        die "required command(s) not found: ${missing[*]} (install the Debian packages: slurmctld slurmd slurm-client munge)"
    fi
}

ensure_munged() {
    # Already running and usable?
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    [ -r /etc/munge/munge.key ] || die "/etc/munge/munge.key missing (reinstall the munge package or run mungekey)"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    # Plain first; if that fails (e.g. a stale socket/pid file left by a dead
    # munged), retry with --force.
    local args
    for args in "" "--force"; do
        if command -v runuser >/dev/null 2>&1; then
            runuser -u munge -- munged $args </dev/null >/dev/null 2>&1 && break
        else
            su -s /bin/sh munge -c "munged $args" </dev/null >/dev/null 2>&1 && break
        fi
    done
    local i
    for ((i = 0; i < 50; i++)); do
        if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    die "munged did not come up (see /var/log/munge/munged.log)"
}

write_config() {
    local node=$1
    mkdir -p "$DIR" "$DIR/dev" "$DIR/state" "$DIR/spool" "$DIR/run"
    local i
    for i in 0 1 2 3; do
        ln -sfn /dev/null "$DIR/dev/nvidia$i"
    done

    cat >"$DIR/slurm.conf" <<EOF
# Generated by scripts/slurm-local.sh -- single-node test cluster.
ClusterName=local
SlurmctldHost=${node}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=${DIR}/run/slurmctld.pid
SlurmdPidFile=${DIR}/run/slurmd.pid
SlurmctldLogFile=${DIR}/slurmctld.log
SlurmdLogFile=${DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=5
SlurmdTimeout=60
SlurmctldTimeout=60
InactiveLimit=0
GresTypes=gpu
NodeName=${node} NodeAddr=127.0.0.1 CPUs=8 RealMemory=1000 Gres=gpu:4 State=UNKNOWN
PartitionName=local Nodes=${node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

    cat >"$DIR/gres.conf" <<EOF
# Generated by scripts/slurm-local.sh -- fake GPUs (symlinks to /dev/null).
AutoDetect=off
NodeName=${node} Name=gpu File=${DIR}/dev/nvidia[0-3]
EOF
}

do_start() {
    [ "$(id -u)" -eq 0 ] || die "must run as root"
    require_cmds slurmctld slurmd sbatch squeue scancel scontrol sinfo munged munge unmunge hostname

    local node
    node=$(hostname -s)
    [ -n "$node" ] || die "hostname -s returned nothing"

    # Restarting into an existing DIR: stop what we started there before.
    do_stop

    # Fresh cluster: wipe state (job-id counter, saved jobs/nodes) and spool.
    mkdir -p "$DIR"
    rm -rf "$DIR/state" "$DIR/spool" "$DIR/run"
    rm -f "$DIR/slurmctld.log" "$DIR/slurmd.log" "$DIR/slurmctld.out" "$DIR/slurmd.out"
    write_config "$node"

    ensure_munged

    export SLURM_CONF="$DIR/slurm.conf"

    # The daemons write DIR/<name>.log themselves (Slurm*LogFile); with -D they
    # echo the same lines to stderr, which goes to DIR/<name>.out (only useful
    # for errors before the log file is opened).
    setsid slurmctld -D -f "$DIR/slurm.conf" </dev/null >"$DIR/slurmctld.out" 2>&1 &
    echo $! >"$DIR/slurmctld.pid"
    setsid slurmd -D -f "$DIR/slurm.conf" -N "$node" </dev/null >"$DIR/slurmd.out" 2>&1 &
    echo $! >"$DIR/slurmd.pid"

    local deadline=$((SECONDS + START_TIMEOUT)) up=0 state=""
    while ((SECONDS < deadline)); do
        pid_alive "$(cat "$DIR/slurmctld.pid")" ||
            { tail -n 20 "$DIR/slurmctld.out" >&2 || true; do_stop; die "slurmctld exited during start-up (log: $DIR/slurmctld.log)"; }
        pid_alive "$(cat "$DIR/slurmd.pid")" ||
            { tail -n 20 "$DIR/slurmd.out" >&2 || true; do_stop; die "slurmd exited during start-up (log: $DIR/slurmd.log)"; }
        if [ $up -eq 0 ] && scontrol ping 2>/dev/null | grep -q 'is UP'; then
            up=1
        fi
        if [ $up -eq 1 ]; then
            state=$(sinfo -h -o %T 2>/dev/null | head -n1 || true)
            [ "$state" = "idle" ] && break
        fi
        sleep 0.2
    done
    if [ "$state" != "idle" ]; then
        log "cluster not ready after ${START_TIMEOUT}s (controller up=$up, node state='${state}')"
        tail -n 20 "$DIR/slurmctld.log" >&2 || true
        tail -n 20 "$DIR/slurmd.log" >&2 || true
        do_stop
        die "start failed (logs in $DIR)"
    fi
    log "cluster up: node $node, CPUs=8, gpu:4, ctld port $CTLD_PORT (logs in $DIR)"
    echo "export SLURM_CONF=$DIR/slurm.conf"
}

case "$cmd" in
    start) do_start ;;
    stop) do_stop ;;
    *) usage ;;
esac
