#!/usr/bin/env bash
# A real single-host SLURM on localhost for tests and local use of the SLURM backend.
#
#   scripts/slurm-local.sh          install (if missing), configure and start; wait until usable
#   scripts/slurm-local.sh --stop   stop the daemons this script started
#   scripts/slurm-local.sh --status print whether it is running and usable (exit 0 if so)
#
# What it does: installs Debian's slurm-wlm and munge with apt-get when missing, writes a
# one-node slurm.conf (node = `hostname -s` at 127.0.0.1, partition `debug`, no accounting,
# linuxproc/none plugins so no cgroups or systemd are needed, and one fake GPU: gres `gpu:1`
# with /dev/null as its device file, so that `--gres gpu:1` submissions schedule and their tasks
# get CUDA_VISIBLE_DEVICES=0 as on a cluster, with no real GPU), creates the munge key, starts
# munged, slurmctld and slurmd directly (no systemd), and waits until `sinfo` shows the node
# idle and a tiny `srun` runs. Every state, spool, log and pid file lives under
# $RANKSWEEP_SLURM_DIR (default /tmp/ranksweep-slurm); the config is installed at
# /etc/slurm/slurm.conf so that plain `sbatch`/`squeue` find it, but only if that file is absent
# or was written by this script (a marker line says so).
#
# Idempotent: when everything is already running and usable, it only checks and exits 0.
# Exit status: 0 usable, 1 could not start (the reason and log tails are printed on stderr).
# Must run as root (it installs packages and runs the daemons as root: SlurmUser=root).
set -euo pipefail

DIR=${RANKSWEEP_SLURM_DIR:-/tmp/ranksweep-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by ranksweep scripts/slurm-local.sh"
WAIT_S=${RANKSWEEP_SLURM_WAIT_S:-60}
MUNGE_SOCKET=/run/munge/munge.socket.2
MUNGE_KEY=/etc/munge/munge.key
# munged runs as user munge, so its pid file lives in its own run folder.
MUNGE_PID=/run/munge/munged.pid
SHOW_LOGS=0 # set once the daemons have been started: their logs then explain a failure

log() { printf 'slurm-local: %s\n' "$*" >&2; }

die() {
    log "error: $*"
    ((SHOW_LOGS)) || exit 1
    for f in "$DIR/log/munged.log" "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log"; do
        if [[ -s $f ]]; then
            printf -- '--- last lines of %s ---\n' "$f" >&2
            tail -n 15 "$f" >&2
        fi
    done
    exit 1
}

# True when pid file $1 names a live process whose name is the file's stem (slurmd, …): a
# stale pid file (daemons killed with the machine's session) may name a reused pid.
pid_alive() {
    local pid name
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    name=$(basename "$1" .pid)
    [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

# True when the node answers and is usable (idle, mixed or allocated).
node_ready() {
    local state
    state=$(timeout 10 sinfo -h -N -p debug -o '%T' 2>/dev/null | head -n 1) || return 1
    case $state in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

# A test cluster's node left drained or down (e.g. "Kill task failed" after a job whose
# processes outlived it) is put back into service, saying why it was out.
resume_if_drained() {
    local host state reason
    host=$(hostname -s)
    state=$(timeout 10 sinfo -h -N -n "$host" -o '%T' 2>/dev/null | head -n 1) || return 0
    case $state in
        drain* | down* | fail*)
            reason=$(timeout 10 sinfo -h -N -n "$host" -o '%E' 2>/dev/null | head -n 1) || true
            log "node $host is $state ($reason): resuming it"
            scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
            sleep 1
            ;;
    esac
}

# A tiny job really runs: the controller schedules it and slurmd starts it.
job_runs() {
    local out
    out=$(timeout 60 srun -N1 -n1 -t 1 --quiet echo ranksweep-slurm-ok 2>&1) || {
        log "srun failed: $out"
        return 1
    }
    [[ $out == *ranksweep-slurm-ok* ]] || {
        log "srun printed: $out"
        return 1
    }
}

stop_daemon() { # name pidfile
    local pid i
    pid_alive "$2" || return 0
    pid=$(<"$2")
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$2"; log "stopped $1 ($pid)"; return 0; }
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$2"
    log "killed $1 ($pid) after 10 s"
}

do_stop() {
    stop_daemon slurmd "$DIR/run/slurmd.pid"
    stop_daemon slurmctld "$DIR/run/slurmctld.pid"
    # Only a munged this script started: a system one may serve other programs.
    if [[ -e $DIR/run/munged.started ]]; then
        stop_daemon munged "$MUNGE_PID"
        rm -f "$DIR/run/munged.started"
    fi
}

do_status() {
    if pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" && node_ready; then
        sinfo -N -l
        exit 0
    fi
    log "not running (or the node is not idle)"
    exit 1
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    # slurm-wlm is the meta package for slurmctld + slurmd + slurm-client; name the parts so a
    # partial install is completed too.
    apt-get install -y -qq --no-install-recommends slurm-wlm "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

# Node line from `slurmd -C` (the real sockets/cores/threads/memory, so the node never registers
# as INVALID), renamed to `hostname -s` and pinned to 127.0.0.1.
node_line() {
    local host detected
    host=$(hostname -s)
    detected=$(slurmd -C 2>/dev/null | head -n 1) || true
    [[ $detected == NodeName=* ]] || die "slurmd -C printed no node line: $detected"
    # Drop the NodeName= field; keep CPUs, Boards, SocketsPerBoard, ..., RealMemory.
    detected=${detected#NodeName=* }
    printf 'NodeName=%s NodeAddr=127.0.0.1 %s Gres=gpu:1 State=UNKNOWN\n' "$host" "$detected"
}

write_config() {
    local node cpus mem defmem tmp
    node=$(node_line)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    mem=$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    [[ -n $cpus && -n $mem ]] || die "could not read CPUs/RealMemory from: $node"
    # Jobs without --mem get a share per CPU, so memory never serializes small jobs.
    defmem=$((mem / cpus))
    ((defmem > 1024)) && defmem=1024
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
$MARKER
# One-node cluster on localhost; state under $DIR. Regenerated on each start.
ClusterName=ranksweep
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
# linuxproc finds a job's processes through /proc/PID/stat and (SLURM 22.05) misreads a process
# whose name holds a space: such a process, and its children, escape scancel and the time limit,
# and the node drains with "Kill task failed". Programs run as jobs need names without spaces.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MaxArraySize=1001
# One fake GPU (gres.conf: /dev/null as its device; a file-less count registers as 0 GPUs).
GresTypes=gpu
ReturnToService=2
# Short kill grace (scancel, --time) and a quick requeue keep tests short.
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$node
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mkdir -p /etc/slurm
    if [[ -e $CONF ]] && ! grep -qxF "$MARKER" "$CONF"; then
        rm -f "$tmp"
        die "$CONF exists and was not written by this script; move it away first"
    fi
    install -m 0644 "$tmp" "$CONF"
    rm -f "$tmp"
    if [[ -e /etc/slurm/gres.conf ]] && ! grep -qxF "$MARKER" /etc/slurm/gres.conf; then
        die "/etc/slurm/gres.conf exists and was not written by this script; move it away first"
    fi
    printf '%s\nName=gpu File=/dev/null Count=1\n' "$MARKER" >"$tmp.gres"
    install -m 0644 "$tmp.gres" /etc/slurm/gres.conf
    rm -f "$tmp.gres"
}

start_munge() {
    if [[ -S $MUNGE_SOCKET ]] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0 # a munged (ours or the system's) already answers
    fi
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating $MUNGE_KEY"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
    fi
    # munged insists on its key and dirs belonging to the user it runs as (munge).
    chown munge:munge "$MUNGE_KEY" /etc/munge
    chmod 0400 "$MUNGE_KEY"
    chmod 0700 /etc/munge
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    touch "$DIR/log/munged.log"
    chown munge:munge "$DIR/log/munged.log"
    SHOW_LOGS=1
    runuser -u munge -- munged --log-file="$DIR/log/munged.log" --pid-file="$MUNGE_PID" \
        || die "munged did not start"
    touch "$DIR/run/munged.started"
    local i
    for ((i = 0; i < 50; i++)); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "munged started but munge/unmunge does not work"
}

do_start() {
    [[ $(id -u) == 0 ]] || die "must run as root (installs packages, runs slurmctld/slurmd)"
    install_packages
    mkdir -p "$DIR"/{state,spool,run,log}
    chmod 0755 "$DIR"

    # Already up and usable: nothing to do (do not rewrite the config under running daemons).
    pid_alive "$DIR/run/slurmctld.pid" && resume_if_drained
    if pid_alive "$DIR/run/slurmctld.pid" && pid_alive "$DIR/run/slurmd.pid" \
        && [[ -f $CONF ]] && grep -qxF "$MARKER" "$CONF" && node_ready; then
        log "already running ($(hostname -s) in partition debug)"
        exit 0
    fi

    local t0=$SECONDS
    # A half-started set (one daemon died): restart both SLURM daemons cleanly.
    stop_daemon slurmd "$DIR/run/slurmd.pid"
    stop_daemon slurmctld "$DIR/run/slurmctld.pid"
    write_config
    start_munge
    SHOW_LOGS=1
    slurmctld || die "slurmctld did not start"
    slurmd || die "slurmd did not start"

    local i
    for ((i = 0; i < WAIT_S * 2; i++)); do
        node_ready && break
        ((i % 10 == 5)) && resume_if_drained
        pid_alive "$DIR/run/slurmctld.pid" || { sleep 1; pid_alive "$DIR/run/slurmctld.pid" || die "slurmctld exited"; }
        sleep 0.5
    done
    node_ready || {
        sinfo -N -l >&2 || true
        die "node $(hostname -s) not idle after ${WAIT_S} s"
    }
    job_runs || die "a test job (srun -N1 echo) did not run"
    log "ready in $((SECONDS - t0)) s: node $(hostname -s), partition debug, logs in $DIR/log"
}

case ${1:-} in
    "") do_start ;;
    --stop) do_stop ;;
    --status) do_status ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' ;;
    *)
        log "unknown argument: $1 (expected --stop, --status or nothing)"
        exit 2
        ;;
esac
