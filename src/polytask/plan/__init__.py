"""Architectures as data: the plan schema and cutting a plan down (no torch here)."""

from polytask.plan.cut import LevelCut, check_chain, cut_plan, kept_encoders, needed
from polytask.plan.schema import Level, Plan

__all__ = ["Level", "LevelCut", "Plan", "check_chain", "cut_plan", "kept_encoders", "needed"]
