"""Whole sweeps on a tiny generated table: a grid with failing combinations, the Pareto set
against an independent non-dominated filter, parallel workers, pruning, and a sweep killed in a
subprocess that resumes without repeating finished trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import polytask
from polytask.artifacts import run_dir as rd
from polytask.errors import PolytaskError
from polytask.sweep import load_sweep, run_sweep
from polytask.sweep.study import LOCK_FILE, STUDY_FILE, file_lock, open_study
from tests.cli_helpers import assert_user_error, invoke
from tests.conftest import base_spec, make_table

optuna = pytest.importorskip("optuna")


def write_sweep(folder: Path, **changes) -> Path:
    make_table(n=240, seed=7).to_csv(folder / "t.csv", index=False)
    base = base_spec(
        "t.csv",
        data={"split": {"valid": 0.25, "test": 0.25, "seed": 0}},
        balance={"method": "dwa", "options": {"temperature": 2.0}},
    )
    base["tasks"] = [task for task in base["tasks"] if task["name"] in ("click", "spend")]
    sweep = {
        "base": base,
        "space": {
            "model.arch": ["mmoe", "shared_bottom", "omoe"],
            "train.lr": [0.003, 0.03],
            # equal takes no options: with the base's temperature it is a bad combination
            "balance.method": ["dwa", "equal"],
        },
        "objectives": ["click.auc", "spend.rmse"],
        "sampler": "grid",
        "pruning": False,
    }
    sweep.update(changes)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def non_dominated(points: dict[int, tuple[float, ...]], maximize: tuple[bool, ...]) -> set[int]:
    """The independent filter: a point is out when another is at least as good everywhere and
    better somewhere."""

    def at_least(a: float, b: float, up: bool) -> bool:
        return a >= b if up else a <= b

    front = set()
    for i, p in points.items():
        dominated = any(
            all(at_least(q[k], p[k], maximize[k]) for k in range(len(p))) and q != p
            for j, q in points.items()
            if j != i
        )
        if not dominated:
            front.add(i)
    return front


def run_values(study: Path, trial: dict) -> tuple[float, float]:
    metrics = rd.load_json(study / trial["run"], rd.FINAL_METRICS)["valid"]
    return metrics["click"]["auc"], metrics["spend"]["rmse"]


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    summary = run_sweep(load_sweep(write_sweep(folder)), folder / "study")
    return folder / "study", summary


def test_grid_study_completes_with_failed_combinations_recorded(grid_study):
    study, summary = grid_study
    assert summary == json.loads((study / STUDY_FILE).read_text())
    trials = summary["trials"]
    assert len(trials) == 12
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    failed = [t for t in trials if t["state"] == "FAIL"]
    assert {t["params"]["balance.method"] for t in complete} == {"dwa"}
    assert len(complete) == 6 and len(failed) == 6
    for trial in failed:
        assert trial["params"]["balance.method"] == "equal"
        assert "balance.options.temperature (equal): unknown key" in trial["error"]
        assert not (study / trial["run"]).exists()
    assert (study / "pareto.png").is_file()


def test_trials_are_ordinary_runs_whose_metrics_are_the_values(grid_study):
    study, summary = grid_study
    for trial in summary["trials"]:
        if trial["state"] != "COMPLETE":
            continue
        run = study / trial["run"]
        predictor = polytask.load(run)
        assert predictor.spec.model.arch == trial["params"]["model.arch"]
        assert predictor.spec.train.lr == trial["params"]["train.lr"]
        auc, rmse = run_values(study, trial)
        assert trial["values"] == {"click.auc": auc, "spend.rmse": rmse}


def test_pareto_set_is_the_non_dominated_trials(grid_study):
    study, summary = grid_study
    points = {
        t["number"]: run_values(study, t) for t in summary["trials"] if t["state"] == "COMPLETE"
    }
    expected = non_dominated(points, (True, False))
    assert set(summary["pareto"]) == expected
    assert {t["number"] for t in summary["trials"] if t["pareto"]} == expected
    assert 1 <= len(expected) < len(points)


def test_rerunning_a_finished_study_runs_nothing(grid_study):
    study, summary = grid_study
    sweep_file = study.parent / "sweep.yaml"
    again = run_sweep(load_sweep(sweep_file), study)
    assert again["trials"] == summary["trials"]


def test_a_different_sweep_is_refused(grid_study):
    study, _ = grid_study
    other = yaml.safe_load((study.parent / "sweep.yaml").read_text())
    other["space"]["model.arch"] = ["mmoe"]
    path = study.parent / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    with pytest.raises(PolytaskError, match="holds a study of another sweep \\(space differ"):
        run_sweep(load_sweep(path), study)


def test_one_sweep_at_a_time(grid_study):
    study, _ = grid_study
    with (
        file_lock(study / LOCK_FILE, wait=False),
        pytest.raises(PolytaskError, match="another polytask sweep is working on"),
    ):
        run_sweep(load_sweep(study.parent / "sweep.yaml"), study)


def test_parallel_workers_run_exactly_the_budget(tmp_path):
    space = {
        "model.arch": ["mmoe", "omoe"],
        "train.lr": {"type": "log_float", "low": 0.003, "high": 0.03},
    }
    path = write_sweep(tmp_path, sampler="tpe", trials=4, parallel=2, space=space)
    summary = run_sweep(load_sweep(path), tmp_path / "study")
    trials = summary["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 4
    runs = {t["run"] for t in trials}
    assert len(runs) == 4 and all(rd.is_complete(tmp_path / "study" / r) for r in runs)
    assert all(0.003 <= t["params"]["train.lr"] <= 0.03 for t in trials)


def test_poor_trials_are_pruned_and_still_finish_as_runs(tmp_path):
    path = write_sweep(
        tmp_path,
        space={"train.lr": [0.05, 1e-7], "train.seed": [0, 1, 2]},
        pruning={"warmup_epochs": 1, "min_trials": 3},  # the good trials never meet 3
    )
    raw = yaml.safe_load(path.read_text())
    raw["base"]["train"]["epochs"] = 4
    raw["base"]["balance"] = {}
    path.write_text(yaml.safe_dump(raw))
    summary = run_sweep(load_sweep(path), tmp_path / "study")
    states = {(t["params"]["train.lr"], t["params"]["train.seed"]): t for t in summary["trials"]}
    assert all(states[(0.05, seed)]["state"] == "COMPLETE" for seed in (0, 1, 2))
    pruned = [states[(1e-7, seed)] for seed in (0, 1, 2)]
    assert all(t["state"] == "PRUNED" for t in pruned)
    for trial in pruned:
        assert trial["pruned_at_epoch"] == 2
        run_summary = rd.load_json(tmp_path / "study" / trial["run"], rd.SUMMARY)
        assert run_summary["epochs_run"] == 2
        assert trial["values"] is None and not trial["pareto"]


def stored_trials(study: Path) -> list:
    storage = optuna.storages.RDBStorage(f"sqlite:///{study / 'study.db'}")
    return optuna.load_study(study_name="polytask", storage=storage).get_trials()


def test_a_killed_sweep_resumes_without_repeating_finished_trials(tmp_path):
    path = write_sweep(
        tmp_path,
        space={"model.arch": ["mmoe", "shared_bottom", "omoe"], "train.lr": [0.003, 0.03]},
    )
    raw = yaml.safe_load(path.read_text())
    raw["base"]["train"]["epochs"] = 5
    path.write_text(yaml.safe_dump(raw))
    study = tmp_path / "study"
    process = subprocess.Popen(
        [sys.executable, "-m", "polytask.cli", "sweep", str(path), "-o", str(study)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 240
    before: list = []
    try:
        while time.monotonic() < deadline:
            time.sleep(0.3)
            assert process.poll() is None, "the sweep ended before it could be killed"
            if not (study / "study.db").exists():
                continue
            try:
                before = stored_trials(study)
            except Exception:  # the database is being created
                continue
            states = [t.state.name for t in before]
            if states.count("COMPLETE") >= 2 and "RUNNING" in states:
                break
        else:
            pytest.fail("the sweep did not finish two trials in time")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    before = stored_trials(study)
    finished = {t.number: t for t in before if t.state.name == "COMPLETE"}
    cut = [t for t in before if t.state.name == "RUNNING"]
    # (a kill landing between one trial's end and the next one's start cuts nothing off)
    assert len(finished) >= 2
    stamps = {
        n: (study / t.user_attrs["run"] / rd.SUMMARY).stat().st_mtime_ns
        for n, t in finished.items()
    }

    summary = run_sweep(load_sweep(path), study)

    after = {t["number"]: t for t in summary["trials"]}
    for number, trial in finished.items():  # untouched: same values, same run directory
        assert after[number]["state"] == "COMPLETE"
        assert after[number]["params"] == trial.params
        assert list(after[number]["values"].values()) == trial.values
        assert (study / trial.user_attrs["run"] / rd.SUMMARY).stat().st_mtime_ns == stamps[number]
    for trial in cut:  # failed as interrupted, their unfinished folders removed, run again
        assert after[trial.number]["state"] == "FAIL" and after[trial.number]["interrupted"]
        assert not (study / (trial.user_attrs["run"] + ".partial")).exists()
    complete = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    combos = [(t["params"]["model.arch"], t["params"]["train.lr"]) for t in complete]
    assert len(combos) == len(set(combos)) == 6  # every grid point once, none twice
    assert len(summary["trials"]) == 6 + len(cut)
    study_handle = open_study(study, load_sweep(path))
    retries = [t.user_attrs.get("retry_of") for t in study_handle.get_trials()]
    assert sorted(r for r in retries if r is not None) == sorted(t.number for t in cut)


def test_cli_sweep_prints_the_front_and_reports_mistakes_in_one_line(tmp_path, grid_study):
    study, _ = grid_study
    result = invoke("sweep", study.parent / "sweep.yaml", "-o", study)
    assert result.exit_code == 0, result.output
    assert "Pareto front (valid split)" in result.output
    assert "failed: config: balance.options.temperature (equal)" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"base": "nowhere.yaml", "space": {"a": [1]}, "objectives": ["x.auc"], "trials": 1}
        )
    )
    assert_user_error(invoke("sweep", bad, "-o", tmp_path / "s"), "base run spec not found")


def test_missing_optuna_is_one_line(monkeypatch, grid_study):
    study, _ = grid_study
    sweep = load_sweep(study.parent / "sweep.yaml")
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(PolytaskError, match=r"pip install 'polytask\[sweep\]'"):
        run_sweep(sweep, study)
