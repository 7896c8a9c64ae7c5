"""Gradient correctness of DDP: run under `mpiexec -n 2`. One optimizer step of 2 ranks x batch b
must leave the same parameters as one serial step with batch 2b on the same samples.

The model runs in eval mode: in train mode BatchNorm normalises each rank's batch with its own
statistics (DDP does not synchronise them) and Dropout draws different masks, both of which are
expected to differ from the serial 2b batch. Gradients and the Adam step are what is compared.
"""
import copy
import sys

import torch

from hpcbench.models import build_model
from hpcbench.mpi.process_group import init_process_group, shutdown
from hpcbench.mpi.topology import mpi_topology


def step(model, images, labels):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.eval()
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()


def main(result_path: str) -> None:
    topology = mpi_topology(2)
    init_process_group(topology, "gloo", 60)
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", num_classes=10)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    serial = copy.deepcopy(model)
    step(serial, images, labels)

    ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(model))
    half = slice(4 * topology.rank, 4 * topology.rank + 4)
    step(ddp, images[half], labels[half])

    worst = max((a - b).abs().max().item() for a, b in zip(serial.parameters(), ddp.module.parameters(), strict=True))
    moved = max((a - b).abs().max().item() for a, b in zip(model.parameters(), ddp.module.parameters(), strict=True))
    if topology.is_main:
        with open(result_path, "w") as handle:
            handle.write(f"{worst} {moved}\n")
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
