"""Clustered synthetic tasks: the weight-vector geometry the module promises, and labels that
follow the MMoE generator's formula."""

from __future__ import annotations

import numpy as np
import pytest

from polytask.data.datasets import load_dataset
from polytask.data.datasets.clustered import (
    cluster_labels,
    clustered_family,
    input_blocks,
    load_clustered_tasks,
    true_groups,
)
from polytask.data.datasets.synthetic import mmoe_family
from polytask.errors import ConfigError


def _cosines(weights):
    unit = weights / np.linalg.norm(weights, axis=1, keepdims=True)
    return unit @ unit.T


@pytest.mark.parametrize("sizes", [(3, 3, 2), (2, 2), (4, 4, 4)])
def test_cosines_within_and_across_clusters(sizes):
    within = 0.9
    family = clustered_family(sizes, within=within, seed=1)
    labels = np.array(cluster_labels(sizes))
    cosines = _cosines(family.weights)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    np.testing.assert_allclose(cosines[same & off], within**2, atol=1e-9)
    np.testing.assert_allclose(cosines[~same], -(within**2) / (len(sizes) - 1), atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(family.weights, axis=1), 1.0)


def test_labels_follow_the_generator_formula():
    family = clustered_family((2, 1), dim=10, num_sines=3, seed=2, cluster_sines=True)
    assert family.alpha.shape == (3, 3)
    np.testing.assert_array_equal(family.alpha[0], family.alpha[1])  # one cluster, one set
    assert not np.allclose(family.alpha[0], family.alpha[2])
    rng = np.random.default_rng(0)
    x, y = family.sample(5, rng)
    noise_free = np.stack(
        [
            x @ w + np.sin(np.outer(x @ w, a) + b).sum(axis=1)
            for w, a, b in zip(family.weights, family.alpha, family.beta, strict=True)
        ],
        axis=1,
    )
    assert np.abs(y - noise_free).max() < 5 * family.noise


def test_frames_and_groups():
    train, valid, test = load_clustered_tasks((2, 2), rows=50, valid_rows=20, test_rows=30, dim=8)
    assert (len(train), len(valid), len(test)) == (50, 20, 30)
    assert [c for c in train.columns if c.startswith("y")] == ["y0", "y1", "y2", "y3"]
    assert true_groups((2, 2), ["a", "b", "c", "d"]) == [["a", "b"], ["c", "d"]]
    with pytest.raises(ValueError, match="dim must be at least"):
        clustered_family((3, 3), dim=5)


def test_mmoe_pair_has_the_asked_cosine():
    for p in (0.5, 0.9, 1.0):
        family = mmoe_family(p, dim=20, seed=3)
        assert _cosines(family.weights)[0, 1] == pytest.approx(p)


@pytest.mark.parametrize("sizes", [(3, 3, 2), (2, 2), (4, 4, 4)])
def test_disjoint_inputs_keep_the_cosines_and_read_their_own_block(sizes):
    within = 0.9
    family = clustered_family(sizes, within=within, seed=1, disjoint_inputs=True)
    labels = np.array(cluster_labels(sizes))
    cosines = _cosines(family.weights)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    np.testing.assert_allclose(cosines[same & off], within**2, atol=1e-9)
    np.testing.assert_allclose(cosines[~same], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(family.weights, axis=1), 1.0)
    blocks = input_blocks(sizes, family.dim)
    assert sorted(i for block in blocks for i in block) == list(range(family.dim))
    for t, cluster in enumerate(labels):
        outside = np.setdiff1d(np.arange(family.dim), blocks[cluster])
        assert np.all(family.weights[t, outside] == 0.0)


def test_disjoint_labels_do_not_depend_on_other_clusters_inputs():
    sizes = (3, 3, 2)
    family = clustered_family(sizes, num_sines=5, noise=0.0, seed=4, disjoint_inputs=True)
    blocks = input_blocks(sizes, family.dim)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, family.dim))
    y = family.labels(x, rng)
    labels = np.array(cluster_labels(sizes))
    for cluster, block in enumerate(blocks):
        moved = x.copy()
        outside = np.setdiff1d(np.arange(family.dim), block)
        moved[:, outside] = rng.standard_normal((len(x), len(outside)))
        changed = family.labels(moved, rng)
        mine = labels == cluster
        np.testing.assert_array_equal(changed[:, mine], y[:, mine])
        assert np.abs(changed[:, ~mine] - y[:, ~mine]).min() > 0.0


def test_disjoint_inputs_need_room_for_every_block():
    with pytest.raises(ValueError, match="dim must be at least 12 with disjoint_inputs"):
        clustered_family((3, 3, 2), dim=11, disjoint_inputs=True)
    family = clustered_family((3, 3, 2), dim=12, disjoint_inputs=True)
    assert family.weights.shape == (8, 12)


def test_disjoint_inputs_reach_the_frames():
    train, _, _ = load_clustered_tasks(
        (2, 2), rows=40, valid_rows=10, test_rows=10, dim=8, noise=0.0, disjoint_inputs=True
    )
    family = clustered_family((2, 2), dim=8, noise=0.0, disjoint_inputs=True)
    x = train[[f"x{i}" for i in range(8)]].to_numpy()
    np.testing.assert_allclose(
        train[["y0", "y1", "y2", "y3"]].to_numpy(), family.labels(x, np.random.default_rng(0))
    )


def test_a_bad_option_in_a_config_is_one_config_error():
    with pytest.raises(ConfigError, match=r"dataset_options \(clustered_tasks\): dim must be"):
        load_dataset("clustered_tasks", sizes=[2, 2], dim=5, disjoint_inputs=True)
