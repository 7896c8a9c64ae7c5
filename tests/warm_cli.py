"""`python -m MODULE ARGS`, without the seconds of importing torch, torchvision and Hydra again for
every command a test runs (4-5 s of every CLI run on the 2-core CI machines, most of a tiny run).

A fork server (multiprocessing's) imports them once; each command runs in a fresh process forked
from it: its own working directory, environment, argv, stdout and stderr, exit status, atexit
handlers, threads joined at exit, as `python -m` runs it. What it shares with the other commands
is only the modules already imported. A command whose outcome depends on what the interpreter
imports or reads at start-up (a test that no torch is imported, thread counts of OpenMP) runs in a
new interpreter: helpers.run_cli(..., fresh_interpreter=True), or any subprocess of the product.
"""
from __future__ import annotations

import atexit
import functools
import importlib
import json
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

# What the CLIs import before they do anything: training, and the report's pandas, SciPy and
# matplotlib (the entry modules themselves run afresh as __main__ in each command).
PRELOAD = ["torch", "torchvision", "hydra", "omegaconf", "hpcbench.training.trainer", "hpcbench.training.rank",
           "hpcbench.report.cli", "hpcbench.report.compare"]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def start_server() -> None:
    """Start the fork server now, with the environment the test session began with (it imports
    PRELOAD in that environment)."""
    from multiprocessing import forkserver

    forkserver.ensure_running()


@functools.cache
def _interpreter_path() -> list[str]:
    """sys.path of a new interpreter without PYTHONPATH, less its first entry (the working
    directory under -m): the test session's own entries (tests/) are not a CLI's."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shown = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"], env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    return json.loads(shown.stdout)


def _run_module(module: str, args: list[str], cwd: str, env: dict, base_path: list[str], streams: str,
                new_session: bool, cgroup: str | None, umask: int | None) -> None:
    """The forked process: become `python -m MODULE ARGS` in `cwd` with `env` (first joining the
    control group whose `cgroup.procs` is `cgroup`, as a job's processes are put in the job's, and
    taking `umask`, as a shell's `umask` before the command), then exit as the interpreter would
    (threads joined, atexit handlers run, streams flushed)."""
    if cgroup:
        Path(cgroup).write_text(str(os.getpid()))
    if umask is not None:
        os.umask(umask)
    if new_session:
        os.setsid()
    for fd, name in ((1, "stdout"), (2, "stderr")):
        os.dup2(os.open(os.path.join(streams, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    pythonpath = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    sys.path[:] = [cwd, *pythonpath, *base_path]  # as the interpreter builds it for `python -m`
    importlib.invalidate_caches()
    multiprocessing.set_start_method(None, force=True)  # the interpreter's default, not the fork server's
    sys.argv = [module, *args]  # runpy puts the module's file first, as `python -m` does
    sys.modules.pop(module, None)  # run afresh as __main__, not the copy a preloaded module imported
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = _exit_status(stop)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    threading._shutdown()  # the interpreter's own order at exit: threads, then atexit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_status(stop: SystemExit) -> int:
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


class Started:
    """`python -m MODULE ARGS` started without waiting: the part of subprocess.Popen (text=True,
    start_new_session=NEW_SESSION) the tests use. stdout and stderr are read when it has ended."""

    def __init__(self, module: str, args: list[str], cwd: Path, env: dict, new_session: bool = False,
                 cgroup: Path | None = None, umask: int | None = None):
        self.args = [sys.executable, "-m", module, *args]
        self._streams = tempfile.TemporaryDirectory(prefix="warm-cli-")
        self._process = _context.Process(target=_run_module, args=(module, args, str(cwd), env, _interpreter_path(),
                                                                   self._streams.name, new_session,
                                                                   str(cgroup) if cgroup else None, umask))
        self._process.start()
        self.pid = self._process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self._read("stdout"), self._read("stderr")

    def send_signal(self, signal: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal)

    def kill(self) -> None:
        if self.poll() is None:
            self._process.kill()

    def _read(self, name: str) -> str:
        path = Path(self._streams.name) / name
        return path.read_text(errors="replace") if path.exists() else ""


def run(module: str, args: list[str], cwd: Path, env: dict, timeout: float,
        cgroup: Path | None = None, umask: int | None = None) -> subprocess.CompletedProcess:
    """Like subprocess.run([python, -m, MODULE, *ARGS], capture_output=True, text=True)."""
    started = Started(module, args, cwd, env, cgroup=cgroup, umask=umask)
    try:
        stdout, stderr = started.communicate(timeout)
    except subprocess.TimeoutExpired:
        started.kill()
        started.wait()
        raise
    return subprocess.CompletedProcess(started.args, started.returncode, stdout, stderr)
