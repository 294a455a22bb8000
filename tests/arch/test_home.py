"""HoME: hierarchy-masked gates, neutral feature gates at start, per-expert normalisation,
gradient reaching every expert, and a short end-to-end run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import polytask
from polytask.config import ModelSpec
from polytask.errors import ConfigError
from polytask.nn.executor import PlanNetwork
from polytask.nn.normed import ExpertNorm, FeatureGates
from tests.arch.helpers import network
from tests.conftest import base_spec

GROUPS = [[0, 2], [1]]


def make_home(**options) -> PlanNetwork:
    options = {"task_groups": GROUPS, **options}
    return network("home", 5, 3, hidden=[6, 4], options=options)


def test_gates_sum_to_one_and_follow_the_hierarchy():
    torch.manual_seed(0)
    arch = make_home(task_experts=2)
    result = arch(torch.randn(8, 5))
    assert result.tasks.shape == (3, 8, 4) and arch.out_dim == 4
    # task pool: shared 0 | group experts 1 (group 0), 2 (group 1) | task experts 3..8 (2 each)
    allowed = {0: [0, 1, 3, 4], 1: [0, 2, 5, 6], 2: [0, 1, 7, 8]}
    gates = result.task_gates
    assert gates is not None
    assert gates.shape == (3, 8, 9) and not gates.requires_grad
    torch.testing.assert_close(gates.sum(-1), torch.ones(3, 8))
    for task, experts in allowed.items():
        blocked = [e for e in range(9) if e not in experts]
        assert (gates[task][:, experts] > 0).all()
        assert (gates[task][:, blocked] == 0).all()
    # meta pool: shared 0 | group 0 expert 1 | group 1 expert 2; rows: shared, group 0, group 1
    meta = result.gates[0]
    assert meta is not None and meta.shape == (3, 8, 3) and not meta.requires_grad
    torch.testing.assert_close(meta.sum(-1), torch.ones(3, 8))
    assert (meta[0] > 0).all()
    assert (meta[1][:, 2] == 0).all() and (meta[2][:, 1] == 0).all()


def test_feature_gates_start_at_one_so_the_arch_starts_as_without_them():
    torch.manual_seed(1)
    gated, plain = make_home(feature_gate_rank=3), make_home(feature_gate_rank=0)
    missing, unexpected = plain.load_state_dict(gated.state_dict(), strict=False)
    assert not missing and unexpected and all("feature_gates" in key for key in unexpected)
    x = torch.randn(10, 5)
    torch.testing.assert_close(gated(x).tasks, plain(x).tasks)
    with torch.no_grad():
        gated.levels[0].experts.feature_gates.up.normal_()
    assert not torch.allclose(gated(x).tasks, plain(x).tasks)


def test_feature_gates_shared_input_equals_the_same_input_per_expert():
    torch.manual_seed(2)
    gates = FeatureGates(num_experts=3, dim=4, rank=2)
    with torch.no_grad():
        gates.up.normal_()
    x = torch.randn(6, 4)
    out = gates(x)
    torch.testing.assert_close(out, gates(x.expand(3, -1, -1).contiguous()))
    factor = out / x
    assert ((factor > 0) & (factor < 2)).all()  # 2 * sigmoid(.) lies in (0, 2)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_every_expert_of_both_levels_gets_a_gradient(norm):
    torch.manual_seed(3)
    arch = make_home(expert_norm=norm, feature_gate_rank=2).train()
    out = arch(torch.randn(12, 5)).tasks
    (out * torch.randn_like(out)).sum().backward()
    assert [level.name for level in arch.plan.levels] == ["meta", "task"]
    for number, level in enumerate(arch.levels):
        for bank in level.experts.layers:
            per_expert = bank.weights[0].grad.flatten(1).abs().sum(1)
            assert (per_expert > 0).all(), (number, per_expert)


def test_batch_norm_keeps_statistics_per_expert():
    torch.manual_seed(4)
    norm = ExpertNorm(num_experts=2, dim=3, kind="batch").train()
    x = torch.randn(2, 50, 3)
    x[1] = x[1] * 100 + 7  # expert 1 on a far larger scale
    out = norm(x)
    torch.testing.assert_close(out.mean(1), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(1, unbiased=False), torch.ones(2, 3), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm.running_mean.view(2, 3), 0.1 * x.mean(1))
    before = norm.running_mean.clone()
    assert norm(torch.randn(2, 1, 3)).shape == (2, 1, 3)  # one-row batch: running statistics
    torch.testing.assert_close(norm.running_mean, before)


def test_task_groups_must_cover_every_task_once():
    with pytest.raises(ConfigError, match="task_groups"):
        make_home(task_groups=[[0], [1]])
    with pytest.raises(ValueError, match="more than one group"):
        ModelSpec(arch="home", options={"task_groups": [[0, 1], [1, 2]]})


def test_trains_end_to_end_and_rejects_unknown_options(
    tmp_path: Path, table_csv: Path, table: pd.DataFrame
):
    model = {
        "arch": "home",
        "hidden": [6],
        "options": {"task_groups": [[0, 1], [2, 3]], "feature_gate_rank": 2},
    }
    spec = base_spec(table_csv, model=model, train={"epochs": 2})
    predictor = polytask.train(spec, out=tmp_path / "run", progress=False)
    predictions = predictor.predict(table.head(20))
    assert len(predictions) == 20
    assert (predictor.run / "experts.json").is_file()
    bad = base_spec(table_csv, model={"arch": "home", "options": {"feature_gates": 2}})
    with pytest.raises(polytask.ConfigError, match="feature_gates"):
        polytask.train(bad, out=tmp_path / "bad", progress=False)
