#!/usr/bin/env bash
# Start or stop a single-node SLURM cluster on this machine (for tests and CI).
#
#   slurm/local_cluster.sh start [DIR]   # then: export SLURM_CONF=DIR/slurm.conf
#   slurm/local_cluster.sh stop [DIR]
#
# Needs Debian's slurm-wlm and munge packages (`apt-get install slurm-wlm munge`) and root.
# The cluster has one node (this host, all its CPUs) and one partition, "debug". State,
# spool and logs live in DIR (default /tmp/cosmosbi-slurm).
set -euo pipefail

action=${1:-}
dir=${2:-/tmp/cosmosbi-slurm}
host=$(hostname -s)
conf="$dir/slurm.conf"

stop() {
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
        if [ -f "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
}

start() {
    for tool in munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || { echo "local_cluster: $tool not found; install slurm-wlm and munge" >&2; exit 1; }
    done
    stop
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        runuser -u munge -- munged --force
        sleep 1
    fi
    cat > "$conf" <<EOF
ClusterName=cosmosbi
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
JobCompType=jobcomp/none
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
Waittime=0
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    slurmctld -f "$conf"
    slurmd -f "$conf"
    for _ in $(seq 60); do
        if SLURM_CONF="$conf" sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "local_cluster: SLURM is up; export SLURM_CONF=$conf"
            return 0
        fi
        sleep 1
    done
    echo "local_cluster: SLURM did not come up; logs in $dir/log" >&2
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    exit 1
}

case "$action" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;;
esac
