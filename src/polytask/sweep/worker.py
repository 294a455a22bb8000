"""A sweep worker: asks the study for trials and runs them until the budget is spent.

Several workers (processes) share one study through its storage; asking is serialised by a lock
file so that together they start exactly ``trials`` trials.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
from pathlib import Path

import torch

from polytask.sweep.spec import Sweep
from polytask.sweep.study import (
    ASK_LOCK_FILE,
    file_lock,
    make_sampler,
    open_study,
    used_budget,
)
from polytask.sweep.trial import run_trial

PR_SET_PDEATHSIG = 1


def work(study_dir: Path, sweep: Sweep, worker: int, threads: int) -> int:
    """Run trials until the study has used its budget; returns how many this worker ran."""
    study = open_study(study_dir, sweep, make_sampler(sweep, worker))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    ran = 0
    try:
        while True:
            with file_lock(study_dir / ASK_LOCK_FILE, wait=True):
                if used_budget(study) >= sweep.spec.budget:
                    return ran
                trial = study.ask()
            run_trial(study, trial, sweep, study_dir, threads)
            ran += 1
    finally:
        torch.set_num_threads(previous_threads)


def _die_with_parent() -> None:
    """A worker must not outlive a killed sweep: ask Linux to send it SIGTERM then."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_main(study_dir: str, sweep: Sweep, worker: int, threads: int) -> None:
    """Entry point of a spawned worker process."""
    _die_with_parent()
    try:
        work(Path(study_dir), sweep, worker, threads)
    except KeyboardInterrupt:
        sys.exit(130)
