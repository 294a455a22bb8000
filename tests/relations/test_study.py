"""`polytask group`: a study folder that reports, and predicts and serves as one model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import polytask
from polytask.config import load_spec
from polytask.inference.group import GroupPredictor
from polytask.relations.study import subset_spec
from polytask.serve.app import create_app
from tests.cli_helpers import assert_user_error, invoke
from tests.conftest import base_spec, write_yaml


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from tests.conftest import make_table

    folder = tmp_path_factory.mktemp("study")
    make_table(n=300, seed=4).to_csv(folder / "table.csv", index=False)
    spec = base_spec(folder / "table.csv", train={"epochs": 2, "relations": {"every": 1}})
    config = write_yaml(folder / "spec.yaml", spec)
    result = invoke("group", config, "--groups", 2, "-o", folder / "study", "--json")
    assert result.exit_code == 0, result.output
    return {
        "folder": folder / "study",
        "config": config,
        "report": json.loads(result.output),
        "table": folder / "table.csv",
    }


def test_study_layout_and_report(study):
    folder = study["folder"]
    manifest = json.loads((folder / "group.json").read_text())
    names = ["click", "segment", "spend", "tags"]
    assert manifest["tasks"] == names
    assert 1 <= len(manifest["groups"]) <= 2
    assert sorted({t for g in manifest["groups"] for t in g["tasks"]}) == sorted(names)
    for task, run in manifest["routes"].items():
        group = next(g for g in manifest["groups"] if g["run"] == run)
        assert task in group["tasks"]
        assert (folder / run / "summary.json").is_file()
    assert (folder / "all_in_one" / "relations.json").is_file()
    report = study["report"]
    test = report["splits"]["test"]
    assert set(test["per_task"]) == set(names)
    single = json.loads((folder / "single" / "metrics.json").read_text())["test"]
    assert test["per_task"]["click"]["single"] == single["click"]
    assert np.isfinite(test["delta_m"]["grouped"]) and np.isfinite(test["delta_m"]["all_in_one"])


def test_group_runs_do_not_read_other_labels(study):
    spec = load_spec(study["config"])
    subset = subset_spec(spec, ["click", "spend"])
    assert [t.name for t in subset.tasks] == ["click", "spend"]
    assert {"segment", "tag_a", "tag_b"} <= set(subset.data.drop)
    runs = [path for path in study["folder"].iterdir() if path.is_dir()]
    assert {"all_in_one", "single"} <= {path.name for path in runs}
    for path in runs:
        inputs = json.loads((path / "preprocessor.json").read_text())
        assert "segment" not in inputs["categorical"] and "tag_a" not in inputs["numeric"]


def test_the_study_predicts_as_its_serving_runs(study):
    folder = study["folder"]
    manifest = json.loads((folder / "group.json").read_text())
    model = polytask.load(folder)
    assert isinstance(model, GroupPredictor)
    rows = pd.read_csv(study["table"]).head(25)
    predictions = model.predict(rows)
    for task in ("click", "spend"):
        member = polytask.load(folder / manifest["routes"][task])
        np.testing.assert_allclose(
            predictions[task].to_numpy(), member.predict(rows)[task].to_numpy(), rtol=1e-6
        )
    assert list(predictions.columns[:1]) == ["click"]
    report = model.evaluate(rows)
    assert set(report["metrics"]) == {"click", "segment", "spend", "tags"}


def test_cli_predict_and_serve_take_the_study(study, tmp_path):
    folder = study["folder"]
    rows = pd.read_csv(study["table"]).head(5).drop(columns=["clicked", "spend"])
    rows.to_csv(tmp_path / "rows.csv", index=False)
    result = invoke("predict", folder, tmp_path / "rows.csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("click,segment")
    client = TestClient(create_app(polytask.load(folder)))
    with client:
        answer = client.post("/v1/predict", json={"rows": [{"x1": 0.5, "color": "red"}]})
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["predictions"][0]) == {"click", "segment", "spend", "tags"}


def test_relations_command(study):
    result = invoke("relations", study["folder"], "--groups", 2, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["tasks"] == ["click", "segment", "spend", "tags"]
    assert len(report["affinity"]) == 4
    assert report["suggested"][0]["max_groups"] == 2
    result = invoke("relations", study["folder"] / "all_in_one")
    assert result.exit_code == 0, result.output
    assert "lookahead affinity" in result.output and "at most 2 groups" in result.output


def test_user_errors(study, tmp_path, trained_run):
    assert_user_error(invoke("relations", trained_run["run"]), "relations.json")
    assert_user_error(
        invoke("group", study["config"], "--groups", 0, "-o", tmp_path / "s"), "--groups"
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not polytask's\n")
    assert_user_error(
        invoke("group", study["config"], "--groups", 2, "-o", tmp_path / "mine", "--overwrite"),
        "not a folder polytask wrote",
    )
    assert (tmp_path / "mine" / "notes.txt").read_text() == "not polytask's\n"
