"""Declarations a config field carries beside its type (`one_of`, `positive`, `non_negative`) and
the check that enforces them on a whole config tree (`check_fields`), used by hpcbench.config."""
from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Callable, Iterable, Optional, Tuple, Union

from hpcbench.errors import ConfigError

Choices = Union[Tuple[str, ...], Callable[[], Iterable[str]]]


def one_of(default: str, choices: Choices, unless: Optional[str] = None) -> Any:
    """A string field whose value must be one of `choices` (a tuple, or a function returning the
    names a registry holds, called only when a config is checked); not checked when the field
    `unless` of the same node is set (a user's own `_target_` makes `name` a free label)."""
    return field(default=default, metadata={"choices": choices, "unless": unless})


def positive(default: Any) -> Any:
    """A number that must be > 0 when set."""
    return field(default=default, metadata={"check": "positive"})


def non_negative(default: Any) -> Any:
    """A number that must be >= 0 when set."""
    return field(default=default, metadata={"check": "non_negative"})


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_fields(node: Any, prefix: str = "") -> None:
    """Enforce the `one_of` / `positive` / `non_negative` declarations of `node` and its children."""
    for spec in dataclasses.fields(node):
        key, value = f"{prefix}{spec.name}", getattr(node, spec.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{key}.")
        elif isinstance(value, dict):
            for name, child in value.items():
                if dataclasses.is_dataclass(child):
                    check_fields(child, f"{key}.{name}.")
        if value is None:
            continue
        if "choices" in spec.metadata and not (spec.metadata["unless"] and getattr(node, spec.metadata["unless"])):
            choices = spec.metadata["choices"]
            names = tuple(choices() if callable(choices) else choices)
            shown = ", ".join(names) if len(names) <= 12 else ", ".join(names[:12]) + f", ... ({len(names)} in all)"
            require(value in names, f"{key}={value!r} is not one of {shown}")
        check = spec.metadata.get("check")
        if check == "positive":
            require(value > 0, f"{key} must be positive, got {value}")
        elif check == "non_negative":
            require(value >= 0, f"{key} must be >= 0, got {value}")
