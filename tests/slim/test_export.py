"""ONNX export: the graph takes the preprocessor's output, returns one user-scale tensor per
task for any batch size, and onnxruntime agrees with PyTorch; full and slim runs alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import polytask
from polytask.errors import PolytaskError
from polytask.slim import export_onnx, slim
from polytask.slim.report import synthetic_rows

pytest.importorskip("onnx")  # the exporter needs it; both come with the `export` extra
ort = pytest.importorskip("onnxruntime")


def session_for(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_parity(run, graph, batch_sizes=(1, 33)) -> None:
    """onnxruntime's outputs equal PyTorch's (within 1e-5) on random preprocessed rows."""
    predictor = polytask.load(run)
    session = session_for(graph)
    assert [i.name for i in session.get_inputs()] == ["categorical", "numeric"]
    assert [o.name for o in session.get_outputs()] == predictor.task_names
    for seed, size in enumerate(batch_sizes):
        rows = synthetic_rows(predictor.preprocessor, size, seed=100 + seed)
        got = session.run(
            None, {"categorical": rows.categorical.numpy(), "numeric": rows.numeric.numpy()}
        )
        with torch.inference_mode():
            logits = predictor.model(rows).logits
        for task, out, value in zip(predictor.tasks, logits, got, strict=True):
            expected = task.outputs(out).numpy()
            assert value.shape == expected.shape
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("mmoe", {}),
        ("ple", {"levels": 2}),
        ("task_moe", {"routing": "task", "top_k": 2}),
        ("shared_bottom", {}),
    ],
)
def test_onnx_outputs_equal_pytorch(train_run, tmp_path, arch, options):
    run = train_run(arch, **options)
    interface = export_onnx(run, tmp_path / "model.onnx")
    assert interface["verified"] and interface["max_abs_difference"] < 1e-4
    assert_parity(run, tmp_path / "model.onnx")


def test_sidecar_describes_the_interface(train_run, tmp_path):
    run = train_run("mmoe")
    export_onnx(run, tmp_path / "model.onnx")
    sidecar = json.loads((tmp_path / "model.json").read_text())
    predictor = polytask.load(run)
    categorical, numeric = sidecar["inputs"]
    assert categorical == {
        "name": "categorical",
        "dtype": "int64",
        "shape": ["batch", 2],
        "columns": ["color", "city"],
        "meaning": categorical["meaning"],
    }
    assert numeric["name"] == "numeric" and numeric["dtype"] == "float32"
    assert numeric["shape"] == ["batch", predictor.preprocessor.numeric_width]
    outputs = {entry["name"]: entry for entry in sidecar["outputs"]}
    assert list(outputs) == ["click", "segment", "spend", "tags"]
    assert outputs["click"]["shape"] == ["batch"]
    assert outputs["segment"]["shape"] == ["batch", 3]
    assert outputs["segment"]["classes"] == ["high", "low", "mid"]
    assert outputs["tags"]["columns"] == ["tag_a", "tag_b"]
    assert sidecar["preprocessor"].endswith("preprocessor.json")
    with open(sidecar["preprocessor"]) as handle:
        assert json.load(handle) == predictor.preprocessor.state


def test_raw_rows_through_the_preprocessor_and_graph_match_predict(train_run, tmp_path):
    run = train_run("shared_bottom")
    export_onnx(run, tmp_path / "model.onnx")
    predictor = polytask.load(run)
    from tests.conftest import make_table

    raw = make_table(n=20, seed=4)
    rows = predictor.preprocessor.transform(raw)
    click, _, spend, _ = session_for(tmp_path / "model.onnx").run(
        None, {"categorical": rows.categorical.numpy(), "numeric": rows.numeric.numpy()}
    )
    expected = predictor.predict(raw)
    np.testing.assert_allclose(click, expected["click"].to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spend, expected["spend"].to_numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "options"),
    [("task_moe", {"routing": "task", "top_k": 2}), ("home", {"task_groups": [[0, 1], [2, 3]]})],
)
def test_slim_runs_export_too(train_run, tmp_path, arch, options):
    out = tmp_path / "slim"
    slim(
        train_run(arch, **options),
        ["click", "segment"],
        out,
        latency_repeats=1,
        latency_batches=(1,),
    )
    interface = export_onnx(out, tmp_path / "slim.onnx")
    assert [entry["name"] for entry in interface["outputs"]] == ["click", "segment"]
    assert_parity(out, tmp_path / "slim.onnx", batch_sizes=(1, 7))


def test_row_routed_task_moe_exports_through_the_dense_path(train_run, tmp_path):
    run = train_run("task_moe", routing="row", top_k=2)
    interface = export_onnx(run, tmp_path / "model.onnx")
    assert "static path" in interface["notes"][0]
    assert_parity(run, tmp_path / "model.onnx")


def test_export_refusals_are_one_line_errors(train_run, tmp_path):
    with pytest.raises(PolytaskError, match="name the graph file with another suffix"):
        export_onnx(train_run("mmoe"), tmp_path / "model.json")
    with pytest.raises(PolytaskError, match="no finished run"):
        export_onnx(tmp_path / "missing", tmp_path / "model.onnx")
    with pytest.raises(PolytaskError, match=r"--opset must be 13\.\.20 \(got 1\)"):
        export_onnx(train_run("mmoe"), tmp_path / "model.onnx", opset=1)
    assert list(tmp_path.iterdir()) == []
