"""Growing trained runs: add tasks without forgetting the old ones, and measure what a
sequence of experiences keeps and forgets.

:func:`grow` adds tasks to a finished run with a continual-learning strategy
(:mod:`polytask.grow.strategies`); :func:`stream` trains experiences one after another and
reports the accuracy matrix, backward and forward transfer and forgetting.
"""

from polytask.grow.run import grow
from polytask.grow.strategies import STRATEGIES

__all__ = ["STRATEGIES", "grow"]
