#!/usr/bin/env bash
# The scaling explanation against a known answer: the same 2-host study on the test cluster with an
# unshaped link and with every host's link shaped to RATE (tc token bucket). The report must put
# the loss on communication in the shaped study and not in the unshaped one.
#   sudo tools/network_study.sh [RATE] [OUT]          (defaults: 100mbit, reports/network)
# Needs root and Debian's Slurm (tests/cluster/cluster.sh install); stops any running test cluster
# and leaves none running. Each link: a serial run on one host, then 2 DDP ranks on two hosts (one
# each), one job at a time so that they do not share the cores; 2 seeds each.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${1:-100mbit}
OUT=${2:-reports/network}
BIN=$PWD/.venv/bin
STAMP=$(date +%Y-%m-%d_%H-%M-%S)
SETTINGS=(hardware=ci_cluster mode.device=cpu data.image_size=32 data.limit_train=1024 data.limit_test=256
          batch_size=per_device_32 train.epochs=2 train.seed=1,2 hydra/launcher=slurm hydra.launcher.poll_interval_s=1)

study() {  # study NAME [--link RATE]
    local name=$1
    shift
    bash tests/cluster/cluster.sh stop >/dev/null 2>&1 || true
    bash tests/cluster/cluster.sh start --hosts 2 "$@"
    local sweeps=outputs/sweeps/network_${STAMP}_$name
    "$BIN/hpcbench-train" -m "${SETTINGS[@]}" mode=cpu experiment_name="link_$name" \
        hydra.launcher.array_parallelism=1 "hydra.sweep.dir=$sweeps/serial"
    "$BIN/hpcbench-train" -m "${SETTINGS[@]}" mode=ddp mode.ranks=2 mode.nodes=2 experiment_name="link_$name" \
        hydra.launcher.array_parallelism=1 "hydra.sweep.dir=$sweeps/ddp"
    "$BIN/hpcbench-report" "$sweeps/serial" "$sweeps/ddp" --out "$OUT/$name"
}

trap 'bash tests/cluster/cluster.sh stop >/dev/null 2>&1 || true' EXIT
study unshaped
study "$RATE" --link "$RATE"
echo "reports: $OUT/unshaped/report.md $OUT/$RATE/report.md"
