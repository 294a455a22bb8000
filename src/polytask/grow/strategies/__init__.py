"""Continual-learning strategies: one file each, one registry, one interface
(:mod:`polytask.grow.strategies.base`)."""

from polytask.grow.strategies import (  # noqa: F401  (importing a module registers it)
    agem,
    ewc,
    expand,
    gem,
    joint,
    lwf,
    naive,
    packnet,
    replay,
    si,
)
from polytask.grow.strategies.base import STRATEGIES, ExperienceContext, Strategy

__all__ = ["STRATEGIES", "ExperienceContext", "Strategy"]
