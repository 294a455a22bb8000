"""Predicting some tasks: the same outputs as the full model, computing less."""

from __future__ import annotations

import pandas as pd
import pytest

import polytask
from polytask.errors import PolytaskError
from polytask.inference.subset import task_subset
from polytask.slim.report import parameter_count
from tests.cli_helpers import assert_user_error, invoke
from tests.slim.test_extract import GATED, assert_same_outputs, make_model

EVERY_ARCH = [
    *GATED,
    ("shared_bottom", {}),
    ("single", {}),
    ("task_bottom", {}),
    ("cross_stitch", {}),
    ("task_moe", {"top_k": 2}),
    ("task_moe", {"routing": "row", "top_k": 2}),
]


@pytest.mark.parametrize(("arch", "options"), EVERY_ARCH, ids=lambda v: str(v))
@pytest.mark.parametrize("keep", [[0, 2], [1]])
def test_a_task_subset_gives_the_full_models_outputs_with_fewer_parameters(arch, options, keep):
    model, _ = make_model(arch, **options)
    part = task_subset(model, keep)
    assert part.task_names == [model.task_names[t] for t in keep]
    assert_same_outputs(model, part, keep, atol=1e-5)  # float32 sums in another order
    assert parameter_count(part) < parameter_count(model)


def test_ple_subset_skips_the_other_tasks_experts():
    model, _ = make_model("ple", levels=2, task_experts=2, shared_experts=2)
    part = task_subset(model, [1])
    last = part.plan.levels[-1]
    # the last level keeps the shared experts and task 1's own: 2 + 2 of 2 + 3 * 2
    assert last.experts.count == 4 and model.plan.levels[-1].experts.count == 8


@pytest.mark.parametrize("arch", ["esmm", "aitm"])
def test_funnel_subsets_are_prefixes(arch):
    model, _ = make_model(arch, out_dims=(1, 1, 1))
    assert_same_outputs(model, task_subset(model, [0, 1]), [0, 1])
    with pytest.raises(PolytaskError, match="keep a too"):
        task_subset(model, [1])


def test_predict_tasks_equals_the_full_predictions(trained_run):
    predictor = polytask.load(trained_run["run"])
    frame = trained_run["frames"]["test"]
    full = predictor.predict(frame)
    part = predictor.predict(frame, tasks=["tags", "click"])
    assert list(part.columns) == ["click", "tags_tag_a", "tags_tag_b"]
    pd.testing.assert_frame_equal(part, full[part.columns], rtol=1e-5, atol=1e-6)
    assert predictor.subset(["click", "tags"]) is predictor.subset(["tags", "click"])
    with pytest.raises(PolytaskError, match=r"tasks: 'clik' is not a task .*'click'"):
        predictor.predict(frame, tasks=["clik"])


def test_cli_predict_tasks(trained_run, tmp_path):
    out = tmp_path / "p.csv"
    result = invoke(
        "predict",
        trained_run["run"],
        trained_run["paths"]["test"],
        "-o",
        out,
        "--tasks",
        "spend,segment",
    )
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out)
    assert written.columns[0] == "segment" and "spend" in written.columns
    assert "click" not in written.columns
    assert_user_error(
        invoke("predict", trained_run["run"], trained_run["paths"]["test"], "--tasks", "spnd"),
        "'spnd' is not a task",
    )
