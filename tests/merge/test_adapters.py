"""Folding adapters into the backbone and merging them, against their definitions."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import polytask
from polytask.artifacts import run_dir as rd
from polytask.config import load_spec
from polytask.errors import PolytaskError
from polytask.merge.adapters import fold, merge_adapters
from polytask.train.trainer import fit
from tests.conftest import base_spec, write_splits


@pytest.fixture(scope="module")
def adapter_runs(tmp_path_factory):
    """A shared-bottom base and two adapter runs on it (lora, bottleneck)."""
    folder = tmp_path_factory.mktemp("adapter_runs")
    frames, paths = write_splits(folder, train_rows=200)
    spec = base_spec(
        paths["train"],
        data={"valid": str(paths["valid"]), "test": str(paths["test"])},
        model={"arch": "shared_bottom", "hidden": [8, 6]},
        train={"epochs": 2},
    )
    base = fit(load_spec(copy.deepcopy(spec)), folder / "base", progress=False)
    runs = {"base": base, "frames": frames}
    for method in ("lora", "bottleneck"):
        adapted = copy.deepcopy(spec)
        adapted["model"] = {"adapters": {"method": method, "backbone": str(base)}}
        runs[method] = fit(load_spec(adapted), folder / method, progress=False)
    return runs


def test_a_folded_task_predicts_as_the_adapter_run_without_adapters(adapter_runs, tmp_path):
    rows = adapter_runs["frames"]["test"].head(40)
    record = fold(adapter_runs["lora"], "segment", tmp_path / "folded")
    assert record["layers"] == ["arch.levels.0.experts.0", "arch.levels.0.experts.1"]
    folded = polytask.load(tmp_path / "folded")
    assert folded.task_names == ["segment"]
    assert (tmp_path / "folded" / rd.LEAN).is_file()  # predict then needs no torch
    ours = polytask.load(adapter_runs["lora"]).predict(rows)
    theirs = folded.predict(rows)
    numbers = theirs.select_dtypes("number").columns
    assert len(numbers) == 3  # one probability per class
    assert np.allclose(ours[numbers].to_numpy(float), theirs[numbers].to_numpy(float), atol=1e-5)
    assert list(theirs.columns) == [c for c in ours.columns if c.startswith("segment")]


def test_task_arithmetic_of_adapter_updates_is_the_base_plus_the_scaled_sum(adapter_runs, tmp_path):
    merge_adapters(adapter_runs["lora"], "task_arithmetic", {"scaling": 0.5}, tmp_path / "merged")
    model = polytask.load(adapter_runs["lora"]).model
    merged = load_file(str(tmp_path / "merged" / rd.WEIGHTS))
    base = load_file(str(adapter_runs["base"] / rd.WEIGHTS))
    deltas = [model.deltas(t) for t in range(4)]
    for key in deltas[0]:
        expected = base[key] + 0.5 * sum(delta[key] for delta in deltas)
        assert torch.allclose(merged[key], expected, atol=1e-6)
    assert torch.equal(
        merged["towers.output.weights.0"], model.state_dict()["towers.output.weights.0"]
    )
    assert polytask.load(tmp_path / "merged").task_names == ["click", "segment", "spend", "tags"]


def test_nonlinear_adapters_and_row_reading_methods_are_refused(adapter_runs, tmp_path):
    with pytest.raises(PolytaskError, match="cannot be folded"):
        fold(adapter_runs["bottleneck"], "click", tmp_path / "x")
    with pytest.raises(PolytaskError, match="reads rows"):
        merge_adapters(adapter_runs["lora"], "fisher", {}, tmp_path / "y")
    with pytest.raises(PolytaskError, match="has no adapters"):
        fold(adapter_runs["base"], "click", tmp_path / "z")
    with pytest.raises(PolytaskError, match="not a task"):
        fold(adapter_runs["lora"], "clik", tmp_path / "w")
    assert not any(tmp_path.iterdir())


def test_slim_and_predict_subsets_of_an_adapter_run(adapter_runs):
    predictor = polytask.load(adapter_runs["lora"])
    rows = adapter_runs["frames"]["test"].head(10)
    full = predictor.predict(rows)
    part = predictor.predict(rows, tasks=["spend"])
    assert list(part.columns) == [c for c in full.columns if c.startswith("spend")]
    assert np.allclose(part.to_numpy(float), full[part.columns].to_numpy(float), atol=1e-6)
    assert not (Path(adapter_runs["lora"]) / rd.LEAN).exists()
    with pytest.raises(PolytaskError, match="fold one task"):
        predictor.network()


def test_adapters_shipped_alone_load_onto_their_backbone(adapter_runs, tmp_path):
    import shutil

    run = Path(adapter_runs["lora"])
    summary = rd.load_json(run, rd.SUMMARY)["adapters"]
    assert summary["bytes"] < summary["model_bytes"]
    assert summary["parameters"] == sum(
        v.numel() for v in load_file(str(run / rd.ADAPTERS)).values()
    )
    alone = tmp_path / "alone"
    shutil.copytree(run, alone)
    (alone / rd.WEIGHTS).unlink()
    rows = adapter_runs["frames"]["test"].head(20)
    full = polytask.load(run).predict(rows)
    shipped = polytask.load(alone).predict(rows)
    numbers = full.select_dtypes("number").columns
    assert np.array_equal(full[numbers].to_numpy(), shipped[numbers].to_numpy())


def test_adapters_alone_refuse_a_changed_backbone(adapter_runs, tmp_path):
    import shutil

    backbone = tmp_path / "backbone"
    shutil.copytree(adapter_runs["base"], backbone)
    spec = rd.load_raw_config(adapter_runs["base"])
    spec["model"] = {"adapters": {"method": "lora", "backbone": str(backbone)}}
    run = fit(load_spec(spec), tmp_path / "lora", progress=False)
    (run / rd.WEIGHTS).unlink()
    state = load_file(str(backbone / rd.WEIGHTS))
    state["arch.levels.0.experts.biases.0"] += 1.0
    from safetensors.torch import save_file

    save_file(state, str(backbone / rd.WEIGHTS))
    with pytest.raises(PolytaskError, match="changed since the adapters were trained"):
        polytask.load(run)
