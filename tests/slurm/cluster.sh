#!/usr/bin/env bash
# A real one-node Slurm cluster with accounting (slurmdbd + MariaDB) on this machine, for tests.
#   tests/slurm/cluster.sh install   # Debian packages (needs root and the package registry)
#   tests/slurm/cluster.sh start     # munged, MariaDB, slurmdbd, slurmctld, slurmd; waits for `idle`
#   tests/slurm/cluster.sh stop      # cancels jobs, stops every daemon (by pid file)
#   tests/slurm/cluster.sh status
# Facts it relies on: ../shared/notes/slurm-test-cluster.md. The node declares 4 CPUs on a 2-core
# machine (config_overrides), so a serial job and a 2-rank DDP job can run side by side.
set -euo pipefail

HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
LOG=/var/log/slurm
CPUS=${HPCBENCH_CI_SLURM_CPUS:-4}

install_packages() {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        munge slurmctld slurmd slurm-client slurm-wlm-basic-plugins libpmix-dev slurmdbd mariadb-server >/dev/null
}

write_configs() {
    local memory
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    install -d /run/slurm "$LOG" /var/spool/slurmctld /var/spool/slurmd /etc/slurm
    cat >"$CONF" <<EOF
ClusterName=ci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG}/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=${LOG}/slurmctld.log
SlurmdLogFile=${LOG}/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=${HOST} NodeAddr=127.0.0.1 NodeHostname=${HOST} CPUs=${CPUS} Boards=1 SocketsPerBoard=1 CoresPerSocket=${CPUS} ThreadsPerCore=1 RealMemory=${memory} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    cat >"$DBD_CONF" <<EOF
AuthType=auth/munge
DbdHost=${HOST}
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=/run/slurm/slurmdbd.pid
LogFile=${LOG}/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DBD_CONF"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$((seconds * 2))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "cluster.sh: $what did not come up in ${seconds}s" >&2
    return 1
}

start_mariadb() {
    install -d -o mysql -g mysql /run/mysqld
    if ! mysqladmin ping >/dev/null 2>&1; then
        setsid mysqld_safe --user=mysql --bind-address=127.0.0.1 >/dev/null 2>&1 < /dev/null &
        wait_for 60 MariaDB mysqladmin ping
    fi
    mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
              CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
              FLUSH PRIVILEGES;"
}

start() {
    command -v slurmctld >/dev/null || install_packages
    install -d -o munge -g munge -m 0755 /run/munge
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    wait_for 10 munge sh -c 'munge -n | unmunge'
    write_configs
    start_mariadb
    pgrep -x slurmdbd >/dev/null || slurmdbd
    wait_for 30 slurmdbd sacctmgr -n show cluster
    sacctmgr -i add cluster ci >/dev/null 2>&1 || true
    pgrep -x slurmctld >/dev/null || slurmctld -i
    wait_for 30 slurmctld scontrol ping
    pgrep -x slurmd >/dev/null || slurmd -N "$HOST"
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    wait_for 60 "node ${HOST} (idle)" sh -c "sinfo -h -n $HOST -o %t | grep -q idle"
    sinfo
}

kill_pidfile() {  # kill_pidfile FILE NAME
    local pid
    if [ -f "$1" ] && pid=$(cat "$1") && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 20); do
            grep -qs '^[^ ]* ([^)]*) [^Z]' "/proc/$pid/stat" || return 0  # gone or a zombie
            sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true  # slurmd may ignore SIGTERM without its controller
    fi
    pkill -9 -x "$2" 2>/dev/null || true
}

stop() {
    scancel --full --user=root >/dev/null 2>&1 || true
    kill_pidfile /run/slurm/slurmd.pid slurmd
    kill_pidfile /run/slurm/slurmctld.pid slurmctld
    kill_pidfile /run/slurm/slurmdbd.pid slurmdbd
    mysqladmin shutdown >/dev/null 2>&1 || true
    pkill -x munged 2>/dev/null || true
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) stop ;;
    status) sinfo && squeue ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
