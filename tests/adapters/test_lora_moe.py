import pytest
import torch

from polytask.adapters.base import LayerShape
from polytask.adapters.options import LoRAMoEOptions

from .helpers import build, layer_io, mixed_rows


def reference(adapter, x, y, task, m, p):
    """y + scale * sum_e g_e x A_e B_e, with task t's softmax weights."""
    experts, rank = adapter.options.experts, adapter.options.rank
    gates = torch.softmax(adapter.task_logits[task, m], -1)
    total = y[m, p, 0].clone()
    for e in range(experts):
        columns = slice(e * rank, (e + 1) * rank)
        total += (
            adapter.scale
            * gates[e]
            * x[0, p, 0]
            @ adapter.down[m][:, columns]
            @ adapter.up[m][columns]
        )
    return total


def test_task_router_mixes_every_expert_by_the_tasks_weights():
    shape = LayerShape(5, 4, members=2)
    adapter = build("lora_moe", shape, experts=3, rank=2)
    rows = mixed_rows()
    x, y = layer_io(shape, rows.rows)
    out = adapter(x, y, rows)
    for p, t in enumerate(rows.tasks.tolist()):
        for m in range(2):
            assert torch.allclose(out[m, p, 0], reference(adapter, x, y, t, m, p), atol=1e-5)
            folded = y[m, p, 0] + x[0, p, 0] @ adapter.delta(t)[m]
            assert torch.allclose(out[m, p, 0], folded, atol=1e-5)


def test_top_k_keeps_k_renormalised_weights():
    shape = LayerShape(5, 4)
    adapter = build("lora_moe", shape, experts=4, top_k=2, router="token")
    rows = mixed_rows()
    x, _ = layer_io(shape, rows.rows, tokens=3)
    gates = adapter.weights(x, rows)
    assert ((gates > 0).sum(-1) == 2).all()
    assert torch.allclose(gates.sum(-1), torch.ones_like(gates.sum(-1)))


def test_token_router_depends_on_the_input_and_does_not_fold():
    shape = LayerShape(5, 4)
    adapter = build("lora_moe", shape, router="token")
    rows = mixed_rows()
    x, _ = layer_io(shape, rows.rows, tokens=2)
    gates = adapter.weights(x, rows)
    assert not torch.allclose(gates[:, :, 0], gates[:, :, 1])
    assert adapter.delta(0) is None


def test_balance_loss_is_one_when_uniform_and_e_when_collapsed():
    adapter = build("lora_moe", LayerShape(5, 4), experts=4)
    collapsed = torch.zeros(1, 8, 1, 4)
    collapsed[..., 2] = 1.0
    assert adapter.balance_loss(collapsed).item() == pytest.approx(4.0)
    spread = torch.eye(4).repeat(2, 1).reshape(1, 8, 1, 4)
    assert adapter.balance_loss(spread).item() == pytest.approx(1.0)


def test_balance_loss_is_added_in_training_only():
    shape = LayerShape(5, 4)
    adapter = build("lora_moe", shape, balance_weight=0.5)
    rows = mixed_rows()
    x, y = layer_io(shape, rows.rows)
    adapter.train()(x, y, rows)
    assert len(rows.auxiliary) == 1
    adapter.eval()(x, y, rows)
    assert len(rows.auxiliary) == 1


def test_top_k_above_experts_is_refused():
    with pytest.raises(ValueError, match="top_k"):
        LoRAMoEOptions(experts=2, top_k=3)
