"""Adding an architecture is one plan: a new one, written here, goes the whole way.

:class:`Pyramid` below is everything a new architecture needs (what one file of
``polytask/arch`` would hold): its options and a ``build`` that writes its plan. Nothing else
in polytask learns about it, yet through the public API and the CLI it trains, predicts raw
rows, slims one task exactly, exports to ONNX (checked against onnxruntime) and serves.

The registration lasts for this module only (:func:`pyramid`), on a copy of the registry's
table, so that no other test sees it (even when a test here fails).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, Field

import polytask
from polytask.arch import ARCHS, Architecture
from polytask.arch.base import ArchOptions
from polytask.config import ModelSpec
from polytask.plan.schema import FixedGates, Level, MLPExperts, Plan, SoftmaxGates, full
from polytask.slim import export_onnx, slim
from tests.cli_helpers import invoke
from tests.conftest import base_spec, make_table

NAME = "pyramid_in_a_test"
KEPT = "segment"  # the task the slim run keeps (multiclass: several output columns)


# ---------------------------------------------------------------------- the architecture
class PyramidOptions(ArchOptions):
    shared_experts: int = Field(2, ge=1, description="shared experts of the bottom level")
    top_width: int = Field(4, ge=1, description="output width of the top level's experts")


class Pyramid(Architecture):
    """A two-level pyramid: shared and per-task MLP experts under softmax gates (one per
    task over the shared experts and its own, one shared gate over all), then a per-task
    and a shared expert on top, mixed by a learned fixed weight per task."""

    Options = PyramidOptions

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        assert isinstance(options, PyramidOptions)
        s, tasks = options.shared_experts, full(num_tasks)
        shared = full(s)  # bottom pool: [shared..., task 0, ..., task T-1]
        bottom = Level(
            experts=MLPExperts(
                count=s + num_tasks,
                hidden=spec.hidden,
                dropout=spec.dropout,
                owners=["shared"] * s + [f"task:{t}" for t in tasks],
            ),
            gates=SoftmaxGates(allowed=[[*shared, s + t] for t in tasks] + [full(s + num_tasks)]),
            name="bottom",
        )
        # top pool: [task 0, ..., task T-1, shared]; task t's expert reads bottom output t,
        # the shared one the shared output (T); gate t mixes task t's and the shared expert
        top = Level(
            experts=MLPExperts(
                count=num_tasks + 1,
                hidden=[options.top_width],
                reads=[*tasks, num_tasks],
                owners=[f"task:{t}" for t in tasks] + ["shared"],
            ),
            gates=FixedGates(allowed=[[t, num_tasks] for t in tasks], reads=tasks),
            name="top",
        )
        return Plan(levels=[bottom, top], task_gates=tasks, source=NAME)


@pytest.fixture(scope="module")
def pyramid() -> Iterator[str]:
    """Registered for this module only."""
    assert NAME not in ARCHS
    with ARCHS.registered(NAME, Pyramid):
        yield NAME
    assert NAME not in ARCHS


# ---------------------------------------------------------------------- one trained run
@pytest.fixture(scope="module")
def run(pyramid: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pyramid")
    make_table(n=200, seed=4).to_csv(folder / "train.csv", index=False)
    spec = base_spec(
        folder / "train.csv",
        model={"arch": pyramid, "options": {"shared_experts": 2, "top_width": 3}},
        train={"epochs": 2},
    )
    predictor = polytask.train(spec, out=folder / "run", progress=False)
    assert predictor.spec.model.arch == pyramid
    return predictor.run


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Raw rows the run never saw: an unseen category, a blank one, missing numbers."""
    frame = make_table(n=30, seed=9).drop(columns=["clicked", "segment", "spend"])
    frame.loc[0, "color"] = "never-seen"
    frame.loc[1, "city"] = None
    frame.loc[2, "x2"] = np.nan
    return frame


@pytest.fixture(scope="module")
def predictions(run: Path, rows: pd.DataFrame) -> pd.DataFrame:
    return polytask.load(run).predict(rows)


def test_it_trains_into_a_run_that_predicts_raw_rows(run, rows, predictions, pyramid):
    loaded = polytask.load(run)
    plan = loaded.model.plan
    assert plan.source == pyramid
    assert [level.gates.kind for level in plan.levels] == ["softmax", "fixed"]
    assert [level.experts.count for level in plan.levels] == [2 + 4, 4 + 1]
    assert loaded.summary()["arch"] == pyramid and loaded.summary()["epochs_run"] == 2
    assert len(predictions) == len(rows)
    assert np.isfinite(predictions.select_dtypes("number").to_numpy()).all()
    assert predictions["click"].between(0, 1).all()
    # the bottom gates learned something row-dependent (they are not constant)
    assert predictions["click"].nunique() > 1


def test_the_cli_lists_it_and_predicts_the_same(run, rows, predictions, pyramid, tmp_path):
    listed = invoke("archs")
    assert listed.exit_code == 0 and pyramid in listed.output
    rows.to_csv(tmp_path / "rows.csv", index=False)
    result = invoke("predict", run, tmp_path / "rows.csv", "-o", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    written = pd.read_csv(tmp_path / "out.csv")
    # CSV text holds float32 values to ~7 significant digits
    pd.testing.assert_frame_equal(
        written, predictions.reset_index(drop=True), check_dtype=False, rtol=1e-6
    )


def test_slimming_one_task_at_threshold_zero_is_exact(run, rows, predictions, tmp_path):
    report = slim(run, [KEPT], tmp_path / "slim", threshold=0.0, latency_repeats=1)
    assert report["exact"] is True
    assert report["tasks"]["kept"] == [KEPT]
    top = report["experts"][1]
    assert top["kept"] == [1, 4]  # the kept task's top expert and the shared one
    slim_run = polytask.load(tmp_path / "slim")
    assert slim_run.spec.model.arch == "plan"  # rebuilt from its plan: no registry needed
    assert slim_run.model.plan.levels[1].gates.count == 1
    got = slim_run.predict(rows)
    expected = predictions[[c for c in predictions.columns if c.startswith(KEPT)]]
    # The cut keeps every expert the task reaches with its gate weights: the same function.
    # It computes it with smaller matrices (fewer gates and experts side by side), whose
    # products a BLAS may block differently: equal here bit for bit, allowed float32
    # rounding (1e-6) so as not to depend on the machine's kernels.
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=0, atol=1e-6)
    assert report["max_abs_difference"] <= 1e-6


def test_it_exports_to_onnx_with_onnxruntime_parity(run, rows, predictions, tmp_path):
    pytest.importorskip("onnx")
    runtime = pytest.importorskip("onnxruntime")
    interface = export_onnx(run, tmp_path / "pyramid.onnx")
    assert interface["verified"] is True and interface["arch"] == NAME
    loaded = polytask.load(run)
    features = loaded.preprocessor.transform(rows)
    session = runtime.InferenceSession(
        str(tmp_path / "pyramid.onnx"), providers=["CPUExecutionProvider"]
    )
    feed = {"categorical": features.categorical.numpy(), "numeric": features.numeric.numpy()}
    outputs = dict(zip(loaded.task_names, session.run(loaded.task_names, feed), strict=True))
    # float32 graph vs eager PyTorch: the same function, other kernels and summation orders
    np.testing.assert_allclose(outputs["click"], predictions["click"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(outputs["spend"], predictions["spend"], rtol=1e-5, atol=1e-4)
    classes = [c for c in predictions.columns if c.startswith("segment_p_")]
    np.testing.assert_allclose(outputs["segment"], predictions[classes], rtol=0, atol=1e-5)
    tags = predictions[["tags_tag_a", "tags_tag_b"]]
    np.testing.assert_allclose(outputs["tags"], tags, rtol=0, atol=1e-5)


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a JSON client sends them: NaN becomes null."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_it_serves_the_numbers_predict_gives(run, rows, predictions):
    test_client = pytest.importorskip("fastapi.testclient")
    from polytask.serve import create_app

    with test_client.TestClient(create_app(polytask.load(run))) as client:
        response = client.post("/v1/predict", json={"rows": records(rows)})
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    assert len(answers) == len(predictions)
    # one request is one batch: the server runs predict's computation on the same rows
    for answer, (_, row) in zip(answers, predictions.iterrows(), strict=True):
        assert answer["click"] == row["click"]
        assert answer["spend"] == row["spend"]
        assert answer["segment"]["class"] == row["segment"]
        for label, probability in answer["segment"]["probabilities"].items():
            assert probability == row[f"segment_p_{label}"]
        for label in ("tag_a", "tag_b"):
            assert answer["tags"][label] == row[f"tags_{label}"]
