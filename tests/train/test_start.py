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
