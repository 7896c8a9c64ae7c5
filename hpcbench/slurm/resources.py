"""What one job asks Slurm for, derived from its own composed config (mode x hardware x batch),
and the checks that refuse a request the hardware profile cannot hold before anything is submitted."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from hpcbench.config import PartitionConfig, RunConfig, collective_timeout, run_partition
from hpcbench.errors import ConfigError
from hpcbench.gpu_support import profile_capability, torch_build


@dataclass(frozen=True)
class SlurmRequest:
    """What one job asks Slurm for, in hydra-submitit-launcher's names (hydra.launcher.<name>
    overrides each one)."""

    partition: Optional[str] = None  # None: the cluster's default partition
    nodes: int = 1
    tasks_per_node: int = 1  # MPI ranks per node for mode=ddp
    cpus_per_task: Optional[int] = None
    gpus_per_node: int = 0
    gres: Optional[str] = None  # e.g. gpu:v100:2 (asked instead of gpus_per_node when set)
    mem_gb: Optional[int] = None  # per node
    timeout_min: int = 60
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    comment: Optional[str] = None
    exclude: Optional[str] = None
    setup: Tuple[str, ...] = ()
    srun_args: Tuple[str, ...] = ()  # e.g. --mpi=pmi2 for the ranks of a DDP job
    additional_parameters: Tuple[Tuple[str, Any], ...] = ()  # any other sbatch option, as (name, value)
    python: Optional[str] = None  # the compute nodes' interpreter; None: the one that submits

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        gpus = f", {self.gres or f'{self.gpus_per_node} GPU(s)/node'}" if self.gpus_per_node or self.gres else ""
        memory = f" mem={self.mem_gb}GB/node" if self.mem_gb else ""
        cpus = f" cpus/task={self.cpus_per_task}" if self.cpus_per_task else ""
        srun = f", srun {' '.join(self.srun_args)}" if self.srun_args else ""
        return (f"partition={self.partition or '(default)'} nodes={self.nodes} tasks/node={self.tasks_per_node}"
                f"{cpus}{gpus}{memory} time={self.timeout_min}min{srun}")

    def step_srun_args(self) -> Tuple[str, ...]:
        """srun's options for the job's tasks. --cpus-per-task is repeated there: srun of Slurm
        22.05 - 23.02 does not take it from the batch job, so every task would get one core."""
        if self.cpus_per_task and not any(arg == "-c" or arg.startswith("--cpus-per-task") for arg in self.srun_args):
            return (f"--cpus-per-task={self.cpus_per_task}", *self.srun_args)
        return self.srun_args

    def gpu_binding(self) -> str:
        """What the dry run says about GPUs and ranks (gpu_support.gpu_index is the rule)."""
        if not (self.gpus_per_node or self.gres):
            return ""
        if any(arg.startswith(("--gpus-per-task", "--gpu-bind")) for arg in self.srun_args):
            return "per task (srun): each rank sees its own GPU only, as cuda:0"
        return "none: each rank sees all of its node's GPUs and uses the one of its local rank"

    def sbatch_parameters(self, job_name: str) -> Dict[str, Any]:
        """Parameters of submitit's SlurmExecutor (its names are sbatch's, with underscores)."""
        params: Dict[str, Any] = {"job_name": job_name, "nodes": self.nodes, "ntasks_per_node": self.tasks_per_node,
                                  "time": self.timeout_min, "setup": list(self.setup),
                                  "srun_args": list(self.step_srun_args())}
        optional = {"partition": self.partition, "cpus_per_task": self.cpus_per_task,
                    "mem": f"{self.mem_gb}GB" if self.mem_gb else None, "account": self.account, "qos": self.qos,
                    "constraint": self.constraint, "comment": self.comment, "exclude": self.exclude,
                    "gres": self.gres, "gpus_per_node": self.gpus_per_node if self.gpus_per_node and not self.gres else None}
        params.update({key: value for key, value in optional.items() if value})
        if self.additional_parameters:
            params["additional_parameters"] = dict(self.additional_parameters)
        return params

    def with_overrides(self, overrides: Dict[str, Any]) -> "SlurmRequest":
        """This request with every key the user set explicitly (not None) replaced."""
        chosen = {key: value for key, value in overrides.items() if value is not None}
        for key in ("setup", "srun_args"):
            if key in chosen:
                chosen[key] = tuple(chosen[key])
        if chosen.get("additional_parameters"):
            chosen["additional_parameters"] = tuple(sorted(dict(chosen["additional_parameters"]).items()))
        else:
            chosen.pop("additional_parameters", None)
        return replace(self, **chosen)


def derive_request(run: RunConfig) -> SlurmRequest:
    """The resources `run` needs, checked against its hardware profile."""
    name, partition = run_partition(run)
    nodes = run.mode.nodes
    tasks_per_node = run.mode.ranks // nodes
    gpus_per_node = tasks_per_node if run.mode.device == "cuda" else 0
    if run.mode.cpus_per_rank is not None:
        cpus_per_task = run.mode.cpus_per_rank
    elif partition.cpus_per_task is not None:
        cpus_per_task = partition.cpus_per_task
    elif gpus_per_node:
        cpus_per_task = max(1, partition.cores_per_node // max(partition.gpus_per_node, 1))
    else:
        cpus_per_task = max(1, partition.cores_per_node // tasks_per_node)
    hardware = run.hardware
    if hardware.memory_gb_per_task is not None:
        mem_gb = hardware.memory_gb_per_task * tasks_per_node
    else:  # the node's memory in proportion to the cores taken
        mem_gb = max(1, partition.memory_gb * cpus_per_task * tasks_per_node // partition.cores_per_node)
    request = SlurmRequest(
        partition=name,
        nodes=nodes,
        tasks_per_node=tasks_per_node,
        cpus_per_task=cpus_per_task,
        gpus_per_node=gpus_per_node,
        gres=f"gpu:{partition.gpu_type}:{gpus_per_node}" if gpus_per_node and partition.gpu_type else None,
        mem_gb=mem_gb,
        timeout_min=hardware.time_limit_min,
        account=hardware.account,
        qos=hardware.qos,
        constraint=hardware.constraint,
        setup=tuple(hardware.setup),
        srun_args=srun_rank_args(run) if run.mode.name == "ddp" else (),
        python=hardware.python,
    )
    check_capacity(run, request, partition)
    return request


# How long the other ranks of a DDP step may outlive the first one to end, beyond the collective
# timeout in which they notice a lost peer and record it.
RANK_EXIT_GRACE_S = 30


def srun_rank_args(run: RunConfig) -> Tuple[str, ...]:
    """srun's options for the MPI ranks of a DDP run: its MPI plugin, and --wait, after which srun
    ends the ranks still running once one has ended. Without it a rank that dies inside MPI_Init
    leaves the others waiting there until the job's time limit (seen with Slurm's pmi2 plugin,
    which takes each PMI-1 command from a single read(), so a command that arrives in two pieces
    is garbage to it)."""
    return f"--mpi={run.hardware.srun_mpi_plugin()}", f"--wait={collective_timeout(run) + RANK_EXIT_GRACE_S}"


def check_capacity(run: RunConfig, request: SlurmRequest, partition: PartitionConfig) -> None:
    where = f"partition {request.partition} of hardware={run.hardware.name}"
    if run.mode.device == "cuda" and partition.gpus_per_node == 0:
        raise ConfigError(f"mode={run.mode.name} on cuda needs GPUs, but {where} has none")
    if request.gpus_per_node > partition.gpus_per_node:
        nodes_needed = -(-run.mode.ranks // partition.gpus_per_node)
        raise ConfigError(
            f"mode.ranks={run.mode.ranks} on mode.nodes={request.nodes} needs {request.gpus_per_node} GPUs per node, "
            f"but {where} has {partition.gpus_per_node}; use mode.nodes={nodes_needed}"
        )
    cores = request.cpus_per_task * request.tasks_per_node
    if cores > partition.cores_per_node:
        raise ConfigError(
            f"{request.tasks_per_node} task(s) x {request.cpus_per_task} cpus need {cores} cores per node, "
            f"but {where} has {partition.cores_per_node}; lower mode.cpus_per_rank or raise mode.nodes"
        )
    if request.nodes > partition.max_nodes:
        raise ConfigError(f"mode.nodes={request.nodes} exceeds the {partition.max_nodes} node(s) of {where}")
    if request.mem_gb > partition.memory_gb:
        raise ConfigError(f"{request.mem_gb} GB per node exceeds the {partition.memory_gb} GB of {where}")
    if request.timeout_min > partition.time_limit_min:
        raise ConfigError(
            f"hardware.time_limit_min={request.timeout_min} exceeds the {partition.time_limit_min} min limit of {where}"
        )


def check_compute_environment(run: RunConfig, request: SlurmRequest) -> None:
    """The interpreter the jobs will run exists, and for GPU jobs its torch has kernels for the
    partition's GPUs (known from gpu_type or gpu_capability): refused here, in one line, rather
    than after the job has waited for its allocation."""
    python = request.python or sys.executable
    if not Path(python).is_file():
        raise ConfigError(f"hardware.python={python} does not exist on this host: create that environment on a file "
                          f"system the compute nodes share, or set hardware.python to their interpreter")
    if run.mode.device != "cuda":
        return
    _, partition = run_partition(run)
    capability = profile_capability(partition.gpu_type, partition.gpu_capability)
    if capability is None:
        return
    problem = torch_build(python).problem_on(capability, (partition.gpu_type or "GPU").upper())
    if problem is not None:
        raise ConfigError(f"{python}: {problem}")
