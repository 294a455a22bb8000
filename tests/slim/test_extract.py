"""Slimming: the extracted sub-network computes what the full model computes for the kept
tasks (exactly where nothing is pruned, renormalised where experts are dropped), is a smaller
model, and saves as a run directory that loads and predicts raw rows."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import polytask
from polytask.artifacts import run_dir as rd
from polytask.config import ModelSpec
from polytask.data.tabular import load_run_splits
from polytask.errors import PolytaskError
from polytask.features import Features
from polytask.inference.predict import predict_logits
from polytask.inference.subset import without_unused_experts
from polytask.model import MultiTaskModel, build_model
from polytask.slim import SLIM_REPORT, slim
from polytask.slim.extract import SlimContext, extract, task_subnetwork
from polytask.slim.report import parameter_count
from tests.conftest import base_spec, make_table

FAST = {"latency_repeats": 1, "latency_batches": (1, 16)}
NAMES = ["a", "b", "c"]


# ---------------------------------------------------------------------- untrained models
def make_model(
    arch: str, out_dims: tuple[int, ...] = (1, 3, 2), seed: int = 0, **options: Any
) -> tuple[MultiTaskModel, ModelSpec]:
    """A small model with every parameter (and HoME's norm statistics) randomised, so that
    gates are far from uniform and feature gates far from identity."""
    torch.manual_seed(seed)
    spec = ModelSpec(
        arch=arch,
        embedding_dim=2,
        hidden=[6, 5],
        num_experts=4,
        tower_hidden=[3],
        options=options,
    )
    model = build_model(spec, [4, 3], 4, list(out_dims), NAMES).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.6)
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.5)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
    return model, spec


def make_rows(count: int = 37, seed: int = 1) -> Features:
    generator = torch.Generator().manual_seed(seed)
    categorical = torch.stack(
        [torch.randint(0, size, (count,), generator=generator) for size in (4, 3)], 1
    )
    numeric = torch.cat([torch.randn(count, 2, generator=generator), torch.zeros(count, 2)], 1)
    return Features(categorical, numeric)


def cut(model: MultiTaskModel, spec: ModelSpec, keep: list[int], threshold: float = 0.0) -> Any:
    return extract(SlimContext(model, spec, keep, threshold, make_rows(), batch_size=16))


def assert_same_outputs(
    full: MultiTaskModel, slim_model: MultiTaskModel, keep: list[int], atol: float = 1e-6
) -> None:
    """The same logits to float32 rounding: the cut model sums fewer experts, in another order
    (hence a relative tolerance of a few ulps besides the absolute one)."""
    rows = make_rows(53, seed=5)
    with torch.inference_mode():
        expected, got = full(rows).logits, slim_model(rows).logits
    assert len(got) == len(keep)
    for index, task in enumerate(keep):
        torch.testing.assert_close(got[index], expected[task], rtol=1e-6, atol=atol)


GATED = [
    ("mmoe", {}),
    ("omoe", {}),
    ("cgc", {"task_experts": 2}),
    ("ple", {"levels": 2, "task_experts": 2, "shared_experts": 2}),
    ("home", {"task_groups": [[0, 2], [1]], "shared_experts": 2, "task_experts": 2}),
    ("home", {"expert_norm": "layer", "feature_gate_rank": 0}),
    ("dselect_k", {}),
    ("dselect_k", {"per_example": True}),
]


@pytest.mark.parametrize(("arch", "options"), GATED, ids=lambda v: str(v))
def test_keeping_every_task_at_threshold_zero_is_the_same_model(arch, options):
    model, spec = make_model(arch, **options)
    extraction = cut(model, spec, [0, 1, 2])
    assert extraction.spec.arch == "plan"
    assert_same_outputs(model, extraction.model, [0, 1, 2])
    if arch != "dselect_k":
        assert parameter_count(extraction.model) == parameter_count(model)


@pytest.mark.parametrize(("arch", "options"), GATED, ids=lambda v: str(v))
def test_threshold_zero_keeps_the_kept_tasks_outputs(arch, options):
    model, spec = make_model(arch, **options)
    extraction = cut(model, spec, [0, 2])
    assert extraction.spec.arch == "plan"
    assert_same_outputs(model, extraction.model, [0, 2])
    assert parameter_count(extraction.model) < parameter_count(model)
    if arch != "dselect_k":  # softmax gates give every allowed expert some weight
        assert extraction.exact


LISTED_ARCHS = [
    *GATED,
    ("shared_bottom", {}),
    ("single", {}),
    ("cross_stitch", {}),
    ("task_bottom", {}),
    ("task_moe", {}),
    ("task_moe", {"routing": "row"}),
]


@pytest.mark.parametrize(("arch", "options"), LISTED_ARCHS, ids=lambda v: str(v))
def test_task_subnetwork_keeps_every_allowed_expert_and_is_exact_without_rows(arch, options):
    model, _ = make_model(arch, **options)
    for keep in ([0], [1, 2]):
        sub, plan = task_subnetwork(model, keep)
        assert plan.num_tasks == len(keep) and sub.plan == plan
        assert_same_outputs(model, sub, keep, atol=1e-5)  # fewer tasks: another summation order


def test_mmoe_pruning_renormalises_the_gates_over_the_kept_experts():
    model, spec = make_model("mmoe")
    keep = [1]
    extraction = cut(model, spec, keep, threshold=0.2)
    kept = extraction.experts[0]["kept"]
    assert 0 < len(kept) < 4 and not extraction.exact
    rows = make_rows(29, seed=3)
    level = model.arch.levels[0]
    with torch.inference_mode():
        x = model.encode(rows)
        gates = level.gates  # weight [G, in, E], bias [G, 1, E]
        logits = (x @ gates.weight[1] + gates.bias[1, 0])[:, kept]
        weights = torch.softmax(logits, dim=-1)  # [B, E_kept]: softmax over kept = renormalised
        experts = level.experts(x)[kept]  # [E_kept, B, D]
        expected = torch.einsum("be,ebd->bd", weights, experts)
        got = extraction.model.arch(extraction.model.encode(rows)).tasks[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert extraction.model.arch.levels[0].experts.num_experts == len(kept)


def test_pruning_keeps_experts_by_mean_gate_weight():
    model, spec = make_model("mmoe")
    rows = make_rows()
    with torch.inference_mode():
        usage = model(rows).task_gates.mean(1)  # [T, E]
    threshold = float(usage[0].sort().values[1:3].mean())  # between 2nd and 3rd smallest
    extraction = extract(SlimContext(model, spec, [0], threshold, rows))
    expected = [e for e in range(4) if float(usage[0, e]) > threshold]
    assert extraction.experts[0]["kept"] == expected
    assert len(expected) == 2


@pytest.mark.parametrize(
    ("arch", "options", "keep"),
    [
        ("shared_bottom", {}, [1]),
        ("single", {}, [0, 2]),
        ("single", {}, [2]),
        ("task_bottom", {}, [0, 1]),
        ("cross_stitch", {}, [2]),
        ("task_moe", {"top_k": 2}, [0, 2]),
    ],
)
def test_exact_archs_keep_the_kept_tasks_outputs(arch, options, keep):
    model, spec = make_model(arch, **options)
    extraction = cut(model, spec, keep)
    assert extraction.exact
    assert_same_outputs(model, extraction.model, keep)
    assert parameter_count(extraction.model) < parameter_count(model)
    if arch == "single":
        assert len(extraction.model.encoders) == len(keep)


def test_task_moe_keeps_exactly_the_experts_its_kept_tasks_route_to():
    model, spec = make_model("task_moe", top_k=1)
    routes = model.arch.levels[0].gates.routes()
    extraction = cut(model, spec, [0, 1])
    union = sorted({*routes[0], *routes[1]})
    assert extraction.experts[0]["kept"] == union
    assert extraction.spec.options["levels"][0]["experts"]["count"] == len(union)
    assert extraction.model.arch.levels[0].experts.num_experts == len(union)
    assert_same_outputs(model, extraction.model, [0, 1])


def test_without_unused_experts_drops_only_experts_no_task_routes_to():
    model, _ = make_model("task_moe", top_k=1)
    routes = model.arch.levels[0].gates.routes()
    used = sorted({e for route in routes for e in route})
    assert len(used) < 4  # three tasks routing to one expert each, out of four
    pruned = without_unused_experts(model)
    assert pruned.arch.levels[0].experts.num_experts == len(used)
    assert_same_outputs(model, pruned, [0, 1, 2])
    mmoe, _ = make_model("mmoe")
    assert without_unused_experts(mmoe) is mmoe


def test_row_routed_task_moe_is_pruned_by_usage_and_refuses_fewer_than_top_k():
    model, spec = make_model("task_moe", routing="row", top_k=2)
    extraction = cut(model, spec, [0, 1, 2], threshold=0.0)
    assert extraction.exact
    assert_same_outputs(model, extraction.model, [0, 1, 2])
    with pytest.raises(PolytaskError, match="fewer than top_k"):
        cut(model, spec, [0], threshold=0.9)


@pytest.mark.parametrize("arch", ["esmm", "aitm"])
def test_funnel_archs_keep_a_prefix_of_their_chain(arch):
    model, spec = make_model(arch, out_dims=(1, 1, 1))
    for keep in ([0, 1], [0]):
        extraction = cut(model, spec, keep)
        assert extraction.exact
        assert_same_outputs(model, extraction.model, keep)
    with pytest.raises(PolytaskError, match="keep a too"):
        cut(model, spec, [1])
    with pytest.raises(PolytaskError, match="keep b too"):
        cut(model, spec, [0, 2])


def test_gated_extraction_needs_rows_and_says_how_to_give_them():
    model, spec = make_model("mmoe")
    context = SlimContext(model, spec, [0], 0.0, None, rows_problem="data file not found: x")
    with pytest.raises(PolytaskError, match=r"data file not found: x; pass --data FILE"):
        extract(context)


def test_a_threshold_above_every_weight_of_a_gate_is_an_error():
    model, spec = make_model("ple", levels=2, task_experts=2, shared_experts=2)
    with pytest.raises(PolytaskError, match=r"--threshold 0\.9 keeps no expert for"):
        cut(model, spec, [0], threshold=0.9)


# ---------------------------------------------------------------------- run directories
def logits_of(predictor: Any, rows: Features) -> list[torch.Tensor]:
    return predict_logits(predictor.model, rows, 64)


def assert_slim_run_matches(full_run: Path, slim_run: Path, kept: list[str], atol: float) -> None:
    """The slim run loads like any run, predicts the kept tasks only, and its outputs are the
    full model's on raw rows."""
    full, slimmed = polytask.load(full_run), polytask.load(slim_run)
    assert slimmed.task_names == kept
    raw = make_table(n=41, seed=7)
    rows = full.preprocessor.transform(raw)
    full_logits, slim_logits = logits_of(full, rows), logits_of(slimmed, rows)
    for index, name in enumerate(kept):
        expected = full_logits[full.task_names.index(name)]
        torch.testing.assert_close(slim_logits[index], expected, rtol=0.0, atol=atol)
    predicted, reference = slimmed.predict(raw), full.predict(raw)
    ours = [c for c in reference.columns if any(c == k or c.startswith(f"{k}_") for k in kept)]
    assert predicted.columns.tolist() == ours
    for column in predicted.columns:
        if predicted[column].dtype.kind == "f":
            torch.testing.assert_close(
                torch.tensor(predicted[column].to_numpy()),
                torch.tensor(reference[column].to_numpy()),
                rtol=1e-5,
                atol=1e-6,
            )


def test_task_moe_slim_run_is_exact_smaller_and_reported(train_run, tmp_path):
    run = train_run("task_moe", top_k=2)
    out = tmp_path / "slim"
    report = slim(run, ["spend", "click"], out, **FAST)
    assert_slim_run_matches(run, out, ["click", "spend"], atol=1e-6)
    assert report["exact"] is True
    assert report["tasks"] == {"kept": ["click", "spend"], "dropped": ["segment", "tags"]}
    assert report["slim"]["parameters"] < report["full"]["parameters"]
    assert report["slim"]["weights_bytes"] < report["full"]["weights_bytes"]
    assert report["max_abs_difference"] < 1e-4
    for side in ("full", "slim"):
        assert report[side]["serving_form"] == "lean"
        assert set(report[side]["latency_ms"]) == {"batch_1", "batch_16"}
        assert set(report[side]["latency_ms_eager"]) == {"batch_1", "batch_16"}
        assert report[side]["metrics"]["click"]["auc"] == pytest.approx(
            report["full"]["metrics"]["click"]["auc"]
        )
    routes = polytask.load(run).model.arch.levels[0].gates.routes()
    assert report["experts"][0]["kept"] == sorted({*routes[0], *routes[2]})
    saved = json.loads((out / SLIM_REPORT).read_text())
    assert saved["exact"] is True and saved["primary_metric"] == {"click": "auc", "spend": "rmse"}
    assert (out / rd.PREPROCESSOR).read_bytes() == (run / rd.PREPROCESSOR).read_bytes()
    summary = json.loads((out / rd.SUMMARY).read_text())
    assert summary["slim"]["dropped_tasks"] == ["segment", "tags"]
    assert set(json.loads((out / rd.FINAL_METRICS).read_text())) == {"valid", "test"}


@pytest.mark.parametrize("arch", ["shared_bottom", "single"])
def test_hard_sharing_and_single_task_runs_slim_exactly(train_run, tmp_path, arch):
    run = train_run(arch)
    report = slim(run, ["segment"], tmp_path / "slim", **FAST)
    assert report["exact"] is True
    assert report["slim"]["parameters"] < report["full"]["parameters"]
    assert_slim_run_matches(run, tmp_path / "slim", ["segment"], atol=1e-6)


def test_mmoe_with_threshold_zero_equals_the_full_model(train_run, tmp_path):
    run = train_run("mmoe")
    report = slim(run, ["click", "tags"], tmp_path / "slim", threshold=0.0, **FAST)
    assert report["exact"] is True
    assert report["experts"][0]["kept"] == [0, 1, 2, 3]
    assert_slim_run_matches(run, tmp_path / "slim", ["click", "tags"], atol=1e-6)
    assert report["slim"]["metrics"]["click"]["auc"] == pytest.approx(
        report["full"]["metrics"]["click"]["auc"], abs=1e-9
    )


def test_mmoe_threshold_that_drops_experts_reports_the_quality_change(train_run, tmp_path):
    run = train_run("mmoe")
    usage = sorted(json.loads((run / rd.EXPERTS).read_text())["utilisation"]["click"])
    threshold = (usage[0] + usage[1]) / 2  # drops click's least used expert
    report = slim(run, ["click"], tmp_path / "slim", threshold=threshold, **FAST)
    assert report["exact"] is False
    assert len(report["experts"][0]["kept"]) == 3 and len(report["experts"][0]["dropped"]) == 1
    assert report["slim"]["parameters"] < report["full"]["parameters"]
    before = report["full"]["metrics"]["click"]["auc"]
    after = report["slim"]["metrics"]["click"]["auc"]
    assert math.isfinite(before) and math.isfinite(after)
    assert report["max_abs_difference"] > 0
    assert report["rows"]["source"] == "the run's validation rows"
    loaded = polytask.load(tmp_path / "slim")
    assert loaded.spec.model.arch == "plan"
    assert loaded.spec.model.options["levels"][0]["experts"]["count"] == 3
    assert loaded.spec.model.options["source"] == "mmoe"
    assert loaded.predict(make_table(n=5, seed=3)).columns.tolist() == ["click"]
    again = slim(tmp_path / "slim", ["click"], tmp_path / "again", threshold=0.0, **FAST)
    assert again["exact"] is True  # a slim run slims like any other


def test_data_file_rows_and_refusals(train_run, tmp_path):
    run = train_run("mmoe")
    data = tmp_path / "rows.csv"
    make_table(n=50, seed=11).to_csv(data, index=False)
    report = slim(run, ["spend"], tmp_path / "slim", data=data, **FAST)
    assert report["rows"] == {"source": f"--data {data}", "count": 50}
    assert json.loads((tmp_path / "slim" / rd.FINAL_METRICS).read_text()) == {}
    with pytest.raises(PolytaskError, match="already exists; pass --overwrite"):
        slim(run, ["spend"], tmp_path / "slim", **FAST)
    with pytest.raises(PolytaskError, match=r"unknown task 'spnd' \(did you mean 'spend'\?\)"):
        slim(run, ["spnd"], tmp_path / "other", **FAST)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(PolytaskError, match=r"--threshold must be in \[0, 1\)"):
            slim(run, ["spend"], tmp_path / "other", threshold=bad, **FAST)
    assert not (tmp_path / "other").exists()


def test_a_failure_while_writing_leaves_nothing_behind(train_run, tmp_path, monkeypatch):
    import polytask.slim.build as build

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(build, "_reload", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        slim(train_run("shared_bottom"), ["click"], tmp_path / "slim", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_run_data_is_fine_for_exact_archs_and_an_error_for_gated(train_run, tmp_path):
    import yaml

    for arch in ("shared_bottom", "mmoe"):
        moved = tmp_path / arch
        shutil.copytree(train_run(arch), moved)
        config = yaml.safe_load((moved / rd.CONFIG).read_text())
        config["data"]["train"] = str(tmp_path / "gone.csv")
        (moved / rd.CONFIG).write_text(yaml.safe_dump(config))
        if arch == "mmoe":
            with pytest.raises(PolytaskError, match=r"could not be read .*; pass --data FILE"):
                slim(moved, ["click"], tmp_path / "slim-mmoe", **FAST)
            continue
        report = slim(moved, ["click"], tmp_path / "slim", **FAST)
        assert report["exact"] is True
        assert report["full"]["metrics"] is None and report["max_abs_difference"] is None
        assert "data file not found" in report["notes"][0]
        assert report["slim"]["latency_ms"]["batch_16"] > 0
    assert not (tmp_path / "slim-mmoe").exists()


def test_slim_metrics_are_weighted_as_defined_by_data_weight(tmp_path):
    """A run trained with data.weight: slim judges both models with the rows' sample weights,
    sum(w * score) / sum(w) over the labelled rows, checked by hand; rows without the weight
    column get no metrics (unweighted ones would not be the run's), and a note says why."""
    table = make_table(n=240, seed=1)
    table["w"] = (table.index % 4).astype(float)  # 0, 1, 2, 3
    table.to_csv(tmp_path / "t.csv", index=False)
    spec = base_spec(
        tmp_path / "t.csv",
        data={"weight": {"click": "w", "spend": "w"}},
        model={"arch": "mmoe", "num_experts": 4},
        train={"epochs": 2},
    )
    run = polytask.train(spec, tmp_path / "run").run
    rows = make_table(n=80, seed=12)
    rows["w"] = np.where(rows.index % 3 == 0, 3.0, 0.5)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    report = slim(
        run,
        ["click", "spend"],
        tmp_path / "slim",
        threshold=0.0,
        data=tmp_path / "rows.csv",
        **FAST,
    )
    predicted = polytask.load(run).predict(rows)
    for side in ("full", "slim"):
        metrics = report[side]["metrics"]
        y, p = rows["clicked"].to_numpy(), predicted["click"].to_numpy()
        labelled = ~np.isnan(y)
        w = rows["w"].to_numpy()[labelled]
        y, p = y[labelled], p[labelled]
        accuracy = (w * ((p >= 0.5) == (y == 1))).sum() / w.sum()
        assert metrics["click"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
        unweighted = ((p >= 0.5) == (y == 1)).mean()
        assert metrics["click"]["accuracy"] != pytest.approx(unweighted, abs=1e-6)
        y, p = rows["spend"].to_numpy(), predicted["spend"].to_numpy()
        labelled = ~np.isnan(y)
        w = rows["w"].to_numpy()[labelled]
        rmse = np.sqrt((w * (p[labelled] - y[labelled]) ** 2).sum() / w.sum())
        assert metrics["spend"]["rmse"] == pytest.approx(rmse, rel=1e-5)
    rows.drop(columns=["w"]).to_csv(tmp_path / "unweighted.csv", index=False)
    report = slim(
        run, ["click"], tmp_path / "slim2", threshold=0.0, data=tmp_path / "unweighted.csv", **FAST
    )
    assert report["full"]["metrics"] is None and report["slim"]["metrics"] is None
    assert any(
        "cannot be weighted as the run is" in note and "'w'" in note for note in report["notes"]
    )
    # on the run's own rows: the slim run's metrics.json is weighted as the run's evaluation
    own = slim(run, ["click"], tmp_path / "slim3", threshold=0.0, **FAST)
    predictor = polytask.load(run)
    splits = load_run_splits(predictor.spec)
    final = json.loads((tmp_path / "slim3" / rd.FINAL_METRICS).read_text())
    for split, frame in (("valid", splits.valid), ("test", splits.test)):
        expected = predictor.evaluate(frame)["metrics"]["click"]
        assert final[split]["click"] == pytest.approx(
            {k: v for k, v in expected.items() if k != "loss"}, abs=1e-6
        )
    assert own["slim"]["metrics"] == final["valid"]
