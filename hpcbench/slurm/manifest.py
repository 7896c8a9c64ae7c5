"""manifest.json in the sweep directory: which Slurm job runs which overrides into which run
directory, with the resources asked for and the last state seen."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from hpcbench.errors import HpcbenchError
from hpcbench.files import atomic_write_text

MANIFEST = "manifest.json"


@dataclass
class ManifestJob:
    num: int
    overrides: List[str]
    run_dir: str
    slurm_job_id: str
    request: Dict[str, Any]
    state: str = "SUBMITTED"
    error: Optional[str] = None
    slot: Optional[int] = None  # packed with other runs into its Slurm job: the srun task that runs it


@dataclass
class Manifest:
    sweep_dir: str
    submitted_at: str
    jobs: List[ManifestJob] = field(default_factory=list)

    def write(self) -> None:
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        atomic_write_text(Path(self.sweep_dir) / MANIFEST, text)

    @classmethod
    def read(cls, sweep_dir: Path) -> "Manifest":
        path = Path(sweep_dir) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise HpcbenchError(f"{path} does not exist: is {sweep_dir} a sweep submitted with hydra/launcher=slurm?") from None
        except ValueError as error:
            raise HpcbenchError(f"{path} is not valid JSON ({error})") from None
        return cls(data["sweep_dir"], data["submitted_at"], [ManifestJob(**job) for job in data["jobs"]])
