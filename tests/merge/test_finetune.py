"""Fine-tuning a base run on one of its tasks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import polytask
from polytask.artifacts import run_dir as rd
from polytask.errors import ConfigError, PolytaskError
from polytask.merge.finetune import INIT, RECORD, finetune
from polytask.merge.layout import weights_hash
from polytask.slim.extract import task_subnetwork
from polytask.train.trainer import fit


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
    init = load_file(str(run / INIT))
    for key, value in start.state_dict().items():
        assert torch.equal(init[key], value), key
    assert tuned.spec.train.init == run / INIT
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
    spec = {"tasks": ["click"], "data": data}
    with pytest.raises(PolytaskError, match="this command reads"):
        finetune(lineage["base"], spec, lineage["base"].parent)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    with pytest.raises(PolytaskError, match="already exists"):
        finetune(lineage["base"], spec, mine)
    with pytest.raises(PolytaskError, match="not a folder polytask wrote"):
        finetune(lineage["base"], spec, mine, overwrite=True)
    assert list(tmp_path.iterdir()) == [mine]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_fine_tuned_run_is_replaced_with_overwrite_and_its_config_trains_again(lineage, tmp_path):
    data = {"train": str(lineage["paths"]["train"])}
    spec = {"tasks": ["spend"], "data": data, "train": {"epochs": 1}}
    run = finetune(lineage["base"], spec, tmp_path / "spend")
    with pytest.raises(PolytaskError, match="already exists"):
        finetune(lineage["base"], spec, run)
    finetune(lineage["base"], {**spec, "moves": "towers"}, run, overwrite=True)
    assert rd.load_json(run, RECORD)["moves"] == "towers"
    # its config starts from init.safetensors with the base's preprocessor beside it
    again = fit(rd.load_config(run), tmp_path / "again", progress=False)
    base = (lineage["base"] / rd.PREPROCESSOR).read_text()
    assert (again / rd.PREPROCESSOR).read_text() == base
