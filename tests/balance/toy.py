"""A tiny shared-bottom model for balancer tests: encoder -> representation -> one linear tower
per task, with a StepContext built the way ``train_step`` builds it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import polytask
from polytask.balance import Balancer, StepContext
from tests.conftest import base_spec


class Toy(nn.Module):
    def __init__(self, num_tasks: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Linear(3, 4)
        self.towers = nn.ModuleList(nn.Linear(4, 1) for _ in range(num_tasks))
        generator = torch.Generator().manual_seed(seed + 1)
        self.x = torch.randn(8, 3, generator=generator)
        self.y = torch.randn(8, num_tasks, generator=generator)

    def losses(self) -> torch.Tensor:
        """[T] mean squared errors; also keeps the representation for the context."""
        self.representation = torch.relu(self.encoder(self.x)) + 0.1
        out = torch.cat([tower(self.representation) for tower in self.towers], dim=1)
        return ((out - self.y) ** 2).mean(dim=0)


@dataclass
class Step:
    model: Toy
    losses: torch.Tensor
    weights: torch.Tensor


def toy_step(
    balancer: Balancer,
    present: list[bool],
    model: Toy | None = None,
    static: list[float] | None = None,
    step: int = 0,
) -> Step:
    """One balancer call on the toy with zeroed gradients. Absent tasks keep a non-zero loss
    (stricter than the trainer's exact 0): the balancer alone must keep it out."""
    model = model or Toy(len(present))
    model.zero_grad(set_to_none=True)
    losses = model.losses()
    context = StepContext(
        present=torch.tensor(present),
        static_weights=torch.tensor(static or [1.0] * len(present)),
        step=step,
        shared_params=list(model.encoder.parameters()),
        representation=model.representation,
        recompute_losses=model.losses,
    )
    weights = balancer.backward(losses, context)
    return Step(model, losses.detach(), weights)


def assert_absent_task_is_ignored(balancer: Balancer, calls: int = 3) -> None:
    """Task 1 absent: weight 0, no gradient to its tower; the others are trained."""
    model = Toy(3)
    for step in range(calls):
        result = toy_step(balancer, [True, False, True], model=model, step=step)
        assert result.weights[1].item() == 0.0
        tower = model.towers[1].weight.grad
        assert tower is None or bool((tower == 0).all())
        for t in (0, 2):
            assert model.towers[t].weight.grad is not None
            assert bool(model.towers[t].weight.grad.abs().sum() > 0)
        assert model.encoder.weight.grad is not None
        with torch.no_grad():
            for param in model.parameters():
                if param.grad is not None:
                    param -= 0.05 * param.grad


def train_two_epochs(tmp_path: Path, table_csv: Path, method: str, **options: Any) -> Path:
    """A 2-epoch run on the synthetic table with ``balance.method: method``; its folder."""
    spec = base_spec(table_csv, train={"epochs": 2}, balance={"method": method, "options": options})
    polytask.train(spec, tmp_path / method, progress=False)
    return tmp_path / method


def resume_matches(
    tmp_path: Path, table_csv: Path, method: str, epochs: int = 2, **options: Any
) -> None:
    """Interrupting after the next-to-last epoch and resuming gives the same epoch log and
    weights as an uninterrupted run."""
    from safetensors.torch import load_file

    from polytask.train.trainer import fit

    spec = base_spec(
        table_csv, train={"epochs": epochs}, balance={"method": method, "options": options}
    )
    full = tmp_path / "full"
    polytask.train(spec, full, progress=False)

    def interrupt(row: dict[str, Any]) -> None:
        if row["epoch"] == epochs - 1:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        polytask.train(spec, cut, progress=False, callbacks=[interrupt])
    fit(None, cut, resume=True, progress=False)
    rows = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (full, cut)
    ]
    for key in ("train_task_loss", "valid"):
        assert [row[key] for row in rows[0]] == [row[key] for row in rows[1]]
    expected, actual = load_file(full / "model.safetensors"), load_file(cut / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0)
