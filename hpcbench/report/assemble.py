"""The report from a collection of runs: the scaling table and its verdicts, the plots, the CSVs,
studies.json and report.md in `out` (the statistics and plotting libraries: imported by cli.py
while the runs are read)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from hpcbench.files import atomic_write_text
from hpcbench.report import plots
from hpcbench.report.collect import Collection
from hpcbench.report.format import study_names
from hpcbench.report.limits import network_limits
from hpcbench.report.markdown import render, studies_json
from hpcbench.report.scaling import PER_RUN, add_scaling_columns, configurations, fit_scaling_laws
from hpcbench.report.verdicts import add_intervals, add_parity, add_time_to_accuracy

CSV_FLOAT = "%.6f"


def _run_labels(collection) -> dict:
    """run -> (its name, its configuration) for the curves' legend."""
    return {r.run_dir: (Path(r.run_dir).name, f"{r.mode} {r.device} x{r.world_size} b{r.batch_per_device} ({r.scaling})")
            for r in collection.runs.itertuples()}


def assemble(collection: Collection, paths: List[Path], out: Path, baseline: str, tolerance: float, title: str,
             target: Optional[float]) -> Path:
    table = configurations(collection.runs)
    fits, limits = [], []
    if not table.empty:
        table = add_intervals(add_scaling_columns(table, baseline))
        table = add_time_to_accuracy(add_parity(table, tolerance), collection.metrics, tolerance, target)
        fits, limits = fit_scaling_laws(table), network_limits(table)
    out.mkdir(parents=True, exist_ok=True)
    drawings: List[plots.Drawing] = []  # (title, plot, arguments) in the report's order
    if not table.empty:
        names = study_names(table)
        labels = [f"{names[r.study]} {r.mode} x{r.devices} b{r.batch_per_device}" for r in table.itertuples()]
        for suffix, rows in plots.by_study(table, names):  # one plot per study when there are many series
            of = f": {suffix[1:]}" if suffix else ""
            drawings += [
                (f"Speedup vs devices{of}", plots.speedup_plot, (rows, fits, limits, names, out / f"speedup{suffix}.png")),
                (f"Parallel efficiency vs devices{of}", plots.efficiency_plot, (rows, names, out / f"efficiency{suffix}.png")),
                (f"Throughput vs batch size{of}", plots.throughput_plot, (rows, names, out / f"throughput{suffix}.png"))]
        drawings += [
            ("Time per step by phase", plots.time_breakdown_plot, (table, labels, out / "time_breakdown.png")),
            ("Test accuracy and loss per epoch", plots.curves_plot,
             (collection.metrics, _run_labels(collection), out / "curves.png"))]
    figures = plots.draw(drawings)
    inputs = [p.name for p in paths]
    runs_csv = collection.runs.copy()
    if not runs_csv.empty:
        runs_csv["study"] = runs_csv["study"].map(study_names(table))
        table_csv = table.assign(study=table["study"].map(study_names(table))).drop(columns=list(PER_RUN.values()))
        atomic_write_text(out / "scaling.csv", table_csv.to_csv(index=False, float_format=CSV_FLOAT))
    atomic_write_text(out / "runs.csv", runs_csv.to_csv(index=False, float_format=CSV_FLOAT))
    atomic_write_text(out / "studies.json", studies_json(table))
    atomic_write_text(out / "report.md", render(collection, table, fits, limits, figures, title, inputs, tolerance,
                                                target))
    return out / "report.md"
