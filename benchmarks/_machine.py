"""What every benchmark prints about the machine it ran on, so that figures can be compared
only where the hardware and the software stack are the same; and where the machine keeps the
shared datasets."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def shared_datasets(root: Path) -> Path:
    """``shared/datasets`` beside the checkout ``root`` (the main checkout) or above it (a
    worktree sits deeper); the first place looked when neither exists."""
    for folder in root.parents:
        if (folder / "shared" / "datasets").is_dir():
            return folder / "shared" / "datasets"
    return root.parent / "shared" / "datasets"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(*packages: str) -> dict[str, Any]:
    """CPU, cores, torch threads and kernel level, versions of ``packages``, and the load."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "polytask": package_version("polytask"),
    }
    info.update({name.lower().replace("-", "_"): package_version(name) for name in packages})
    info["load_average_1m_start"] = os.getloadavg()[0]
    return info
