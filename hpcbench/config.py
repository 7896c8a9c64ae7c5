"""Typed schemas for every config group, registered in Hydra's ConfigStore.

The primary config (`conf/train.yaml`) extends `run_schema`, so every group option is
validated against these dataclasses when Hydra composes it: a misspelled key or a value of
the wrong type fails before anything runs. Range checks that a type cannot express (positive
batch sizes, known option names) live in `validate()`, called at the start of every run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hpcbench.errors import ConfigError

# Hydra and OmegaConf are imported where they are used: the dataclasses alone (the benchmark,
# a bare GPU machine) need neither.


@dataclass
class ModeConfig:
    """How the run is parallelised: `cpu` (serial), `gpu` (one CUDA device), `ddp` (MPI ranks)."""

    name: str = "cpu"
    device: str = "cpu"  # cpu | cuda: where each process trains
    ranks: int = 1  # total processes; more than 1 only for ddp
    nodes: int = 1  # nodes the ranks are spread over (Slurm)
    cpus_per_rank: Optional[int] = None  # cores per process; None: the partition's default share
    backend: str = "auto"  # torch.distributed backend: auto (nccl on cuda, gloo on cpu) | gloo | nccl
    collective_timeout_s: int = 120  # a dead rank ends the job after at most this long


@dataclass
class PartitionConfig:
    """One Slurm partition of a cluster profile: the capacity of each of its nodes."""

    cores_per_node: int = 1
    gpus_per_node: int = 0
    gpu_type: Optional[str] = None  # gres type, e.g. v100 (gres=gpu:v100:2)
    memory_gb: int = 1
    max_nodes: int = 1
    time_limit_min: int = 60  # the partition's own wall-time ceiling
    cpus_per_task: Optional[int] = None  # default cores per task; None: an equal share of the node


@dataclass
class HardwareConfig:
    """A machine or cluster profile: what a node holds and how jobs are set up there."""

    name: str = "local"
    description: str = ""
    accelerator: str = "cpu"  # cpu | cuda: the device of mode=ddp ranks on this hardware
    cpu_model: str = ""
    partitions: Dict[str, PartitionConfig] = field(default_factory=dict)
    cpu_partition: str = "local"  # partition used by mode=cpu
    gpu_partition: str = "local"  # partition used by mode=gpu and mode=ddp on cuda
    setup: List[str] = field(default_factory=list)  # shell lines run before the job (module load, ...)
    mpi_launcher: str = "mpiexec"  # mpiexec | mpirun | srun: how ranks are started
    srun_mpi: str = "pmi2"  # srun --mpi plugin: pmi2 for MPICH, pmix for Open MPI
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    time_limit_min: int = 60  # time requested per job
    memory_gb_per_task: Optional[int] = None  # memory requested per task; None = derived from the node


@dataclass
class BatchSizeConfig:
    """Batch semantics. weak: `size` is the batch of every device (the global batch grows with
    the ranks); strong: `size` is the global batch, split over the ranks."""

    scaling: str = "weak"
    size: int = 64


@dataclass
class ModelConfig:
    name: str = "mobilenet_v2"  # mobilenet_v2 | resnet18
    pretrained: bool = False  # ImageNet weights from TORCH_HOME's cache (never downloaded)


@dataclass
class DataConfig:
    """Keys understood by every data option; `name` picks the source."""

    name: str = "synthetic"  # synthetic | image_folder | cifar10
    root: Optional[str] = None  # image_folder / cifar10 location
    download: bool = True  # cifar10: try to download when missing (needs internet)
    image_size: int = 224  # images are resized to this before the model sees them
    limit_train: Optional[int] = None  # use only the first N training images, class-balanced
    limit_test: Optional[int] = None  # use only the first N test images, class-balanced
    num_workers: int = 2  # DataLoader worker processes per rank
    augment: bool = True  # the original study's training augmentation
    pipeline: str = "tensor"  # tensor (device-resident, batched augmentation) | pil (the original study's)
    synthetic_train_size: int = 50000  # synthetic: images per split (CIFAR-10's sizes)
    synthetic_test_size: int = 10000


@dataclass
class TrainConfig:
    epochs: int = 20
    lr: float = 1e-4
    optimizer: str = "adam"
    lr_step_size: int = 10  # StepLR: multiply the learning rate by lr_gamma every lr_step_size epochs
    lr_gamma: float = 0.1
    lr_scaling: str = "none"  # none | linear | sqrt: scale lr with global batch / base_batch (Goyal et al. 2017)
    base_batch: Optional[int] = None  # the global batch train.lr was tuned for; None = batch_size.size
    warmup_epochs: int = 0  # ramp from train.lr to the scaled rate over these epochs, per step
    seed: int = 42
    deterministic: bool = True  # torch deterministic algorithms (bit-identical reruns on CPU)
    save_checkpoints: bool = True
    resume: bool = True  # a run directory holding checkpoints/last.pt continues from it
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast; GradScaler for fp16)
    channels_last: Optional[bool] = None  # None: on (faster convolutions on CPUs and GPUs)
    compile: bool = False  # torch.compile the model (GPU: faster after a compile of a minute or two)


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
    experiment_name: str = "default"


MODES = ("cpu", "gpu", "ddp")
DEVICES = ("cpu", "cuda")
SCALINGS = ("weak", "strong")
MODELS = ("mobilenet_v2", "resnet18")
DATASETS = ("synthetic", "image_folder", "cifar10")
OPTIMIZERS = ("adam",)
PIPELINES = ("tensor", "pil")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCALING_RULES = ("none", "linear", "sqrt")
MPI_LAUNCHERS = ("mpiexec", "mpirun", "srun")


def register_schemas() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def to_run_config(cfg) -> RunConfig:
    """Resolve a composed config (a DictConfig) into the typed dataclasses and check value ranges."""
    from omegaconf import OmegaConf

    # Resolve to plain containers first: merging a plain dict into the schema rejects every key
    # the schema lacks, including ones added with Hydra's `+key=value`.
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.to_container(cfg, resolve=True))
    run: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(run)
    return run


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _require_choice(key: str, value: str, choices: tuple) -> None:
    _require(value in choices, f"{key}={value!r} is not one of {', '.join(choices)}")


def _require_positive(key: str, value: Optional[int]) -> None:
    _require(value is None or value > 0, f"{key} must be positive, got {value}")


def validate(run: RunConfig) -> None:
    """Range and consistency checks; each failure names the key it is about."""
    _require_choice("mode.name", run.mode.name, MODES)
    _require_choice("mode.device", run.mode.device, DEVICES)
    _require_choice("batch_size.scaling", run.batch_size.scaling, SCALINGS)
    _require_choice("model.name", run.model.name, MODELS)
    _require_choice("data.name", run.data.name, DATASETS)
    _require_choice("data.pipeline", run.data.pipeline, PIPELINES)
    _require_choice("train.precision", run.train.precision, PRECISIONS)
    _require_choice("train.optimizer", run.train.optimizer, OPTIMIZERS)
    _require_choice("train.lr_scaling", run.train.lr_scaling, LR_SCALING_RULES)
    _require_choice("hardware.accelerator", run.hardware.accelerator, DEVICES)
    _require_choice("hardware.mpi_launcher", run.hardware.mpi_launcher, MPI_LAUNCHERS)
    for key, value in [
        ("batch_size.size", run.batch_size.size),
        ("train.epochs", run.train.epochs),
        ("mode.ranks", run.mode.ranks),
        ("mode.nodes", run.mode.nodes),
        ("mode.cpus_per_rank", run.mode.cpus_per_rank),
        ("data.image_size", run.data.image_size),
        ("data.limit_train", run.data.limit_train),
        ("data.limit_test", run.data.limit_test),
        ("train.lr_step_size", run.train.lr_step_size),
        ("train.base_batch", run.train.base_batch),
    ]:
        _require_positive(key, value)
    _require(run.train.lr > 0, f"train.lr must be positive, got {run.train.lr}")
    _require(run.train.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {run.train.warmup_epochs}")
    _require(run.data.num_workers >= 0, f"data.num_workers must be >= 0, got {run.data.num_workers}")
    if run.mode.name != "ddp":
        _require(run.mode.ranks == 1, f"mode.ranks={run.mode.ranks} needs mode=ddp (mode={run.mode.name} runs one process)")
    _require(
        run.mode.ranks % run.mode.nodes == 0,
        f"mode.ranks={run.mode.ranks} is not divisible by mode.nodes={run.mode.nodes}",
    )
    if run.batch_size.scaling == "strong":
        _require(
            run.batch_size.size % run.mode.ranks == 0,
            f"batch_size.size={run.batch_size.size} (global, strong scaling) is not divisible by mode.ranks={run.mode.ranks}",
        )


def per_device_batch(run: RunConfig) -> int:
    """The batch one process trains on per step."""
    if run.batch_size.scaling == "weak":
        return run.batch_size.size
    return run.batch_size.size // run.mode.ranks


def global_batch(run: RunConfig) -> int:
    return per_device_batch(run) * run.mode.ranks
