"""The lean arrays compute, in numpy, what the model computes; the file they are saved in is
read back only while it matches the weights beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from polytask.artifacts import run_dir as rd
from polytask.config import ModelSpec
from polytask.features import Features
from polytask.inference.arrays import read_lean
from polytask.inference.lean import lean_form, save_model
from polytask.model import MultiTaskModel, build_model
from polytask.slim.extract import SlimContext, extract
from tests.inference.test_lean import COVERED, UNCOVERED
from tests.slim.test_extract import make_model, make_rows


def assert_arrays_match(model: MultiTaskModel, rows: Features, folder: Path) -> None:
    """Saved beside the model's weights and read back, the arrays give the eager logits."""
    save_model(folder, model)
    arrays = read_lean(folder)
    assert arrays is not None
    got = arrays.forward(rows.categorical.numpy(), rows.numeric.numpy())
    with torch.inference_mode():
        expected = model.eval()(rows).logits
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.dtype == np.float32
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("arch", "options"), COVERED, ids=lambda v: str(v))
def test_arrays_equal_the_eager_model(arch, options, tmp_path):
    model, _ = make_model(arch, **options)  # two expert layers, towers of widths 1, 3, 2
    assert_arrays_match(model, make_rows(41, seed=7), tmp_path)


def test_arrays_of_a_slim_model_with_a_subset_of_experts(tmp_path):
    """A pruned slim MMoE's gate reads only some experts: the arrays index the same ones."""
    model, spec = make_model("mmoe")
    slim = extract(SlimContext(model, spec, [1], 0.2, make_rows(), batch_size=16)).model
    assert_arrays_match(slim, make_rows(29, seed=3), tmp_path)


@pytest.mark.parametrize("cardinalities, numeric", [([], 5), ([3, 4], 0)])
def test_numeric_only_and_categorical_only_inputs(cardinalities, numeric, tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(arch="mmoe", embedding_dim=2, hidden=[4, 3], num_experts=2, tower_hidden=[3])
    model = build_model(spec, cardinalities, numeric, [1, 2], ["a", "b"]).eval()
    generator = torch.Generator().manual_seed(1)
    columns = [torch.randint(0, n, (19,), generator=generator) for n in cardinalities]
    categorical = torch.stack(columns, 1) if columns else torch.zeros(19, 0, dtype=torch.long)
    assert_arrays_match(model, Features(categorical, torch.randn(19, numeric)), tmp_path)


@pytest.mark.parametrize(("arch", "options"), UNCOVERED[:3], ids=lambda v: str(v))
def test_models_without_a_folded_form_write_no_arrays(arch, options, tmp_path):
    model, _ = make_model(arch, **options)
    save_model(tmp_path, model)
    assert (tmp_path / rd.WEIGHTS).is_file()
    assert not (tmp_path / rd.LEAN).exists()
    assert read_lean(tmp_path) is None


def test_a_cnn_encoder_needs_torch(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(
        arch="shared_bottom",
        hidden=[8],
        tower_hidden=[4],
        encoder={"name": "cnn", "image_shape": [1, 16, 16], "out_dim": 6},
    )
    model = build_model(spec, [], 2 * 256, [10], ["digit"]).eval()
    lean = lean_form(model)
    assert lean is not None and lean.to_arrays() is None
    save_model(tmp_path, model)
    assert not (tmp_path / rd.LEAN).exists()


def test_arrays_that_do_not_match_the_weights_are_not_read(tmp_path):
    model, _ = make_model("mmoe")
    save_model(tmp_path, model)
    assert read_lean(tmp_path) is not None
    other, _ = make_model("mmoe", seed=1)
    from polytask.artifacts.weights import save_weights

    save_weights(tmp_path / rd.WEIGHTS, other.state_dict())  # weights changed, arrays did not
    assert read_lean(tmp_path) is None


@pytest.mark.parametrize("content", [b"", b"not a safetensors file", b"\x08" + b"\x00" * 20])
def test_an_unreadable_arrays_file_is_not_read(content, tmp_path):
    model, _ = make_model("mmoe")
    save_model(tmp_path, model)
    (tmp_path / rd.LEAN).write_bytes(content)
    assert read_lean(tmp_path) is None


def test_arrays_of_another_format_are_not_read(tmp_path):
    from safetensors.numpy import save_file

    model, _ = make_model("mmoe")
    save_model(tmp_path, model)
    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / rd.LEAN), metadata={"a": "b"})
    assert read_lean(tmp_path) is None
