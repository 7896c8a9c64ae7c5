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

# What every CLI run imports first, whatever it does (the entry modules themselves are run afresh
# as __main__ in each command).
PRELOAD = ["torch", "torchvision", "hydra", "omegaconf", "hpcbench.training.trainer", "hpcbench.training.rank"]

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


def _run_module(module: str, args: list[str], cwd: str, env: dict, base_path: list[str], stdout: str,
                stderr: str) -> None:
    """The forked process: become `python -m MODULE ARGS` in `cwd` with `env`, then exit as the
    interpreter would (threads joined, atexit handlers run, streams flushed)."""
    for fd, path in ((1, stdout), (2, stderr)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
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


def run(module: str, args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Like subprocess.run([python, -m, MODULE, *ARGS], capture_output=True, text=True)."""
    command = [sys.executable, "-m", module, *args]
    with tempfile.TemporaryDirectory(prefix="warm-cli-") as streams:
        stdout, stderr = Path(streams) / "stdout", Path(streams) / "stderr"
        streams_and_path = (_interpreter_path(), str(stdout), str(stderr))
        process = _context.Process(target=_run_module, args=(module, args, str(cwd), env, *streams_and_path))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(command, timeout, _read(stdout), _read(stderr))
        return subprocess.CompletedProcess(command, process.exitcode, _read(stdout), _read(stderr))


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
