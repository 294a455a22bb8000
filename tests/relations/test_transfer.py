"""`polytask transfer`: the map's definition on its own runs, and warm starts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from polytask.errors import PolytaskError
from tests.cli_helpers import assert_user_error, invoke
from tests.conftest import base_spec, write_yaml


def _spec(table_csv):
    spec = base_spec(table_csv, train={"epochs": 2})
    spec["tasks"] = [t for t in spec["tasks"] if t["name"] in ("click", "spend", "tags")]
    return spec


def test_transfer_map(tmp_path, table_csv):
    config = write_yaml(tmp_path / "spec.yaml", _spec(table_csv))
    result = invoke("transfer", config, "-o", tmp_path / "map", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    names = ["click", "spend", "tags"]
    assert report["tasks"] == names and report["split"] == "test"
    assert report["cost"]["fine_tunes"] == 6 and report["cost"]["seconds_per_pair"] > 0
    folder = tmp_path / "map"
    for s, source in enumerate(names):
        assert report["transfer_percent"][s][s] is None
        for t, target in enumerate(names):
            if s == t:
                continue
            pair = report["pairs"][source][target]
            metric = report["metric"][target]
            alone = report["alone"][target]
            sign = 1.0 if metric in ("auc", "mean_auc") else -1.0
            expected = 100 * sign * (pair["metric"] - alone) / abs(alone)
            assert report["transfer_percent"][s][t] == pytest.approx(expected)
            final = json.loads((folder / pair["run"] / "metrics.json").read_text())
            assert final["test"][target][metric] == pair["metric"]
    assert (folder / "transfer.png").stat().st_size > 0


def test_fine_tune_starts_from_the_source_shared_part(tmp_path, table_csv):
    """With zero epochs of change (lr 0), the fine-tuned run's shared part IS the source's,
    and its tower is not the source's."""
    from polytask.config import load_spec
    from polytask.relations.study import subset_spec
    from polytask.relations.transfer import shared_weights
    from polytask.train.trainer import fit

    spec = load_spec(_spec(table_csv))
    source = fit(subset_spec(spec, ["click"]), tmp_path / "source", progress=False)
    frozen = subset_spec(spec, ["spend"])
    frozen.train.lr = 1e-30
    start = shared_weights(source)
    tuned = fit(frozen, tmp_path / "tuned", progress=False, initial_weights=start)
    weights = load_file(str(tuned / "model.safetensors"))
    for name, value in start.items():
        torch.testing.assert_close(weights[name], value)
    with pytest.raises(PolytaskError, match="does not fit this model"):
        fit(
            frozen,
            tmp_path / "bad",
            progress=False,
            initial_weights={"arch.nope": start[next(iter(start))]},
        )


def test_user_errors(tmp_path, table_csv):
    spec = _spec(table_csv)
    spec["tasks"] = spec["tasks"][:1]
    config = write_yaml(tmp_path / "one.yaml", spec)
    assert_user_error(invoke("transfer", config, "-o", tmp_path / "m"), "at least two tasks")
