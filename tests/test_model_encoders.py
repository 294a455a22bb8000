"""Pluggable encoders end to end: a user's own module through train / load, and the CNN."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

import polytask
from polytask.errors import PolytaskError
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


def test_trained_model_deep_copies_and_pickles_without_its_last_graph():
    import copy
    import pickle

    from polytask.config import ModelSpec
    from polytask.data.preprocess import Features
    from polytask.model import build_model

    model = build_model(ModelSpec(arch="mmoe"), [5, 5], 4, [1, 1], ["a", "b"])
    features = Features(torch.randint(0, 5, (8, 2)), torch.randn(8, 4))
    sum(output.sum() for output in model(features)).backward()
    assert model.last_representation is not None
    clone = copy.deepcopy(model)
    assert clone.last_representation is None and clone.arch.shared_representation is None
    restored = pickle.loads(pickle.dumps(model))
    for ours, theirs in zip(model(features), restored(features), strict=True):
        assert torch.equal(ours, theirs)
