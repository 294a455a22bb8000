"""save -> load -> predict loses nothing: for every public architecture and every encoder.

Each case trains one epoch on a tiny table, keeps the trained model and the fitted
preprocessor as they are in memory at the end of training, and compares what they predict on
raw rows (unseen categories and missing values included) with what ``polytask.load`` of the
saved run predicts. The tolerance is 0: the same weights, the same preprocessing and the same
operations on the same rows give the same bits (the loaded run serves through its lean form,
so the in-memory model is wrapped in the same :class:`Predictor` to run the same operations;
the eager forward passes are compared too, also exactly). A second load predicts the same
again.

Encoders: the tabular one, the CNN (on a table of 16x16 images, one column per pixel) and a
user's module passed as ``encoder_factory``. Funnel architectures (a cross-task head: ESMM,
AITM) train on the impression -> click -> conversion table of :mod:`tests.arch.funnel`; the
others on the four task kinds of :mod:`tests.conftest`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import polytask
from polytask.arch import ARCHS
from polytask.config import ModelSpec, parse_spec
from polytask.features import Features
from polytask.inference.predictor import Predictor
from polytask.model import MultiTaskModel
from polytask.train import trainer as trainer_module
from polytask.train.prepare import Prepared
from polytask.train.progress import TrainingDisplay
from polytask.train.trainer import LoopState, Trainer
from tests.arch.funnel import make_funnel
from tests.conftest import base_spec, make_table

ARCH_NAMES = [name for name in ARCHS.names() if name != "plan"]
ENCODERS = ["tabular", "cnn", "custom"]
SIDE = 16  # the smallest image the CNN's two 5x5 convolutions and 2x2 pools take
ROWS = 64


def is_funnel(arch: str) -> bool:
    """Whether the architecture's plan ends in a cross-task head over a chain of binary
    tasks (then it trains on the funnel table)."""
    return ARCHS.get(arch).plan(2, ModelSpec(arch=arch)).heads.kind != "plain"


class HashedCodes(nn.Module):
    """A user's encoder: each category code through one small table (codes past its end
    share the last row), concatenated with the numeric inputs, then a linear layer."""

    def __init__(self, num_categorical: int, numeric_width: int, codes: int = 8) -> None:
        super().__init__()
        self.codes = codes
        self.table = nn.Embedding(codes, 2)
        self.linear = nn.Linear(2 * num_categorical + numeric_width, 5)
        self.out_dim = 5

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        embedded = self.table(categorical.clamp(max=self.codes - 1)).flatten(1)
        return torch.tanh(self.linear(torch.cat([embedded, numeric], dim=1)))


# ---------------------------------------------------------------------- tables and specs
def image_table(n: int, seed: int) -> pd.DataFrame:
    """16x16 images, one column per pixel, with the targets both task sets need: a brighter
    left half (click), a funnel conversion under it, a segment and a regression value."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, SIDE, SIDE))
    brighter = rng.random(n) < 0.5
    images[brighter, :, : SIDE // 2] += 1.0
    frame = pd.DataFrame(images.reshape(n, -1), columns=[f"p{i}" for i in range(SIDE * SIDE)])
    mean = images.mean(axis=(1, 2))
    frame["clicked"] = brighter.astype(float)
    frame["converted"] = frame["clicked"] * (rng.random(n) < 0.5)
    frame["segment"] = np.where(mean > 0.25, "bright", "dark").astype(object)
    frame["spend"] = 50.0 + 10.0 * mean
    return frame


def raw_rows(encoder: str, funnel: bool) -> pd.DataFrame:
    """Rows the run never saw, with an unseen category, a blank one and missing values."""
    if encoder == "cnn":
        frame = image_table(9, seed=11)
        frame.loc[2, "p0"] = np.nan
        return frame.drop(columns=["clicked", "converted", "segment", "spend"])
    frame = make_funnel(n=9, seed=11) if funnel else make_table(n=9, seed=11)
    frame.loc[0, "color"] = "never-seen"
    frame.loc[1, "color"] = None
    frame.loc[2, "x1"] = np.nan
    return frame


def tasks(funnel: bool, encoder: str) -> list[dict[str, Any]]:
    if funnel:
        return [
            {"name": "click", "kind": "binary", "target": "clicked"},
            {"name": "conversion", "kind": "binary", "target": "converted"},
        ]
    if encoder == "cnn":
        return [
            {"name": "click", "kind": "binary", "target": "clicked"},
            {"name": "segment", "kind": "multiclass", "target": "segment"},
            {"name": "spend", "kind": "regression", "target": "spend"},
        ]
    return base_spec("unused")["tasks"]  # all four task kinds


def case_spec(arch: str, encoder: str, folder: Path) -> tuple[dict[str, Any], Callable | None]:
    """The run specification of one case, and the encoder factory for the custom encoder."""
    funnel = is_funnel(arch)
    path = folder / "train.csv"
    if encoder == "cnn":
        table = image_table(ROWS, seed=0)
    else:
        table = make_funnel(n=ROWS, seed=0) if funnel else make_table(n=ROWS, seed=0)
    table.to_csv(path, index=False)
    model: dict[str, Any] = {
        "arch": arch,
        "embedding_dim": 2,
        "hidden": [4],
        "num_experts": 3,
        "tower_hidden": [3],
    }
    factory = None
    if encoder == "cnn":
        model["encoder"] = {
            "name": "cnn",
            "image_shape": [1, SIDE, SIDE],
            "channels": [2, 2],
            "out_dim": 4,
        }
    elif encoder == "custom":
        categorical, numeric = (
            (["color"], ["x1", "x2"]) if funnel else (["color", "city"], ["x1", "x2", "count"])
        )
        # numeric inputs: standardised values, then one missing-value flag each
        factory = functools.partial(HashedCodes, len(categorical), 2 * len(numeric))
    spec = {
        # no validation or test rows: nothing to evaluate, the last epoch is the model
        "data": {"train": str(path), "split": {"valid": 0.0, "test": 0.0, "seed": 0}},
        "tasks": tasks(funnel, encoder),
        "model": model,
        "train": {
            "epochs": 1,
            "batch_size": 32,
            "lr": 0.01,
            "seed": 0,
            "early_stopping": {"patience": None},
        },
    }
    return spec, factory


# ---------------------------------------------------------------------- training
class KeepsTheModel(Trainer):
    """The trainer, holding on to the model and the fitted preprocessor it ends with: the
    state the run directory is written from, before anything is read back."""

    model: MultiTaskModel
    prepared: Prepared

    def _finish(
        self,
        model: MultiTaskModel,
        prepared: Prepared,
        loop: LoopState,
        display: TrainingDisplay,
    ) -> Path:
        self.model, self.prepared = model, prepared
        return super()._finish(model, prepared, loop, display)


@pytest.fixture(autouse=True)
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's two PNG plots are not read back by load or predict and cost two thirds of
    a one-epoch run here (matplotlib); they are written as empty files in this module."""

    def empty(*args: Any) -> None:
        Path(args[-1]).write_bytes(b"")

    monkeypatch.setattr(trainer_module, "plot_balance", empty)
    monkeypatch.setattr(trainer_module, "plot_utilisation", empty)


def assert_same_features(left: Features, right: Features) -> None:
    assert torch.equal(left.categorical, right.categorical)
    assert torch.equal(left.numeric, right.numeric)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_loaded_run_predicts_what_the_trained_model_did(tmp_path, arch, encoder):
    spec, factory = case_spec(arch, encoder, tmp_path)
    trainer = KeepsTheModel(
        parse_spec(spec), tmp_path / "run", progress=False, encoder_factory=factory
    )
    run = trainer.fit()
    rows = raw_rows(encoder, is_funnel(arch))
    in_memory = Predictor(run, trainer.spec, trainer.prepared.preprocessor, trainer.model)
    expected = in_memory.predict(rows)
    assert len(expected) == len(rows)
    assert np.isfinite(expected.select_dtypes("number").to_numpy()).all()

    loaded = polytask.load(run, encoder_factory=factory)
    assert loaded.spec.model.arch == arch
    pd.testing.assert_frame_equal(loaded.predict(rows), expected, check_exact=True)

    # underneath: the same model inputs, and the same eager outputs bit for bit
    features = in_memory.preprocessor.transform(rows)
    assert_same_features(loaded.preprocessor.transform(rows), features)
    with torch.inference_mode():
        want = in_memory.model(features).logits
        got = loaded.model(features).logits
    for task, left, right in zip(loaded.task_names, got, want, strict=True):
        assert torch.equal(left, right), task

    again = polytask.load(run, encoder_factory=factory)
    pd.testing.assert_frame_equal(again.predict(rows), expected, check_exact=True)
