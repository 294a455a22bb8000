"""The study folder: Optuna's storage, the sweep it belongs to, and its recovery after a kill.

```
STUDY/
  sweep.json        what defines the study (base spec, space, objectives); a resume must agree
  study.db          Optuna's SQLite storage (unless `storage:` names another)
  runs/trial-0007/  one ordinary run directory per trial
  study.json        every trial (state, parameters, values, run, reason) and the Pareto set
  pareto.png        the first two objectives, Pareto front highlighted
```

Only one ``polytask sweep`` may work on a study at a time (a lock file held for its lifetime),
so every trial still RUNNING in the storage when a sweep starts was cut off by a kill: it is
marked failed ("interrupted"), its unfinished run folder removed, and its parameters queued
again. Finished trials are never repeated.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from polytask.artifacts import run_dir as rd
from polytask.artifacts.atomic import write_json
from polytask.errors import PolytaskError
from polytask.sweep.spec import Sweep

SWEEP_FILE = "sweep.json"
STUDY_FILE = "study.json"
PARETO_PLOT = "pareto.png"
STORAGE_FILE = "study.db"
RUNS = "runs"
LOCK_FILE = ".sweep.lock"
ASK_LOCK_FILE = ".ask.lock"
STUDY_NAME = "polytask"
INTERRUPTED = "interrupted"
ERROR = "error"
RUN = "run"
SQLITE_TIMEOUT_S = 120  # parallel trials write to one SQLite file; wait for each other's locks


def optuna_module() -> Any:
    from polytask.optional import require

    optuna = require("optuna", "polytask sweep", "sweep")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def run_folder(study_dir: Path, number: int) -> Path:
    return study_dir / RUNS / f"trial-{number:04d}"


def storage_url(study_dir: Path, configured: str | None) -> str:
    return configured or f"sqlite:///{(study_dir / STORAGE_FILE).resolve()}"


def open_storage(study_dir: Path, configured: str | None) -> Any:
    optuna = optuna_module()
    url = storage_url(study_dir, configured)
    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine["connect_args"] = {"timeout": SQLITE_TIMEOUT_S}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine)


def open_study(study_dir: Path, sweep: Sweep, sampler: Any = None) -> Any:
    """Create the study or load it; its objectives' directions must match the sweep's."""
    optuna = optuna_module()
    directions = [o.direction for o in sweep.spec.objectives]
    study = optuna.create_study(
        storage=open_storage(study_dir, sweep.spec.storage),
        study_name=STUDY_NAME,
        directions=directions,
        sampler=sampler,
        load_if_exists=True,
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise PolytaskError(
            f"the study in {study_dir} optimises {stored}, the sweep asks for {directions}"
        )
    return study


def make_sampler(sweep: Sweep, worker: int) -> Any:
    """Each worker seeds its sampler differently, so parallel workers do not propose alike."""
    optuna = optuna_module()
    seed = sweep.spec.seed + worker
    name = sweep.spec.sampler
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)  # random; grid trials are all enqueued


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool) -> Iterator[None]:
    """An exclusive lock on ``path`` (released by the kernel if the holder dies)."""
    import fcntl  # POSIX only: reading a study (polytask report) does not need it

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise PolytaskError(
                f"another polytask sweep is working on {path.parent}; wait for it to end"
            ) from None
        yield
    finally:
        handle.close()


def claim_sweep(study_dir: Path, sweep: Sweep) -> None:
    """Record what defines the study; refuse to mix a different sweep into it."""
    path = study_dir / SWEEP_FILE
    canonical = sweep.canonical()
    if path.is_file():
        stored = json.loads(path.read_text())
        differing = [key for key in canonical if stored.get(key) != canonical[key]]
        if differing:
            raise PolytaskError(
                f"{study_dir} holds a study of another sweep ({', '.join(differing)} differ); "
                "resume it with the same sweep file, or give a new -o"
            )
        return
    if any(p.name not in (LOCK_FILE, ASK_LOCK_FILE) for p in study_dir.iterdir()):
        raise PolytaskError(f"{study_dir} exists and is not a polytask study; give a new -o")
    write_json(path, canonical)


def recover_interrupted(study: Any, study_dir: Path) -> list[int]:
    """Trials left RUNNING by a killed sweep: failed as interrupted, their unfinished run
    folders removed, their parameters queued again. Returns their numbers."""
    optuna = optuna_module()
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    reason = "interrupted: the sweep was stopped while this trial ran; its parameters were queued"
    for trial in running:
        handle = optuna.trial.Trial(study, trial._trial_id)
        handle.set_user_attr(INTERRUPTED, True)
        handle.set_user_attr(ERROR, reason)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        shutil.rmtree(rd.partial_path(run_folder(study_dir, trial.number)), ignore_errors=True)
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
    return [trial.number for trial in running]


def enqueue_grid(study: Any, sweep: Sweep) -> int:
    """Queue every grid combination no trial has taken yet (idempotent across resumes)."""
    if sweep.spec.sampler != "grid":
        return 0
    taken = {_key(t.params) for t in study.get_trials(deepcopy=False)}
    queued = 0
    for point in sweep.spec.grid_points():
        if _key(point) not in taken:
            study.enqueue_trial(point)
            queued += 1
    return queued


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def used_budget(study: Any) -> int:
    """Trials that count against ``trials``: running or finished, not the interrupted ones."""
    optuna = optuna_module()
    waiting = optuna.trial.TrialState.WAITING
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state != waiting and not t.user_attrs.get(INTERRUPTED)
    )


def threads_per_trial(sweep: Sweep) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return sweep.spec.threads or max(1, (cores or 1) // sweep.spec.parallel)
