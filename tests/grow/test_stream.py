"""polytask stream: every experience is a run, every seen task is evaluated after each, and
the metrics are those of the matrix; a bad spec writes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import yaml

from polytask.errors import ConfigError
from polytask.grow import experience as experience_module
from polytask.grow.metrics import summarise
from polytask.grow.stream import stream
from polytask.inference.predictor import Predictor
from polytask.train.trainer import Trainer
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


class _RecordingTrainer(Trainer):
    """The Trainer, recording the state it was handed and the weights it started from."""

    made: ClassVar[list[_RecordingTrainer]] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        model = kwargs["model"]
        self.start = {k: v.detach().clone() for k, v in model.named_parameters()}
        self.made.append(self)


def test_kept_optimizer_state_carries_adam_steps_to_the_next_experience(
    tables, tmp_path, monkeypatch
):
    """Adam's step count of a kept parameter goes on from the previous experience's; the new
    task's tower and gate start fresh; the old task's (block 0), which no loss of the new
    experience reaches, take no step and keep their weights."""
    _RecordingTrainer.made = []
    monkeypatch.setattr(experience_module, "Trainer", _RecordingTrainer)
    raw = stream_spec(tables)
    raw["optimizer_state"] = "kept"
    stream(raw, tmp_path / "out")
    first, second = _RecordingTrainer.made
    assert first.optimizer_state is None and first.keep_optimizer_state
    handed = second.optimizer_state
    assert handed and set(handed) < set(second.start)
    final = second.final_optimizer_state
    new = [name for name in final if name not in handed]
    steps = int(final[new[0]]["step"])  # the new tower's: every step of this experience
    assert steps > 0 and all(int(final[name]["step"]) == steps for name in new)
    assert second.model is not None
    trained = dict(second.model.named_parameters())
    untouched = [n for n in handed if int(final[n]["step"]) == int(handed[n]["step"])]
    moved = [n for n in handed if int(final[n]["step"]) == int(handed[n]["step"]) + steps]
    assert sorted(untouched + moved) == sorted(handed)
    assert untouched and all(".blocks.0." in n or ".banks.0." in n for n in untouched)
    assert any(".experts." in n for n in moved)
    for name in untouched:
        torch.testing.assert_close(trained[name], second.start[name])


def test_optimizer_state_is_validated(tables):
    raw = stream_spec(tables)
    raw["optimizer_state"] = "warm"
    with pytest.raises(ConfigError, match="optimizer_state"):
        stream(raw, "unused")


def test_only_exactly_zero_gradients_are_dropped_under_a_kept_state():
    """A parameter whose gradient is all zeros gets none (the optimizer skips it); one with
    entries so small that their L2 norm underflows to 0 keeps its gradient."""
    from torch import nn

    from polytask.grow.experience import _SkipUntouched

    model = nn.ModuleDict({"a": nn.Linear(3, 2), "b": nn.Linear(3, 2)})
    model["a"].weight.grad = torch.zeros(2, 3)
    model["a"].bias.grad = torch.tensor([1e-30, 0.0])
    model["b"].weight.grad = torch.ones(2, 3)
    model["b"].bias.grad = None
    _SkipUntouched().before_update(model)
    assert model["a"].weight.grad is None
    assert model["a"].bias.grad is not None and bool(model["a"].bias.grad.any())
    assert model["b"].weight.grad is not None and model["b"].bias.grad is None
