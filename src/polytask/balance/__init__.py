"""Task balancing: how per-task losses become one update. One file per method, one registry.

Importing this package does not import torch: every method's options are declared in
:mod:`polytask.balance.options`, so a config is validated and the methods are listed without
it. The methods themselves (and torch) load on first use of ``BALANCERS``, ``Balancer``,
``Need`` or ``StepContext``, or of the registry in :mod:`polytask.balance.base`.

Code outside this package uses only what this module exports, :mod:`.base` and :mod:`.options`;
the helpers the methods share (``_linalg``, ``jacobian``, one method's functions used by
another) are private to the package (tests may reach in).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from polytask.balance.options import OPTIONS, BalanceOptions, parse_options

if TYPE_CHECKING:
    from polytask.balance.base import BALANCERS, Balancer, Need, StepContext

# Importing a method's module registers it.
METHOD_MODULES = (
    "aligned_mtl",
    "cagrad",
    "db_mtl",
    "dwa",
    "equal",
    "famo",
    "graddrop",
    "gradnorm",
    "gradvac",
    "imtl",
    "mgda",
    "nash_mtl",
    "pcgrad",
    "rlw",
    "sam",
    "uncertainty",
    "upgrad",
)
_FROM_BASE = frozenset({"BALANCERS", "Balancer", "Need", "StepContext"})


def load_methods() -> None:
    """Import every method's module, which registers it in ``BALANCERS``."""
    for module in METHOD_MODULES:
        import_module(f"polytask.balance.{module}")


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        load_methods()
        return getattr(import_module("polytask.balance.base"), name)
    raise AttributeError(f"module 'polytask.balance' has no attribute '{name}'")


__all__ = [
    "BALANCERS",
    "OPTIONS",
    "BalanceOptions",
    "Balancer",
    "Need",
    "StepContext",
    "load_methods",
    "parse_options",
]
