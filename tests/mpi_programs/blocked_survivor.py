"""A survivor blocked on rank 0 when a peer is lost: run under `mpiexec -disable-auto-cleanup -n 3`.

Rank 2 leaves without a word, as the ranks of a lost host do. Rank 1 is waiting for rank 0 (a
receive from it), so it meets no loss of its own; rank 0 meets the loss in an exchange with rank 2
and names the cause as every failing rank 0 does (`failure_line`), writing that line to the file
given. Rank 1 is a survivor, never to be named as missing, though it records nothing of its own
before rank 0 exits (a real job shows this when a host dies while a rank waits on rank 0 in a ring).
"""
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from hpcbench.mpi.failures import failure_line, record_on_lost_contact
from hpcbench.mpi.process_group import init_process_group
from hpcbench.mpi.topology import init_mpi, mpi_topology


def main(run_dir: Path, result_path: Path) -> None:
    topology = mpi_topology(init_mpi().COMM_WORLD.Get_size())
    init_process_group(topology, "gloo", 60)
    record_on_lost_contact(run_dir, topology)  # as train_rank does
    dist.barrier()  # every connection is up
    if topology.rank == 2:
        os._exit(1)
    try:
        dist.recv(torch.zeros(1), src=0 if topology.rank == 1 else 2)
    except RuntimeError as error:
        line = failure_line(error, run_dir, topology.rank, topology.hosts)
        if topology.is_main:
            result_path.write_text(line)
    sys.stdout.flush()
    os._exit(0)  # not MPI_Finalize: it would wait for rank 2


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
