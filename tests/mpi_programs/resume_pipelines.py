"""Exact resume of every pipeline fed by DataLoader workers to a model with dropout, on DDP ranks:
`mpiexec -n 2 python resume_pipelines.py SHARDS OUT KIND...`. For each pipeline KIND, three
runs, each a fit() of this process (the process group is started once, as train_rank does): 2
epochs uninterrupted (OUT/KIND/whole), 1 epoch (OUT/KIND/resumed), then that run continued to 2
epochs by the same command with train.epochs=2, as a requeued job continues it. The test compares
their metrics.jsonl: a resumed run starts its persistent workers in epoch 2, an uninterrupted
one in epoch 1, and nothing they do may shift the random draws of dropout or augmentation."""
import logging
import sys
from dataclasses import replace
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "user_models")]  # helpers; small_dropout
from helpers import TINY, compose_run  # noqa: E402

from hpcbench.mpi.process_group import init_process_group, shutdown  # noqa: E402
from hpcbench.mpi.topology import init_mpi, mpi_topology  # noqa: E402
from hpcbench.training.trainer import fit  # noqa: E402


def main(shards: str, out: str, kinds: list[str]) -> None:
    topology = mpi_topology(init_mpi().COMM_WORLD.Get_size())
    topology = replace(topology, store_address=init_process_group(topology, "gloo", 120))
    logging.basicConfig(level=logging.INFO if topology.is_main else logging.WARNING, format="%(message)s")
    for kind in kinds:
        base = [*TINY, "+model._target_=small_dropout.build", "model.name=small_dropout", "data=shards",
                f"data.root={shards}", f"data.pipeline={kind}", "data.num_workers=2", "mode=ddp",
                f"mode.ranks={topology.world_size}", "mode.device=cpu", "train.keep_checkpoints=resumable"]
        fit(compose_run([*base, "train.epochs=2"]), Path(out) / kind / "whole", topology)
        fit(compose_run([*base, "train.epochs=1"]), Path(out) / kind / "resumed", topology)
        fit(compose_run([*base, "train.epochs=2"]), Path(out) / kind / "resumed", topology)
    shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
