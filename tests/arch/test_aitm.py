"""AITM: information transfer along the funnel and the behavioural expectation calibrator."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import polytask
from polytask.config import parse_spec
from polytask.errors import ConfigError
from polytask.nn.heads import TransferHead
from tests.arch.funnel import funnel_parts, funnel_spec, make_funnel, write_funnel
from tests.arch.helpers import tensor_attributes


def _parts(num_tasks: int = 3, tower_hidden: list[int] | None = None, **options):
    """The bottoms' network, the towers and the AITM transfer head."""
    tower_hidden = [4] if tower_hidden is None else tower_hidden
    net, towers, head = funnel_parts("aitm", num_tasks, tower_hidden=tower_hidden, **options)
    assert isinstance(head, TransferHead)
    return net, towers, head


@pytest.mark.parametrize("tower_hidden", [[4], []])
def test_shapes(tower_hidden):
    torch.manual_seed(0)
    net, towers, head = _parts(tower_hidden=tower_hidden)
    representation = net(torch.randn(10, 5)).tasks
    assert representation.shape == (3, 10, 6)
    outputs, _ = head(towers, representation)
    assert [tuple(o.shape) for o in outputs] == [(10, 1)] * 3
    width = tower_hidden[-1] if tower_hidden else 6  # what the output layer reads
    assert head.attention.projection.shape == (width, 3 * width)  # h1, h2, h3 side by side
    assert tensor_attributes(head) == []  # the attention weights are not kept on the module


def test_first_task_is_a_plain_tower_and_attention_matches_its_formula():
    torch.manual_seed(1)
    net, towers, head = _parts(num_tasks=2)
    net.eval()
    head.eval()
    representation = net(torch.randn(7, 5)).tasks
    outputs, _ = head(towers, representation)
    torch.testing.assert_close(outputs[0], towers(representation)[0])
    q = towers.hidden(representation)  # [T, B, d]
    w, b = head.transfer_weight[0], head.transfer_bias[0]
    p_prev = torch.relu(q[0] @ w + b)
    h1, h2, h3 = head.attention.projection.split(4, dim=1)
    pair = torch.stack([p_prev, q[1]], dim=1)
    scores = ((pair @ h1) * (pair @ h2)).sum(-1) / math.sqrt(4)
    z = (torch.softmax(scores, dim=1).unsqueeze(-1) * (pair @ h3)).sum(1)
    expected = z @ towers.output.weights[0][1] + towers.output.biases[0][1]
    torch.testing.assert_close(outputs[1], expected, rtol=1e-5, atol=1e-6)


def test_calibration_term_equals_its_formula_and_only_in_training():
    torch.manual_seed(2)
    net, towers, head = _parts(calibration_weight=0.7)
    net.train()
    head.train()
    outputs, auxiliary = head(towers, net(torch.randn(16, 5)).tasks)
    p = [torch.sigmoid(o[:, 0]) for o in outputs]
    expected = 0.7 * (F.relu(p[1] - p[0]) + F.relu(p[2] - p[1])).mean()
    assert auxiliary is not None
    torch.testing.assert_close(auxiliary, expected)
    assert auxiliary.requires_grad
    net.eval()
    head.eval()
    _, auxiliary = head(towers, net(torch.randn(16, 5)).tasks)
    assert auxiliary is None


def test_conversion_loss_reaches_the_click_tower_through_the_transfer_path():
    torch.manual_seed(3)
    net, towers, head = _parts(num_tasks=2)
    outputs, _ = head(towers, net(torch.randn(12, 5)).tasks)
    labels = (torch.rand(12) < 0.5).float()
    click_tower = towers.hidden.weights[0]  # [T, in, out]; block 0 is the click tower
    bottoms = net.levels[0].experts.weights[0]  # [T, in, out]; block 0 is the click bottom
    params = [click_tower, head.transfer_weight, bottoms]
    conversion_loss = F.binary_cross_entropy_with_logits(outputs[1][:, 0], labels)
    tower_grad, transfer_grad, bottom_grad = torch.autograd.grad(
        conversion_loss, params, retain_graph=True
    )
    assert torch.count_nonzero(tower_grad[0]) > 0
    assert torch.count_nonzero(transfer_grad) > 0
    assert torch.count_nonzero(bottom_grad[0]) > 0  # the click bottom, via the transfer
    # the transfer runs one way: the click loss leaves the conversion tower alone
    click_loss = F.binary_cross_entropy_with_logits(outputs[0][:, 0], labels)
    tower_grad, transfer_grad = torch.autograd.grad(
        click_loss, [click_tower, head.transfer_weight], allow_unused=True
    )
    assert torch.count_nonzero(tower_grad[1]) == 0
    assert transfer_grad is None or torch.count_nonzero(transfer_grad) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"calibration_weight": -1}, r"calibration_weight: .*greater than or equal to 0"),
        ({"calibraton_weight": 1}, r"did you mean 'calibration_weight'"),
        ({"chain": [0]}, r"chain: .*at least 2"),
    ],
)
def test_bad_options_are_rejected_naming_the_key(options, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(funnel_spec(Path("unused.csv"), "aitm", **options))


def test_trains_end_to_end_with_the_calibrator(tmp_path):
    spec = funnel_spec(write_funnel(tmp_path), "aitm", calibration_weight=0.6)
    predictor = polytask.train(spec, out=tmp_path / "run", progress=False)
    predictions = predictor.predict(make_funnel(n=20, seed=5))
    assert list(predictions.columns) == ["click", "conversion"]
    assert predictions.notna().all().all()
