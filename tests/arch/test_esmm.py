"""ESMM: chained heads are logits of products of probabilities, so plain BCE is the CTCVR loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import polytask
from polytask.config import parse_spec
from polytask.errors import ConfigError
from polytask.nn.heads import ChainHead, chained_logits
from tests.arch.funnel import funnel_parts, funnel_spec, make_funnel, write_funnel


def _parts(num_tasks: int = 2, out_dims: list[int] | None = None, **options):
    """The bottoms' network, the towers and the ESMM chain head."""
    net, towers, head = funnel_parts("esmm", num_tasks, out_dims, **options)
    assert isinstance(head, ChainHead)
    return net, towers, head


def test_conversion_head_is_the_product_of_click_and_conversion_probabilities():
    torch.manual_seed(0)
    net, towers, head = _parts()
    representation = net(torch.randn(32, 5)).tasks
    assert representation.shape == (2, 32, 6)
    l_ctr, l_cvr = towers(representation)
    (ctr_head, ctcvr_head), _ = head(towers, representation)
    torch.testing.assert_close(ctr_head, l_ctr, rtol=0, atol=0)
    expected = torch.sigmoid(l_ctr) * torch.sigmoid(l_cvr)
    torch.testing.assert_close(torch.sigmoid(ctcvr_head), expected, rtol=1e-5, atol=1e-7)


def test_bce_on_the_conversion_head_is_the_ctcvr_loss():
    torch.manual_seed(1)
    net, towers, chain_head = _parts()
    representation = net(torch.randn(64, 5)).tasks
    l_ctr, l_cvr = (logit.double()[:, 0] for logit in towers(representation))
    head = chain_head(towers, representation)[0][1][:, 0]
    labels = (torch.rand(64) < 0.3).float()
    p_ctcvr = torch.sigmoid(l_ctr) * torch.sigmoid(l_cvr)
    by_hand = -(labels * torch.log(p_ctcvr) + (1 - labels) * torch.log(1 - p_ctcvr)).mean()
    bce = F.binary_cross_entropy_with_logits(head, labels)
    torch.testing.assert_close(bce.double(), by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("first", [-30.0, 30.0, -100.0, 100.0])
@pytest.mark.parametrize("second", [-30.0, 30.0, 0.0])
def test_chained_logits_stay_finite_and_exact_at_extreme_logits(first, second):
    logits = torch.tensor([[first], [second]], requires_grad=True)
    joint = chained_logits(logits)
    for label in (0.0, 1.0):
        loss = F.binary_cross_entropy_with_logits(joint[1], torch.tensor([label]))
        (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # exact reference in float64: 1 - p1 p2 = q1 + q2 - q1 q2 with q = sigmoid(-l)
    l64 = logits.detach().double()
    q1, q2 = torch.sigmoid(-l64[0]), torch.sigmoid(-l64[1])
    log_p = F.logsigmoid(l64[0]) + F.logsigmoid(l64[1])
    reference = log_p - torch.log(q1 + q2 - q1 * q2)
    if abs(first) < 80:  # beyond float32's smallest normal 1 - p the logit is capped (~87)
        torch.testing.assert_close(joint[1].double(), reference, rtol=1e-5, atol=1e-4)
    assert torch.isfinite(joint).all()


def test_chain_order_and_tasks_outside_the_chain():
    torch.manual_seed(2)
    net, towers, head = _parts(num_tasks=3, out_dims=[1, 3, 1], chain=[2, 0])
    representation = net(torch.randn(8, 5)).tasks
    plain = towers(representation)
    heads, auxiliary = head(towers, representation)
    torch.testing.assert_close(heads[1], plain[1], rtol=0, atol=0)  # not chained: unchanged
    torch.testing.assert_close(heads[2], plain[2], rtol=0, atol=0)  # first of the chain
    expected = torch.sigmoid(plain[2]) * torch.sigmoid(plain[0])
    torch.testing.assert_close(torch.sigmoid(heads[0]), expected, rtol=1e-5, atol=1e-7)
    assert auxiliary is None


def test_chain_indices_are_validated():
    with pytest.raises(ConfigError, match=r"chain: task index 5 is out of range for 2 task"):
        _parts(chain=[0, 5])
    message = r"chain of tasks \[0, 1\] includes task 1, which has 3 outputs; .* must be binary"
    with pytest.raises(ConfigError, match=message):
        _parts(num_tasks=2, out_dims=[1, 3])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"chian": [0, 1]}, r"chian: unknown key \(did you mean 'chain'\?\)"),
        ({"chain": [1, 1]}, r"chain: a task may appear only once"),
        ({"chain": [0, -1]}, r"chain: task indices must be 0 or more"),
    ],
)
def test_bad_options_are_rejected_naming_the_key(options, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(funnel_spec(Path("unused.csv"), "esmm", **options))


def test_trains_end_to_end_and_predicts_conversion_below_click(tmp_path):
    spec = funnel_spec(write_funnel(tmp_path), "esmm")
    predictor = polytask.train(spec, out=tmp_path / "run", progress=False)
    predictions = predictor.predict(make_funnel(n=40, seed=9))
    assert (predictions["conversion"] <= predictions["click"] + 1e-6).all()
    assert predictor.summary()["arch"] == "esmm"


def test_out_of_range_chain_is_a_config_error_in_training(tmp_path):
    spec = funnel_spec(write_funnel(tmp_path), "esmm", chain=[0, 2])
    with pytest.raises(ConfigError, match=r"model.options \(esmm\): chain: task index 2"):
        polytask.train(spec, out=tmp_path / "run", progress=False)
