"""A merged run, plain or a routed MoE, is an ordinary plan run: the lean serving form,
``polytask slim``, the ONNX export and the server take it unchanged and compute the numbers
the merged model computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import polytask
from polytask.inference.predict import predict_logits
from polytask.merge.runs import merge
from polytask.slim import export_onnx, slim
from tests.cli_helpers import invoke

METHODS = {
    "ties": {"keep": 0.3},
    "routed_moe": {"steps": 4, "batch_size": 32},
}


@pytest.fixture(scope="module", params=sorted(METHODS))
def merged(request: pytest.FixtureRequest, lineage: dict[str, Any], tmp_path_factory) -> Path:
    method = request.param
    runs = [lineage["tune"]("click"), lineage["tune"]("segment")]
    out = tmp_path_factory.mktemp(f"merged-{method}") / "run"
    merge(runs, lineage["base"], method, METHODS[method], out)
    return out


@pytest.fixture(scope="module")
def rows(lineage: dict[str, Any]) -> pd.DataFrame:
    return lineage["frames"]["test"].drop(columns=["clicked", "segment", "spend"])


def test_predictions_run_on_the_lean_form_and_equal_the_eager_model(merged, rows):
    loaded = polytask.load(merged)
    assert loaded.serving_model is not loaded.model  # folded at load time
    features = loaded.preprocessor.transform(rows)
    lean = predict_logits(loaded.serving_model, features, 64)
    with torch.no_grad():
        eager = loaded.model(features).logits
    for got, expected in zip(lean, eager, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_slimming_one_task_at_threshold_zero_is_exact(merged, rows, tmp_path):
    report = slim(merged, ["segment"], tmp_path / "slim", threshold=0.0, latency_repeats=1)
    assert report["exact"] is True and report["max_abs_difference"] <= 1e-6
    full = polytask.load(merged).predict(rows)
    got = polytask.load(tmp_path / "slim").predict(rows)
    expected = full[[c for c in full.columns if c.startswith("segment")]]
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=0, atol=1e-6)


def test_the_onnx_export_computes_the_merged_model(merged, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tests.slim.test_export import assert_parity

    interface = export_onnx(merged, tmp_path / "merged.onnx")
    assert interface["verified"] is True
    assert_parity(merged, tmp_path / "merged.onnx")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_it_serves_the_numbers_predict_gives(merged, rows):
    test_client = pytest.importorskip("fastapi.testclient")
    from polytask.serve import create_app

    loaded = polytask.load(merged)
    predictions = loaded.predict(rows)
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    with test_client.TestClient(create_app(loaded)) as client:
        response = client.post("/v1/predict", json={"rows": records})
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    for answer, (_, row) in zip(answers, predictions.iterrows(), strict=True):
        assert answer["click"] == row["click"]
        assert answer["spend"] == row["spend"]
        assert answer["segment"]["class"] == row["segment"]


def test_a_merged_run_is_replaced_only_with_overwrite(merged, lineage):
    runs = [lineage["tune"]("click"), lineage["tune"]("segment")]
    args = [*runs, "--base", lineage["base"], "--method", "average", "-o", merged]
    refused = invoke("merge", *args)
    assert refused.exit_code == 2 and "already exists" in refused.output
    replaced = invoke("merge", *args, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert polytask.load(merged).summary()["merge"]["method"] == "average"


def test_a_merged_run_predicts_without_torch_as_with_it(merged, rows):
    """A merged run (TIES, or a routed MoE over the base's MMoE level) saves its lean arrays,
    and predicting from them gives the model's table."""
    from polytask.inference.array_predictor import ArrayPredictor, open_predictor

    opened = open_predictor(merged)
    expected = polytask.load(merged).predict(rows)
    got = opened.predict(rows)
    assert isinstance(opened, ArrayPredictor)
    assert list(got.columns) == list(expected.columns)
    for column in expected.columns:
        if expected[column].dtype == object:
            assert got[column].tolist() == expected[column].tolist()
        else:
            pd.testing.assert_series_equal(got[column], expected[column], rtol=1e-5, atol=1e-6)
