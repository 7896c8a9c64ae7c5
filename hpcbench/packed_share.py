"""What a run knows of the packed allocation it shares with other runs (slurm/packing.py): its
slot sets HPCBENCH_PACKED before the run starts; env.json records it (so the report can say a run
was packed) and data/job_memory.py takes the run's share of the allocation's memory from it."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import List, Mapping, Optional

PACKED_ENV = "HPCBENCH_PACKED"


@dataclass(frozen=True)
class PackedShare:
    slurm_job: str  # the allocation's job id
    slot: int  # the srun task this run ran in
    slots: int  # side by side in the allocation
    runs: int  # packed into the allocation
    memory_mb: Optional[int]  # this run's share of the allocation's memory (None: not limited)
    cores: Optional[List[int]]  # the cores this run was bound to (None: not bound)

    def to_env(self) -> str:
        return json.dumps(asdict(self))


def packed_share(environ: Mapping[str, str] = os.environ) -> Optional[PackedShare]:
    text = environ.get(PACKED_ENV)
    if not text:
        return None
    try:
        return PackedShare(**json.loads(text))
    except (ValueError, TypeError):  # set by hand, or by another version: not a share to trust
        return None
