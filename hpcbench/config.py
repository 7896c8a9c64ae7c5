"""Typed schemas for every config group: the one place where a default lives.

The primary config (`conf/hpcbench.yaml`) extends `run_schema`, so Hydra validates every option
against these dataclasses while it composes: a misspelled key or a value of the wrong type fails
before anything runs. The YAML options set only what differs from these defaults.

What a type cannot say is declared beside the field it is about (`one_of`, `positive`,
`non_negative`) and enforced by `config_load.to_run_config`, which every entry point calls right
after composition: a bad choice or range stops the run at start with one line naming the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from hpcbench.config_fields import non_negative, one_of, positive
from hpcbench.errors import ConfigError
from hpcbench.model_names import architecture_names

# Hydra and OmegaConf are imported where they are used: the dataclasses alone (the benchmark,
# a bare GPU machine) need neither.

MODES = ("cpu", "gpu", "ddp")
DEVICES = ("cpu", "cuda")
BACKENDS = ("auto", "gloo", "nccl")
SCALINGS = ("weak", "strong")
DATA_SOURCES = ("synthetic", "image_folder", "cifar10", "shards")
PIPELINES = ("auto", "tensor", "compressed", "stream", "pil")
OPTIMIZERS = ("adam", "adamw", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCALING_RULES = ("none", "linear", "sqrt")
MPI_LAUNCHERS = ("mpiexec", "mpirun", "srun")
MPI_IMPLEMENTATIONS = ("mpich", "openmpi", "intel")  # intel: Intel MPI (MPICH's ABI, its own launcher)
KEEP_CHECKPOINTS = ("best", "resumable", "all")
TRACKERS = ("none", "mlflow")

@dataclass
class ModeConfig:
    """How the run is parallelised: `cpu` (serial), `gpu` (one CUDA device), `ddp` (MPI ranks)."""

    name: str = one_of("cpu", MODES)
    device: str = one_of("cpu", DEVICES)  # where each process trains
    ranks: int = positive(1)  # total processes; more than 1 only for ddp
    nodes: int = positive(1)  # nodes the ranks are spread over
    cpus_per_rank: Optional[int] = positive(None)  # cores per process; None: the partition's default share
    backend: str = one_of("auto", BACKENDS)  # torch.distributed backend; auto: nccl on cuda, gloo on cpu
    # A hung rank ends the job after at most this long; None: derived (collective_timeout below)
    collective_timeout_s: Optional[int] = positive(None)


@dataclass
class PartitionConfig:
    """One Slurm partition of a cluster profile: the capacity of each of its nodes."""

    cores_per_node: int = positive(1)
    gpus_per_node: int = non_negative(0)
    gpu_type: Optional[str] = None  # gres type, e.g. v100 (gres=gpu:v100:2)
    # "7.0": the GPUs' compute capability, for a gpu_type that hpcbench.gpu_support does not know
    gpu_capability: Optional[str] = None
    memory_gb: int = positive(1)
    max_nodes: int = positive(1)
    time_limit_min: int = positive(60)  # the partition's own wall-time ceiling
    cpus_per_task: Optional[int] = positive(None)  # default cores per task; None: an equal share of the node
    # Nominal ceilings, for the report's "against the datasheet" columns (optional; the run
    # measures its own in any case, train.probe):
    peak_tflops: Optional[float] = positive(None)  # dense peak of one GPU (or one core), in the runs' precision
    interconnect_gbps: Optional[float] = positive(None)  # all-reduce bus bandwidth between nodes, GB/s


@dataclass
class HardwareConfig:
    """A machine or cluster profile: what a node holds and how jobs are set up there."""

    name: str = "local"
    description: str = ""
    accelerator: str = one_of("cpu", DEVICES)  # the device of mode=ddp ranks on this hardware
    cpu_model: str = ""
    partitions: Dict[str, PartitionConfig] = field(default_factory=dict)
    cpu_partition: str = "local"  # partition used by mode=cpu
    gpu_partition: str = "local"  # partition used by mode=gpu and mode=ddp on cuda
    setup: List[str] = field(default_factory=list)  # shell lines run before the job (module load, ...)
    # The site's MPI: the launcher's arguments, srun's plugin and the library the ranks load follow from it
    mpi: str = one_of("mpich", MPI_IMPLEMENTATIONS)
    mpi_launcher: str = one_of("mpiexec", MPI_LAUNCHERS)  # how `mode=ddp` starts its ranks
    srun_mpi: Optional[str] = None  # srun's --mpi plugin; None: pmi2 for mpich and intel, pmix for openmpi
    # The compute nodes' interpreter (where `setup` activates another environment than the login
    # node's); None: the one that submits. The launcher checks its torch build against the GPUs.
    python: Optional[str] = None
    # The ranks' network on multi-homed nodes, set for every rank unless the user exported the
    # variable (None: the library's own choice): NCCL's (GPU ranks), gloo's (CPU ranks)
    nccl_socket_ifname: Optional[str] = None  # e.g. ib0, or ^docker,lo
    nccl_ib_hca: Optional[str] = None  # e.g. mlx5_0,mlx5_1
    gloo_socket_ifname: Optional[str] = None  # e.g. ib0 (gloo takes one interface or a comma list)
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time_limit_min: int = positive(60)  # time requested per job
    memory_gb_per_task: Optional[int] = positive(None)  # memory requested per task; None: derived from the node

    def srun_mpi_plugin(self) -> str:
        return self.srun_mpi or ("pmix" if self.mpi == "openmpi" else "pmi2")

    def network_variables(self) -> Dict[str, str]:
        """The environment variables the profile sets for every rank."""
        chosen = {"NCCL_SOCKET_IFNAME": self.nccl_socket_ifname, "NCCL_IB_HCA": self.nccl_ib_hca,
                  "GLOO_SOCKET_IFNAME": self.gloo_socket_ifname}
        return {name: value for name, value in chosen.items() if value}


@dataclass
class BatchSizeConfig:
    """Batch semantics. weak: `size` is the batch of every device (the global batch grows with
    the ranks); strong: `size` is the global batch, split over the ranks."""

    scaling: str = one_of("weak", SCALINGS)
    size: int = positive(64)


@dataclass
class ModelConfig:
    """A torchvision architecture by `name`, or the user's own: `_target_` names a function called
    as `_target_(num_classes=..., **args)` (Hydra's instantiate) that returns an nn.Module."""

    name: str = one_of("mobilenet_v2", architecture_names, unless="_target_")  # with _target_: a label for reports
    pretrained: bool = False  # ImageNet weights from TORCH_HOME's cache (never downloaded); torchvision only
    _target_: Optional[str] = None  # e.g. mypkg.nets.build
    args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of _target_


@dataclass
class DataConfig:
    """Keys understood by every data option; `name` picks the source, or `_target_` names the
    user's own: a function called as `_target_(**args)` returning (train, test, class names), where
    train and test are indexable (image, label) sequences (see hpcbench.data.custom)."""

    name: str = one_of("synthetic", DATA_SOURCES, unless="_target_")  # with _target_: a label for reports
    _target_: Optional[str] = None  # e.g. mypkg.data.build
    args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of _target_
    root: Optional[str] = None  # image_folder / cifar10 location
    download: bool = True  # cifar10: try to download when missing (needs internet)
    image_size: int = positive(224)  # images are resized to this before the model sees them
    limit_train: Optional[int] = positive(None)  # use only the first N training images, class-balanced
    limit_test: Optional[int] = positive(None)  # use only the first N test images, class-balanced
    num_workers: int = non_negative(2)  # DataLoader worker processes per rank (pil pipeline)
    augment: bool = True  # the original study's training augmentation
    # tensor: decoded on the device; compressed: JPEG bytes in host memory, decoded per batch;
    # stream: JPEG bytes read from the shard files per batch; pil: the study's DataLoader workers.
    # auto: the first that fits (data/pipeline.py says how it judges)
    pipeline: str = one_of("auto", PIPELINES)
    # auto's memory budget in MiB, for a device's data and for a node's host memory alike; None: half
    # of the device's memory and half of the node's RAM
    memory_budget_mb: Optional[float] = positive(None)
    shuffle_window: int = positive(4096)  # stream, compressed: images shuffled together (stream_order.py)
    synthetic_train_size: int = positive(50000)  # synthetic: images per split (CIFAR-10's sizes)
    synthetic_test_size: int = positive(10000)
    # synthetic: the data set's own seed, apart from train.seed, so that repeats (a train.seed sweep)
    # vary the training (initial weights, shuffling, augmentation), never the data they are judged on
    synthetic_seed: int = 0


@dataclass
class TrainConfig:
    """The training recipe. Defaults: the original study's (Adam at 1e-4, StepLR(10, 0.1), 20 epochs)."""

    epochs: int = positive(20)
    lr: float = positive(1e-4)  # the peak rate before lr_scaling
    optimizer: str = one_of("adam", OPTIMIZERS)
    momentum: float = non_negative(0.9)  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: Optional[float] = non_negative(None)  # None: torch's default (adamw 0.01, adam and sgd 0)
    lr_step_size: int = positive(10)  # StepLR: multiply the learning rate by lr_gamma every lr_step_size epochs
    lr_gamma: float = positive(0.1)
    lr_scaling: str = one_of("none", LR_SCALING_RULES)  # scale lr with global batch / base_batch (Goyal et al. 2017)
    base_batch: Optional[int] = positive(None)  # the global batch train.lr was tuned for; None: batch_size.size
    warmup_epochs: int = non_negative(0)  # ramp from train.lr to the scaled rate over these epochs, per step
    seed: int = 42
    deterministic: bool = True  # torch deterministic algorithms (bit-identical reruns on CPU)
    save_checkpoints: bool = True
    keep_checkpoints: str = one_of("best", KEEP_CHECKPOINTS)  # what a completed run keeps (see rundir.py)
    resume: bool = True  # a run directory holding checkpoints/last.pt continues from it
    precision: str = one_of("auto", PRECISIONS)  # autocast dtype; auto: bf16 where native, fp16 on older GPUs
    channels_last: Optional[bool] = None  # None: on (faster convolutions on CPUs and GPUs)
    compile: bool = False  # torch.compile the model (GPU: faster after a compile of a minute or two)
    probe: bool = True  # measure the interconnect, processor and model FLOPs at start (seconds)


@dataclass
class TrackingConfig:
    """Where runs are logged besides their run directory, which stays the record: the tracker
    gets a copy of it (hpcbench.tracking), now or later."""

    name: str = one_of("none", TRACKERS)
    uri: Optional[str] = None  # MLflow tracking URI (http://host:5000, sqlite:///path); tracking=mlflow sets it
    experiment: Optional[str] = None  # MLflow experiment; None: experiment_name
    # Log nothing while training (compute nodes that cannot reach the tracker); hpcbench-report
    # --mlflow URI uploads the run directories later.
    offline: bool = False


@dataclass
class PathsConfig:
    root_dir: str = "."
    data_dir: str = "data"
    output_dir: str = "outputs"


@dataclass
class RunConfig:
    mode: ModeConfig = field(default_factory=ModeConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    batch_size: BatchSizeConfig = field(default_factory=BatchSizeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    experiment_name: str = "default"


def run_partition(run: RunConfig) -> Tuple[str, PartitionConfig]:
    """The partition of the hardware profile that `run` runs on (by its device)."""
    hardware = run.hardware
    name = hardware.gpu_partition if run.mode.device == "cuda" else hardware.cpu_partition
    key = "hardware.gpu_partition" if run.mode.device == "cuda" else "hardware.cpu_partition"
    if name not in hardware.partitions:
        known = ", ".join(sorted(hardware.partitions)) or "none"
        raise ConfigError(f"{key}={name} is not a partition of hardware={hardware.name} (it has: {known})")
    return name, hardware.partitions[name]


# The derived collective timeout. Eager steps keep ranks within seconds of each other, so 120 s
# bounds a hang closely. With train.compile each rank compiles its first steps on its own, which
# takes minutes and differs between ranks by as much: 30 min. Rank 0 writing a checkpoint while
# the others wait is kept out of collectives altogether (process_group.wait_for_main_rank).
COLLECTIVE_TIMEOUT_S = 120
COMPILE_COLLECTIVE_TIMEOUT_S = 1800


def collective_timeout(run: RunConfig) -> int:
    """mode.collective_timeout_s when set, else derived from what the ranks do (above)."""
    if run.mode.collective_timeout_s is not None:
        return run.mode.collective_timeout_s
    return COMPILE_COLLECTIVE_TIMEOUT_S if run.train.compile else COLLECTIVE_TIMEOUT_S


def per_device_batch(run: RunConfig) -> int:
    """The batch one process trains on per step."""
    if run.batch_size.scaling == "weak":
        return run.batch_size.size
    return run.batch_size.size // run.mode.ranks


def global_batch(run: RunConfig) -> int:
    return per_device_batch(run) * run.mode.ranks
