"""Fine-tuning a base run on one of its tasks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import polytask
from polytask.artifacts import run_dir as rd
from polytask.errors import ConfigError, PolytaskError
from polytask.merge.finetune import RECORD, finetune
from polytask.merge.layout import weights_hash
from polytask.slim.extract import task_subnetwork


def test_a_fine_tuned_run_predicts_its_task_and_records_its_base(lineage):
    base = polytask.load(lineage["base"])
    run = lineage["tune"]("segment")
    tuned = polytask.load(run)
    assert tuned.task_names == ["segment"]
    record = rd.load_json(run, RECORD)
    assert record["base"] == str(lineage["base"].resolve())
    assert record["base_weights_sha256"] == weights_hash(base.model.state_dict())
    assert record["tasks"] == ["segment"] and record["base_tasks"] == base.task_names
    assert (run / rd.PREPROCESSOR).read_text() == (lineage["base"] / rd.PREPROCESSOR).read_text()
    assert tuned.summary()["finetune"] == record
    # it started from the base's part for its task, kept beside it; its config names it
    start, _ = task_subnetwork(base.model, [1])
    init = load_file(str(run / "init" / rd.WEIGHTS))
    for key, value in start.state_dict().items():
        assert torch.equal(init[key], value), key
    assert tuned.spec.train.init == run / "init"
    predictions = tuned.predict(lineage["frames"]["test"])
    assert "segment" in predictions.columns and "click" not in predictions.columns


@pytest.mark.parametrize(
    ("moves", "fixed"), [("towers", ("encoders.", "arch.")), ("shared", ("towers.",))]
)
def test_moves_keeps_the_rest_fixed(lineage, moves, fixed):
    base = polytask.load(lineage["base"])
    start, _ = task_subnetwork(base.model, [0])
    tuned = polytask.load(lineage["tune"]("click", moves=moves))
    for key, value in tuned.model.state_dict().items():
        same = torch.equal(value, start.state_dict()[key])
        if key.startswith(fixed):
            assert same, key
        elif value.is_floating_point() and value.numel() > 1:
            assert not same, key


def test_bad_specs_are_one_line_and_leave_nothing(lineage, tmp_path):
    data = {"train": str(lineage["paths"]["train"])}
    cases = [
        ({"tasks": ["clik"], "data": data}, "did you mean 'click'"),
        ({"tasks": ["click"], "data": data, "train": {"init": "x"}}, "train.init"),
        ({"tasks": ["click"], "data": data, "moves": "everything"}, "moves"),
        ({"tasks": ["click"], "data": data, "extra": 1}, "extra"),
        ({"tasks": [], "data": data}, "tasks"),
    ]
    for spec, fragment in cases:
        with pytest.raises(ConfigError, match=fragment):
            finetune(lineage["base"], spec, tmp_path / "out")
    with pytest.raises(PolytaskError, match="already exists"):
        finetune(lineage["base"], {"tasks": ["click"], "data": data}, lineage["base"].parent)
    assert list(tmp_path.iterdir()) == []
