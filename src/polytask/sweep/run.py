"""``polytask sweep``: set up or resume the study, run the workers, summarise the result."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from rich.console import Console

from polytask.artifacts.atomic import write_atomic, write_json
from polytask.errors import PolytaskError
from polytask.sweep.plot import plot_pareto
from polytask.sweep.spec import Sweep
from polytask.sweep.study import (
    ERROR,
    INTERRUPTED,
    LOCK_FILE,
    PARETO_PLOT,
    RUN,
    STUDY_FILE,
    claim_sweep,
    enqueue_grid,
    file_lock,
    open_study,
    optuna_module,
    recover_interrupted,
    threads_per_trial,
    used_budget,
)
from polytask.sweep.worker import work, worker_main

console = Console(stderr=True, highlight=False, soft_wrap=True)


def run_sweep(sweep: Sweep, study_dir: str | Path) -> dict[str, Any]:
    """Run (or resume) the sweep into ``study_dir``; returns the study summary (``study.json``)."""
    optuna_module()  # fail at once, with the extra to install, if Optuna is missing
    study_dir = Path(study_dir).resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(study_dir / LOCK_FILE, wait=False):
        claim_sweep(study_dir, sweep)
        study = open_study(study_dir, sweep)
        interrupted = recover_interrupted(study, study_dir)
        enqueue_grid(study, sweep)
        threads = threads_per_trial(sweep)
        budget, used = sweep.spec.budget, used_budget(study)
        if interrupted:
            listed = ", ".join(map(str, interrupted))
            console.print(f"trial(s) {listed} were cut off by a kill; their parameters run again")
        if used < budget:
            processes = min(sweep.spec.parallel, budget - used)
            console.print(
                f"study {study_dir}: {used} of {budget} trials done or running; "
                f"{processes} process(es), {threads} torch thread(s) per trial"
            )
            _run_workers(study_dir, sweep, processes, threads)
        return summarise(study, sweep, study_dir)


def _run_workers(study_dir: Path, sweep: Sweep, processes: int, threads: int) -> None:
    if processes == 1:
        work(study_dir, sweep, 0, threads)
        return
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited torch state
    workers = [
        context.Process(target=worker_main, args=(str(study_dir), sweep, index, threads))
        for index in range(processes)
    ]
    for process in workers:
        process.start()
    try:
        for process in workers:
            process.join()
    finally:
        for process in workers:
            if process.is_alive():
                process.terminate()
                process.join()
    failed = [(i, p.exitcode) for i, p in enumerate(workers) if p.exitcode != 0]
    if failed:
        listed = ", ".join(f"worker {i} exit code {code}" for i, code in failed)
        raise PolytaskError(f"sweep workers stopped abnormally ({listed}); rerun to resume")


def summarise(study: Any, sweep: Sweep, study_dir: Path) -> dict[str, Any]:
    """Every trial and the Pareto set (Optuna's ``best_trials``: the non-dominated completed
    trials), written to ``study.json``, and the Pareto plot."""
    optuna = optuna_module()
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pareto = {t.number for t in study.best_trials} if complete else set()
    objectives = [
        {"name": o.name, "metric": o.metric, "direction": o.direction, "batch": o.batch}
        for o in sweep.spec.objectives
    ]
    rows = []
    for trial in trials:
        if trial.state == optuna.trial.TrialState.WAITING:
            continue
        values = None
        if trial.values is not None:
            values = {o["name"]: v for o, v in zip(objectives, trial.values, strict=True)}
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "params": dict(trial.params),
                "values": values,
                "pareto": trial.number in pareto,
                "run": trial.user_attrs.get(RUN),
                "error": trial.user_attrs.get(ERROR),
                "interrupted": bool(trial.user_attrs.get(INTERRUPTED)),
                "pruned_at_epoch": trial.user_attrs.get("pruned_at_epoch"),
                "seconds": trial.user_attrs.get("seconds"),
                "started": _iso(trial.datetime_start),
                "finished": _iso(trial.datetime_complete),
            }
        )
    summary = {
        "study": str(study_dir),
        "objectives": objectives,
        "split": sweep.spec.split,
        "sampler": sweep.spec.sampler,
        "space": list(sweep.spec.space),
        "budget": sweep.spec.budget,
        "trials": rows,
        "pareto": sorted(pareto),
    }
    write_json(study_dir / STUDY_FILE, summary)
    if len(objectives) >= 2 and complete:
        write_atomic(study_dir / PARETO_PLOT, lambda temp: plot_pareto(summary, temp))
    return summary


def _iso(moment: Any) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None
