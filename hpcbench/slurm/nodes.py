"""What the cluster can run now: the state of a partition's nodes (sinfo), checked before a sweep
is submitted, so a job that needs more nodes than are up is refused in one line instead of
waiting in the queue without a word."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Optional

from hpcbench.errors import ConfigError

# sinfo's compact states of nodes that cannot take a job now (a trailing *, ~, # ... is a flag).
UNAVAILABLE = ("down", "drain", "drng", "drained", "draining", "fail", "failg", "maint", "unk", "inval", "futr",
               "npc", "pow_dn", "boot")


@dataclass(frozen=True)
class NodeState:
    name: str
    state: str  # sinfo's compact state, flags stripped
    reason: str

    @property
    def usable(self) -> bool:
        return self.state not in UNAVAILABLE


def partition_nodes(partition: Optional[str]) -> Optional[List[NodeState]]:
    """The nodes of `partition` (the default partition when None); None when Slurm cannot say."""
    if shutil.which("sinfo") is None:
        return None
    command = ["sinfo", "-h", "-N", "-o", "%N|%t|%E"] + (["-p", partition] if partition else [])
    try:
        output = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    nodes = {}
    for line in output.splitlines():
        name, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        nodes[name] = NodeState(name, state.rstrip("*~#!%$@^-+"), reason.strip() if reason.strip() != "none" else "")
    return list(nodes.values())


def check_nodes_available(label: str, partition: Optional[str], nodes_needed: int) -> None:
    """Refuse a job that needs more of the partition's nodes than can run jobs now."""
    nodes = partition_nodes(partition)
    if nodes is None:
        return
    usable = [n for n in nodes if n.usable]
    if len(usable) >= nodes_needed:
        return
    down = "; ".join(f"{n.name} is {n.state}" + (f" ({n.reason})" if n.reason else "") for n in nodes if not n.usable)
    raise ConfigError(f"{label} needs {nodes_needed} node(s) of partition {partition or '(default)'}, but only "
                      f"{len(usable)} can run jobs now: {down or 'no nodes'}; resume them (scontrol update "
                      f"nodename=... state=resume) or ask for fewer nodes")
