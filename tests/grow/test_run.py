"""polytask grow end to end: the grown run is an ordinary run directory (predict, evaluate,
slim, export and serve work on it), its old tasks predict exactly as before, it records its
history and grows again; bad input is one line, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from polytask.artifacts import run_dir as rd
from polytask.data.tabular import read_table
from polytask.errors import PolytaskError
from polytask.grow import grow
from polytask.inference.predictor import Predictor
from tests.cli_helpers import assert_user_error, invoke
from tests.grow.conftest import grow_spec


def old_logits(run: Path, frame) -> torch.Tensor:
    predictor = Predictor.load(run)
    with torch.no_grad():
        return predictor.model(predictor.preprocessor.transform(frame)).logits[0]


@pytest.fixture(scope="module")
def grown(base_run, tables, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("grown") / "grown"
    grow(base_run, grow_spec(tables, "expand", options={"experts": 2}), out)
    return out


def test_expand_keeps_old_predictions_and_records_history(base_run, grown, tables):
    frame = read_table(tables["all"])
    assert torch.equal(old_logits(base_run, frame), old_logits(grown, frame))
    history = rd.load_json(grown, "grow.json")["history"]
    assert [entry["tasks"] for entry in history] == [["click"], ["segment"]]
    assert history[1]["strategy"]["name"] == "expand" and history[1]["missing_inputs"] == []
    config = yaml.safe_load((grown / rd.CONFIG).read_text())
    assert config["model"]["arch"] == "plan"
    assert any(pattern.startswith("arch.") for pattern in config["train"]["freeze"])
    # the table also holds columns neither run reads (the other tasks' labels)
    before = Predictor.load(base_run).evaluate(frame, allow_unknown_columns=True)
    after = Predictor.load(grown).evaluate(frame, allow_unknown_columns=True)
    before, after = before["metrics"]["click"], after["metrics"]["click"]
    assert before == after  # every metric, to the last digit


def test_a_warm_started_expansion_keeps_old_predictions_and_trains_its_copies(
    base_run, tables, tmp_path
):
    from polytask.nn.blocks import parts

    out = tmp_path / "copied"
    grow(base_run, grow_spec(tables, "expand", options={"experts": 3, "init": "copy"}), out)
    frame = read_table(tables["all"])
    assert torch.equal(old_logits(base_run, frame), old_logits(out, frame))
    level = Predictor.load(out).model.arch.level_modules[0]
    old, new = parts(level.experts)
    # started equal (tests/grow/strategies/test_expand.py), trained apart; the old ones fixed
    assert not torch.equal(new.weights[0], old.weights[0])
    base_level = Predictor.load(base_run).model.arch.level_modules[0]
    assert torch.equal(old.weights[0], parts(base_level.experts)[0].weights[0])


def test_grown_run_predicts_evaluates_slims_exports_and_serves(grown, tables, tmp_path):
    frame = read_table(tables["all"]).iloc[:30].drop(columns=["spend", "tag_a", "tag_b"])
    predictor = Predictor.load(grown)
    # predictions go through the lean (folded) form, which covers grown levels and towers
    assert predictor.serving_model is not predictor.model
    features = predictor.preprocessor.transform(frame)
    with torch.no_grad():
        eager, lean = predictor.model(features).logits, predictor.serving_model(features).logits
    for mine, theirs in zip(lean, eager, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    predictions = predictor.predict(frame)
    assert {"click", "segment"} <= set(predictions.columns)
    report = predictor.evaluate(read_table(tables["new"]))
    assert report["skipped"] == ["click"] and "segment" in report["metrics"]
    result = invoke("slim", grown, "--tasks", "segment", "-o", tmp_path / "slim", "--repeats", 1)
    assert result.exit_code == 0, result.output
    slim_run = Predictor.load(tmp_path / "slim")
    assert slim_run.task_names == ["segment"]
    columns = [c for c in predictions.columns if c.startswith("segment_p_")]
    assert columns
    torch.testing.assert_close(
        torch.tensor(slim_run.predict(frame)[columns].to_numpy()),
        torch.tensor(predictions[columns].to_numpy()),
    )
    pytest.importorskip("onnxruntime")
    from polytask.slim.export import export_onnx

    interface = export_onnx(grown, tmp_path / "grown.onnx")  # checked against PyTorch
    assert interface["max_abs_difference"] is not None
    assert interface["max_abs_difference"] < 1e-4
    from fastapi.testclient import TestClient

    from polytask.serve.app import create_app

    row = frame.iloc[:1]
    with TestClient(create_app(predictor)) as client:
        response = client.post("/v1/predict", json={"rows": [row.iloc[0].to_dict()]})
    assert response.status_code == 200, response.text
    served = response.json()["predictions"][0]
    assert served["click"] == pytest.approx(float(predictions["click"].iloc[0]), abs=1e-6)
    assert served["segment"]["class"] == predictions["segment"].iloc[0]
    for label, probability in served["segment"]["probabilities"].items():
        assert probability == pytest.approx(float(predictions[f"segment_p_{label}"].iloc[0]))


def test_a_grown_run_grows_again_with_its_strategy_state(grown, tables, tmp_path):
    spec = grow_spec(tables, "ewc", old_data="run", options={"fisher_rows": 50})
    spec["tasks"] = [{"name": "spend", "kind": "regression", "target": "spend"}]
    spec["data"] = {"train": str(tables["all"])}
    out = tmp_path / "twice"
    report = grow(grown, spec, out)
    assert report["step"] == 2
    history = rd.load_json(out, "grow.json")["history"]
    assert [entry["tasks"] for entry in history] == [["click"], ["segment"], ["spend"]]
    assert (out / "grow_state.safetensors").is_file()
    assert Predictor.load(out).task_names == ["click", "segment", "spend"]


def test_missing_input_columns_are_read_as_missing_and_reported(base_run, tables, tmp_path):
    frame = read_table(tables["new"]).drop(columns=["city"])
    path = tmp_path / "no_city.csv"
    frame.to_csv(path, index=False)
    spec = grow_spec(tables, "naive")
    spec["data"] = {"train": str(path)}
    report = grow(base_run, spec, tmp_path / "out")
    assert report["missing_inputs"] == ["city"]


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (
            lambda s, t: s["tasks"][0].update(name="click", kind="binary", target="segment"),
            ["task 'click' already exists"],
        ),
        (lambda s, t: s["tasks"][0].update(name="click"), ["is a binary task", "multiclass"]),
        (lambda s, t: s.update(strategy={"name": "ewc"}), ["needs rows", "old_data"]),
        (lambda s, t: s.update(strategy={"name": "expnd"}), ["unknown strategy", "expand"]),
        (lambda s, t: s.update(strategy={"name": "ewc", "options": {"lamda": 1}}), ["lamda"]),
        (lambda s, t: s["data"].update(train=str(t["no_inputs"])), ["none of the model's input"]),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    base_run, tables, tmp_path, change, fragments
):
    table = read_table(tables["new"])[["segment"]]
    no_inputs = tmp_path / "labels_only.csv"
    table.to_csv(no_inputs, index=False)
    spec = grow_spec(tables, "naive")
    change(spec, {**tables, "no_inputs": no_inputs})
    out = tmp_path / "deep" / "grown"
    result = invoke("grow", base_run, write(tmp_path / "grow.yaml", spec), "-o", out)
    assert_user_error(result, *fragments)
    assert not out.exists() and not out.parent.exists()


def test_growing_a_slim_run_is_refused(base_run, tables, tmp_path):
    result = invoke("slim", base_run, "--tasks", "click", "-o", tmp_path / "slim", "--repeats", 1)
    assert result.exit_code == 0, result.output
    spec = write(tmp_path / "grow.yaml", grow_spec(tables, "naive"))
    result = invoke("grow", tmp_path / "slim", spec, "-o", tmp_path / "out")
    assert_user_error(result, "is a slim run")
    assert not (tmp_path / "out").exists()


def test_expand_refuses_architectures_it_cannot_grow_and_names_those_it_can(tables, tmp_path):
    from polytask.config import load_spec
    from polytask.train.trainer import fit

    spec = {
        "data": {"train": str(tables["base"])},
        "tasks": [{"name": "click", "kind": "binary", "target": "clicked"}],
        "model": {"arch": "dselect_k", "num_experts": 3, "hidden": [4]},
        "train": {"epochs": 1, "figures": False},
    }
    run = fit(load_spec(spec), tmp_path / "dselect", progress=False)
    with pytest.raises(PolytaskError, match="it grows cgc, cross_stitch, esmm, mmoe"):
        grow(run, grow_spec(tables, "expand"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
