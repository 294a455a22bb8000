"""The pruning rule against its definition (the percentile rule of Optuna's PercentilePruner;
the median rule at 50), and the epoch callback that applies it."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from polytask.sweep.pruning import CURVE, EpochPruner, best_so_far, should_prune
from polytask.sweep.spec import PruningSpec


@pytest.mark.parametrize("seed", range(20))
def test_median_rule_is_the_median(seed):
    rng = np.random.default_rng(seed)
    others = rng.normal(size=int(rng.integers(1, 9))).tolist()
    value = float(rng.normal())
    median = statistics.median(others)
    assert should_prune(value, others, 50.0, maximize=True) == (value < median)
    assert should_prune(value, others, 50.0, maximize=False) == (value > median)


def test_percentile_keeps_the_top_share():
    others = [0.1, 0.2, 0.3, 0.4, 0.5]  # maximise, keep the top 25 %: threshold = 75th pct = 0.4
    assert should_prune(0.39, others, 25.0, maximize=True)
    assert not should_prune(0.41, others, 25.0, maximize=True)
    # minimise, keep the best 25 % (lowest): threshold = 25th percentile = 0.2
    assert should_prune(0.21, others, 25.0, maximize=False)
    assert not should_prune(0.19, others, 25.0, maximize=False)


def test_nothing_to_compare_never_prunes_and_nan_is_pruned():
    assert not should_prune(0.0, [], 50.0, maximize=True)
    assert not should_prune(0.0, [math.nan], 50.0, maximize=True)
    assert should_prune(math.nan, [0.5], 50.0, maximize=True)


def test_best_so_far():
    assert best_so_far([0.5, math.nan, 0.7, 0.6], maximize=True) == 0.7
    assert best_so_far([0.5, 0.7, 0.4], maximize=False) == 0.4
    assert math.isnan(best_so_far([math.nan], maximize=True))


class FakeTrial:
    def __init__(self) -> None:
        self.user_attrs: dict = {}

    def set_user_attr(self, key, value) -> None:
        self.user_attrs[key] = value


def row(epoch: int, auc: float) -> dict:
    return {"epoch": epoch, "valid": {"click": {"auc": auc}}, "monitor": 1.0}


def test_epoch_pruner_waits_for_warmup_and_finished_trials():
    finished = [[0.6, 0.7, 0.8, 0.85], [0.6, 0.75, 0.8, 0.9]]
    settings = PruningSpec(warmup_epochs=1, min_trials=2, percentile=50.0)
    trial = FakeTrial()
    pruner = EpochPruner(trial, settings, ("click", "auc"), True, lambda: finished)
    assert pruner(row(1, 0.1)) is False  # warm-up epoch
    assert pruner(row(2, 0.8)) is False  # 0.8 >= median(0.7, 0.75)
    assert pruner(row(3, 0.5)) is False  # best so far 0.8 >= median(0.8, 0.8)
    assert pruner(row(4, 0.5)) is True  # best so far 0.8 < median(0.85, 0.9)
    assert pruner.pruned_at == 4
    assert trial.user_attrs[CURVE] == [0.1, 0.8, 0.5, 0.5]


def test_epoch_pruner_needs_enough_finished_trials_and_can_be_off():
    settings = PruningSpec(warmup_epochs=0, min_trials=3)
    pruner = EpochPruner(FakeTrial(), settings, ("click", "auc"), True, lambda: [[0.9], [0.9]])
    assert pruner(row(1, 0.1)) is False
    off = PruningSpec(enabled=False, warmup_epochs=0, min_trials=1)
    pruner = EpochPruner(FakeTrial(), off, ("click", "auc"), True, lambda: [[0.9]])
    assert pruner(row(1, 0.1)) is False


def test_epoch_pruner_on_the_monitored_score():
    settings = PruningSpec(warmup_epochs=0, min_trials=1)
    trial = FakeTrial()
    pruner = EpochPruner(trial, settings, None, True, lambda: [[2.0]])
    assert pruner(row(1, 0.9)) is True  # monitor 1.0 < 2.0
    assert trial.user_attrs[CURVE] == [1.0]
