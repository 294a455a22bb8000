"""Optuna sweeps over run specs: ``polytask sweep sweep.yaml -o STUDY``.

Trials are ordinary run directories under ``STUDY/runs``; the study (SQLite by default) resumes
after a kill; the Pareto front over the objectives is printed, plotted and saved in
``study.json``. Optuna is imported only when a sweep runs (the ``sweep`` extra).
"""

from polytask.sweep.run import run_sweep
from polytask.sweep.spec import Sweep, load_sweep

__all__ = ["Sweep", "load_sweep", "run_sweep"]
