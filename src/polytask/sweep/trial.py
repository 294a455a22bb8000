"""One trial: sample its parameters, train the run, measure the objectives, tell the study.

A trial whose spec is invalid (a bad combination: ConfigError) or whose training fails is told
FAIL with its reason in the ``error`` attribute, and the sweep goes on; a pruned trial finishes
as a run and is told PRUNED; otherwise its objective values are told.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from polytask.errors import PolytaskError
from polytask.sweep.objectives import objective_values
from polytask.sweep.pruning import CURVE, EpochPruner
from polytask.sweep.spec import Sweep
from polytask.sweep.study import ERROR, RUN, optuna_module, run_folder
from polytask.tasks import HIGHER_IS_BETTER

console = Console(stderr=True, highlight=False, soft_wrap=True)


def suggest(trial: Any, sweep: Sweep) -> dict[str, Any]:
    """Sampled labels (categorical) or values per searched key."""
    labels = {}
    for key, space in sweep.spec.space.items():
        if space.type == "categorical":
            labels[key] = trial.suggest_categorical(key, space.labels)
        elif space.type == "int":
            assert space.low is not None and space.high is not None  # checked in the spec
            step = int(space.step or 1)
            labels[key] = trial.suggest_int(key, int(space.low), int(space.high), step=step)
        else:
            assert space.low is not None and space.high is not None
            log = space.type == "log_float"
            labels[key] = trial.suggest_float(key, space.low, space.high, step=space.step, log=log)
    return labels


def describe(labels: dict[str, Any]) -> str:
    """``key=value, ...`` for the console (escaped: rich would read brackets as markup)."""
    return escape(", ".join(f"{key}={value}" for key, value in labels.items()))


def finished_curves(study: Any) -> Any:
    optuna = optuna_module()

    def read() -> list[list[float | None]]:
        complete = optuna.trial.TrialState.COMPLETE
        trials = study.get_trials(deepcopy=False, states=(complete,))
        return [t.user_attrs.get(CURVE) or [] for t in trials]

    return read


def run_trial(study: Any, trial: Any, sweep: Sweep, study_dir: Path, threads: int) -> str:
    """Run one asked trial to its end and tell the study; returns its state's name."""
    from polytask.track import fit_tracked

    optuna = optuna_module()
    started = time.perf_counter()
    run = run_folder(study_dir, trial.number)
    trial.set_user_attr(RUN, str(run.relative_to(study_dir)))
    labels: dict[str, Any] = {}
    try:
        labels = suggest(trial, sweep)
        spec = sweep.trial_spec(labels, threads)
        if spec.track.enabled and spec.track.run_name is None:
            spec.track.run_name = f"{study_dir.name}/{run.name}"
        target = sweep.pruning_target()
        metric = target[1] if target is not None else None
        pruner = EpochPruner(
            trial,
            sweep.spec.pruning,
            target,
            HIGHER_IS_BETTER.get(metric, True) if metric else True,
            finished_curves(study),
        )
        fit_tracked(spec, run, progress=False, callbacks=[pruner])
        if pruner.pruned_at is not None:
            trial.set_user_attr("pruned_at_epoch", pruner.pruned_at)
            state, values = optuna.trial.TrialState.PRUNED, None
        else:
            state = optuna.trial.TrialState.COMPLETE
            values = objective_values(run, sweep.spec.objectives, sweep.spec.split)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # a bad combination, bad data, a numerical failure: go on
        reason = str(error)
        if not isinstance(error, PolytaskError):
            reason = f"{type(error).__name__}: {error}"
        trial.set_user_attr(ERROR, reason)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        console.print(
            f"trial {trial.number} \\[{describe(labels)}]: [red]failed[/red]: {escape(reason)}"
        )
        return "FAIL"
    seconds = time.perf_counter() - started
    trial.set_user_attr("seconds", seconds)
    study.tell(trial, values=values, state=state)
    if values is None:
        outcome = f"[yellow]pruned[/yellow] at epoch {pruner.pruned_at}"
    else:
        outcome = "  ".join(
            f"{o.name} {v:.4f}" for o, v in zip(sweep.spec.objectives, values, strict=True)
        )
    console.print(f"trial {trial.number} \\[{describe(labels)}]: {outcome} ({seconds:.0f} s)")
    return state.name
