"""Sharing architectures: how tasks share and separate capacity. One file each, one registry."""

from polytask.arch import mmoe, omoe, ple, shared_bottom, single  # noqa: F401  (registers them)
from polytask.arch.base import ARCHS, SharingArch

__all__ = ["ARCHS", "SharingArch"]
