"""``polytask slim`` and ``polytask export``: a report table and a loadable run on success,
one line and exit code 2 on a user mistake, and nothing half-written either way."""

from __future__ import annotations

import json
import shutil

import pytest

import polytask
from polytask.artifacts import run_dir as rd
from polytask.slim import SLIM_REPORT
from tests.cli_helpers import assert_user_error, invoke


def test_slim_prints_the_report_and_writes_a_loadable_run(train_run, tmp_path):
    out = tmp_path / "slim"
    result = invoke(
        "slim", train_run("mmoe"), "--tasks", "click", "--tasks", "spend", "-o", out,
        "--threshold", "0", "--repeats", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for fragment in (
        "parameters",
        "weights (bytes)",
        "latency batch 1024",
        "click auc",
        "exact: yes",
    ):
        assert fragment in result.output
    assert f"slim run saved to {out}" in result.output.replace("\n", "")
    report = json.loads((out / SLIM_REPORT).read_text())
    assert report["tasks"]["kept"] == ["click", "spend"]
    assert set(report["full"]["latency_ms"]) == {"batch_1", "batch_1024"}
    assert polytask.load(out).task_names == ["click", "spend"]
    info = invoke("info", out)
    assert info.exit_code == 0 and '"plan"' in info.output


def test_slim_json_output(train_run, tmp_path):
    result = invoke(
        "slim", train_run("task_moe"), "--tasks", "tags", "-o", tmp_path / "slim",
        "--repeats", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["exact"] is True and report["arch"] == {"full": "task_moe", "slim": "plan"}


def test_slim_user_errors_are_one_line(train_run, tmp_path):
    run = train_run("mmoe")
    out = tmp_path / "slim"
    assert_user_error(
        invoke("slim", run, "--tasks", "clik", "-o", out),
        "unknown task 'clik'",
        "did you mean 'click'",
        "click, segment, spend, tags",
    )
    assert_user_error(
        invoke("slim", run, "--tasks", "click", "-o", out, "--threshold", "1.5"),
        "--threshold must be in [0, 1)",
    )
    assert_user_error(
        invoke("slim", run, "--tasks", "click", "-o", out, "--threshold", "0.99"),
        "keeps no expert for task 'click'",
        "lower --threshold",
    )
    assert_user_error(
        invoke("slim", tmp_path / "nowhere", "--tasks", "click", "-o", out), "no finished run"
    )
    assert_user_error(
        invoke("slim", run, "--tasks", "click", "-o", out, "--data", tmp_path / "no.csv"),
        "data file not found",
    )
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_slim_refuses_an_unfinished_run_and_an_existing_folder(train_run, tmp_path):
    unfinished = tmp_path / "run.partial"
    shutil.copytree(train_run("shared_bottom"), unfinished)
    (unfinished / rd.SUMMARY).unlink()
    (unfinished / rd.CHECKPOINT).write_bytes(b"stands for an epoch checkpoint")
    assert_user_error(
        invoke("slim", tmp_path / "run", "--tasks", "click", "-o", tmp_path / "slim"),
        "did not finish",
        "--resume",
    )
    taken = tmp_path / "taken"
    taken.mkdir()
    assert_user_error(
        invoke("slim", train_run("shared_bottom"), "--tasks", "click", "-o", taken),
        "already exists; pass --overwrite",
    )
    result = invoke(
        "slim", train_run("shared_bottom"), "--tasks", "click", "-o", taken,
        "--overwrite", "--repeats", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert polytask.load(taken).task_names == ["click"]


def test_export_writes_the_graph_and_its_sidecar(train_run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    result = invoke("export", train_run("mmoe"), "-o", tmp_path / "model.onnx")
    assert result.exit_code == 0, result.output
    assert "matches PyTorch within" in result.output
    assert (tmp_path / "model.onnx").stat().st_size > 0
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert [entry["name"] for entry in sidecar["inputs"]] == ["categorical", "numeric"]
    assert_user_error(
        invoke("export", train_run("mmoe"), "-o", tmp_path / "m.onnx", "--opset", "3"),
        "--opset must be 13..20",
    )
    assert_user_error(
        invoke("export", tmp_path / "none", "-o", tmp_path / "m.onnx"), "no finished run"
    )
