"""PCB-merging: the scores and the weighted mean, checked against the definition."""

from __future__ import annotations

import numpy as np
import torch

from polytask.merge.pcb import pcb, pcb_vector


def reference(vectors: np.ndarray, ratio: float) -> np.ndarray:
    """The paper's steps written out with numpy sorting (clip, intra, inter, drop, mean)."""
    count, width = vectors.shape

    def clip(values, low_share, high_share):
        ordered = np.sort(values, axis=1)
        low = ordered[:, int(width * low_share)][:, None]
        high = ordered[:, int(width * (1 - high_share)) - 1][:, None]
        return np.clip(values, low, high)

    def scale(values):
        low, high = values.min(1, keepdims=True), values.max(1, keepdims=True)
        return (values - low) / (high - low)

    magnitude = clip(np.abs(vectors), 1e-4, 1e-4)
    intra = np.exp(count * scale(magnitude) ** 2)
    inter = np.tanh(vectors * vectors.sum(0, keepdims=True))
    scores = scale(clip(intra * inter, 1 - ratio, 0.0))
    clipped = np.sign(vectors) * magnitude
    return (clipped * scores).sum(0) / np.maximum(scores.sum(0), 1e-12)


def test_pcb_matches_the_definition():
    generator = np.random.default_rng(0)
    vectors = generator.normal(size=(3, 500))
    ours = pcb_vector(torch.tensor(vectors), ratio=0.2).numpy()
    assert np.allclose(ours, reference(vectors, 0.2), atol=1e-12)


def test_entries_no_task_ranks_highly_are_dropped_and_kept_ones_are_a_weighted_mean():
    generator = torch.Generator().manual_seed(1)
    vectors = torch.randn(3, 400, generator=generator, dtype=torch.float64)
    merged = pcb_vector(vectors, ratio=0.1)
    kept = merged != 0
    assert 0.1 <= float(kept.double().mean()) <= 0.3  # at most 3 x 10 % of the entries survive
    low, high = vectors.min(0).values, vectors.max(0).values
    assert bool(((merged >= low - 1e-12) & (merged <= high + 1e-12))[kept].all())
    base = {"w": torch.zeros(400, dtype=torch.float64)}
    state = pcb(base, [{"w": v} for v in vectors], ratio=0.1, scaling=2.0)
    assert torch.allclose(state["w"], 2.0 * merged)
