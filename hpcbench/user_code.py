"""Calling the user's own functions (`model._target_`, `data._target_`) the way Hydra does."""
from __future__ import annotations

from typing import Any, Dict, Type

from hpcbench.errors import HpcbenchError


def call_target(key: str, target: str, args: Dict[str, Any], error: Type[HpcbenchError], **fixed: Any) -> Any:
    """`target(**fixed, **args)` through Hydra's instantiate (nested `_target_`s in `args` are built
    too). Whatever goes wrong in the user's code becomes one `error` line naming `key`."""
    from hydra.utils import instantiate  # lazy: only custom workloads need Hydra here

    try:
        return instantiate({"_target_": target, **args}, **fixed)
    except Exception as failure:  # an unimportable module, a wrong argument, a bug in the user's code
        cause = failure.__cause__ or failure
        detail = " ".join(str(cause).split())  # Hydra's messages span lines
        raise error(f"{key}={target} failed: {type(cause).__name__}: {detail}") from None
