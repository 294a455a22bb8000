"""Pluggable encoders end to end: a user's own module through train / load, and the CNN."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

import polytask
from polytask.config import ModelSpec
from polytask.errors import PolytaskError
from polytask.features import Features
from polytask.model import build_model
from tests.arch.helpers import tensor_attributes
from tests.conftest import base_spec, make_table

NUMERIC_WIDTH = 6  # x1, x2, count, then their three missing flags


class NumericOnly(nn.Module):
    """A user's encoder: a linear map of the numeric inputs, categorical ones ignored."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(NUMERIC_WIDTH, 4)
        self.out_dim = 4

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        del categorical
        return torch.relu(self.linear(numeric))


@pytest.fixture
def custom_run(tmp_path):
    path = tmp_path / "table.csv"
    make_table(n=120).to_csv(path, index=False)
    spec = base_spec(path, model={"arch": "shared_bottom"}, train={"epochs": 1})
    predictor = polytask.train(
        spec, out=tmp_path / "run", progress=False, encoder_factory=NumericOnly
    )
    return tmp_path / "run", predictor


def test_custom_encoder_trains_loads_and_predicts(custom_run):
    run, trained = custom_run
    assert isinstance(trained.model.encoders[0], NumericOnly)
    assert trained.summary()["encoder"] == "custom"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["encoder"]["name"] == "custom"
    loaded = polytask.load(run, encoder_factory=NumericOnly)
    rows = make_table(n=12, seed=5)
    pd.testing.assert_frame_equal(loaded.predict(rows), trained.predict(rows))


def test_loading_a_custom_encoder_run_without_its_factory_fails_clearly(custom_run):
    run, _ = custom_run
    with pytest.raises(PolytaskError, match=r"trained with a custom encoder.*encoder_factory"):
        polytask.load(run)


def test_a_factory_is_refused_for_a_run_trained_without_one(trained_run):
    with pytest.raises(PolytaskError, match=r"tabular encoder, not a custom one"):
        polytask.load(trained_run["run"], encoder_factory=NumericOnly)


def _image_table(n: int = 64, side: int = 16, seed: int = 0) -> pd.DataFrame:
    """Images whose left half is brighter or darker than the right, one column per pixel."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, side, side))
    brighter = rng.random(n) < 0.5
    images[brighter, :, : side // 2] += 1.0
    frame = pd.DataFrame(images.reshape(n, -1), columns=[f"p{i}" for i in range(side * side)])
    frame["left_brighter"] = brighter.astype(float)
    frame["brightness"] = images.mean(axis=(1, 2))
    return frame


def test_cnn_encoder_trains_end_to_end(tmp_path):
    path = tmp_path / "images.csv"
    _image_table().to_csv(path, index=False)
    spec = {
        "data": {"train": str(path), "split": {"valid": 0.25, "test": 0.0}},
        "tasks": [
            {"name": "left", "kind": "binary", "target": "left_brighter"},
            {"name": "brightness", "kind": "regression", "target": "brightness"},
        ],
        "model": {
            "arch": "shared_bottom",
            "hidden": [4],
            "tower_hidden": [],
            "encoder": {
                "name": "cnn",
                "image_shape": [1, 16, 16],
                "channels": [2, 3],
                "out_dim": 6,
            },
        },
        "train": {"epochs": 1, "batch_size": 32},
    }
    predictor = polytask.train(spec, out=tmp_path / "run", progress=False)
    assert predictor.summary()["encoder"] == "cnn"
    assert predictor.model.encoders[0].out_dim == 6
    predictions = predictor.predict(_image_table(n=5, seed=1))
    assert predictions.shape == (5, 2) and predictions.notna().all().all()
    reloaded = polytask.load(tmp_path / "run")
    pd.testing.assert_frame_equal(reloaded.predict(_image_table(n=5, seed=1)), predictions)


@pytest.mark.parametrize("arch", ["mmoe", "task_moe", "aitm"])
def test_trained_model_deep_copies_and_pickles_and_keeps_no_graph_on_its_modules(arch):
    """A forward returns everything it computed (ModelOutput) and leaves nothing on the
    modules, so a model in the middle of training deep-copies and pickles as it is."""
    model = build_model(ModelSpec(arch=arch), [5, 5], 4, [1, 1], ["a", "b"])
    features = Features(torch.randint(0, 5, (8, 2)), torch.randn(8, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    output = model(features)
    loss = sum(logits.sum() for logits in output.logits)
    if output.auxiliary_loss is not None:
        loss = loss + output.auxiliary_loss
    loss.backward()
    optimizer.step()
    output = model(features)  # a fresh graph, alive while the model is copied
    assert output.representation is not None and output.representation.requires_grad
    assert tensor_attributes(model) == []
    clone = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    model.eval()  # no routing noise, dropout or batch statistics: outputs comparable
    for other in (clone, restored):
        assert tensor_attributes(other) == []
        other.eval()
        for ours, theirs in zip(model(features).logits, other(features).logits, strict=True):
            assert torch.equal(ours, theirs)


def test_numeric_encoder_passes_the_values_and_drops_the_missing_flags():
    import torch

    from polytask.nn.encoders import NumericEncoder

    encoder = NumericEncoder(numeric_width=6)
    numeric = torch.arange(12.0).view(2, 6)
    out = encoder(torch.zeros(2, 1, dtype=torch.long), numeric)
    assert encoder.out_dim == 3 and torch.equal(out, numeric[:, :3])
    assert not list(encoder.parameters())
