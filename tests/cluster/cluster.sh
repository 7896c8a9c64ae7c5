#!/usr/bin/env bash
# A real Slurm cluster of N test hosts on this one machine, for tests and for trying multi-node.
#   tests/cluster/cluster.sh install                     # Debian packages (root, the package registry)
#   tests/cluster/cluster.sh start [--hosts N] [--link RATE]
#   tests/cluster/cluster.sh stop                        # every daemon, namespace and the bridge
#   tests/cluster/cluster.sh status
#
# Each host is a Linux network namespace (node1 .. nodeN) on the bridge hpcbr0, with its own
# address (10.250.0.I), host name (a UTS namespace per slurmd) and hosts file; one slurmd per
# host (NodeName = nodeI, NodeAddr = its address). slurmctld, slurmdbd + MariaDB (real sacct) and
# munge run in the root namespace, which joins the bridge as 10.250.0.254. --link shapes every
# host's interface with tc's token bucket (e.g. 1gbit) to emulate an interconnect's bandwidth;
# this kernel has no netem, so added latency cannot be emulated here. Traffic stays on the bridge:
# only addresses of these namespaces are ever used. Each node declares 4 CPUs on the shared cores
# (config_overrides), so a serial job and a 2-rank job fit on one node side by side.
# Facts it relies on: ../shared/notes/multi-host-testing.md, ../shared/notes/slurm-test-cluster.md.
set -euo pipefail

CONTROLLER=$(hostname -s)
BRIDGE=hpcbr0
SUBNET=10.250.0
CONTROLLER_IP=$SUBNET.254
CPUS=${HPCBENCH_CLUSTER_CPUS:-4}
GPUS=2  # placeholder GPUs per host (make_gpu_placeholders)
STATE=/run/hpcbench-cluster
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
PMIX_CLI_DIR=/var/spool/pmix-cli  # each host's PMIx client directory (mpi.conf), a host's own mount
LOG=/var/log/slurm

install_packages() {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        munge slurmctld slurmd slurm-client slurm-wlm-basic-plugins libpmix-dev slurmdbd mariadb-server \
        iproute2 util-linux >/dev/null
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

hosts() { cat "$STATE/hosts" 2>/dev/null || echo 0; }

# What stop must remove: the hosts of the state file or, after a start that failed half-way
# (no state written yet), the node namespaces that are there.
hosts_to_remove() {
    local recorded seen
    recorded=$(hosts)
    seen=$(ip netns list 2>/dev/null | grep -c '^node[0-9]' || true)
    echo $((recorded > seen ? recorded : seen))
}

in_host() {  # in_host I COMMAND...: run COMMAND as host nodeI (its network, hosts file and host name)
    local host=node$1
    shift
    ip netns exec "$host" unshare --uts sh -c 'hostname "$0"; exec "$@"' "$host" "$@"
}

make_network() {  # make_network N RATE
    local n=$1 rate=$2 i j
    ip link add "$BRIDGE" type bridge
    # The root namespace's own address on the bridge: without it, 10.250.0.x would be routed
    # through the default route, off this machine.
    ip addr add "$CONTROLLER_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for i in $(seq "$n"); do
        ip netns add "node$i"
        ip link add "vb$i" type veth peer name eth0 netns "node$i"
        ip link set "vb$i" master "$BRIDGE" up
        ip -n "node$i" addr add "$SUBNET.$i/24" dev eth0
        ip -n "node$i" link set eth0 up
        ip -n "node$i" link set lo up
        mkdir -p "/etc/netns/node$i"
        {
            echo "127.0.0.1 localhost"
            echo "$CONTROLLER_IP $CONTROLLER"
            for j in $(seq "$n"); do echo "$SUBNET.$j node$j"; done
        } >"/etc/netns/node$i/hosts"
        if [ -n "$rate" ]; then
            ip netns exec "node$i" tc qdisc replace dev eth0 root tbf rate "$rate" burst 256kb latency 50ms
        fi
    done
}

write_configs() {  # write_configs N
    local n=$1 memory
    memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
    install -d /run/slurm "$LOG" /var/spool/slurmctld /var/spool/slurmd /etc/slurm
    cat >"$CONF" <<EOF
ClusterName=ci
SlurmctldHost=${CONTROLLER}(${CONTROLLER_IP})
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
AccountingStorageHost=${CONTROLLER_IP}
JobCompType=jobcomp/filetxt
JobCompLoc=${LOG}/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldLogFile=${LOG}/slurmctld.log
SlurmdLogFile=${LOG}/slurmd-%n.log
SlurmctldTimeout=30
SlurmdTimeout=20
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
GresTypes=gpu
# A site's cap on job arrays, set low: every test sweep of 3 or more alike jobs is split (slurm/arrays.py).
MaxArraySize=2
NodeName=DEFAULT CPUs=${CPUS} Boards=1 SocketsPerBoard=1 CoresPerSocket=${CPUS} ThreadsPerCore=1 RealMemory=${memory} Gres=gpu:${GPUS} State=UNKNOWN
EOF
    for i in $(seq "$n"); do
        echo "NodeName=node$i NodeAddr=$SUBNET.$i NodeHostname=node$i" >>"$CONF"
    done
    echo "PartitionName=debug Nodes=node[1-$n] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO" >>"$CONF"
    # `ip netns exec` mounts a fresh /sys that hides /sys/fs/cgroup: name the plugin, or slurmd's
    # autodetection fails.
    echo "CgroupPlugin=cgroup/v1" >/etc/slurm/cgroup.conf
    # srun --mpi=pmix (Open MPI's ranks) makes a directory per step under PMIxCliTmpDirBase, named
    # by job and step only: on hosts that share /tmp the second host finds it there and the step
    # fails ("File exists"). Every host mounts a directory of its own there (start_slurmd).
    echo "PMIxCliTmpDirBase=$PMIX_CLI_DIR" >/etc/slurm/mpi.conf
    make_gpu_placeholders
    cat >"$DBD_CONF" <<EOF
AuthType=auth/munge
DbdHost=${CONTROLLER}
DbdAddr=${CONTROLLER_IP}
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

# Each host declares GPUS GPUs as Slurm generic resources, backed by placeholder device files (no
# driver behind them; the cgroup device constraint is off): Slurm itself then sets each task's
# CUDA_VISIBLE_DEVICES under --gpus-per-task / --gpu-bind, so the GPU every rank would pick can be
# tested against real Slurm without a GPU (hardware=ci_cluster_gpu).
make_gpu_placeholders() {
    local i
    install -d "$STATE/gpu"
    for i in $(seq 0 $((GPUS - 1))); do
        [ -e "$STATE/gpu/nvidia$i" ] || mknod "$STATE/gpu/nvidia$i" c 195 "$i"
    done
    echo "Name=gpu File=$STATE/gpu/nvidia[0-$((GPUS - 1))]" >/etc/slurm/gres.conf
}

start_mariadb() {
    install -d -o mysql -g mysql /run/mysqld
    if ! mysqladmin ping >/dev/null 2>&1; then
        setsid mysqld_safe --user=mysql --bind-address=127.0.0.1 >/dev/null 2>&1 </dev/null &
        wait_for 60 MariaDB mysqladmin ping
    fi
    mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
              CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
              FLUSH PRIVILEGES;"
}

all_idle() {
    [ "$(sinfo -h -N -o '%t' | grep -c -v '^idle$')" = 0 ] && [ "$(sinfo -h -N -o '%N' | wc -l)" = "$(hosts)" ]
}

start_slurmd() {  # start_slurmd I
    install -d "$PMIX_CLI_DIR" "$PMIX_CLI_DIR-node$1"
    # `ip netns exec` gives the host a mount namespace of its own: the bind mount is its alone.
    in_host "$1" sh -c 'mount --bind "$0" "$1" && exec slurmd -N "$2"' "$PMIX_CLI_DIR-node$1" "$PMIX_CLI_DIR" "node$1"
}

start() {
    local n=2 rate="" i
    while [ $# -gt 0 ]; do
        case "$1" in
            --hosts) n=$2; shift 2 ;;
            --link) rate=$2; shift 2 ;;
            *) echo "cluster.sh: unknown option $1 (start [--hosts N] [--link RATE])" >&2; exit 2 ;;
        esac
    done
    [ "$n" -ge 1 ] && [ "$n" -le 200 ] || { echo "cluster.sh: --hosts must be 1..200" >&2; exit 2; }
    if [ -d "$STATE" ]; then stop; fi  # a second start is a clean one
    command -v slurmctld >/dev/null || install_packages
    mkdir -p "$STATE"
    echo "$n" >"$STATE/hosts"
    install -d -o munge -g munge -m 0755 /run/munge
    pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
    wait_for 10 munge sh -c 'munge -n | unmunge'
    make_network "$n" "$rate"
    write_configs "$n"
    start_mariadb
    pgrep -x slurmdbd >/dev/null || slurmdbd
    wait_for 30 slurmdbd sacctmgr -n show cluster
    sacctmgr -i add cluster ci >/dev/null 2>&1 || true
    slurmctld -i
    wait_for 30 slurmctld scontrol ping
    for i in $(seq "$n"); do
        install -d "/var/spool/slurmd/node$i"
        start_slurmd "$i"
    done
    scontrol update nodename="node[1-$n]" state=resume >/dev/null 2>&1 || true
    wait_for 60 "$n host(s) (idle)" all_idle
    sinfo -N
}

kill_pidfile() {  # kill_pidfile FILE
    local pid
    if [ -f "$1" ] && pid=$(cat "$1") && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 20); do
            grep -qs '^[^ ]* ([^)]*) [^Z]' "/proc/$pid/stat" || return 0  # gone or a zombie
            sleep 0.5
        done
        kill -9 "$pid" 2>/dev/null || true  # slurmd may ignore SIGTERM without its controller
    fi
}

stop() {
    local i n
    n=$(hosts_to_remove)
    scancel --full --user=root >/dev/null 2>&1 || true
    for i in $(seq "$n"); do
        kill_pidfile "/run/slurm/slurmd-node$i.pid"
        ip netns pids "node$i" 2>/dev/null | xargs -r kill -9 2>/dev/null || true  # what jobs left there
    done
    kill_pidfile /run/slurm/slurmctld.pid
    kill_pidfile /run/slurm/slurmdbd.pid
    pkill -9 -x slurmd 2>/dev/null || true
    pkill -9 -x slurmctld 2>/dev/null || true
    pkill -9 -x slurmdbd 2>/dev/null || true
    mysqladmin shutdown >/dev/null 2>&1 || true
    pkill -x munged 2>/dev/null || true
    # munged writes its seed on the way out: a start while it still runs would keep it, socketless.
    for _ in $(seq 20); do pgrep -x munged >/dev/null || break; sleep 0.25; done
    pkill -9 -x munged 2>/dev/null || true
    for i in $(seq "$n"); do
        ip netns del "node$i" 2>/dev/null || true
        ip link del "vb$i" 2>/dev/null || true
        rm -rf "/etc/netns/node$i"
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -rf "$STATE"
}

status() {
    echo "hosts: $(hosts)"
    ip netns list
    sinfo -N
    squeue
}

case "${1:-}" in
    install) install_packages ;;
    start) shift; start "$@" ;;
    stop) stop ;;
    status) status ;;
    slurmd) start_slurmd "$2" ;;  # (re)start host I's slurmd: tests/cluster/cluster.sh slurmd I
    *) echo "usage: $0 install | start [--hosts N] [--link RATE] | stop | status" >&2; exit 2 ;;
esac
