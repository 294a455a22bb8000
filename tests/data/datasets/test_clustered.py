"""Clustered synthetic tasks: the weight-vector geometry the module promises, and labels that
follow the MMoE generator's formula."""

from __future__ import annotations

import numpy as np
import pytest

from polytask.data.datasets.clustered import (
    cluster_labels,
    clustered_family,
    load_clustered_tasks,
    true_groups,
)
from polytask.data.datasets.synthetic import mmoe_family


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
