"""Fused task towers: shapes per task and equality with separate per-task MLPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polytask.nn.encoders import TabularEncoder
from polytask.nn.towers import Towers


def test_output_shapes_per_task():
    towers = Towers(in_dim=6, hidden=[5], out_dims=[1, 3, 1, 2])
    outputs = towers(torch.randn(4, 10, 6))
    assert [tuple(o.shape) for o in outputs] == [(10, 1), (10, 3), (10, 1), (10, 2)]


def test_towers_equal_separate_mlps():
    torch.manual_seed(0)
    towers = Towers(in_dim=6, hidden=[5, 4], out_dims=[1, 3])
    x = torch.randn(2, 8, 6)
    outputs = towers(x)
    for t, width in enumerate([1, 3]):
        h = x[t]
        for weight, bias in zip(towers.hidden.weights, towers.hidden.biases, strict=True):
            h = F.relu(F.linear(h, weight[t].T, bias[t, 0]))
        expected = F.linear(
            h, towers.output.weights[0][t, :, :width].T, towers.output.biases[0][t, 0, :width]
        )
        torch.testing.assert_close(outputs[t], expected, rtol=1e-5, atol=1e-6)


def test_towers_without_hidden_layers_are_linear_heads():
    torch.manual_seed(1)
    towers = Towers(in_dim=4, hidden=[], out_dims=[2, 1])
    x = torch.randn(2, 3, 4)
    outputs = towers(x)
    expected = x[1] @ towers.output.weights[0][1, :, :1] + towers.output.biases[0][1, 0, :1]
    torch.testing.assert_close(outputs[1], expected)


def test_padding_columns_get_no_gradient():
    towers = Towers(in_dim=4, hidden=[3], out_dims=[1, 3])
    sum(o.sum() for o in towers(torch.randn(2, 5, 4))).backward()
    grad = towers.output.weights[0].grad
    assert torch.count_nonzero(grad[0, :, 1:]) == 0  # task 0 uses 1 of 3 columns
    assert torch.count_nonzero(grad[0, :, :1]) > 0
    assert torch.count_nonzero(grad[1]) > 0


def test_tabular_encoder_looks_up_each_column_in_its_own_rows():
    torch.manual_seed(2)
    encoder = TabularEncoder(cardinalities=[3, 4], numeric_width=2, embedding_dim=5)
    categorical = torch.tensor([[0, 3], [2, 1]])
    numeric = torch.tensor([[0.5, 1.0], [-1.0, 0.0]])
    out = encoder(categorical, numeric)
    assert out.shape == (2, 2 * 5 + 2) == (2, encoder.out_dim)
    table = encoder.embedding.weight
    torch.testing.assert_close(out[0, :5], table[0])
    torch.testing.assert_close(
        out[0, 5:10], table[3 + 3]
    )  # column 1 starts after column 0's 3 rows
    torch.testing.assert_close(out[1, :5], table[2])
    torch.testing.assert_close(out[1, 5:10], table[3 + 1])
    torch.testing.assert_close(out[:, 10:], numeric)


def test_tabular_encoder_with_only_numeric_or_only_categorical():
    numeric_only = TabularEncoder([], numeric_width=3, embedding_dim=4)
    x = torch.randn(2, 3)
    torch.testing.assert_close(numeric_only(torch.zeros(2, 0, dtype=torch.int64), x), x)
    categorical_only = TabularEncoder([2], numeric_width=0, embedding_dim=4)
    out = categorical_only(torch.tensor([[1], [0]]), torch.zeros(2, 0))
    assert out.shape == (2, 4)


@pytest.mark.parametrize("hidden", [[4, 3], []])
def test_towers_on_a_common_input_equal_towers_on_its_expand(hidden):
    """A [B, D] input every tower reads gives what the same rows expanded to [T, B, D] give,
    values and gradients, and keeps the first layer's output [T, B, width]."""
    torch.manual_seed(0)
    towers = Towers(5, hidden, [1, 3, 2])
    x = torch.randn(7, 5, requires_grad=True)
    common, first = towers.forward_common(x)
    assert first.shape == (3, 7, hidden[0] if hidden else 3)
    torch.testing.assert_close(towers(x)[0], common[0])  # a [B, D] input takes this path
    common_grads = torch.autograd.grad(sum(out.sum() for out in common), [x, *towers.parameters()])
    expanded = towers(x.expand(3, -1, -1))
    expanded_grads = torch.autograd.grad(
        sum(out.sum() for out in expanded), [x, *towers.parameters()]
    )
    for left, right in zip(common, expanded, strict=True):
        torch.testing.assert_close(left, right)
    for left, right in zip(common_grads, expanded_grads, strict=True):
        torch.testing.assert_close(left, right)


def test_selected_towers_compute_what_the_kept_towers_computed():
    torch.manual_seed(1)
    for hidden in ([4], []):
        towers = Towers(5, hidden, [1, 3, 2], dropout=0.2).eval()
        kept = towers.select([2, 0])
        assert kept.out_dims == [2, 1]
        x = torch.randn(3, 6, 5)
        full = towers(x)
        picked = kept(x[[2, 0]])
        torch.testing.assert_close(picked[0], full[2])
        torch.testing.assert_close(picked[1], full[0])
