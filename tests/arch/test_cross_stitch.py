"""Cross-stitch: initial stitch matrices, a hand-written loop reference, exact independence of
the columns under identity stitches, and a short end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import polytask
from polytask.arch.cross_stitch import CrossStitch
from polytask.config import ModelSpec
from tests.conftest import base_spec


def make_arch(num_tasks: int = 3, **options) -> CrossStitch:
    spec = ModelSpec(arch="cross_stitch", hidden=[6, 4], options=options)
    return CrossStitch(in_dim=5, num_tasks=num_tasks, spec=spec)


def test_stitches_start_near_identity_with_rows_summing_to_one():
    arch = make_arch(init_self=0.8)
    assert arch.stitches.shape == (2, 3, 3)
    expected = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    for stitch in arch.stitches:
        torch.testing.assert_close(stitch, expected)
    torch.testing.assert_close(make_arch(num_tasks=1).stitches, torch.ones(2, 1, 1))


def test_equals_a_loop_over_layers_tasks_and_columns():
    torch.manual_seed(0)
    arch = make_arch()
    with torch.no_grad():
        arch.stitches.normal_()
    x = torch.randn(7, 5)
    out = arch(x)
    assert out.shape == (3, 7, 4) and arch.out_dim == 4
    columns = [x, x, x]
    for layer, stitch in zip(arch.columns, arch.stitches, strict=True):
        weight, bias = layer.weights[0], layer.biases[0]
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
            arch.stitches.copy_(torch.eye(3).expand(2, -1, -1))
    out = arch(torch.randn(9, 5))
    weights = [layer.weights[0] for layer in arch.columns]
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
    stitches = predictor.model.arch.stitches.detach()
    assert not torch.allclose(stitches[0], torch.full((4, 4), 0.1).fill_diagonal_(0.7))
    bad = base_spec(table_csv, model={"arch": "cross_stitch", "options": {"alpha": 0.5}})
    with pytest.raises(polytask.ConfigError, match="alpha"):
        polytask.train(bad, out=tmp_path / "bad", progress=False)
