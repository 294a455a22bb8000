"""The lean serving form computes what the eager model computes, for every architecture it
covers, and declines the ones it does not."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import polytask
import polytask.inference.lean as lean_module
from polytask.config import ModelSpec, load_spec
from polytask.features import Features
from polytask.inference.lean import EncodedInput, FoldedInput, lean_form
from polytask.model import build_model
from polytask.slim.extract import SlimContext, extract
from polytask.train.trainer import fit
from tests.conftest import base_spec, make_table
from tests.slim.test_extract import make_model, make_rows

COVERED = [
    ("shared_bottom", {}),
    ("mmoe", {}),
    ("omoe", {}),
    ("task_moe", {"top_k": 2}),
    ("task_moe", {"top_k": 1}),
    ("cgc", {"task_experts": 2}),  # one level of masked softmax gates
    ("dselect_k", {}),  # static selectors: fixed weights in eval
]


def assert_lean_matches(model, rows: Features | None = None) -> None:
    rows = rows or make_rows(41, seed=7)
    lean = lean_form(model)
    assert lean is not None
    with torch.inference_mode():
        expected, got = model.eval()(rows).logits, lean(rows).logits
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("arch", "options"), COVERED, ids=lambda v: str(v))
def test_lean_form_equals_the_eager_model(arch, options):
    model, _ = make_model(arch, **options)  # two expert layers, towers of widths 1, 3, 2
    assert_lean_matches(model)


def test_tasks_reading_one_gate_share_its_logit_columns():
    model, _ = make_model("omoe")  # one gate, three tasks
    lean = lean_form(model)
    columns = [head.gate_columns for head in lean.heads]
    assert columns[0] is not None and all(c == columns[0] for c in columns)
    assert_lean_matches(model)


@pytest.mark.parametrize("hidden", [[7], [6, 5, 4]])
def test_lean_form_for_one_and_three_expert_layers(hidden):
    torch.manual_seed(3)
    spec = ModelSpec(arch="mmoe", embedding_dim=3, hidden=hidden, num_experts=3, tower_hidden=[])
    model = build_model(spec, [5, 2, 4], 6, [1, 4], ["x", "y"]).eval()
    generator = torch.Generator().manual_seed(2)
    rows = Features(
        torch.stack([torch.randint(0, n, (33,), generator=generator) for n in (5, 2, 4)], 1),
        torch.randn(33, 6, generator=generator),
    )
    assert_lean_matches(model, rows)


@pytest.mark.parametrize(
    ("arch", "options", "threshold"),
    [
        ("mmoe", {}, 0.0),
        ("mmoe", {}, 0.2),
        ("cgc", {"task_experts": 2}, 0.0),
        ("dselect_k", {}, 0.0),
    ],
    ids=lambda v: str(v),
)
def test_lean_form_of_slim_models(arch, options, threshold):
    """What `polytask slim` saves (a one-level plan with softmax, masked or DSelect-k gates,
    pruned or not) has a lean form equal to it."""
    model, spec = make_model(arch, **options)
    slim = extract(SlimContext(model, spec, [1], threshold, make_rows(), batch_size=16)).model
    assert_lean_matches(slim)


def test_lean_form_of_a_slim_task_moe_is_one_folded_chain():
    model, spec = make_model("task_moe", top_k=2)
    slim = extract(SlimContext(model, spec, [0], 0.0, make_rows(), batch_size=16)).model
    lean = lean_form(slim)
    assert isinstance(lean.first, FoldedInput)
    assert lean.heads[0].gate_columns is None  # fixed routing weights folded into the tower
    assert_lean_matches(slim)


def test_numeric_only_and_categorical_only_inputs():
    for cardinalities, numeric in (([], 5), ([3, 4], 0)):
        torch.manual_seed(0)
        spec = ModelSpec(arch="mmoe", embedding_dim=2, hidden=[4], num_experts=2, tower_hidden=[3])
        model = build_model(spec, cardinalities, numeric, [1, 1], ["a", "b"]).eval()
        generator = torch.Generator().manual_seed(1)
        columns = [torch.randint(0, n, (19,), generator=generator) for n in cardinalities]
        categorical = torch.stack(columns, 1) if columns else torch.zeros(19, 0, dtype=torch.long)
        assert_lean_matches(model, Features(categorical, torch.randn(19, numeric)))


def test_a_table_too_large_to_fold_is_read_through_the_encoder(monkeypatch):
    monkeypatch.setattr(lean_module, "MAX_FOLDED_TABLE", 1)
    model, _ = make_model("mmoe")
    assert isinstance(lean_form(model).first, EncodedInput)
    assert_lean_matches(model)


def test_cnn_encoder_models_are_covered_through_the_encoder():
    torch.manual_seed(0)
    spec = ModelSpec(
        arch="shared_bottom",
        hidden=[8],
        tower_hidden=[4],
        encoder={"name": "cnn", "image_shape": [1, 16, 16], "out_dim": 6},
    )
    model = build_model(spec, [], 2 * 256, [10, 10], ["left", "right"]).eval()
    rows = Features(torch.zeros(9, 0, dtype=torch.long), torch.rand(9, 512))
    assert_lean_matches(model, rows)


UNCOVERED: list[tuple[str, dict[str, Any]]] = [
    ("single", {}),
    ("task_moe", {"routing": "row"}),
    ("home", {}),
    ("ple", {"levels": 2, "task_experts": 2, "shared_experts": 2}),
    ("esmm", {}),
    ("dselect_k", {"per_example": True}),
]


@pytest.mark.parametrize(("arch", "options"), UNCOVERED, ids=lambda v: str(v))
def test_architectures_without_a_lean_form_are_declined(arch, options):
    out_dims = (1, 1) if arch == "esmm" else (1, 3, 2)
    if arch == "esmm":
        torch.manual_seed(0)
        spec = ModelSpec(arch="esmm", hidden=[4], tower_hidden=[3])
        model = build_model(spec, [4, 3], 4, list(out_dims), ["ctr", "ctcvr"])
    else:
        model, spec = make_model(arch, out_dims=out_dims, **options)
    assert lean_form(model) is None
    if arch == "dselect_k":  # nor once slimmed: per-example selectors over the kept columns
        model = extract(SlimContext(model, spec, [1], 0.0, make_rows(), batch_size=16)).model
        assert lean_form(model) is None


def test_a_loaded_run_predicts_through_its_lean_form(tmp_path):
    """Predictor.predict (and so the server) runs the folded form, with the eager model's
    outputs; a run whose architecture has none predicts through the model itself."""
    table = tmp_path / "table.csv"
    frame = make_table(n=120, seed=2)
    frame.to_csv(table, index=False)
    for arch, form in (("mmoe", "lean"), ("home", "eager")):
        spec = base_spec(table, model={"arch": arch, "num_experts": 3}, train={"epochs": 1})
        predictor = polytask.load(fit(load_spec(spec), tmp_path / arch, progress=False))
        lean = predictor.serving_model is not predictor.model
        assert lean == (form == "lean")
        served = predictor.predict(frame)
        predictor.serving_model = predictor.model
        eager = predictor.predict(frame)
        numeric = served.select_dtypes("number").columns
        assert list(served.columns) == list(eager.columns)
        assert (served.drop(columns=numeric) == eager.drop(columns=numeric)).all().all()
        torch.testing.assert_close(
            torch.tensor(served[numeric].to_numpy()),
            torch.tensor(eager[numeric].to_numpy()),
            rtol=1e-5,
            atol=1e-6,
        )
