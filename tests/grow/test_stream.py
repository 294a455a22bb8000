"""polytask stream: every experience is a run, every seen task is evaluated after each, and
the metrics are those of the matrix; a bad spec writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from polytask.errors import ConfigError
from polytask.grow.metrics import summarise
from polytask.grow.stream import stream
from polytask.inference.predictor import Predictor
from tests.cli_helpers import assert_user_error, invoke


def stream_spec(tables: dict[str, Path], strategy: str = "naive") -> dict:
    return {
        "model": {"arch": "mmoe", "num_experts": 2, "hidden": [8], "tower_hidden": [4]},
        "strategy": {"name": strategy},
        "train": {"epochs": 2, "batch_size": 64, "figures": False},
        "experiences": [
            {
                "tasks": [{"name": "click", "kind": "binary", "target": "clicked"}],
                "data": {"train": str(tables["base"])},
            },
            {
                "name": "segments",
                "tasks": [{"name": "segment", "kind": "multiclass", "target": "segment"}],
                "data": {"train": str(tables["new"])},
            },
        ],
    }


@pytest.mark.parametrize("strategy", ["naive", "expand", "lwf", "replay", "agem", "joint"])
def test_matrix_metrics_and_files(tables, tmp_path, strategy):
    result = stream(stream_spec(tables, strategy), tmp_path / "out")
    matrix = result["matrix"]
    assert len(matrix) == 2 and matrix[0][1] is None and None not in matrix[1]
    again = summarise(matrix, [0, 1], result["before"], result["random"])
    assert result["bwt"] == again["bwt"] and result["average"] == again["average"]
    assert result["fwt"] == pytest.approx(result["before"][1] - result["random"][1])
    assert result["metrics"] == {"click": "auc", "segment": "accuracy"}
    for name in ("stream.json", "stream.png", "model.safetensors", "grow_state.safetensors"):
        assert (tmp_path / "out" / name).is_file()
    history = json.loads((tmp_path / "out" / "grow.json").read_text())["history"]
    assert [entry["tasks"] for entry in history] == [["click"], ["segment"]]
    assert Predictor.load(tmp_path / "out").task_names == ["click", "segment"]
    if strategy == "expand":
        assert result["bwt"] == 0.0


def test_cli_prints_the_matrix_and_bad_specs_write_nothing(tables, tmp_path):
    spec = tmp_path / "stream.yaml"
    spec.write_text(yaml.safe_dump(stream_spec(tables, "ewc")))
    result = invoke("stream", spec, "-o", tmp_path / "ok", "--quiet")
    assert result.exit_code == 0, result.output
    assert "BWT" in result.output and "segment" in result.output
    raw = stream_spec(tables)
    raw["experiences"][1]["tasks"][0]["name"] = "click"
    spec.write_text(yaml.safe_dump(raw))
    assert_user_error(invoke("stream", spec, "-o", tmp_path / "bad"), "unique", "click")
    raw = stream_spec(tables)
    raw["experiences"][1]["tasks"][0]["target"] = "nope"
    spec.write_text(yaml.safe_dump(raw))
    assert_user_error(invoke("stream", spec, "-o", tmp_path / "bad"), "nope")
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bad")]


def test_unknown_keys_are_named(tables):
    raw = stream_spec(tables)
    raw["experience"] = raw.pop("experiences")
    with pytest.raises(ConfigError, match="experience: unknown key"):
        stream(raw, "unused")
