#!/usr/bin/env bash
# GPU validation: every GPU path of hpcbench on one real GPU, figures written to $OUT.
#
# Runs on the lent GPU machine (the `device` tool), in the repository root, under 8 minutes on one
# H100/H200. That machine has torch, torchvision, numpy, pandas, tqdm, nvidia-ml-py but not Hydra,
# OmegaConf or MPICH: tools/prepare_gpu_check.sh prepares here what to carry:
#   .whl/       hydra-core, omegaconf, antlr4-python3-runtime, mpi4py (cp312), mpich wheels
#   .gpudata/   cifar10-subset.tar.gz: the first 1,000 training and 200 test images per class
# Writes $OUT/gpu_check.log, nvidia-smi.txt, benchmark.json, benchmark_compile.json, benchmark_pipelines.json,
# predict_cuda.json, predict_cpu.json and runs.tar.gz (the run directories, checkpoints left out).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 HPCBENCH_OUTPUT_DIR=/tmp/hpcbench-outputs
step() { echo; echo "=== $(date +%T) $*"; }

step "environment"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; head -15 "$OUT/nvidia-smi.txt"
# Into a prefix beside the machine's own Python (the one that holds torch): a venv would hide it.
PY=python3
PREFIX=/tmp/prefix
$PY -m pip install -q --no-index --no-deps --no-compile --prefix $PREFIX .whl/*.whl || exit 1
SITE=$($PY -c "import sysconfig; print(sysconfig.get_path('purelib', vars={'base': '$PREFIX', 'platbase': '$PREFIX'}))")
export PYTHONPATH=$SITE:$PWD PATH=$PREFIX/bin:$PATH LD_LIBRARY_PATH=$PREFIX/lib:${LD_LIBRARY_PATH:-}
export MPI4PY_LIBMPI=$PREFIX/lib/libmpi.so.12 MPI4PY_MPIABI=mpich  # the carried MPICH, for mpi4py and mpiexec
$PY -c "import torch, torchvision, hydra; from mpi4py import MPI; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'torchvision', torchvision.__version__, 'hydra', hydra.__version__, '|', MPI.Get_library_version().splitlines()[0]); \
print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0), 'bf16', torch.cuda.is_bf16_supported())"
mkdir -p /tmp/data && tar -xzf .gpudata/cifar10-subset.tar.gz -C /tmp/data

if [ -z "${SKIP_BENCHMARK:-}" ]; then
step "benchmark: original recipe vs hpcbench defaults vs device-resident ceiling (eager)"
timeout 240 $PY -m hpcbench.benchmark --device cuda --batch 256 --steps 30 --repeats 3 --json "$OUT/benchmark.json"

step "benchmark: hpcbench defaults vs ceiling, torch.compile"
timeout 300 $PY -m hpcbench.benchmark --device cuda --batch 256 --steps 30 --repeats 3 --compile \
    --recipes hpcbench,resident --json "$OUT/benchmark_compile.json"
fi

step "benchmark: the data pipelines side by side (stream with nvJPEG decode, compressed-resident, decoded-resident,
the model step alone; the PIL pipeline is the original recipe above) on 3,000 generated ImageNet-like JPEGs;
augmentation share = 1 - decoded / step"
timeout 360 $PY -m hpcbench.benchmark --device cuda --pipelines --recipes stream,compressed,decoded,step \
    --bench-images 3000 --batch 256 --steps 20 --repeats 3 --work-dir /tmp/bench --json "$OUT/benchmark_pipelines.json"

CIFAR=(data=image_folder data.root=/tmp/data/cifar10 data.limit_train=10000 data.limit_test=2000)
step "stream vs resident on real CIFAR-10 (packed shards), 2 seeds each: accuracy within the seed-to-seed spread"
timeout 60 $PY -m hpcbench.data.pack pack /tmp/data/cifar10 /tmp/data/cifar10-shards --images-per-shard 1000
for pipeline in stream tensor; do for seed in 1 2; do
    timeout 240 $PY -m hpcbench.train mode=gpu data=shards data.root=/tmp/data/cifar10-shards data.limit_train=10000 \
        data.limit_test=2000 data.pipeline=$pipeline train.seed=$seed batch_size.size=256 train.epochs=2 train.lr=1e-3 \
        train.probe=false hydra.run.dir=/tmp/runs/$pipeline-$seed
done; done
$PY - <<'EOF'
import json
for run in ("stream-1", "stream-2", "tensor-1", "tensor-2"):
    s = json.load(open(f"/tmp/runs/{run}/summary.json"))
    print(run, {k: s.get(k) for k in ("status", "pipeline", "best_test_acc", "samples_per_s", "data_time_s",
                                      "compute_time_s")})
EOF
step "mode=gpu: real CIFAR-10, 224 px, 10,000 training images, 2 epochs"
timeout 240 $PY -m hpcbench.train mode=gpu "${CIFAR[@]}" batch_size.size=256 train.epochs=2 train.lr=1e-3 \
    hydra.run.dir=/tmp/runs/gpu
$PY - <<'EOF'
import json
s = json.load(open("/tmp/runs/gpu/summary.json"))
steps = sum(s[k] for k in ("data_time_s", "compute_time_s", "comm_exposed_s", "optimizer_time_s"))
print({k: s.get(k) for k in ("status", "precision", "samples_per_s", "best_test_acc", "peak_memory_mb", "total_time_s",
                            "mfu", "peak_tflops", "achieved_tflops", "energy_j", "energy_source")})
print(f"data wait share of the steps: {s['data_time_s'] / steps * 100:.1f}%")
EOF

step "mode=ddp, 1 rank, NCCL: process group, timed all-reduce, probes, exact evaluation"
timeout 240 $PY -m hpcbench.train mode=ddp mode.ranks=1 mode.device=cuda "${CIFAR[@]}" batch_size.size=256 \
    train.epochs=2 train.lr=1e-3 hydra.run.dir=/tmp/runs/ddp1
$PY - <<'EOF'
import json
s = json.load(open("/tmp/runs/ddp1/summary.json"))
print({k: s.get(k) for k in ("status", "world_size", "samples_per_s", "best_test_acc", "grad_buckets", "comm_total_s",
                            "comm_exposed_s", "allreduce_latency_s", "busbw_gbps", "mfu")})
print("probe:", json.load(open("/tmp/runs/ddp1/probe.json"))["interconnect"])
EOF

step "serving on CUDA (and the same images on the CPU)"
IMAGES=$(ls /tmp/data/cifar10/test/*/0000.jpg)
timeout 120 $PY -m hpcbench.serve.predict_cli /tmp/runs/gpu $IMAGES --json --device cuda > "$OUT/predict_cuda.json"
timeout 120 $PY -m hpcbench.serve.predict_cli /tmp/runs/gpu $IMAGES --json --device cpu > "$OUT/predict_cpu.json"
$PY - "$OUT" <<'EOF'
import json, sys
cuda, cpu = ([json.loads(l) for l in open(f"{sys.argv[1]}/predict_{d}.json")] for d in ("cuda", "cpu"))
same = sum(a["label"] == b["label"] for a, b in zip(cuda, cpu))
print(f"{len(cuda)} images: top-1 on CUDA equals the CPU's for {same}")
EOF

step "GPU clusters: auto precision and the torch-build check on this GPU"
$PY - <<'EOF'
import torch
from hpcbench.gpu_support import this_torch_build
from hpcbench.training.step import resolve_precision
gpu, capability = torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
print(gpu, capability, "auto ->", resolve_precision("auto", torch.device("cuda", 0)),
      "(rule: bf16 from 8.0, else fp16)")
build = this_torch_build()
print("torch", build.version, "kernels", " ".join(build.arch_flags))
print("this GPU:", build.problem_on(capability, gpu) or "runs")
print("a V100:", build.problem_on((7, 0), "V100") or "runs")
EOF

step "GPU clusters: a rank killed outright under NCCL is reported, the summary does not stay running"
timeout 200 $PY -m hpcbench.train mode=ddp mode.ranks=1 mode.device=cuda "${CIFAR[@]}" batch_size.size=256 \
    train.epochs=4 train.probe=false hydra.run.dir=/tmp/runs/killed &
LAUNCHER=$!
for _ in $(seq 240); do [ -s /tmp/runs/killed/metrics.jsonl ] && break; sleep 0.5; done
pkill -9 -f "hpcbench.worker /tmp/runs/killed"
wait $LAUNCHER; echo "hpcbench-train exit status: $?"
$PY - <<'EOF'
import json
s = json.load(open("/tmp/runs/killed/summary.json"))
print({k: s.get(k) for k in ("status", "error")})
print("communication:", json.load(open("/tmp/runs/killed/env.json")).get("communication"))
EOF

step "GPU clusters: torch.compile under NCCL within the derived collective timeout"
timeout 300 $PY -m hpcbench.train mode=ddp mode.ranks=1 mode.device=cuda train.compile=true "${CIFAR[@]}" \
    batch_size.size=256 train.epochs=1 train.probe=false hydra.run.dir=/tmp/runs/ddp1_compile
$PY -c "import json; s = json.load(open('/tmp/runs/ddp1_compile/summary.json')); print(s['status'], s.get('samples_per_s'))"

step "packing the run directories"
tar -czf "$OUT/runs.tar.gz" --exclude=checkpoints -C /tmp runs
ls -la "$OUT"
