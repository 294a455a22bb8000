"""An optimizer's per-parameter state carried to a later optimizer over a grown model: the
kept parameters continue exactly as if the first optimizer had taken the step, new ones (and
ones whose shape changed) start fresh."""

from __future__ import annotations

import torch
from torch import nn

from polytask.train.optim import load_parameter_state, parameter_state

LR = 0.01


def _model(heads: int, seed: int = 0) -> nn.ModuleDict:
    torch.manual_seed(seed)
    return nn.ModuleDict(
        {"shared": nn.Linear(3, 4), **{f"head{i}": nn.Linear(4, 2) for i in range(heads)}}
    )


def _step(optimizer: torch.optim.Optimizer, model: nn.Module, grads: dict[str, torch.Tensor]):
    for name, parameter in model.named_parameters():
        parameter.grad = grads[name].clone() if name in grads else None
    optimizer.step()


def _grads(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(p.shape, generator=generator) for name, p in model.named_parameters()}


def _trained() -> tuple[nn.ModuleDict, torch.optim.Adam]:
    old = _model(1)
    optimizer = torch.optim.Adam(old.parameters(), lr=LR)
    for seed in range(5):
        _step(optimizer, old, _grads(old, seed))
    return old, optimizer


def test_kept_parameters_continue_as_the_first_optimizer_would():
    old, optimizer = _trained()
    state = parameter_state(optimizer, old)
    grown = _model(2, seed=1)
    grown.load_state_dict(old.state_dict(), strict=False)
    fresh_head = grown["head1"].weight.detach().clone()
    carried = torch.optim.Adam(grown.parameters(), lr=LR)
    loaded = load_parameter_state(carried, grown, state)
    assert sorted(loaded) == sorted(name for name, _ in old.named_parameters())

    grads = _grads(grown, 99)
    _step(optimizer, old, {k: v for k, v in grads.items() if not k.startswith("head1")})
    _step(carried, grown, grads)
    for name, parameter in old.named_parameters():
        torch.testing.assert_close(dict(grown.named_parameters())[name], parameter)
    # the new head's first Adam step: -lr * g / (|g| + eps), a fresh state
    expected = fresh_head - LR * grads["head1.weight"] / (grads["head1.weight"].abs() + 1e-8)
    torch.testing.assert_close(grown["head1"].weight.detach(), expected)
    assert int(carried.state[grown["shared"].weight]["step"]) == 6
    assert int(carried.state[grown["head1"].weight]["step"]) == 1


def test_a_parameter_whose_shape_changed_starts_fresh():
    old, optimizer = _trained()
    state = parameter_state(optimizer, old)
    grown = _model(1)
    grown["head0"] = nn.Linear(4, 3)  # a wider head: the old moments do not fit it
    carried = torch.optim.Adam(grown.parameters(), lr=LR)
    loaded = load_parameter_state(carried, grown, state)
    assert sorted(loaded) == ["shared.bias", "shared.weight"]
    assert grown["head0"].weight not in carried.state


def test_the_kept_state_is_a_copy():
    old, optimizer = _trained()
    state = parameter_state(optimizer, old)
    before = state["shared.weight"]["exp_avg"].clone()
    _step(optimizer, old, _grads(old, 7))
    torch.testing.assert_close(state["shared.weight"]["exp_avg"], before)
    assert int(state["shared.weight"]["step"]) == 5
