"""Held entries stay bit-identical under every optimizer the run spec offers, weight decay
and momentum included; the others train."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polytask.config import TrainSpec
from polytask.errors import PolytaskError
from polytask.train.fixed import FixedEntries
from polytask.train.optim import build_optimizer


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_held_entries_do_not_move(optimizer):
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:2] = True
    before = model.weight.detach().clone()
    hook = FixedEntries(model, {"weight": mask})
    spec = TrainSpec(optimizer=optimizer, lr=0.1, weight_decay=0.5, momentum=0.9)
    opt = build_optimizer(list(model.parameters()), spec)
    x = torch.randn(32, 6)
    for _ in range(5):
        opt.zero_grad()
        model(x).square().mean().backward()
        hook.before_update(model)
        opt.step()
        hook.after_update(model)
    assert torch.equal(model.weight[:2], before[:2])
    assert not torch.equal(model.weight[2:], before[2:])
    assert hook.count == 12


def test_entries_can_be_held_at_given_values_and_masks_are_checked():
    model = nn.Linear(3, 2)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    FixedEntries(model, {"weight": mask}, {"weight": torch.zeros(2, 3)})
    assert model.weight[0, 0] == 0 and model.weight[1, 2] == 0
    with pytest.raises(PolytaskError, match="no parameter"):
        FixedEntries(model, {"weights": mask})
    with pytest.raises(PolytaskError, match="bool mask"):
        FixedEntries(model, {"weight": mask.float()})
