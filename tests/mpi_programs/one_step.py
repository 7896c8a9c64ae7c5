"""Gradient correctness of DDP: run under `mpiexec -n N` or `srun -n N --mpi=pmi2` (N divides 8).
One optimizer step of N ranks x 8/N images must leave the same parameters as one serial step on
the 8 images; the ranks may sit on different hosts.

The model runs in eval mode: in train mode BatchNorm normalises each rank's batch with its own
statistics (DDP does not synchronise them) and Dropout draws different masks, both of which are
expected to differ from the serial batch. Gradients and the Adam step are what is compared.
"""
import copy
import sys

import torch

from hpcbench.models import build_model
from hpcbench.mpi.process_group import init_process_group, shutdown
from hpcbench.mpi.topology import init_mpi, library_implementation, mpi_topology

IMAGES = 8


def step(model, images, labels):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.eval()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()


def main(result_path: str) -> None:
    # One thread a rank, as the product's CPU ranks have on shared cores (threads_per_rank): torch's
    # default of one thread per core, times the ranks on a node, oversubscribes it, and OpenMP's
    # spinning threads then took twice the CPU (4 ranks on 2 cores: 32 s, 16 s with one thread).
    torch.set_num_threads(1)
    topology = mpi_topology(init_mpi().COMM_WORLD.Get_size())
    init_process_group(topology, "gloo", 60)
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=10)
    images, labels = torch.randn(IMAGES, 3, 32, 32), torch.randint(0, 10, (IMAGES,))
    serial = copy.deepcopy(model)
    step(serial, images, labels)

    ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(model))
    per_rank = IMAGES // topology.world_size
    mine = slice(per_rank * topology.rank, per_rank * (topology.rank + 1))
    step(ddp, images[mine], labels[mine])

    worst = max((a - b).abs().max().item() for a, b in zip(serial.parameters(), ddp.module.parameters(), strict=True))
    moved = max((a - b).abs().max().item() for a, b in zip(model.parameters(), ddp.module.parameters(), strict=True))
    if topology.is_main:
        with open(result_path, "w") as handle:
            implementation = library_implementation(init_mpi().Get_library_version())
            handle.write(f"{worst} {moved} {topology.nodes} {topology.world_size} {implementation}\n")
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
