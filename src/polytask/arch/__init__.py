"""Sharing architectures: how tasks share and separate capacity. One file each, one registry;
each writes a plan (:mod:`polytask.plan`) that one executor runs. Nothing here imports torch."""

from polytask.arch import (  # noqa: F401  (importing a module registers its architecture)
    aitm,
    cross_stitch,
    dselect_k,
    esmm,
    home,
    mmoe,
    omoe,
    plan,
    ple,
    shared_bottom,
    single,
    task_bottom,
    task_moe,
)
from polytask.arch.base import ARCHS, Architecture

__all__ = ["ARCHS", "Architecture"]
