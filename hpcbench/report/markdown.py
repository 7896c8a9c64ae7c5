"""report.md: deterministic text from the tables (no clock reads: same inputs, same bytes)."""
from __future__ import annotations

import json
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from hpcbench.report import diagnosis, limits, scaling, stats, verdicts, why
from hpcbench.report.collect import Collection, Problem
from hpcbench.report.format import execution_mode, hardware, md_table, number, study_names, training_type, with_interval
from hpcbench.report.limits import NetworkLimit
from hpcbench.report.scaling import ScalingFit

PUBLISHED = [  # the original study's own table, for reference
    ("Serial CPU", "2x Xeon Gold 6248 (4 cpus-per-task)", "Serial", 515.9, 0.962, 1.0),
    ("Single GPU", "1x Tesla V100-SXM2 16 GB", "Single GPU", 178.3, 0.960, 2.9),
    ("MPI + DDP (2 GPUs)", "2x Tesla V100-SXM2 16 GB", "Data parallel", 87.0, 0.956, 5.9),
]
PREDICTION_POINTS = (2, 4, 8, 16, 32, 64)
LOCAL_MARK = "(rank 0 shard)"


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
        *_packing(list(envs)),
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


def _packing(envs: List[dict]) -> List[str]:
    """Runs packed into one Slurm job with others (hydra.launcher.runs_per_allocation) time like
    lone ones where each had its own cores; the report says which were packed, and how."""
    packed = [e["packed"] for e in envs if e.get("packed")]
    if not packed:
        return []
    bound = sum(1 for share in packed if share.get("cores"))
    return [f"- Packed: {len(packed)} of these runs shared a Slurm job with other runs "
            f"(hydra.launcher.runs_per_allocation), {bound} of them bound to cores of their own"
            f"{'' if bound == len(packed) else ' (the others shared cores with their neighbours: their times may be slower)'}"]


def _studies(table: pd.DataFrame, names: Dict[str, str]) -> List[str]:
    lines = ["## Studies", "", "Runs that differ only in mode, ranks/nodes, hardware, batch size and learning-rate rule form "
             "one study.", ""]
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
             with_interval(r, "total_time_s", 2, 1 / 60), _accuracy(r), number(r["speedup"], 2, "x")]
            for _, r in table.iterrows()]
    lines += md_table(["Study", "Execution mode", "Hardware", "Training type", "Batch/device",
                       "Total time (min) [95% CI]", "Best test accuracy [95% CI]", "Speedup"], rows)
    if (table["accuracy_scope"] != "global").any():
        lines += ["", f"{LOCAL_MARK} rank 0's shard of the test set only (an imported MPI log): not a global accuracy, "
                      "and not tested for parity."]
    lines += ["", "The original study reported (for reference; not measured here):", ""]
    lines += md_table(["Execution mode", "Hardware", "Training type", "Total time (min)", "Best test accuracy", "Speedup"],
                    [[m, h, t, f"{minutes:.1f}", f"{acc:.3f}", f"{s:.1f}x"] for m, h, t, minutes, acc, s in PUBLISHED])
    return lines + [""]


def _scaling_tables(table: pd.DataFrame, names: Dict[str, str]) -> List[str]:
    """Per series, what a reader needs first (how fast, how efficient, as accurate?), then the
    details (nodes, global batch, time per epoch, speedup over the study's baseline) folded."""
    lines = ["## Scaling", ""]
    for (study, device, kind), group in table.groupby(["study", "device", "scaling"], sort=True):
        judged = "throughput (samples/s)" if kind == "weak" else "time"
        fixed = "per-device batch fixed" if kind == "weak" else "global batch fixed"
        lines += [f"### {names[study]} on {device}: {kind} scaling ({fixed}; judged on {judged})", ""]
        lines += md_table(["Devices", "Mode", "Batch/device", "Samples/s [95% CI]", "Scaling speedup", "Efficiency",
                           "Accuracy vs baseline [95% CI]"],
                          [[str(r["devices"]), execution_mode(r), str(r["batch_per_device"]),
                            with_interval(r, "samples_per_s", 1), number(r["scaling_speedup"], 2, "x"),
                            number(r["efficiency"] * 100, 1, "%"), _difference(r) + (" **!**" if r["acc_flag"] else "")]
                           for _, r in group.iterrows()])
        lines += ["", "<details><summary>Details: nodes, global batch, time per epoch, speedup vs the baseline</summary>",
                  ""]
        lines += md_table(["Devices", "Nodes", "Batch/device", "Global batch", "Time/epoch (s)", "Speedup vs baseline"],
                          [[str(r["devices"]), str(r["nodes"]), str(r["batch_per_device"]), str(r["global_batch"]),
                            number(r["time_per_epoch_s"], 2), number(r["speedup"], 2, "x")]
                           for _, r in group.iterrows()])
        lines += ["", "</details>", ""]
    return lines


def _predictions(fits: List[ScalingFit], names: Dict[str, str]) -> List[str]:
    lines = ["## Model prediction (fitted, not measured)", ""]
    if not fits:
        return lines + ["Not enough device counts to fit a scaling law (needs at least two per study and device).", ""]
    header = ["Study", "Device", "Scaling", "Law", "Parallel fraction p", *[f"{n} dev." for n in PREDICTION_POINTS]]
    rows = [[names[f.study], f.device, f.scaling, f.law, f"{f.parallel_fraction:.4f}",
             *[f"{v:.2f}x" for v in f.predict(np.array(PREDICTION_POINTS, dtype=float))]] for f in fits]
    return lines + md_table(header, rows) + [""]


def _accuracy(row: pd.Series) -> str:
    return with_interval(row, "best_test_acc", 4) + (f" {LOCAL_MARK}" if row["accuracy_scope"] != "global" else "")


def _difference(row: pd.Series) -> str:
    """"+1.23 pt [-0.50, +3.00], p=0.21": the difference from the baseline, its interval and p (Holm)."""
    if np.isnan(row["acc_diff"]):
        return "baseline" if row["baseline_row"] == row.name else "n/a"
    return (f"{row['acc_diff'] * 100:+.2f} pt [{row['acc_diff_low'] * 100:+.2f}, {row['acc_diff_high'] * 100:+.2f}], "
            f"p={row['acc_p_holm']:.3g}")


def _parity(table: pd.DataFrame, names: Dict[str, str], tolerance: float) -> List[str]:
    lines = ["## Accuracy parity", "",
             f"Flagged (**!**) only when the best test accuracy differs from the baseline's significantly (Holm-adjusted "
             f"p < 0.05 over the {int(table['acc_p'].notna().sum())} comparisons below) and by more than "
             f"{tolerance * 100:.1f} points (`--tolerance`).", ""]
    tested = table[table["acc_p"].notna()]
    if tested.empty:
        return lines + ["No configuration could be compared with a baseline.", ""]
    if (tested["repeats"] == 1).any():
        lines += ["A single run's test (two-proportion) sees the test set's sampling noise only, not how much another "
                  "seed would change the model; repeats (a `train.seed` sweep) test the configuration itself.", ""]
    rows = [[names[r["study"]], execution_mode(r), str(r["batch_per_device"]), str(r["repeats"]), r["baseline"],
             _difference(r).split(", p=")[0], r["acc_test"], f"{r['acc_p']:.3g}", f"{r['acc_p_holm']:.3g}",
             "**flagged**" if r["acc_flag"] else "no"] for _, r in tested.iterrows()]
    return lines + md_table(["Study", "Mode", "Batch/device", "Runs", "Baseline", "Difference [95% CI]", "Test",
                             "p", "p (Holm)", "Verdict"], rows) + [""]


def _time_to_accuracy(table: pd.DataFrame, names: Dict[str, str], target: Optional[float]) -> List[str]:
    what = f"{target:.4f} (`--target`)" if target is not None else "the baseline's best minus the tolerance"
    lines = ["## Time to accuracy", "", f"Target: {what}. Wall time of the epochs up to the first that reaches it.", ""]
    rows = [[names[r["study"]], execution_mode(r), str(r["batch_per_device"]), number(r["tta_target"], 4),
             r["tta_reached"], "not reached" if r["tta_reached"].startswith("0/") else number(r["tta_epochs"], 1),
             number(r["tta_time_s"], 1), number(r["tta_speedup"], 2, "x"), number(r["speedup"], 2, "x"),
             number(r["scaling_speedup"], 2, "x")] for _, r in table.iterrows()]
    return lines + md_table(["Study", "Mode", "Batch/device", "Target", "Reached", "Epochs", "Time (s)",
                             "Time-to-accuracy speedup", "Speedup (time)", "Scaling speedup"], rows) + [""]


def _problems(problems: List[Problem]) -> List[str]:
    lines = ["## Failed or incomplete runs", ""]
    if not problems:
        return lines + ["None.", ""]
    return lines + md_table(["Run", "Status", "Reason"], [[p.run_dir, p.status, p.reason.replace("|", "/")] for p in problems]) + [""]


def _figures(figures: Dict[str, str]) -> List[str]:
    lines = ["## Figures", ""]
    for title, file_name in figures.items():
        lines += [f"### {title}", "", f"![{title}]({file_name})", ""]
    return lines


def _definitions() -> List[str]:
    lines = ["## Definitions", ""]
    for module in (scaling, verdicts, stats, why, limits, diagnosis):
        lines += [line.strip() for line in (module.__doc__ or "").strip().splitlines()] + [""]
    return lines


def render(collection: Collection, table: pd.DataFrame, fits: List[ScalingFit], network: List[NetworkLimit],
           figures: Dict[str, str], title: str, inputs: List[str], tolerance: float,
           target: Optional[float] = None) -> str:
    names = study_names(table) if not table.empty else {}
    lines = _header(collection, title, inputs)
    if not table.empty:
        lines += _studies(table, names) + _summary_table(table, names) + _scaling_tables(table, names)
        lines += diagnosis.sentences(table, network, names)
        lines += why.time_table(table, names) + why.ceilings_table(table, names)
        lines += why.limits_table(table, network, names) + why.node_table(collection)
        lines += _predictions(fits, names) + _parity(table, names, tolerance) + _time_to_accuracy(table, names, target)
    lines += _problems(collection.problems) + _figures(figures) + _definitions()
    return "\n".join(lines)


def studies_json(table: pd.DataFrame) -> str:
    names = study_names(table) if not table.empty else {}
    return json.dumps({name: json.loads(study) for study, name in names.items()}, indent=2, sort_keys=True) + "\n"
