"""``polytask train --nproc N``: start torchrun on this machine with N training processes.

The spec and the output folder are checked here first (the balancing method under N
processes, the device, the folder as the trainer claims it), so that a mistake is one line
before any process starts; the processes then run
``python -m polytask train`` with the same arguments, under ``torch.distributed.run
--standalone`` (one machine, a free port). Several machines use torchrun directly.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from polytask.config import RunSpec
from polytask.errors import ConfigError, PolytaskError
from polytask.train.device import resolve_device
from polytask.train.support import check_balancer


def check_launch(
    spec: RunSpec | None,
    out: str | Path,
    nproc: int,
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> None:
    """Refuse, before starting anything, what ``nproc`` processes cannot train: the checks
    the trainer makes of its output folder (or of the run to resume) and of the spec."""
    from polytask.train.trainer import Trainer, build_balancer

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1 (got {nproc})")
    spec = Trainer(spec, out, resume=resume, overwrite=overwrite, progress=False).spec
    if spec.train.relations is not None and nproc > 1:
        raise ConfigError("train.relations: task relations are recorded in one process only")
    check_balancer(build_balancer(spec, len(spec.tasks)), nproc, spec.train.precision)
    device = resolve_device(spec.train.device, 0 if nproc > 1 else None)
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise ConfigError(
            f"train.device: {nproc} processes need {nproc} CUDA GPUs, this machine has "
            f"{torch.cuda.device_count()}; lower --nproc or use train.device: cpu"
        )


def launch(arguments: Sequence[str], nproc: int) -> None:
    """Run ``polytask train ARGUMENTS`` in ``nproc`` processes; a failure is one line."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "polytask",
        "train",
        *arguments,
    ]
    code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise PolytaskError(
            f"the {nproc} training processes stopped (exit code {code}); the first error "
            "above says why"
        )
