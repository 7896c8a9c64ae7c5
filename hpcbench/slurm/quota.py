"""How many more jobs the cluster lets this user have: MaxSubmitJobs of the user's association in
Slurm's accounting (sacctmgr), less the jobs the user has queued or running now (squeue, an
array's tasks counted one by one, as Slurm counts them). A sweep that would pass it is refused
before anything is submitted: Slurm would take its first arrays and refuse the rest, leaving a
sweep half submitted."""
from __future__ import annotations

import getpass
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Optional

from hpcbench.errors import ConfigError


@dataclass(frozen=True)
class SubmitQuota:
    user: str
    account: str
    limit: int  # MaxSubmitJobs of the user's association
    queued: int  # the user's jobs in the queue now (pending or running)

    @property
    def left(self) -> int:
        return max(0, self.limit - self.queued)


def _output(command: List[str]) -> Optional[str]:
    if shutil.which(command[0]) is None:
        return None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def submit_quota(user: Optional[str] = None) -> Optional[SubmitQuota]:
    """The tightest MaxSubmitJobs among the user's associations; None where none is set or Slurm's
    accounting cannot say."""
    user = user or getpass.getuser()
    associations = _output(["sacctmgr", "-n", "-P", "show", "associations", "where", f"users={user}",
                            "format=Account,MaxSubmit"])
    limits = [(int(limit), account) for account, _, limit in (line.partition("|") for line in
                                                              (associations or "").splitlines()) if limit.strip()]
    if not limits:
        return None
    limit, account = min(limits)
    queue = _output(["squeue", "-h", "-r", "-u", user, "-o", "%i"]) or ""
    return SubmitQuota(user, account, limit, len(queue.split()))


def check_submit_quota(jobs: int) -> None:
    """Refuse a sweep of `jobs` jobs that the user's MaxSubmitJobs cannot take now."""
    quota = submit_quota()
    if quota is None or jobs <= quota.left:
        return
    raise ConfigError(f"this sweep submits {jobs} job(s), but user {quota.user} may have {quota.limit} in the queue "
                      f"(MaxSubmitJobs of account {quota.account}) and has {quota.queued} there now: sweep fewer "
                      f"values at a time, wait for the queued jobs, or ask the site for a higher limit")
