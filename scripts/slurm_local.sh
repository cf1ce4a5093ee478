#!/usr/bin/env bash
# Install and start a single-node SLURM cluster on localhost (idempotent).
#
#   scripts/slurm_local.sh          install if needed, start, wait until the node is idle
#   scripts/slurm_local.sh stop     stop slurmd, slurmctld, slurmdbd, our mariadbd, munged
#
# Needs root. No systemd is assumed: every daemon is started directly.
# Accounting (slurmdbd on a local MariaDB) is included because submitit polls
# job states with `sacct`: without it job.state is always UNKNOWN and a job
# that dies without writing its result makes job.result() wait forever.
set -euo pipefail

LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}
MYSQL_PID=/run/mysqld/mariadbd.pid   # only a mariadbd that we started (Debian's is mysqld.pid)
PIDS=("$RUN_DIR/slurmd.pid" "$RUN_DIR/slurmctld.pid" "$RUN_DIR/slurmdbd.pid" "$MYSQL_PID" /run/munge/munged.pid)

log() { echo "slurm_local: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }

# Is the daemon of pid file DIR/NAME.pid alive? (Its command must be NAME, so a
# stale pid file whose pid was reused by another process does not count.)
alive() { local pid; pid=$(cat "$1" 2>/dev/null) && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(basename "$1" .pid)" ]; }
# Kill the process in a pid file, if alive, and wait (<= 20 s) for it to exit.
stop_pidfile() {
    alive "$1" || { rm -f "$1"; return 0; }
    local pid; pid=$(cat "$1"); kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    rm -f "$1"
}
# retry SECONDS CMD...: run CMD until it succeeds, for at most SECONDS.
retry() { local end=$(( SECONDS + $1 )); shift; until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || return 1; sleep 0.5; done; }
node_state() { sinfo -h -n localhost -o %t 2>/dev/null | head -n1; }
fail() {
    log "$*"
    for f in "$LOG_DIR"/*.log /var/log/munge/munged.log; do
        [ -f "$f" ] && { echo "--- tail $f" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

case "${1:-start}" in
    stop) for p in "${PIDS[@]}"; do stop_pidfile "$p"; done; echo "slurm: stopped"; exit 0 ;;
    start) ;;
    *) log "usage: $0 [start|stop]"; exit 2 ;;
esac

cpus=$(nproc)
total_mb=$(free -m | awk '/^Mem:/ {print $2}')
# slurmd marks the node invalid if RealMemory exceeds what it sees; keep a margin.
mem_mb=$(( total_mb - (total_mb / 10 > 512 ? total_mb / 10 : 512) ))
slurm_conf="# Written by scripts/slurm_local.sh: single-node cluster on localhost.
ClusterName=sasft
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Default 120 s; it is also how long a requeued job waits before it may start again.
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups: plain process tracking, no containment (--mem is not enforced).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Jobs that ask for no memory would otherwise get the whole node.
DefMemPerCPU=1024
ReturnToService=2
# Batch jobs may be requeued (scontrol requeue; submitit on timeout/preemption).
JobRequeue=1
SlurmdTimeout=30
KillWait=5
NodeName=localhost CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
conf_same() { [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" = "$slurm_conf" ]; }

# Fast path: everything up, on this config, and the node usable. (MariaDB
# counts as up when it answers, whoever started it.)
up=1; for p in "${PIDS[@]}"; do [ "$p" = "$MYSQL_PID" ] || alive "$p" || up=; done
if [ -n "$up" ] && mariadb-admin ping >/dev/null 2>&1 && conf_same && [[ "$(node_state)" =~ ^(idle|mix|alloc) ]]; then
    echo "slurm: already up (localhost, $cpus CPUs, $mem_mb MB)"; exit 0
fi

# --- install ---------------------------------------------------------------
pkgs=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
missing=; for c in sinfo sacct slurmctld slurmd slurmdbd munged mariadbd; do command -v $c >/dev/null || missing=1; done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' postinst from starting daemons through invoke-rc.d
    # (no config yet, no systemd); Docker images usually ship this already.
    policy=/usr/sbin/policy-rc.d; made_policy=
    [ -e $policy ] || { printf '#!/bin/sh\nexit 101\n' >$policy; chmod 755 $policy; made_policy=1; }
    apt-cache show slurmd >/dev/null 2>&1 || apt-get update -q   # no lists yet
    # A failure may come from stale lists: update once and retry.
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" \
        || { apt-get update -q && apt-get install -y -q --no-install-recommends "${pkgs[@]}"; }
    [ -z "$made_policy" ] || rm -f $policy
fi

mkdir -p /etc/slurm "$LOG_DIR" "$RUN_DIR" /var/spool/slurmctld /var/spool/slurmd
changed=; conf_same || { changed=1; printf '%s\n' "$slurm_conf" >/etc/slurm/slurm.conf; }
cat >/etc/slurm/slurmdbd.conf <<EOF
# Written by scripts/slurm_local.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
chmod 600 /etc/slurm/slurmdbd.conf   # slurmdbd refuses a readable one

# --- munge -----------------------------------------------------------------
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown munge:munge /etc/munge/munge.key /var/lib/munge /var/log/munge /run/munge
chmod 400 /etc/munge/munge.key
chmod 755 /run/munge   # clients (sbatch, slurmd) must reach the socket
if ! alive /run/munge/munged.pid; then
    rm -f /run/munge/munge.socket.2*   # a stale socket/lock makes munged refuse to start
    runuser -u munge -- munged
fi
retry 10 sh -c 'munge -n | unmunge' || fail "munged did not come up"

# --- MariaDB + slurmdbd (accounting) ----------------------------------------
# Use a MariaDB already answering on the default socket; else start our own,
# without a TCP listener. root connects through unix_socket auth: no password.
if ! mariadb-admin ping >/dev/null 2>&1; then
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
    mkdir -p /run/mysqld; chown mysql:mysql /run/mysqld
    setsid mariadbd --user=mysql --skip-networking --innodb-lock-wait-timeout=900 \
        --pid-file="$MYSQL_PID" </dev/null >>"$LOG_DIR/mariadb.log" 2>&1 &
    retry 30 mariadb-admin ping || fail "mariadb did not come up"
fi
alive "$RUN_DIR/slurmdbd.pid" || slurmdbd
retry 30 sacctmgr -n list cluster || fail "slurmdbd did not come up"
sacctmgr -n -P list cluster format=cluster | grep -qx sasft || sacctmgr -i add cluster sasft >/dev/null

# --- slurmctld + slurmd ----------------------------------------------------
# Restart both if either is down or the config changed (jobs survive in the saved state).
if [ -n "$changed" ] || ! alive "$RUN_DIR/slurmctld.pid" || ! alive "$RUN_DIR/slurmd.pid"; then
    stop_pidfile "$RUN_DIR/slurmd.pid"; stop_pidfile "$RUN_DIR/slurmctld.pid"
    slurmctld
    slurmd -N localhost   # the node is "localhost" whatever the hostname is
fi

deadline=$(( SECONDS + WAIT_S ))
while :; do
    state=$(node_state || true)
    case "$state" in
        idle*|mix*|alloc*) break ;;
        down*|drain*|drng*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
    esac
    [ $SECONDS -lt $deadline ] || fail "node not idle after ${WAIT_S}s (state: '${state:-none}')"
    sleep 1
done
echo "slurm: up (localhost, $cpus CPUs, $mem_mb MB)"
