"""Joint training: the new tasks train together with every old task on all data seen so far.
The upper bound of a benchmark; it needs the old data."""

from __future__ import annotations

from polytask.grow.data import Rows
from polytask.grow.strategies.base import (
    STRATEGIES,
    ExperienceContext,
    Strategy,
    old_data_needed,
)


@STRATEGIES.register("joint")
class Joint(Strategy):
    """Retrain on the old and the new data together (upper bound; needs the old data)."""

    summary = "train on old and new data together (upper bound; needs old data)"
    trains_on_old_rows = True

    def training_rows(self, context: ExperienceContext) -> list[Rows]:
        if context.old_tasks and context.old is None:
            raise old_data_needed(self.registry_name, "the training rows")
        return [context.rows] if context.old is None else [context.old, context.rows]
