"""Resume is exact where it is easiest to get wrong: weights reused across the resume point,
and a process killed in the middle of an epoch.

An interrupted-then-resumed run must write the same ``model.safetensors`` bytes and the same
``metrics.jsonl`` as an uninterrupted run, except the wall-clock fields of each epoch row
(``seconds``, ``rows_per_second``), which measure the machine, not the run.
(tests/train/test_trainer.py covers resume after an interrupt at an epoch boundary with plain
weighting, and that a SIGKILLed CLI run resumes to the end; the balance tests cover resume
for the stateful loss-weighting methods, with every > 1 not among them.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from polytask.balance.base import GramianWeighting
from polytask.cli import app
from polytask.train.trainer import fit
from tests.conftest import base_spec, make_table, write_yaml
from tests.train.helpers import epoch_rows, train, without_timing

ROWS = 240  # with the default split (0.2 valid, 0.2 test): 144 training rows
BATCH = 40  # 144 rows -> 4 steps per epoch: 40, 40, 40, 24
STEPS_PER_EPOCH = 4
EVERY = 3  # weights refreshed at steps 0, 3, 6, ...: step 4, the first of epoch 2, reuses


def spec_for(table_csv: Path, method: str, epochs: int, **options: Any) -> dict[str, Any]:
    return base_spec(
        table_csv,
        model={"dropout": 0.1},  # the random generators have to be restored too
        balance={"method": method, "options": {"every": EVERY, **options}},
        train={"epochs": epochs, "batch_size": BATCH, "threads": 1},
    )


def assert_identical_runs(full: Path, resumed: Path) -> None:
    weights = (full / "model.safetensors").read_bytes()
    assert weights == (resumed / "model.safetensors").read_bytes()
    rows = epoch_rows(full)
    assert [row["epoch"] for row in rows] == [row["epoch"] for row in epoch_rows(resumed)]
    assert without_timing(rows) == without_timing(epoch_rows(resumed))
    assert (full / "metrics.json").read_bytes() == (resumed / "metrics.json").read_bytes()


def interrupt_after(epoch: int):
    def callback(row: dict[str, Any]) -> None:
        if row["epoch"] == epoch:
            raise KeyboardInterrupt

    return callback


@pytest.fixture
def table_240(tmp_path: Path) -> Path:
    path = tmp_path / "table.csv"
    make_table(n=ROWS).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------------- Gramian, every > 1
@pytest.mark.parametrize(
    ("method", "options"), [("upgrad", {"mode": "exact"}), ("pcgrad", {"mode": "fast", "seed": 2})]
)
def test_gramian_weights_reused_across_the_resume_point(tmp_path, table_240, method, options):
    """The first step after the resume point (step 4) reuses the weights of step 3, which
    only the checkpoint remembers (the balancer's cached weights); the step counter decides
    when the next refresh comes and, for PCGrad, the random task orders."""
    assert STEPS_PER_EPOCH % EVERY != 0  # else the resume point would refresh anyway
    spec = spec_for(table_240, method, epochs=3, **options)
    full = train(spec, tmp_path / "full")

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(spec, cut, callbacks=[interrupt_after(1)])
    resumed = fit(None, cut, resume=True, progress=False)
    assert_identical_runs(full, resumed)
    assert [row["epoch"] for row in epoch_rows(resumed)] == [1, 2, 3]


def test_the_cached_weights_decide_the_resumed_run(tmp_path, table_240, monkeypatch):
    """A control for the test above: a resume that forgets the balancer's cached weights
    (refreshing at step 4 instead) ends elsewhere, so its equality there is not vacuous."""
    spec = spec_for(table_240, "upgrad", epochs=2, mode="exact")
    full = train(spec, tmp_path / "full")
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(spec, cut, callbacks=[interrupt_after(1)])
    monkeypatch.setattr(GramianWeighting, "load_state_dict", lambda self, state: None)
    resumed = fit(None, cut, resume=True, progress=False)
    assert (full / "model.safetensors").read_bytes() != (resumed / "model.safetensors").read_bytes()


# ---------------------------------------------------------------------- killed mid-epoch
KILL_AT_STEP = STEPS_PER_EPOCH + 2  # the third step of epoch 2, before it runs

KILLING_TRAINER = textwrap.dedent(
    """
    import os, signal, sys

    from polytask.cli import app
    from polytask.train import step, trainer

    steps = 0

    def train_step_then_die(*args, **kwargs):
        global steps
        if steps == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)  # no handler, no cleanup, no checkpoint
        steps += 1
        return step.train_step(*args, **kwargs)

    trainer.train_step = train_step_then_die
    app(["train", sys.argv[2], "--out", sys.argv[3], "--quiet"])
    """
)


def test_killed_mid_epoch_then_resumed_from_the_cli_equals_an_uninterrupted_run(
    tmp_path, table_240
):
    """A training process is SIGKILLed in the middle of epoch 2 (deterministically: its
    train_step kills the process after two steps of the epoch), ``polytask train --resume``
    continues from the checkpoint of epoch 1 and must end where an uninterrupted run ends."""
    spec = spec_for(table_240, "upgrad", epochs=3, mode="exact")
    config = write_yaml(tmp_path / "config.yaml", spec)
    full = train(spec, tmp_path / "full")

    out = tmp_path / "run"
    process = subprocess.run(
        [sys.executable, "-c", KILLING_TRAINER, str(KILL_AT_STEP), str(config), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr
    partial = tmp_path / "run.partial"
    assert not out.exists()
    assert (partial / "checkpoint.pt").is_file()
    assert [row["epoch"] for row in epoch_rows(partial)] == [1]  # killed inside epoch 2

    result = CliRunner().invoke(app, ["train", "--resume", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert not partial.exists()
    assert_identical_runs(full, out)
