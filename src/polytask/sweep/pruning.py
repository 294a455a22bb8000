"""Pruning a trial on its intermediate validation metric, epoch by epoch.

Optuna's pruners read values reported with ``trial.report``, which Optuna refuses in
multi-objective studies, so the rule is applied here, on the same data: every epoch's value of
the watched metric is kept in the trial's ``curve`` attribute, and a trial stops when its best
value so far is worse than the ``percentile`` rule allows among the finished trials' values at
that epoch (the rule of Optuna's ``PercentilePruner``; 50 is ``MedianPruner``). A stopped trial
finishes as an ordinary run with its best epoch (see the trainer's epoch callbacks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from polytask.sweep.spec import PruningSpec

CURVE = "curve"


def best_so_far(curve: Sequence[float], maximize: bool) -> float:
    finite = [v for v in curve if math.isfinite(v)]
    if not finite:
        return math.nan
    return max(finite) if maximize else min(finite)


def should_prune(value: float, others: Sequence[float], percentile: float, maximize: bool) -> bool:
    """True when ``value`` falls outside the best ``percentile`` % of ``others``: below their
    (100 - percentile)-th percentile when maximising, above their percentile-th otherwise. A NaN
    value (nothing finite yet) is pruned once there are others to compare with."""
    finite = [v for v in others if math.isfinite(v)]
    if not finite:
        return False
    if math.isnan(value):
        return True
    if maximize:
        return value < float(np.percentile(finite, 100.0 - percentile))
    return value > float(np.percentile(finite, percentile))


class EpochPruner:
    """The trainer callback of one trial: records the curve and decides whether to stop.

    ``finished_curves`` returns the curves of the study's completed trials (read from the study
    storage at each epoch, so trials finished by other processes count)."""

    def __init__(
        self,
        trial: Any,
        settings: PruningSpec,
        target: tuple[str, str] | None,
        maximize: bool,
        finished_curves: Any,
    ) -> None:
        self.trial = trial
        self.settings = settings
        self.target = target
        self.maximize = maximize
        self.finished_curves = finished_curves
        self.curve: list[float] = []
        self.pruned_at: int | None = None

    def value(self, row: dict[str, Any]) -> float:
        if self.target is None:
            found = row.get("monitor")
        else:
            task, metric = self.target
            found = (row.get("valid") or {}).get(task, {}).get(metric)
        return float(found) if isinstance(found, int | float) else math.nan

    def __call__(self, row: dict[str, Any]) -> bool:
        self.curve.append(self.value(row))
        self.trial.set_user_attr(CURVE, [v if math.isfinite(v) else None for v in self.curve])
        epoch = len(self.curve)
        if not self.settings.enabled or epoch <= self.settings.warmup_epochs:
            return False
        others = [
            float(c[epoch - 1])
            for c in self.finished_curves()
            if len(c) >= epoch and c[epoch - 1] is not None
        ]
        if len(others) < self.settings.min_trials:
            return False
        best = best_so_far(self.curve, self.maximize)
        if should_prune(best, others, self.settings.percentile, self.maximize):
            self.pruned_at = epoch
            return True
        return False
