"""``polytask train --nproc N``: start torchrun on this machine with N training processes.

The spec is checked here first (its keys, the balancing method under N processes, the
device), so that a mistake is one line before any process starts; the processes then run
``python -m polytask train`` with the same arguments, under ``torch.distributed.run
--standalone`` (one machine, a free port). Several machines use torchrun directly.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from polytask.artifacts import run_dir as rd
from polytask.config import RunSpec
from polytask.errors import ConfigError, PolytaskError
from polytask.train.device import resolve_device
from polytask.train.support import check_balancer


def check_launch(spec: RunSpec, nproc: int) -> None:
    """Refuse, before starting anything, what ``nproc`` processes cannot train."""
    from polytask.train.trainer import build_balancer

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1 (got {nproc})")
    if spec.train.relations is not None and nproc > 1:
        raise ConfigError("train.relations: task relations are recorded in one process only")
    check_balancer(build_balancer(spec, len(spec.tasks)), nproc, spec.train.precision)
    device = resolve_device(spec.train.device, 0 if nproc > 1 else None)
    if device.type == "cuda" and nproc > 1:
        import torch

        if torch.cuda.device_count() < nproc:
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


def resumed_spec(run: str) -> RunSpec:
    """The saved spec of the run ``--resume`` continues (to check it before launching)."""
    from pathlib import Path

    return rd.load_config(rd.partial_path(rd.final_path(Path(run).absolute())))
