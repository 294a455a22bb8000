"""Every Gramian-based method through a real 2-epoch run (exact mode), recorded in the
summary. Kept apart from test_gramian_methods.py so that each file stays fast (most of this
file's time is the one-off cost of a first run: optimizer and plotting imports)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import polytask
from tests.balance.test_gramian_methods import METHODS
from tests.conftest import base_spec


@pytest.mark.parametrize("method", METHODS)
def test_two_epoch_run_records_the_mode(tmp_path: Path, table_csv: Path, method: str):
    spec = base_spec(
        table_csv,
        train={"epochs": 2},
        model={"arch": "shared_bottom"},  # no expert-gate report: a faster run
        balance={"method": method, "options": {"mode": "exact"}},
    )
    polytask.train(spec, out=tmp_path / method, progress=False)
    summary = json.loads((tmp_path / method / "summary.json").read_text())
    assert summary["epochs_run"] == 2
    assert summary["balance"]["method"] == method
    assert summary["balance"]["mode"] == "exact"
