"""The PEFT side of the adapter benchmarks (``benchmarks/_peft.py``) computes what LoRA is
defined to compute, so that a gap between polytask and PEFT is polytask's to explain.

Runs where PEFT is installed (``make bench``); skipped elsewhere.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

pytest.importorskip("peft")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TASKS = ["income", "marital", "education"]


def load_helpers() -> ModuleType:
    """``benchmarks/_peft.py`` under the name the benchmark scripts import it by."""
    spec = importlib.util.spec_from_file_location("_peft", BENCHMARKS / "_peft.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["_peft"] = module
    spec.loader.exec_module(module)
    return module


P = load_helpers()


def with_random_b(model, seed: int = 1):
    """PEFT starts every ``B`` at zero (the adapters then change nothing): give each task's
    ``B`` its own values so that a wrong adapter for a row shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in P.lora_layers(model).values():
            for task in TASKS:
                weight = layer.lora_B[task].weight
                weight.copy_(torch.randn(weight.shape, generator=gen))
    return model


def mlp_model(dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))
    return with_random_b(P.peft_model(backbone, ["0", "2"], 4, 8.0, TASKS, seed=0)).to(dtype)


def mixed_batch(
    n: int = 9, seed: int = 2, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, list[str]]:
    x = torch.randn(n, 12, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return x, [TASKS[(3 * i) % 7 % 3] for i in range(n)]


def snapshot(model) -> dict[str, dict[str, Tensor]]:
    return {
        task: {
            name: torch.cat([a.flatten(), b.flatten()]).clone()
            for name, (a, b, _) in P.lora_weights(model, task).items()
        }
        for task in TASKS
    }


# The comparisons of outputs run in float64: in float32, batching rows alone moves an output
# of size 4 by 1.4e-6, and 1e-6 is to catch a row served by the wrong adapter, not rounding.


def test_mixed_forward_gives_each_row_its_own_adapters_output():
    model = mlp_model(torch.float64)
    x, task_of_row = mixed_batch(dtype=torch.float64)
    assert len(set(task_of_row)) == 3
    mixed = P.mixed_forward(model, x, task_of_row)
    assert not model.training
    with torch.no_grad():
        for i, task in enumerate(task_of_row):
            model.set_adapter(task)
            torch.testing.assert_close(mixed[i : i + 1], model(x[i : i + 1]), atol=1e-6, rtol=0)


def test_mixed_forward_is_the_closed_form_of_lora_on_one_linear():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(12, 8))
    base = copy.deepcopy(backbone).double()
    model = with_random_b(P.peft_model(backbone, ["0"], 3, 6.0, TASKS, seed=0)).double()
    x, task_of_row = mixed_batch(dtype=torch.float64)
    mixed = P.mixed_forward(model, x, task_of_row)
    with torch.no_grad():
        for i, task in enumerate(task_of_row):
            (a, b, scaling), *_ = P.lora_weights(model, task).values()
            assert a.shape == (3, 12) and b.shape == (8, 3) and scaling == 6.0 / 3
            expected = base(x[i]) + scaling * x[i] @ a.T @ b.T
            torch.testing.assert_close(mixed[i], expected, atol=1e-6, rtol=0)


def test_lora_weights_are_named_after_the_targets_and_refuse_an_unknown_task():
    model = mlp_model()
    assert list(P.lora_weights(model, "marital")) == ["0", "2"]
    with pytest.raises(ValueError, match="'salary'"):
        P.lora_weights(model, "salary")


def test_peft_refuses_adapter_names_in_training_mode_and_mixed_forward_switches_to_eval():
    model = mlp_model()
    x, task_of_row = mixed_batch()
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        model(x, adapter_names=task_of_row)
    assert P.mixed_forward(model, x, task_of_row).shape == (9, 8)


def test_train_per_task_changes_only_the_trained_tasks_adapter_and_head():
    model = mlp_model()
    heads = {task: nn.Linear(8, 1) for task in TASKS}
    before, heads_before = snapshot(model), copy.deepcopy(heads)
    backbone_before = {
        n: p.clone() for n, p in model.get_base_model().named_parameters() if "lora_" not in n
    }
    x, _ = mixed_batch()
    seconds = P.train_per_task(model, {"marital": [(x, torch.randn(9, 1))]}, 0.01, 2, heads)
    after = snapshot(model)
    assert seconds > 0
    for task in TASKS:
        for name in before[task]:
            unchanged = torch.equal(before[task][name], after[task][name])
            assert unchanged == (task != "marital"), (task, name)
        same_head = all(
            torch.equal(p, q)
            for p, q in zip(heads[task].parameters(), heads_before[task].parameters(), strict=True)
        )
        assert same_head == (task != "marital"), task
    for n, p in model.get_base_model().named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, backbone_before[n]), n


def test_train_mixed_step_follows_the_gradient_of_the_mean_loss_over_the_batch():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(12, 8))
    base = copy.deepcopy(backbone)
    model = with_random_b(P.peft_model(backbone, ["0"], 3, 6.0, TASKS, seed=0))
    x, task_of_row = mixed_batch(8)
    task_of_row = [t if t != "education" else "income" for t in task_of_row]  # one absent task
    y = torch.randn(8, 8, generator=torch.Generator().manual_seed(3))
    # by hand: leaf copies of each task's A and B, the closed form per row, the batch mean
    leaves = {
        t: tuple(w.clone().requires_grad_() for w in P.lora_weights(model, t)["0"][:2])
        for t in TASKS
    }
    scaling = 6.0 / 3
    with torch.no_grad():
        base_out = base(x)
    out = torch.stack(
        [
            base_out[i] + scaling * x[i] @ leaves[t][0].T @ leaves[t][1].T
            for i, t in enumerate(task_of_row)
        ]
    )
    F.mse_loss(out, y).backward()
    sgd = torch.optim.SGD([p for t in TASKS for p in P.adapter_parameters(model, t)], lr=1.0)

    loss = P.train_mixed_step(model, x, task_of_row, None, sgd, y)

    assert loss == pytest.approx(F.mse_loss(out, y).item(), abs=1e-6)
    for t in TASKS:
        a, b, _ = P.lora_weights(model, t)["0"]
        a0, b0 = leaves[t]
        if t == "education":
            assert torch.equal(a, a0.detach()) and torch.equal(b, b0.detach())
        else:
            assert a0.grad is not None and b0.grad is not None
            torch.testing.assert_close(a, a0.detach() - a0.grad, atol=1e-6, rtol=0)
            torch.testing.assert_close(b, b0.detach() - b0.grad, atol=1e-6, rtol=0)
