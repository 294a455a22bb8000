"""Predicting from a run's lean arrays answers what its model answers, without torch."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from polytask.artifacts import run_dir as rd
from polytask.config import load_spec
from polytask.errors import DataError
from polytask.inference.array_predictor import ArrayPredictor, open_predictor
from polytask.inference.predictor import Predictor
from polytask.train.trainer import fit
from tests.conftest import base_spec, make_table, write_yaml


@pytest.fixture(scope="module")
def both(trained_run):
    arrays = open_predictor(trained_run["run"])
    assert isinstance(arrays, ArrayPredictor)  # an MMoE over a tabular encoder has them
    return arrays, Predictor.load(trained_run["run"])


def assert_same_table(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(got.columns) == list(expected.columns)
    assert got.index.equals(expected.index)
    for column in expected.columns:
        if expected[column].dtype == object:  # a multiclass task's most likely class
            assert got[column].tolist() == expected[column].tolist()
        else:
            pd.testing.assert_series_equal(got[column], expected[column], rtol=1e-5, atol=1e-6)


def test_every_task_kind_as_the_model_predicts_it(both, trained_run):
    arrays, model = both
    frame = trained_run["frames"]["test"]
    assert_same_table(arrays.predict(frame), model.predict(frame))


def test_chunked_predictions_equal_one_batch(both, trained_run):
    arrays, model = both
    frame = trained_run["frames"]["test"].iloc[::-1]  # a reversed index is kept
    assert_same_table(arrays.predict(frame, batch_size=7), model.predict(frame))


def test_unseen_and_missing_values(both):
    arrays, model = both
    frame = pd.DataFrame(
        {"color": ["purple", None], "city": ["rome", "atlantis"], "x1": [0.3, None]}
    )
    assert_same_table(arrays.predict(frame), model.predict(frame))


def test_the_same_refusals(both):
    arrays, model = both
    for bad in (pd.DataFrame({"x1": []}), pd.DataFrame({"x1": [1.0], "colour": ["red"]})):
        messages = []
        for predictor in (arrays, model):
            with pytest.raises(DataError) as error:
                predictor.predict(bad)
            messages.append(str(error.value))
        assert messages[0] == messages[1]


def test_a_run_without_arrays_predicts_with_its_model(tmp_path):
    table = tmp_path / "table.csv"
    make_table(n=120).to_csv(table, index=False)
    spec = base_spec(table, model={"arch": "home"}, train={"epochs": 1})
    run = fit(load_spec(write_yaml(tmp_path / "spec.yaml", spec)), tmp_path / "run", progress=False)
    assert not (run / rd.LEAN).exists()
    assert isinstance(open_predictor(run), Predictor)


def test_polytask_predict_does_not_import_torch(trained_run, tmp_path):
    rows = tmp_path / "rows.csv"
    trained_run["frames"]["test"].head(5).to_csv(rows, index=False)
    out = tmp_path / "out.csv"
    script = (
        "import sys\n"
        "from polytask.cli import app\n"
        f"sys.argv = ['polytask', 'predict', {str(trained_run['run'])!r}, {str(rows)!r},"
        f" '-o', {str(out)!r}]\n"
        "try:\n    app()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = Predictor.load(trained_run["run"]).predict(trained_run["frames"]["test"].head(5))
    written = pd.read_csv(out)
    assert list(written.columns) == list(expected.columns)
    assert (written["click"] - expected["click"]).abs().max() < 1e-6
