"""Starting from trained weights (train.init) and keeping parameters fixed (train.freeze)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from polytask.artifacts import run_dir as rd
from polytask.config import load_spec
from polytask.errors import ConfigError
from polytask.train.trainer import fit

EPOCHS = {"epochs": 2, "early_stopping": {"patience": None}}


def train(spec: dict, out: Path) -> Path:
    return fit(load_spec(copy.deepcopy(spec)), out, progress=False)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / rd.WEIGHTS))


@pytest.fixture(scope="module")
def base(tmp_path_factory, request):
    from tests.conftest import base_spec, make_table

    folder = tmp_path_factory.mktemp("base")
    table = folder / "table.csv"
    make_table(n=160, seed=5).to_csv(table, index=False)
    spec = base_spec(table, train=EPOCHS)
    return spec, train(spec, folder / "run")


def test_fine_tuning_the_towers_keeps_every_frozen_weight_and_moves_the_towers(base, tmp_path):
    spec, run = base
    tuned_spec = copy.deepcopy(spec)
    tuned_spec["train"] = {**EPOCHS, "init": str(run), "freeze": ["encoders.*", "arch.*"]}
    tuned = train(tuned_spec, tmp_path / "tuned")
    before, after = weights(run), weights(tuned)
    assert before.keys() == after.keys()
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same == (not name.startswith("towers.")), name
    assert (tuned / rd.PREPROCESSOR).read_text() == (run / rd.PREPROCESSOR).read_text()
    summary = rd.load_json(tuned, rd.SUMMARY)
    assert 0 < summary["trainable_parameters"] < summary["parameters"]
    assert summary["init"] == str(run)


def test_init_from_a_weights_file(base, tmp_path):
    spec, run = base
    state = weights(run)
    file = tmp_path / "start.safetensors"
    save_file(state, str(file))
    started = copy.deepcopy(spec)
    started["train"] = {**EPOCHS, "epochs": 1, "init": str(file), "lr": 1e-12}
    out = train(started, tmp_path / "from-file")
    for name, value in weights(out).items():  # an lr of 1e-12 leaves the weights where they were
        torch.testing.assert_close(value, state[name], rtol=0, atol=1e-9)


def test_weights_of_another_model_and_bad_patterns_are_one_line_errors(base, tmp_path):
    spec, run = base
    other = copy.deepcopy(spec)
    other["model"] = {**other.get("model", {}), "hidden": [7]}
    other["train"] = {**EPOCHS, "init": str(run)}
    with pytest.raises(ConfigError, match=r"train.init: .* of another shape"):
        train(other, tmp_path / "other")
    typo = copy.deepcopy(spec)
    typo["train"] = {**EPOCHS, "freeze": ["arhc.*"]}
    with pytest.raises(ConfigError, match=r"train.freeze: 'arhc\.\*' matches no parameter"):
        train(typo, tmp_path / "typo")
    everything = copy.deepcopy(spec)
    everything["train"] = {**EPOCHS, "freeze": ["*"]}
    with pytest.raises(ConfigError, match="every parameter is frozen"):
        train(everything, tmp_path / "all")
    missing = copy.deepcopy(spec)
    missing["train"] = {**EPOCHS, "init": str(tmp_path / "nowhere")}
    with pytest.raises(ConfigError, match=r"train.init: .* is neither"):
        train(missing, tmp_path / "missing")
    assert not any(p.name in ("other", "typo", "all", "missing") for p in tmp_path.iterdir())


def test_a_weights_file_brings_the_preprocessor_beside_it(base, tmp_path):
    """The input layers of train.init's weights were built for a fitted preprocessor: the
    preprocessor.json in the weights file's folder is used, not one fitted on the new data."""
    from tests.conftest import make_table

    spec, run = base
    other = tmp_path / "other.csv"
    make_table(n=160, seed=6).to_csv(other, index=False)
    started = copy.deepcopy(spec)
    started["data"] = {**started["data"], "train": str(other)}
    started["train"] = {**EPOCHS, "epochs": 1}
    for beside in (False, True):
        folder = tmp_path / f"beside-{beside}"
        folder.mkdir()
        save_file(weights(run), str(folder / "start.safetensors"))
        if beside:
            (folder / rd.PREPROCESSOR).write_text((run / rd.PREPROCESSOR).read_text())
        started["train"]["init"] = str(folder / "start.safetensors")
        out = train(started, tmp_path / f"out-{beside}")
        same = rd.load_json(out, rd.PREPROCESSOR) == rd.load_json(run, rd.PREPROCESSOR)
        assert same == beside


# ---------------------------------------------------------------------- adapters' backbone
def adapter_spec(spec: dict, backbone: Path, method: str = "lora", **adapters) -> dict:
    out = copy.deepcopy(spec)
    out["model"] = {"adapters": {"method": method, "backbone": str(backbone), **adapters}}
    return out


def test_adapters_train_and_the_backbone_stays_bit_identical(base, tmp_path):
    spec, run = base
    adapted = train(adapter_spec(spec, run), tmp_path / "lora")
    before, after = weights(run), weights(adapted)
    for name, value in before.items():
        if not name.startswith("towers."):
            assert torch.equal(after[name], value), name
    assert any(not torch.equal(after[n], before[n]) for n in before if n.startswith("towers."))
    assert any(torch.count_nonzero(after[n]) for n in after if n.endswith(".up"))
    config = rd.load_config(adapted)
    assert config.model.arch == "mmoe" and config.model.adapters.method == "lora"
    assert "arch.levels.0.experts.weights.0" in config.train.freeze  # a resume keeps them


def test_heads_freeze_keeps_the_towers_too(base, tmp_path):
    spec, run = base
    adapted = train(adapter_spec(spec, run, heads="freeze"), tmp_path / "lora")
    before, after = weights(run), weights(adapted)
    assert all(torch.equal(after[n], v) for n, v in before.items())


def test_a_new_task_on_a_backbone_of_other_tasks_trains_its_gate_and_tower(base, tmp_path):
    spec, run = base
    new = adapter_spec(spec, run)
    new["tasks"] = [{"name": "spend_again", "kind": "regression", "target": "spend"}]
    adapted = train(new, tmp_path / "new")
    before, after = weights(run), weights(adapted)
    for name in before:
        if name.startswith(("encoders.", "arch.levels.0.experts.")):
            assert torch.equal(after[name], before[name]), name
    assert after["towers.output.weights.0"].shape[0] == 1


def test_architectures_whose_experts_follow_the_tasks_need_the_same_tasks(base, tmp_path):
    spec, _ = base
    cgc_spec = copy.deepcopy(spec)
    cgc_spec["model"] = {**spec["model"], "arch": "cgc"}
    cgc = train(cgc_spec, tmp_path / "cgc")
    new = adapter_spec(spec, cgc)
    new["tasks"] = spec["tasks"][:2]
    with pytest.raises(ConfigError, match="experts do not depend on the tasks"):
        train(new, tmp_path / "new")


def test_a_model_field_that_differs_from_the_backbone_is_refused(base, tmp_path):
    spec, run = base
    new = adapter_spec(spec, run)
    new["model"]["arch"] = "shared_bottom"
    with pytest.raises(ConfigError, match=r"model\.arch: the backbone run"):
        train(new, tmp_path / "x")


def test_fusion_on_a_bottleneck_run_keeps_its_adapters(base, tmp_path):
    spec, run = base
    first = train(adapter_spec(spec, run, method="bottleneck"), tmp_path / "adapters")
    fusion = adapter_spec(spec, first, method="bottleneck", options={"compose": "fusion"})
    second = train(fusion, tmp_path / "fusion")
    before, after = weights(first), weights(second)
    for name, value in before.items():
        if not name.startswith("towers."):
            assert torch.equal(after[name], value), name
    assert any(not torch.equal(after[n], before[n]) for n in before if n.startswith("towers."))
    assert any(
        ".value" in n
        and not torch.equal(after[n], torch.eye(after[n].shape[-1]).expand_as(after[n]))
        for n in after
    )


def test_another_method_on_an_adapter_run_is_refused(base, tmp_path):
    spec, run = base
    first = train(adapter_spec(spec, run, method="bottleneck"), tmp_path / "adapters")
    with pytest.raises(ConfigError, match="same method and targets"):
        train(adapter_spec(spec, first, method="lora"), tmp_path / "lora")


def test_gradient_balancing_with_adapters_needs_exact_mode(base, tmp_path):
    from polytask.errors import PolytaskError

    spec, run = base
    exact = adapter_spec(spec, run)
    exact["balance"] = {"method": "pcgrad", "options": {"mode": "exact"}}
    trained = train(exact, tmp_path / "exact")
    assert all(
        torch.equal(weights(trained)[n], v)
        for n, v in weights(run).items()
        if n.startswith("arch.")
    )
    fast = adapter_spec(spec, run)
    fast["balance"] = {"method": "pcgrad"}
    with pytest.raises(PolytaskError, match="or adapters"):
        train(fast, tmp_path / "fast")
