"""Sharing architectures: how tasks share and separate capacity. One file each, one registry."""

from polytask.arch import (  # noqa: F401  (importing a module registers its architecture)
    aitm,
    cross_stitch,
    dselect_k,
    esmm,
    home,
    mmoe,
    omoe,
    ple,
    shared_bottom,
    single,
    slim_moe,
    task_bottom,
    task_moe,
    task_subset,
)
from polytask.arch.base import ARCHS, SharingArch

__all__ = ["ARCHS", "SharingArch"]
