"""Analysis of run directories: speedup, efficiency and accuracy tables, plots and report.md.

    from hpcbench.report import load_runs
    runs = load_runs("outputs/sweeps/2026-...")   # one row per completed run (pandas DataFrame)
"""
from hpcbench.report.collect import collect, load_runs

__all__ = ["collect", "load_runs"]
