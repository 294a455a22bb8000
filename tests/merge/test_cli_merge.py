"""``polytask finetune`` twice, ``polytask merge``, ``polytask predict``: end to end at the
command line, and each refusal as one line with exit code 2."""

from __future__ import annotations

import json

import pandas as pd
import yaml

import polytask
from tests.cli_helpers import assert_user_error, invoke


def write_spec(path, task, data):
    path.write_text(
        yaml.safe_dump(
            {"tasks": [task], "data": data, "moves": "shared", "train": {"epochs": 2, "lr": 0.02}}
        )
    )
    return path


def test_finetune_twice_merge_and_predict(lineage, tmp_path):
    data = {"train": str(lineage["paths"]["train"]), "valid": str(lineage["paths"]["valid"])}
    runs = []
    for task in ("click", "segment"):
        spec = write_spec(tmp_path / f"{task}.yaml", task, data)
        result = invoke("finetune", lineage["base"], spec, "-o", tmp_path / task, "--quiet")
        assert result.exit_code == 0, result.output
        assert f"fine-tuned {task} from" in result.output
        runs.append(tmp_path / task)
    merged = tmp_path / "merged"
    result = invoke(
        "merge",
        *runs,
        "--base",
        lineage["base"],
        "--method",
        "ties",
        "--option",
        "keep=0.3",
        "--option",
        "scaling=0.8",
        "-o",
        merged,
    )
    assert result.exit_code == 0, result.output
    assert "ties: merged" in result.output and "click <- click" in result.output
    summary = polytask.load(merged).summary()["merge"]
    assert summary["options"] == {"keep": 0.3, "scaling": 0.8, "aggregate": "mean"}
    rows = tmp_path / "rows.csv"
    lineage["frames"]["test"].drop(columns=["clicked", "segment", "spend"]).to_csv(
        rows, index=False
    )
    result = invoke("predict", merged, rows, "-o", tmp_path / "predictions.csv")
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert {"click", "segment", "spend"} <= set(predictions.columns)
    assert len(predictions) == len(lineage["frames"]["test"])
    listed = invoke("merge-methods")
    assert listed.exit_code == 0 and "routed_moe" in listed.output and "tsv_m" in listed.output
    as_json = invoke(
        "merge",
        *runs,
        "--base",
        lineage["base"],
        "--method",
        "average",
        "-o",
        tmp_path / "avg",
        "--json",
    )
    assert json.loads(as_json.output)["method"] == "average"


def test_refusals_at_the_command_line(lineage, tmp_path):
    click = lineage["tune"]("click")
    out = tmp_path / "out"
    cases = [
        (
            (
                "merge",
                click,
                "--base",
                lineage["base"],
                "--method",
                "ties",
                "--option",
                "k=1",
                "-o",
                out,
            ),
            "unknown key",
        ),
        (
            ("merge", click, click, "--base", lineage["base"], "--method", "average", "-o", out),
            "named twice",
        ),
        (
            ("merge", click, "--base", lineage["base"], "--method", "tsvm", "-o", out),
            "unknown merge method",
        ),
        (
            ("merge", click, "--base", lineage["base"], "--method", "average", "-o", click),
            "this command reads",
        ),
        (("finetune", lineage["base"], tmp_path / "missing.yaml", "-o", out), "not found"),
    ]
    for args, fragment in cases:
        assert_user_error(invoke(*args), fragment)
    assert not out.exists()
