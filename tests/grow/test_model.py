"""A grown model computes its old tasks bit for bit as before, in eval and in training mode,
also after training the new task and after growing twice."""

from __future__ import annotations

import pytest
import torch

from polytask.config import ModelSpec
from polytask.features import Features
from polytask.grow.model import add_tasks_to_model, origins
from polytask.model import MultiTaskModel, build_model, encoder_from_spec
from polytask.plan.grow import add_tasks

CARDINALITIES, NUMERIC = [4, 3], 6
GROWABLE = [
    ("mmoe", 0),
    ("mmoe", 2),
    ("omoe", 1),
    ("ple", 1),
    ("cgc", 0),
    ("task_moe", 1),
    ("shared_bottom", 0),
    ("shared_bottom", 1),
    ("single", 1),
    ("esmm", 1),
    ("cross_stitch", 1),
]


def rows(n: int = 200, seed: int = 0) -> Features:
    generator = torch.Generator().manual_seed(seed)
    categorical = torch.stack(
        [torch.randint(0, c, (n,), generator=generator) for c in CARDINALITIES], 1
    )
    return Features(categorical, torch.randn(n, NUMERIC, generator=generator))


def trained_like(arch: str, **options) -> tuple[MultiTaskModel, ModelSpec]:
    """A model whose weights are not at their initial values."""
    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, hidden=[16, 8], num_experts=4, tower_hidden=[8], options=options)
    dims = [1, 1] if arch == "esmm" else [1, 3]
    model = build_model(spec, CARDINALITIES, NUMERIC, dims, ["a", "b"])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model, spec


def grow(model, spec, experts, names=("c",), dims=(5,)):
    plan = add_tasks(model.plan, len(names), experts=experts)
    make = encoder_from_spec(spec, CARDINALITIES, NUMERIC)
    return add_tasks_to_model(model, spec, plan, list(dims), list(names), make)


def same_old_outputs(before: MultiTaskModel, after: MultiTaskModel, features: Features) -> bool:
    with torch.no_grad():
        old, new = before(features).logits, after(features).logits
    return all(torch.equal(a, b) for a, b in zip(old, new, strict=False))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("arch", "experts"), GROWABLE)
def test_old_outputs_are_bit_identical_after_growing(arch, experts, threads):
    torch.set_num_threads(threads)
    try:
        model, spec = trained_like(arch)
        grown = grow(model, spec, experts)
        features = rows()
        for mode in ("eval", "train"):
            getattr(model, mode)(), getattr(grown, mode)()
            torch.manual_seed(5)  # same routing noise where there is any
            assert same_old_outputs(model, grown, features) or arch == "task_moe"
        model.eval(), grown.eval()
        assert same_old_outputs(model, grown, features)
        with torch.no_grad():
            assert grown(features).logits[2].shape == (200, 5)
    finally:
        torch.set_num_threads(1)


def test_row_routed_task_moe_and_a_second_growth_keep_old_outputs():
    model, spec = trained_like("task_moe", routing="row", top_k=2)
    once = grow(model, spec, 1).eval()
    twice = grow(once, spec, 2, names=("d", "e"), dims=(2, 1)).eval()
    features = rows(seed=3)
    assert same_old_outputs(model.eval(), once, features)
    assert same_old_outputs(once, twice, features)
    assert twice.task_names == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize(("arch", "experts"), [("mmoe", 2), ("ple", 1), ("shared_bottom", 0)])
def test_training_the_new_task_with_old_weights_frozen_keeps_old_outputs(arch, experts):
    model, spec = trained_like(arch)
    grown = grow(model, spec, experts)
    found = origins(model, lambda m: grow(m, spec, experts))
    old = dict(model.named_parameters())
    assert sorted(found.values()) == sorted(old)  # every old tensor survives whole
    for name, parameter in grown.named_parameters():
        assert name not in found or torch.equal(parameter, old[found[name]])
        parameter.requires_grad_(name not in found)
    optimizer = torch.optim.AdamW(
        [p for p in grown.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1
    )
    features = rows()
    for _ in range(5):
        optimizer.zero_grad()
        grown(features).logits[2].square().mean().backward()
        optimizer.step()
    grown.eval(), model.eval()
    assert same_old_outputs(model, grown, features)


@pytest.mark.parametrize(("arch", "experts"), GROWABLE)
def test_the_lean_form_of_a_grown_model_equals_its_eager_form(arch, experts):
    """Grown one-level models keep the folded serving form (expert blocks side by side,
    towers block by block); others fall back to the eager model, as before growing."""
    from polytask.inference.lean import lean_form

    model, spec = trained_like(arch)
    grown = grow(grow(model, spec, experts).eval(), spec, experts, names=("d",), dims=(2,))
    grown.eval()
    lean = lean_form(grown)
    assert (lean is None) == (lean_form(model.eval()) is None)
    if lean is None:
        return
    features = rows(seed=9)
    with torch.no_grad():
        eager, folded = grown(features).logits, lean(features).logits
    assert len(folded) == 4
    for mine, theirs in zip(folded, eager, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
