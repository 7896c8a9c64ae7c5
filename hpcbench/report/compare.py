"""hpcbench-compare OLD NEW: did anything get slower or less accurate? A regression gate for a
cluster's CI after a software, driver or hardware change.

    hpcbench-compare outputs/sweeps/<before> outputs/sweeps/<after>
    hpcbench-compare reports/<before> reports/<after> --threshold 0.05 --csv changes.csv --out changes.md

OLD and NEW are each a sweep, a run directory, a folder of runs, or a report directory (its
runs.csv). Configurations are matched by what they ran (model, data, image size, epochs, mode,
device, ranks, nodes, scaling, batch, hardware, learning-rate rule). Per configuration in both:
the change in throughput, total time and best accuracy, each with its 95% interval and p-value
(report/stats.py; Holm-adjusted over the configurations), and a verdict: `slower` / `faster` when
throughput (or, with repeats, time) changed significantly by more than --threshold (default 5%),
`accuracy lower` when accuracy dropped significantly by more than --tolerance, else `no significant
change`. Exit status 1 when any configuration regressed (slower or accuracy lower), 0 otherwise, 2
for bad input.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd

from hpcbench.cli import fail
from hpcbench.errors import HpcbenchError
from hpcbench.files import atomic_write_text
from hpcbench.report import stats
from hpcbench.report.collect import collect
from hpcbench.report.format import md_table

KEYS = ["model", "dataset", "image_size", "epochs", "mode", "device", "world_size", "nodes", "scaling",
        "batch_per_device", "hardware", "lr_policy"]
RUNS_CSV = "runs.csv"


def load_side(paths: List[Path]) -> pd.DataFrame:
    """The completed runs under `paths` (report directories contribute their runs.csv)."""
    frames = []
    for path in paths:
        if (path / RUNS_CSV).is_file():
            frames.append(pd.read_csv(path / RUNS_CSV))
        else:
            frames.append(collect([path]).runs)
    runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if runs.empty:
        raise HpcbenchError(f"no completed runs in {', '.join(map(str, paths))}")
    # No rule is "" in a run directory and an empty (NaN) cell in runs.csv: the same configuration.
    runs["lr_policy"] = [rule if isinstance(rule, str) else "" for rule in runs.get("lr_policy", [""] * len(runs))]
    return runs


def _relative(diff: stats.Difference, reference: float) -> stats.Difference:
    return stats.Difference(diff.value / reference, diff.low / reference, diff.high / reference, diff.p, diff.test)


def throughput_change(new: pd.DataFrame, old: pd.DataFrame) -> Optional[stats.Difference]:
    """Relative change of images/s: Welch over runs (n >= 2 both), else over the two runs' steps."""
    if len(new) >= 2 and len(old) >= 2:
        return _relative(stats.welch(list(new["samples_per_s"]), list(old["samples_per_s"])), old["samples_per_s"].mean())
    moments = [(r["step_time_mean_s"].iloc[0], r["step_time_std_s"].iloc[0], r["timed_steps"].iloc[0]) for r in (new, old)]
    if any(m is None or (isinstance(m, float) and math.isnan(m)) or n < 2 for (m, _, n) in moments):
        return None
    step = stats.welch_from_moments(*moments)  # new step time - old step time
    old_step = moments[1][0]

    def rate_change(d: float) -> float:  # images/s go as 1 / step time
        return old_step / (old_step + d) - 1

    return stats.Difference(rate_change(step.value), rate_change(step.high), rate_change(step.low), step.p, step.test)


def time_change(new: pd.DataFrame, old: pd.DataFrame) -> Optional[stats.Difference]:
    if len(new) < 2 or len(old) < 2:
        return None  # one run has no spread: the verdict rests on throughput
    return _relative(stats.welch(list(new["total_time_s"]), list(old["total_time_s"])), old["total_time_s"].mean())


def accuracy_change(new: pd.DataFrame, old: pd.DataFrame) -> Optional[stats.Difference]:
    known = all(t and not math.isnan(t) for t in [*new["test_images"], *old["test_images"]])
    scope = set(new.get("accuracy_scope", ["global"])) | set(old.get("accuracy_scope", ["global"]))
    if not known or scope != {"global"}:
        return None
    return stats.accuracy_difference(list(new["best_test_acc"]), [int(t) for t in new["test_images"]],
                                     list(old["best_test_acc"]), [int(t) for t in old["test_images"]])


def compare(old: pd.DataFrame, new: pd.DataFrame, threshold: float, tolerance: float) -> pd.DataFrame:
    """One row per configuration present on either side."""
    rows: List[Dict] = []
    groups_old, groups_new = dict(list(old.groupby(KEYS, dropna=False))), dict(list(new.groupby(KEYS, dropna=False)))
    for key in sorted(set(groups_old) | set(groups_new), key=str):
        row = dict(zip(KEYS, key, strict=True))
        if key not in groups_old or key not in groups_new:
            rows.append({**row, "present": "old only" if key in groups_old else "new only"})
            continue
        o, n = groups_old[key], groups_new[key]
        row.update(present="both", old_runs=len(o), new_runs=len(n))
        for name, change in (("rate", throughput_change(n, o)), ("time", time_change(n, o)),
                             ("acc", accuracy_change(n, o))):
            row.update({f"{name}_change": change.value if change else math.nan,
                        f"{name}_low": change.low if change else math.nan,
                        f"{name}_high": change.high if change else math.nan,
                        f"{name}_p": change.p if change else math.nan})
        rows.append(row)
    table = pd.DataFrame(rows)
    both = table["present"] == "both"
    for name in ("rate", "time", "acc"):
        if f"{name}_p" not in table:
            table[f"{name}_p"] = math.nan
        table[f"{name}_p_holm"] = stats.holm(list(table[f"{name}_p"]))
    table["verdict"] = [verdict(r, threshold, tolerance) if b else "" for (_, r), b in zip(table.iterrows(), both,
                                                                                          strict=True)]
    return table


def verdict(row: pd.Series, threshold: float, tolerance: float) -> str:
    significant = lambda name: row[f"{name}_p_holm"] < stats.ALPHA  # noqa: E731
    slower = (significant("rate") and row["rate_change"] < -threshold) or (
        significant("time") and row["time_change"] > threshold)
    faster = (significant("rate") and row["rate_change"] > threshold) or (
        significant("time") and row["time_change"] < -threshold)
    worse = significant("acc") and row["acc_change"] < -tolerance
    words = ["slower" if slower else "faster" if faster else "no significant change"]
    return ", ".join(words + (["accuracy lower"] if worse else []))


def regressed(table: pd.DataFrame) -> bool:
    return bool(table["verdict"].str.contains("slower|accuracy lower").any())


def _change(row: pd.Series, name: str, scale: float = 100, unit: str = "%") -> str:
    if math.isnan(row[f"{name}_change"]):
        return "n/a"
    return (f"{row[f'{name}_change'] * scale:+.1f}{unit} [{row[f'{name}_low'] * scale:+.1f}, "
            f"{row[f'{name}_high'] * scale:+.1f}], p={row[f'{name}_p_holm']:.3g}")


def render(table: pd.DataFrame, old: str, new: str, threshold: float, tolerance: float) -> str:
    both = table[table["present"] == "both"]
    lines = [f"# hpcbench-compare: {old} -> {new}", "",
             f"Verdicts at a {threshold * 100:.0f}% threshold (throughput, time) and a {tolerance * 100:.1f} point "
             "tolerance (accuracy); changes are new vs old with 95% intervals, p Holm-adjusted.", ""]
    rows = [[r["model"], r["mode"], f"{r['device']} x{r['world_size']}", str(r["batch_per_device"]),
             f"{r['old_runs']} -> {r['new_runs']}", _change(r, "rate"), _change(r, "time"),
             _change(r, "acc", 100, " pt"), f"**{r['verdict']}**" if "slower" in r["verdict"] or "lower" in r["verdict"]
             else r["verdict"]] for _, r in both.iterrows()]
    lines += md_table(["Model", "Mode", "Devices", "Batch/device", "Runs", "Throughput", "Total time", "Best accuracy",
                       "Verdict"], rows)
    only = table[table["present"] != "both"]
    if not only.empty:
        lines += ["", "In one side only:", ""]
        lines += md_table(["Model", "Mode", "Devices", "Batch/device", "Present"],
                          [[r["model"], r["mode"], f"{r['device']} x{r['world_size']}", str(r["batch_per_device"]),
                            r["present"]] for _, r in only.iterrows()])
    lines += ["", f"Regression: {'yes' if regressed(table) else 'no'}", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="hpcbench-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="a sweep, run directory, folder of runs, or report directory")
    parser.add_argument("new", type=Path)
    parser.add_argument("--threshold", type=float, default=0.05, help="smallest relative speed change that matters")
    parser.add_argument("--tolerance", type=float, default=0.01, help="smallest accuracy drop that matters (points/100)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here (default: stdout)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV")
    args = parser.parse_args(argv)
    try:
        for path in (args.old, args.new):
            if not path.exists():
                raise HpcbenchError(f"{path} does not exist")
        table = compare(load_side([args.old]), load_side([args.new]), args.threshold, args.tolerance)
    except HpcbenchError as error:
        fail("hpcbench-compare", str(error), 2)
    text = render(table, str(args.old), str(args.new), args.threshold, args.tolerance)
    if args.out:
        atomic_write_text(args.out, text)
    else:
        print(text)
    if args.csv:
        atomic_write_text(args.csv, table.to_csv(index=False, float_format="%.6f"))
    raise SystemExit(1 if regressed(table) else 0)


if __name__ == "__main__":
    main()
