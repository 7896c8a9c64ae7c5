"""What one job asks Slurm for, derived from its own composed config (mode x hardware x batch),
and the checks that refuse a request the hardware profile cannot hold before anything is submitted."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

from hpcbench.config import PartitionConfig, RunConfig, run_partition
from hpcbench.errors import ConfigError


@dataclass(frozen=True)
class SlurmRequest:
    partition: str
    nodes: int
    tasks_per_node: int  # MPI ranks per node for mode=ddp, 1 otherwise
    cpus_per_task: int
    gpus_per_node: int
    gpu_type: Optional[str]
    mem_gb: int  # per node
    time_min: int
    account: Optional[str]
    qos: Optional[str]
    constraint: Optional[str]
    setup: Tuple[str, ...]
    srun_mpi: Optional[str]  # srun's --mpi plugin for the ranks of a DDP job

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        gpus = f", {self.gpus_per_node} GPU(s)/node" if self.gpus_per_node else ""
        mpi = f", srun --mpi={self.srun_mpi}" if self.srun_mpi else ""
        return (f"partition={self.partition} nodes={self.nodes} tasks/node={self.tasks_per_node} "
                f"cpus/task={self.cpus_per_task}{gpus} mem={self.mem_gb}GB/node time={self.time_min}min{mpi}")

    def sbatch_parameters(self, job_name: str) -> Dict[str, Any]:
        """Parameters of submitit's SlurmExecutor (its names are sbatch's, with underscores)."""
        params: Dict[str, Any] = {
            "job_name": job_name,
            "partition": self.partition,
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "mem": f"{self.mem_gb}GB",
            "time": self.time_min,
            "setup": list(self.setup),
            "srun_args": [f"--mpi={self.srun_mpi}"] if self.srun_mpi else [],
        }
        if self.gpus_per_node:
            if self.gpu_type:
                params["gres"] = f"gpu:{self.gpu_type}:{self.gpus_per_node}"
            else:
                params["gpus_per_node"] = self.gpus_per_node
        for key in ("account", "qos", "constraint"):
            if getattr(self, key):
                params[key] = getattr(self, key)
        return params


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
        gpu_type=partition.gpu_type if gpus_per_node else None,
        mem_gb=mem_gb,
        time_min=hardware.time_limit_min,
        account=hardware.account,
        qos=hardware.qos,
        constraint=hardware.constraint,
        setup=tuple(hardware.setup),
        srun_mpi=hardware.srun_mpi if run.mode.name == "ddp" else None,
    )
    check_capacity(run, request, partition)
    return request


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
    if request.time_min > partition.time_limit_min:
        raise ConfigError(
            f"hardware.time_limit_min={request.time_min} exceeds the {partition.time_limit_min} min limit of {where}"
        )
