"""Runs written by polytask before architectures became plans (weights format 1) still load
and predict what they predicted then.

The runs and their predictions were made by the old code (see legacy_runs/generate.py); this
test reads them with the current code only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import polytask
from polytask.artifacts import run_dir as rd

RUNS = Path(__file__).parent / "legacy_runs"
NAMES = sorted(p.name for p in RUNS.iterdir() if (p / rd.CONFIG).is_file())


def test_every_architecture_and_slim_kind_has_a_legacy_run():
    assert len(NAMES) == 22
    archs = {rd.load_raw_config(RUNS / name)["model"]["arch"] for name in NAMES}
    assert {"slim_moe", "task_subset", "home", "aitm", "cross_stitch", "task_bottom"} <= archs


@pytest.mark.parametrize("name", NAMES)
def test_a_format_1_run_predicts_what_it_predicted(name):
    rows_file = "funnel_rows.csv" if name in ("esmm", "aitm") else "rows.csv"
    rows = pd.read_csv(RUNS / rows_file)
    expected = pd.read_csv(RUNS / name / "expected.csv")
    predictor = polytask.load(RUNS / name)
    # a slim run of that version did not record the dropped tasks' target columns, which the
    # rows hold: they are unknown to it now
    legacy_slim = name.startswith("slim_")
    got = predictor.predict(rows, allow_unknown_columns=legacy_slim).reset_index(drop=True)
    assert list(got.columns) == list(expected.columns)
    for column in expected.columns:
        if expected[column].dtype.kind == "f":
            pd.testing.assert_series_equal(
                got[column].astype(float), expected[column], rtol=1e-5, atol=1e-6
            )
        else:
            assert got[column].astype(str).tolist() == expected[column].astype(str).tolist()
    legacy_arch = rd.load_raw_config(RUNS / name)["model"]["arch"]
    if legacy_arch in ("slim_moe", "task_subset"):
        assert predictor.spec.model.arch == "plan"
