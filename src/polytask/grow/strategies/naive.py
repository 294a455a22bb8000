"""Naive fine-tuning: the new tasks train with every shared parameter free and nothing to
remember the old tasks by. The lower bound of a benchmark (what forgetting looks like)."""

from __future__ import annotations

from polytask.grow.strategies.base import STRATEGIES, Strategy


@STRATEGIES.register("naive")
class Naive(Strategy):
    """Plain fine-tune on the new data; the old tasks are free to be forgotten."""

    summary = "plain fine-tune on the new data (lower bound)"
