"""One slot of a packed allocation (slurm/packing.py): an srun task that runs its share of the
sweep's runs one after another, each in a forked process of its own.

Its own process gives each run what a lone job has: a run killed by the OOM killer or a signal is
that run's failure (recorded in its run directory), not its neighbours'; its logging and Hydra
state start clean. Forked, it shares what the slot imported already (torch: seconds a run).
A stop signal (a requeue, preemption, scancel) reaches every process of the step: the running
run checkpoints at its next step boundary (training/signals.py) and the slot starts no further
run; the requeued allocation runs the slot again, completed runs are not trained again
(training/continuation.py) and the interrupted one resumes from its checkpoint.
"""
from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import pickle
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, NoReturn, Optional, Sequence, Tuple

import cloudpickle

from hpcbench.packed_share import PACKED_ENV, PackedShare
from hpcbench.rundir import RunDirectory

log = logging.getLogger("hpcbench")

SlotRun = Tuple[List[str], int, str]  # a run's overrides, job number, run directory


@dataclass
class RunOutcome:
    """What became of one run of a slot: its Hydra JobReturn, or why it has none."""

    num: int
    result: Any = None
    error: Optional[str] = None


def bind_to_own_cores(slot: int, slots: int, cpus: int) -> Optional[List[int]]:
    """The cores this slot runs on. Slurm binds each task to its cores where the cluster has a
    task plugin (srun --cpu-bind=cores); where it has none, every task sees all of the node's
    cores and neighbours would share them: the slot takes its own part, if the node has one for
    each slot. None where it cannot be bound (fewer cores than the slots ask for)."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) <= cpus:
        return available
    if len(available) < slots * cpus:
        return None
    own = available[slot * cpus:(slot + 1) * cpus]
    os.sched_setaffinity(0, own)
    return own


class StopWatch:
    """Remembers a stop signal (SIGTERM: requeue, preemption, scancel; SIGINT) for the slot."""

    def __init__(self) -> None:
        self.seen: Optional[str] = None
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._note)

    def _note(self, number: int, _frame: Any) -> None:
        self.seen = signal.Signals(number).name


def _run_in_child(run_one: Callable[[List[str], int], Any], overrides: List[str], num: int, share: str,
                  sender: Any) -> None:
    # The slot handles the requeue signal (submitit's handler, inherited); the run itself stops
    # on SIGTERM with its own handler, set when it starts training.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_DFL)
    os.environ[PACKED_ENV] = share
    try:
        outcome = RunOutcome(num, result=run_one(overrides, num))
    except BaseException as error:  # noqa: BLE001 - the run's failure, told to the slot
        outcome = RunOutcome(num, error=f"{type(error).__name__}: {error}".splitlines()[0])
    # cloudpickle, as submitit's own results: Hydra's JobReturn holds the launcher's config class,
    # which Hydra's plugin discovery imported twice (plain pickle refuses such a class).
    sender.send_bytes(cloudpickle.dumps(outcome))
    sender.close()


def _run_one_process(run_one: Callable[[List[str], int], Any], run: SlotRun, share: PackedShare) -> RunOutcome:
    overrides, num, run_dir = run
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_run_in_child, args=(run_one, overrides, num, share.to_env(), sender),
                            name=f"run-{num}")
    child.start()
    sender.close()
    try:
        outcome = pickle.loads(receiver.recv_bytes())
    except EOFError:  # the process ended without a word: killed
        outcome = None
    child.join()
    if outcome is None:
        code = child.exitcode or 0
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        outcome = RunOutcome(num, error=f"the run's process {how} (packed slot {share.slot} of Slurm job "
                                        f"{share.slurm_job}; its neighbours went on)")
        RunDirectory(Path(run_dir)).mark_failed_if_running(outcome.error)
    return outcome


def run_slot(run_one: Callable[[List[str], int], Any], runs: List[SlotRun], slot: int, slots: int,
             packed_runs: int, slurm_job: str, preload: Sequence[str] = ()) -> List[RunOutcome]:
    """Run `runs` (this slot's of the allocation's `packed_runs`) one after another; an outcome
    each, in order. `preload`: modules every run imports, imported once before the first fork
    (they must start no threads at import: a forked process has only the thread that forked)."""
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))
    cores = bind_to_own_cores(slot, slots, cpus)
    if cores is None:
        log.warning("slot %d of %d: the node shows %d cores for %d slots of %d: not bound, neighbours share cores",
                    slot, slots, len(os.sched_getaffinity(0)), slots, cpus)
    node_mb = int(os.environ.get("SLURM_MEM_PER_NODE", "0") or 0)
    share = PackedShare(slurm_job, slot, slots, packed_runs, node_mb // slots or None, cores)
    for module in preload:  # once here rather than in each forked run (seconds each: torch, torchvision)
        importlib.import_module(module)
    stop = StopWatch()
    outcomes = []
    for run in runs:
        if stop.seen:
            break
        outcomes.append(_run_one_process(run_one, run, share))
    if stop.seen:
        # Stopped (a requeue, preemption, scancel): leave without a result, which would tell the
        # launcher that this slot has finished while its requeued allocation waits to run again.
        log.warning("slot %d: stopped by %s after %d of its %d runs; a requeued allocation runs the rest",
                    slot, stop.seen, len(outcomes), len(runs))
        leave_without_a_result(stop.seen)
    return outcomes


def leave_without_a_result(signal_name: str) -> NoReturn:
    """End a job's task stopped by a signal (requeue, preemption, scancel) before submitit writes
    its result: a result file would tell the launcher the job has ended while its requeued
    allocation waits to run again (submitit's done() believes the file before Slurm)."""
    logging.shutdown()
    os._exit(128 + signal.Signals[signal_name].value)
