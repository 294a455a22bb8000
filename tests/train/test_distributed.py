"""Data-parallel training under torchrun (gloo, two CPU processes): the same model as one
process at the same global batch, resume across ranks, and what is refused."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from polytask.balance import BALANCERS
from polytask.balance.base import GramianWeighting, Need
from polytask.cli import app
from polytask.errors import ConfigError
from polytask.train.support import check_balancer
from polytask.train.trainer import fit
from tests.conftest import base_spec, make_table, write_yaml
from tests.train.helpers import read_json, train

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
# 240 rows, 20 % valid and 20 % test: 144 training rows
CASES: dict[str, dict[str, Any]] = {
    # 144 = 3 x 47 + 3: ranks split each batch 24 / 23, and the last 2 / 1
    "equal": {"balance": {"method": "equal"}, "train": {"batch_size": 47}},
    # 144 = 11 x 13 + 1: rank 1 has no row in the last step
    "equal_one_row_left": {"balance": {"method": "equal"}, "train": {"batch_size": 13}},
    # learns its own parameters; the optimizer updates them on every rank
    "uw": {"balance": {"method": "uw"}, "train": {"batch_size": 40}},
    # reads the epoch's mean losses
    "dwa": {"balance": {"method": "dwa"}, "train": {"batch_size": 40, "epochs": 4}},
    # sample weights: the ranks' means combine by their labelled weight, not their counts
    "weighted": {
        "balance": {"method": "equal"},
        "train": {"batch_size": 47},
        "data": {"weight": "count"},
    },
    # the task gradients' norms from the Gramian at the representation, summed over ranks
    "gradnorm": {"balance": {"method": "gradnorm"}, "train": {"batch_size": 40}},
    # per-unit sign statistics summed over ranks, the same noise on every rank
    "graddrop": {"balance": {"method": "graddrop"}, "train": {"batch_size": 40}},
    # saliency regularisers: means over the global batch's rows, CSA's anchors gathered
    "rep_mtl": {"balance": {"method": "rep_mtl"}, "train": {"batch_size": 40}},
    # the Gramian at the shared representation, summed over the ranks
    "mgda": {
        "balance": {"method": "mgda", "options": {"mode": "fast"}},
        "train": {"batch_size": 40},
    },
}


def case_spec(table: Path, case: str) -> dict[str, Any]:
    sections = CASES[case]
    spec = base_spec(
        table,
        balance=sections["balance"],
        train={"epochs": 3, "threads": 1, "lr": 0.01, **sections["train"]},
    )
    spec["data"].update(sections.get("data", {}))
    return spec


def torchrun(*arguments: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *arguments,
    ]


def environment() -> dict[str, str]:
    # this checkout's package first (an editable install may point at another checkout)
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def assert_same_model(one: Path, two: Path) -> None:
    """Equal within float tolerance: the ranks add the same numbers in another order."""
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    first, second = read_json(one / "metrics.json"), read_json(two / "metrics.json")
    for split, tasks in first.items():
        for task, metrics in tasks.items():
            for name, value in metrics.items():
                assert math.isclose(second[split][task][name], value, rel_tol=1e-4, abs_tol=1e-6), (
                    split,
                    task,
                    name,
                )


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "table.csv"
    make_table(n=240).to_csv(path, index=False)  # about 15 % of each task's labels missing
    return path


@pytest.fixture(scope="module")
def two_process_runs(table: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("two")
    specs = [str(write_yaml(folder / f"{case}.yaml", case_spec(table, case))) for case in CASES]
    done = subprocess.run(
        torchrun(str(WORKER), str(folder / "runs"), *specs),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder / "runs"


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_the_model_of_one_at_the_same_global_batch(
    two_process_runs, table, tmp_path, case
):
    one = train(case_spec(table, case), tmp_path / "one")
    two = two_process_runs / case
    assert_same_model(one, two)
    summary = read_json(two / "summary.json")
    assert summary["world_size"] == 2 and read_json(one / "summary.json")["world_size"] == 1
    assert summary["global_batch"] == CASES[case]["train"]["batch_size"]
    assert summary["device"] == "cpu"
    # only rank 0 wrote: one run, no leftovers from the other rank
    assert not two.with_name(two.name + ".partial").exists()


def test_a_run_killed_under_torchrun_resumes_across_ranks(table, tmp_path):
    """``polytask train --nproc 2`` killed (SIGKILL, every process) after its first
    checkpoint; ``--resume --nproc 2`` finishes the model one process trains uninterrupted."""
    spec = case_spec(table, "equal")
    spec["train"]["epochs"] = 40
    config = write_yaml(tmp_path / "spec.yaml", spec)
    out = tmp_path / "two"
    polytask = [sys.executable, "-m", "polytask", "train"]
    started = subprocess.Popen(
        [*polytask, str(config), "--out", str(out), "--quiet", "--nproc", "2"],
        env=environment(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = out.with_name("two.partial") / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and started.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = kill_workers(out)
    started.wait(timeout=120)
    assert killed, "no training process was found to kill"
    assert not out.exists(), "the run finished before it could be killed"
    time.sleep(0.5)  # the killed processes' files are closed
    resumed = subprocess.run(
        [*polytask, "--resume", str(out), "--quiet", "--nproc", "2"],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = fit(load(config), tmp_path / "one", progress=False)
    assert_same_model(one, out)
    assert read_json(out / "summary.json")["epochs_run"] == 40


def kill_workers(out: Path) -> list[int]:
    """SIGKILL the training processes torchrun started for ``out`` (its workers run in
    sessions of their own, so the launcher's process group does not hold them)."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [word.decode(errors="replace") for word in command]
        launcher = "--nproc" in words or "torch.distributed.run" in words
        if str(out) in words and "polytask" in words and not launcher:
            os.kill(int(entry.name), signal.SIGKILL)
            killed.append(int(entry.name))
    return killed


def load(config: Path):
    from polytask.config import load_spec

    return load_spec(config)


# ---------------------------------------------------------------------- what is refused
def expected_under_processes(method: str) -> bool:
    balancer = BALANCERS.get(method)(3)
    return (
        balancer.needs <= {Need.LOSSES}
        or isinstance(balancer, GramianWeighting)
        or balancer.sums_over_rows
    )


@pytest.mark.parametrize("method", BALANCERS.names())
def test_every_method_either_runs_in_several_processes_or_is_refused_in_one_line(method):
    balancer = BALANCERS.get(method)(3)
    check_balancer(balancer, 1, "fp32")  # one process: everything runs
    if expected_under_processes(method):
        fast = (
            BALANCERS.get(method)(3, mode="fast")
            if isinstance(balancer, GramianWeighting)
            else balancer
        )
        check_balancer(fast, 2, "fp32")
    else:
        with pytest.raises(ConfigError, match=rf"balance\.method: {method} .*one process"):
            check_balancer(balancer, 2, "fp32")


def test_a_gramian_of_parameter_gradients_is_refused_under_processes():
    with pytest.raises(ConfigError, match=r"balance\.options\.mode: exact .* use mode: fast"):
        check_balancer(BALANCERS.get("upgrad")(3, mode="exact"), 2, "fp32")


def test_the_launcher_refuses_before_starting_anything(table, tmp_path):
    spec = base_spec(table, balance={"method": "db_mtl"})
    config = write_yaml(tmp_path / "spec.yaml", spec)
    result = CliRunner().invoke(
        app, ["train", str(config), "--out", str(tmp_path / "r"), "--nproc", "2"]
    )
    assert result.exit_code == 2
    assert "balance.method: db_mtl" in result.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()


def test_the_launcher_refuses_a_folder_it_may_not_replace(table, tmp_path):
    config = write_yaml(tmp_path / "spec.yaml", base_spec(table))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    command = ["train", str(config), "--out", str(out), "--nproc", "2", "--overwrite"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2
    assert "--overwrite refused" in result.output and "not a folder polytask wrote" in result.output
    assert (out / "notes.txt").read_text() == "the user's"


def test_the_launcher_refuses_a_resume_without_a_checkpoint(tmp_path):
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "none"), "--nproc", "2"])
    assert result.exit_code == 2
    assert "no checkpoint to resume" in result.output


@pytest.mark.parametrize(("rank", "warned"), [("0", True), ("1", False)])
def test_only_rank_0_prints_spec_warnings(table, tmp_path, monkeypatch, rank, warned):
    """Every rank checks the spec; the warnings of an unused key come from rank 0 alone. The
    command then stops before any work: rank 0 at the output folder it may not replace,
    rank 1 when it finds no torchrun group to join."""
    spec = base_spec(table, model={"arch": "shared_bottom", "num_experts": 5})
    config = write_yaml(tmp_path / "spec.yaml", spec)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(out), "--overwrite"])
    assert ("model.num_experts is set but not used" in result.output) is warned
