"""Group selection: the integer program against enumeration, and known block structure."""

from __future__ import annotations

import numpy as np
import pytest

from polytask.relations.grouping import (
    EXACT_LIMIT,
    brute_force,
    select_groups,
    serving_score,
)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("max_groups", [1, 2, 3])
def test_integer_program_matches_enumeration(seed, max_groups):
    rng = np.random.default_rng(seed)
    size = 4 + seed % 2
    affinity = rng.normal(size=(size, size))
    selection = select_groups(affinity, max_groups)
    assert selection.score == pytest.approx(brute_force(affinity, max_groups), abs=1e-9)
    assert len(selection.groups) <= max_groups
    for task, server in enumerate(selection.serving):
        group = selection.groups[server]
        assert task in group
        best = max(serving_score(affinity, task, g) for g in selection.groups if task in g)
        assert serving_score(affinity, task, group) == pytest.approx(best)


def test_one_group_is_all_tasks():
    affinity = np.random.default_rng(0).normal(size=(5, 5))
    selection = select_groups(affinity, 1)
    assert selection.groups == [(0, 1, 2, 3, 4)]


def _blocks(sizes, within=0.3, across=-0.2, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    affinity = np.where(labels[:, None] == labels[None, :], within, across)
    return affinity + rng.normal(scale=noise, size=affinity.shape), labels


def test_block_structure_is_recovered():
    affinity, _ = _blocks([3, 3, 2])
    selection = select_groups(affinity, 3)
    assert selection.groups == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert selection.method.startswith("exact")


def test_large_task_counts_use_a_stated_approximation():
    affinity, _ = _blocks([5, 5, 4], seed=1)
    assert affinity.shape[0] > EXACT_LIMIT
    selection = select_groups(affinity, 3)
    assert selection.method.startswith("approximate")
    assert selection.groups == [tuple(range(5)), tuple(range(5, 10)), tuple(range(10, 14))]
    assert sorted({t for g in selection.groups for t in g}) == list(range(14))


def test_bad_arguments():
    with pytest.raises(ValueError, match="square"):
        select_groups(np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match="max_groups"):
        select_groups(np.zeros((2, 2)), 0)
