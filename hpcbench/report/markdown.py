"""report.md: deterministic text from the tables (no clock reads: same inputs, same bytes)."""
from __future__ import annotations

import json
from typing import Dict, Iterable, List

import numpy as np
import pandas as pd

from hpcbench.report import scaling
from hpcbench.report.collect import Collection, Problem
from hpcbench.report.scaling import ScalingFit

PUBLISHED = [  # the original study's own table, for reference
    ("Serial CPU", "2x Xeon Gold 6248 (4 cpus-per-task)", "Serial", 515.9, 0.962, 1.0),
    ("Single GPU", "1x Tesla V100-SXM2 16 GB", "Single GPU", 178.3, 0.960, 2.9),
    ("MPI + DDP (2 GPUs)", "2x Tesla V100-SXM2 16 GB", "Data parallel", 87.0, 0.956, 5.9),
]
PREDICTION_POINTS = (2, 4, 8, 16, 32, 64)


def _table(header: List[str], rows: Iterable[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _number(value, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{suffix}"


def _with_spread(row: pd.Series, column: str, digits: int, scale: float = 1.0) -> str:
    text = _number(row[column] * scale, digits)
    if row["repeats"] > 1:
        text += f" ± {_number(row[f'{column}_std'] * scale, digits)} (n={row['repeats']})"
    return text


def execution_mode(row: pd.Series) -> str:
    if row["mode"] == "cpu":
        return "Serial CPU"
    if row["mode"] == "gpu":
        return "Single GPU"
    unit = "GPUs" if row["device"] == "cuda" else "CPU ranks"
    return f"MPI + DDP ({row['devices']} {unit}, {row['nodes']} node{'s' if row['nodes'] > 1 else ''})"


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


def _header(collection: Collection, title: str, inputs: List[str]) -> List[str]:
    runs, envs = collection.runs, collection.environments.values()
    distinct = lambda values: ", ".join(sorted({str(v) for v in values if v})) or "n/a"  # noqa: E731
    starts = [s for s in runs.get("started_at", []) if s]
    ends = [s for s in runs.get("finished_at", []) if s]
    commits = {f"{e.get('git', {}).get('commit') or 'unknown'}{' (dirty)' if e.get('git', {}).get('dirty') else ''}" for e in envs}
    return [
        f"# {title}",
        "",
        f"- Inputs: {', '.join(inputs)}",
        f"- Runs: {len(runs)} completed, {len(collection.problems)} failed or incomplete",
        f"- Experiments: {distinct(runs.get('experiment', []))}",
        f"- When: {min(starts) if starts else 'n/a'} to {max(ends) if ends else 'n/a'}",
        f"- Hosts: {distinct(e.get('hostname') for e in envs)}",
        f"- CPU: {distinct(e.get('cpu_model') for e in envs)}",
        f"- GPU: {distinct(g for e in envs for g in e.get('gpus', []))}",
        f"- Software: Python {distinct(e.get('python') for e in envs)}; torch {distinct(e.get('torch') for e in envs)}; "
        f"torchvision {distinct(e.get('torchvision') for e in envs)}; CUDA {distinct(e.get('cuda') for e in envs)}; "
        f"MPI {distinct(e.get('mpi') for e in envs)}",
        f"- Git commit: {distinct(commits)}",
        "",
    ]


def _studies(table: pd.DataFrame, names: Dict[str, str]) -> List[str]:
    lines = ["## Studies", "", "Runs that differ only in mode, ranks/nodes, hardware and batch size form one study.", ""]
    for study, name in names.items():
        row = table[table["study"] == study].iloc[0]
        count = int(table[table["study"] == study]["repeats"].sum())
        lines.append(f"- **{name}**: {row['model']} on {row['dataset']} at {row['image_size']} px, "
                     f"{row['epochs']} epochs; {count} runs (workload in studies.json)")
    return lines + [""]


def _summary_table(table: pd.DataFrame, names: Dict[str, str]) -> List[str]:
    lines = ["## Summary (the original study's table)", "",
             "Speedup = baseline total time / total time; baseline = the study's serial CPU run "
             "(else its single-device run).", ""]
    rows = [[names[r["study"]], execution_mode(r), hardware(r), training_type(r), str(r["batch_per_device"]),
             _with_spread(r, "total_time_s", 2, 1 / 60),
             _with_spread(r, "best_test_acc", 4), _number(r["speedup"], 2, "x")] for _, r in table.iterrows()]
    lines += _table(["Study", "Execution mode", "Hardware", "Training type", "Batch/device", "Total time (min)",
                     "Best test accuracy", "Speedup"], rows)
    lines += ["", "The original study reported (for reference; not measured here):", ""]
    lines += _table(["Execution mode", "Hardware", "Training type", "Total time (min)", "Best test accuracy", "Speedup"],
                    [[m, h, t, f"{minutes:.1f}", f"{acc:.3f}", f"{s:.1f}x"] for m, h, t, minutes, acc, s in PUBLISHED])
    return lines + [""]


def _scaling_tables(table: pd.DataFrame, names: Dict[str, str]) -> List[str]:
    lines = ["## Scaling", ""]
    for (study, device, kind), group in table.groupby(["study", "device", "scaling"], sort=True):
        judged = "throughput (samples/s)" if kind == "weak" else "time"
        fixed = "per-device batch fixed" if kind == "weak" else "global batch fixed"
        lines += [f"### {names[study]} on {device}: {kind} scaling ({fixed}; judged on {judged})", ""]
        rows = [[str(r["devices"]), str(r["nodes"]), r["mode"], str(r["batch_per_device"]), str(r["global_batch"]),
                 _with_spread(r, "samples_per_s", 1), _number(r["time_per_epoch_s"], 2), _number(r["speedup"], 2, "x"),
                 _number(r["scaling_speedup"], 2, "x"), _number(r["efficiency"] * 100, 1, "%"),
                 _number(r["acc_delta"] * 100, 2, " pt") + (" **!**" if r["acc_flag"] else "")]
                for _, r in group.iterrows()]
        lines += _table(["Devices", "Nodes", "Mode", "Batch/device", "Global batch", "Samples/s", "Time/epoch (s)",
                         "Speedup vs baseline", "Scaling speedup", "Efficiency", "Accuracy delta"], rows)
        lines.append("")
    return lines


def _predictions(fits: List[ScalingFit], names: Dict[str, str]) -> List[str]:
    lines = ["## Model prediction (fitted, not measured)", ""]
    if not fits:
        return lines + ["Not enough device counts to fit a scaling law (needs at least two per study and device).", ""]
    header = ["Study", "Device", "Scaling", "Law", "Parallel fraction p", *[f"{n} dev." for n in PREDICTION_POINTS]]
    rows = [[names[f.study], f.device, f.scaling, f.law, f"{f.parallel_fraction:.4f}",
             *[f"{v:.2f}x" for v in f.predict(np.array(PREDICTION_POINTS, dtype=float))]] for f in fits]
    return lines + _table(header, rows) + [""]


def _parity(table: pd.DataFrame, names: Dict[str, str], tolerance: float) -> List[str]:
    lines = ["## Accuracy parity", "",
             f"Runs whose best test accuracy differs from their baseline's by more than {tolerance * 100:.1f} points:", ""]
    flagged = table[table["acc_flag"]]
    if flagged.empty:
        return lines + ["None.", ""]
    for _, r in flagged.iterrows():
        lines.append(f"- {names[r['study']]} {execution_mode(r)}, batch {r['batch_per_device']}/device: "
                     f"{r['best_test_acc']:.4f} vs {r['baseline']} ({r['acc_delta'] * 100:+.2f} pt)")
    return lines + [""]


def _problems(problems: List[Problem]) -> List[str]:
    lines = ["## Failed or incomplete runs", ""]
    if not problems:
        return lines + ["None.", ""]
    return lines + _table(["Run", "Status", "Reason"], [[p.run_dir, p.status, p.reason.replace("|", "/")] for p in problems]) + [""]


def _figures(figures: Dict[str, str]) -> List[str]:
    lines = ["## Figures", ""]
    for title, file_name in figures.items():
        lines += [f"### {title}", "", f"![{title}]({file_name})", ""]
    return lines


def render(collection: Collection, table: pd.DataFrame, fits: List[ScalingFit], figures: Dict[str, str],
           title: str, inputs: List[str], tolerance: float) -> str:
    names = study_names(table) if not table.empty else {}
    lines = _header(collection, title, inputs)
    if not table.empty:
        lines += _studies(table, names) + _summary_table(table, names) + _scaling_tables(table, names)
        lines += _predictions(fits, names) + _parity(table, names, tolerance)
    lines += _problems(collection.problems) + _figures(figures)
    lines += ["## Definitions", "", *[line.strip() for line in (scaling.__doc__ or "").strip().splitlines()], ""]
    return "\n".join(lines)


def studies_json(table: pd.DataFrame) -> str:
    names = study_names(table) if not table.empty else {}
    return json.dumps({name: json.loads(study) for study, name in names.items()}, indent=2, sort_keys=True) + "\n"
