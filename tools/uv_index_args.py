"""Print the uv options that name the package sources pip is configured with here: `make install`
installs with uv (the same resolution as pip's, in seconds rather than minutes: ~150 packages and
6 GB of wheels), from wherever this machine's pip would install.

Reads `pip config list` (files and PIP_* variables, the variables winning as in pip): index-url,
extra-index-url, find-links and constraint become uv's options of those names.
"""
from __future__ import annotations

import ast
import shlex
import subprocess
import sys

OPTIONS = ("index-url", "extra-index-url", "find-links", "constraint")


PRECEDENCE = ("global", "user", "site", ":env:")  # pip's: a later scope's value replaces an earlier one's


def pip_settings() -> dict[str, list[str]]:
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            check=True).stdout
    by_scope: dict[str, dict[str, list[str]]] = {scope: {} for scope in PRECEDENCE}
    for line in listed.splitlines():  # scope.option='value'
        key, _, value = line.partition("=")
        scope, _, option = key.rpartition(".")
        if option in OPTIONS and scope in by_scope:
            by_scope[scope][option] = ast.literal_eval(value).split()
    return {option: values for scope in PRECEDENCE for option, values in by_scope[scope].items()}


def main() -> None:
    print(" ".join(f"--{option} {shlex.quote(value)}" for option, values in pip_settings().items() for value in values))


if __name__ == "__main__":
    main()
