"""A-GEM's projection: the closed form, a non-negative dot product with the reference, and
no change when the gradients agree."""

from __future__ import annotations

import torch

from polytask.grow.strategies.agem import agem_project


def test_conflicting_gradient_is_projected_onto_the_reference_half_space():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        reference = torch.randn(40, generator=generator, dtype=torch.float64)
        gradient = torch.randn(40, generator=generator, dtype=torch.float64)
        if torch.dot(gradient, reference) > 0:
            gradient = -gradient
        projected = agem_project(gradient, reference)
        expected = gradient - torch.dot(gradient, reference) / reference.square().sum() * reference
        torch.testing.assert_close(projected, expected)
        assert float(torch.dot(projected, reference)) >= -1e-12
        # the closest vector to g on that half-space: g - projected is parallel to the reference
        difference = gradient - projected
        cosine = torch.dot(difference, reference) / (difference.norm() * reference.norm())
        assert abs(abs(float(cosine)) - 1) < 1e-9


def test_agreeing_gradient_is_unchanged():
    gradient, reference = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.1])
    assert agem_project(gradient, reference) is gradient
