"""Formatting shared by the report's sections: tables, numbers, how a configuration is named."""
from __future__ import annotations

from typing import Dict, Iterable, List

import numpy as np
import pandas as pd
from tabulate import tabulate


def md_table(header: List[str], rows: Iterable[List[str]]) -> List[str]:
    """A markdown (pipe) table; cells are shown as given (no number parsing)."""
    cells = [[str(cell).replace("|", "/") for cell in row] for row in rows]
    return tabulate(cells, headers=header, tablefmt="pipe", disable_numparse=True).splitlines()


def number(value, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def with_interval(row: pd.Series, column: str, digits: int, scale: float = 1.0) -> str:
    """"mean [low, high] (n=...)": the 95% interval of verdicts.py, when there is one."""
    text = number(row[column] * scale, digits)
    low, high = row.get(f"{column}_low", np.nan), row.get(f"{column}_high", np.nan)
    if not (np.isnan(low) or np.isnan(high)):
        text += f" [{number(low * scale, digits)}, {number(high * scale, digits)}]"
    return f"{text} (n={row['repeats']})"


def execution_mode(row: pd.Series) -> str:
    policy = f", {row['lr_policy']}" if row.get("lr_policy") else ""
    if row["mode"] == "cpu":
        return f"Serial CPU{policy}"
    if row["mode"] == "gpu":
        return f"Single GPU{policy}"
    unit = "GPUs" if row["device"] == "cuda" else "CPU ranks"
    return f"MPI + DDP ({row['devices']} {unit}, {row['nodes']} node{'s' if row['nodes'] > 1 else ''}{policy})"


def hardware(row: pd.Series) -> str:
    if row["device"] == "cuda":
        return f"{row['devices']}x {row['gpu_name'] or 'GPU'}"
    return f"{row['cpu_model'] or 'CPU'} ({row['hardware']})"


def training_type(row: pd.Series) -> str:
    if row["devices"] == 1:
        return "Serial" if row["mode"] == "cpu" else "Single device"
    return f"Data parallel, {row['scaling']} scaling"


def study_names(table: pd.DataFrame) -> Dict[str, str]:
    return {study: f"S{i}" for i, study in enumerate(sorted(table["study"].unique()), start=1)}
