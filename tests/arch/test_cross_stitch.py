"""Cross-stitch: initial stitch matrices, a hand-written loop reference, exact independence of
the columns under identity stitches, and a short end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import polytask
from polytask.nn.executor import PlanNetwork
from tests.arch.helpers import network
from tests.conftest import base_spec


def make_arch(num_tasks: int = 3, **options) -> PlanNetwork:
    return network("cross_stitch", 5, num_tasks, hidden=[6, 4], options=options)


def stitches(net: PlanNetwork) -> list[torch.Tensor]:
    """Each layer's cross-stitch matrix [T, T] (row t: column t's weights on every column)."""
    return [level.gates.alpha for level in net.levels]


def test_stitches_start_near_identity_with_rows_summing_to_one():
    arch = make_arch(init_self=0.8)
    assert [tuple(stitch.shape) for stitch in stitches(arch)] == [(3, 3), (3, 3)]
    expected = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    for stitch in stitches(arch):
        torch.testing.assert_close(stitch, expected)
    for stitch in stitches(make_arch(num_tasks=1)):
        torch.testing.assert_close(stitch, torch.ones(1, 1))


def test_equals_a_loop_over_layers_tasks_and_columns():
    torch.manual_seed(0)
    arch = make_arch()
    with torch.no_grad():
        for stitch in stitches(arch):
            stitch.normal_()
    x = torch.randn(7, 5)
    out = arch(x).tasks
    assert out.shape == (3, 7, 4) and arch.out_dim == 4
    columns = [x, x, x]
    for level, stitch in zip(arch.levels, stitches(arch), strict=True):
        weight, bias = level.experts.weights[0], level.experts.biases[0]
        hidden = [F.relu(columns[t] @ weight[t] + bias[t, 0]) for t in range(3)]
        columns = [sum(stitch[t, s] * hidden[s] for s in range(3)) for t in range(3)]
    for t in range(3):
        torch.testing.assert_close(out[t], columns[t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("identity", [True, False])
def test_identity_stitches_make_the_columns_independent(identity):
    torch.manual_seed(1)
    arch = make_arch()
    if identity:
        with torch.no_grad():
            for stitch in stitches(arch):
                stitch.copy_(torch.eye(3))
    out = arch(torch.randn(9, 5)).tasks
    weights = [level.experts.weights[0] for level in arch.levels]
    for a in range(3):
        grads = torch.autograd.grad(out[a].sum(), weights, retain_graph=True)
        for b in range(3):
            touched = all(torch.count_nonzero(grad[b]) > 0 for grad in grads)
            untouched = all(torch.count_nonzero(grad[b]) == 0 for grad in grads)
            assert touched if a == b or not identity else untouched, (a, b)


def test_trains_end_to_end_and_rejects_unknown_options(
    tmp_path: Path, table_csv: Path, table: pd.DataFrame
):
    model = {"arch": "cross_stitch", "hidden": [6, 4], "options": {"init_self": 0.7}}
    spec = base_spec(table_csv, model=model, train={"epochs": 2})
    predictor = polytask.train(spec, out=tmp_path / "run", progress=False)
    assert len(predictor.predict(table.head(20))) == 20
    first = stitches(predictor.model.arch)[0].detach()
    assert not torch.allclose(first, torch.full((4, 4), 0.1).fill_diagonal_(0.7))
    bad = base_spec(table_csv, model={"arch": "cross_stitch", "options": {"alpha": 0.5}})
    with pytest.raises(polytask.ConfigError, match="alpha"):
        polytask.train(bad, out=tmp_path / "bad", progress=False)
