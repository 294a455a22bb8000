"""Replay appends rows drawn from the old tasks' buffers, labelled for their own task only."""

from __future__ import annotations

import math

import torch

from polytask.grow.strategies.replay import Replayed
from tests.grow.conftest import tiny_rows


def test_replayed_rows_are_appended_with_their_own_labels():
    memory = tiny_rows(5, {"old": torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])}, seed=3)
    hook = Replayed(memory, ["old"], 4, torch.Generator().manual_seed(0))
    batch = tiny_rows(6, {"new": torch.ones(6), "old": torch.full((6,), float("nan"))})
    features, labels = hook.batch(batch.features, batch.labels)
    assert len(features) == 10
    assert torch.isnan(labels["new"][6:]).all() and not torch.isnan(labels["old"][6:]).any()
    for row in range(6, 10):  # every appended row is one of the memory's, with its label
        match = (memory.features.numeric == features.numeric[row]).all(1).nonzero().flatten()
        assert len(match) >= 1
        assert labels["old"][row] == memory.labels["old"][match[0]]
    assert not math.isnan(float(labels["new"][0]))


def test_weighing_by_rows_makes_the_objective_the_mean_over_the_joint_batch():
    """With ``weigh: rows`` the equal-weighted sum of the tasks' mean losses, times the
    hook's factors, is the mean of every labelled row's loss in the joint batch."""
    from polytask.config import TaskKind, TaskSpec
    from polytask.tasks import Task, task_losses

    memory = tiny_rows(5, {"old": torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])}, seed=3)
    hook = Replayed(memory, ["old"], 4, torch.Generator().manual_seed(0), by_rows=True)
    batch = tiny_rows(6, {"new": torch.ones(6), "old": torch.full((6,), float("nan"))})
    _, labels = hook.batch(batch.features, batch.labels)
    tasks = [
        Task(TaskSpec(name=name, kind=TaskKind.binary, target=name), 1) for name in ("new", "old")
    ]
    factors = hook.task_weights(labels, tasks)
    assert factors is not None
    torch.testing.assert_close(factors, torch.tensor([6 / 10, 4 / 10]))
    logits = [torch.randn(10, 1), torch.randn(10, 1)]
    losses, _ = task_losses(logits, labels, tasks)
    entries = []
    for z, task in zip(logits, tasks, strict=True):
        y = labels[task.name]
        keep = ~torch.isnan(y)
        entries.append(
            torch.nn.functional.binary_cross_entropy_with_logits(
                z[keep, 0], y[keep], reduction="none"
            )
        )
    torch.testing.assert_close((factors * losses).sum(), torch.cat(entries).mean())
    plain = Replayed(memory, ["old"], 4, torch.Generator().manual_seed(0))
    assert plain.task_weights(labels, tasks) is None  # weigh: tasks, each task once
