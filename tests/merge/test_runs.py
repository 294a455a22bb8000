"""Merging fine-tuned runs into one run: what comes from where, and every refusal."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml

import polytask
from polytask.artifacts import run_dir as rd
from polytask.artifacts.weights import save_weights
from polytask.errors import ConfigError, PolytaskError
from polytask.merge.runs import merge, parse_options
from polytask.slim import slim


def weights(run):
    return polytask.load(run).model.state_dict()


def test_each_task_comes_from_its_run_and_shared_weights_are_merged(lineage, tmp_path):
    click, segment = lineage["tune"]("click"), lineage["tune"]("segment")
    record = merge(
        [click, segment], lineage["base"], "task_arithmetic", {"scaling": 0.5}, tmp_path / "merged"
    )
    merged, base = weights(tmp_path / "merged"), weights(lineage["base"])
    tuned = {
        name: polytask.load(run).model.state_dict()
        for name, run in (("click", click), ("segment", segment))
    }
    assert record["tasks_from"] == {"click": str(click), "segment": str(segment), "spend": "base"}
    # towers: row t from the run of task t (each run holds one tower, now row 0), spend's base
    tower = "towers.output.weights.0"
    assert torch.equal(merged[tower][0, :, :1], tuned["click"][tower][0])
    assert torch.equal(merged[tower][1, :, :3], tuned["segment"][tower][0])
    assert torch.equal(merged[tower][2], base[tower][2])
    # each task's gate from its run; the shared experts by task arithmetic
    gate = "arch.levels.0.gates.weight"
    assert torch.equal(merged[gate][0], tuned["click"][gate][0])
    assert torch.equal(merged[gate][2], base[gate][2])
    expert = "arch.levels.0.experts.weights.0"
    expected = base[expert] + 0.5 * (
        tuned["click"][expert] + tuned["segment"][expert] - 2 * base[expert]
    )
    torch.testing.assert_close(merged[expert], expected)
    loaded = polytask.load(tmp_path / "merged")
    assert loaded.task_names == ["click", "segment", "spend"]
    assert set(rd.load_json(tmp_path / "merged", rd.FINAL_METRICS)) == {"valid", "test"}
    predictions = loaded.predict(lineage["frames"]["test"])
    assert {"click", "segment", "spend"} <= set(predictions.columns)
    assert loaded.summary()["merge"]["merged_tensors"] == record["merged_tensors"] == 3


def test_one_run_with_task_arithmetic_at_one_is_that_run(lineage, tmp_path):
    click = lineage["tune"]("click")
    merge([click], lineage["base"], "task_arithmetic", {"scaling": 1.0}, tmp_path / "one")
    merged = polytask.load(tmp_path / "one")
    tuned = polytask.load(click)
    frame = lineage["frames"]["test"]
    assert torch.allclose(
        torch.tensor(merged.predict(frame)["click"].to_numpy()),
        torch.tensor(tuned.predict(frame)["click"].to_numpy()),
        atol=1e-6,
    )


def test_polytask_merge_is_the_api_function_beside_its_subpackage(lineage, tmp_path):
    """``import polytask.merge.runs`` binds the subpackage to the name; ``polytask.merge``
    stays the function, as ``polytask.train`` does."""
    import polytask.merge.runs

    click = lineage["tune"]("click")
    merged = polytask.merge([click], lineage["base"], "average", tmp_path / "api")
    assert merged.summary()["merge"]["method"] == "average"
    assert merged.task_names == polytask.load(lineage["base"]).task_names


@pytest.mark.parametrize(
    "method",
    ["average", "ties", "tsv_m", "lines", "pcb", "breadcrumbs", "dare_ties", "regmean", "fisher"],
)
def test_every_method_writes_a_run_that_loads(lineage, tmp_path, method):
    runs = [lineage["tune"]("click"), lineage["tune"]("segment")]
    options = {"samples": 40} if method in ("regmean", "fisher") else {}
    record = merge(runs, lineage["base"], method, options, tmp_path / method)
    assert record["seconds"] >= 0
    assert polytask.load(tmp_path / method).predict(lineage["frames"]["test"]).notna().all().all()


def test_adamerging_lowers_the_entropy_on_the_runs_rows(lineage, tmp_path):
    runs = [lineage["tune"]("click"), lineage["tune"]("segment")]
    record = merge(
        runs,
        lineage["base"],
        "adamerging",
        {"steps": 40, "lr": 0.05, "samples": 60, "granularity": "task"},
        tmp_path / "ada",
    )
    report = record["report"]
    assert report["entropy_last"] < report["entropy_first"]
    assert len(report["coefficients"]) == 2


def test_routed_merge_slims_back_to_a_tasks_fine_tuned_path(lineage, tmp_path):
    """With click's router sending its rows to click's copies only, slimming click out of the
    routed run gives click's fine-tuned run (the encoder was kept fixed in both runs, so task
    arithmetic leaves it as it was; the routers are left as initialised, from each task's
    own gate, so that the forced route reproduces the run's gate exactly)."""
    spec = {
        "tasks": ["click"],
        "data": {"train": str(lineage["paths"]["train"])},
        "freeze": ["encoders.*"],
        "train": {"epochs": 2},
    }
    click = polytask.finetune(lineage["base"], spec, tmp_path / "click").run
    spec = {**spec, "tasks": ["segment"]}
    segment = polytask.finetune(lineage["base"], spec, tmp_path / "segment").run
    record = merge(
        [click, segment],
        lineage["base"],
        "routed_moe",
        {"steps": 0},
        tmp_path / "routed",
    )
    assert record["report"]["experts"] == [6]  # three experts, one copy per run
    routed = polytask.load(tmp_path / "routed")
    assert routed.spec.model.arch == "plan"
    # route click's gate to click's copies (expert e of run k is copy 2 e + k)
    state = routed.model.state_dict()
    state["arch.levels.0.gates.bias"][0, 0, 1::2] = -1e4

    save_weights(tmp_path / "routed" / rd.WEIGHTS, state)
    report = slim(
        tmp_path / "routed", ["click"], tmp_path / "slim", latency_repeats=1, latency_batches=(1,)
    )
    assert report["experts"][0]["kept"] == [0, 2, 4]
    frame = lineage["frames"]["test"]
    slimmed = polytask.load(tmp_path / "slim").predict(frame)["click"].to_numpy()
    tuned = polytask.load(click).predict(frame)["click"].to_numpy()
    assert abs(slimmed - tuned).max() < 1e-5


def test_refusals_are_one_line_and_write_nothing(lineage, tmp_path):
    base, tune = lineage["base"], lineage["tune"]
    click, segment = tune("click"), tune("segment")
    out = tmp_path / "out"
    other = polytask.train(
        lineage["spec"] | {"train": {"epochs": 1, "seed": 9}}, tmp_path / "other_base"
    ).run
    foreign = tune("segment", source=other)
    both = tune("click", "segment")
    reshaped = tmp_path / "reshaped"
    shutil.copytree(segment, reshaped)
    config = yaml.safe_load((reshaped / rd.CONFIG).read_text())
    config["model"]["tower_hidden"] = [5]
    (reshaped / rd.CONFIG).write_text(yaml.safe_dump(config))
    cases = [
        ([click, foreign], "task_arithmetic", {}, PolytaskError, "fine-tuned from another base"),
        ([click, both], "task_arithmetic", {}, PolytaskError, "task 'click' is in two runs"),
        ([click, reshaped], "task_arithmetic", {}, PolytaskError, "architecture"),
        ([click, base], "task_arithmetic", {}, PolytaskError, "not a fine-tuned run"),
        ([click, segment], "ties", {"keeep": 0.1}, ConfigError, "keeep"),
        ([click, segment], "ties", {"keep": 2}, ConfigError, "keep"),
        ([click, segment], "tie", {}, ConfigError, "did you mean 'ties'"),
        ([click, segment], "routed_moe", {"levels": [4]}, ConfigError, "levels"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for runs, method, options, error, fragment in cases:
        with pytest.raises(error, match=fragment):
            merge(runs, base, method, options, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_options_are_read_as_yaml_values():
    assert parse_options(["scaling=0.5", "levels=[0, 1]", "clamp=true", "split=test"]) == {
        "scaling": 0.5,
        "levels": [0, 1],
        "clamp": True,
        "split": "test",
    }
    with pytest.raises(PolytaskError, match="key=value"):
        parse_options(["scaling"])


def test_entropy_methods_skip_regression_tasks(lineage, tmp_path):
    click, spend = lineage["tune"]("click"), lineage["tune"]("spend")
    options = {"steps": 3, "samples": 30, "granularity": "task"}
    record = merge([click, spend], lineage["base"], "adamerging", options, tmp_path / "ok")
    assert record["report"]["entropy_last"] >= 0


def test_routers_trained_on_each_rows_source_run(lineage, tmp_path):
    runs = [lineage["tune"]("click"), lineage["tune"]("segment")]
    options = {"objective": "source", "steps": 20, "samples": 40, "lr": 0.05}
    record = merge(runs, lineage["base"], "routed_moe", options, tmp_path / "source")
    report = record["report"]
    assert report["objective"] == "source" and report["loss_last"] < report["loss_first"]
