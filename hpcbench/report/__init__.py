"""Analysis of run directories: speedup, efficiency and accuracy tables, plots and report.md.

    from hpcbench.report import load_runs
    runs = load_runs("outputs/sweeps/2026-...")   # one row per completed run (pandas DataFrame)
"""
import importlib

__all__ = ["load_runs"]


def __getattr__(name: str):
    """load_runs, imported when used: hpcbench-report starts its readers before pandas imports
    (report/cli.py), and importing any module of this package runs this one first."""
    if name == "load_runs":
        return importlib.import_module("hpcbench.report.collect").load_runs
    raise AttributeError(f"module 'hpcbench.report' has no attribute {name!r}")
