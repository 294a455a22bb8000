"""A plan given whole as ``model.options``: what ``polytask slim`` (and later grow and merge)
save, since a cut or grown model no longer has the regular layout of a named architecture."""

from __future__ import annotations

from pydantic import BaseModel

from polytask.arch.base import ARCHS, Architecture
from polytask.config import ModelSpec
from polytask.errors import ConfigError
from polytask.plan.schema import Plan


@ARCHS.register("plan")
class PlanArch(Architecture):
    """Any plan, written out in ``model.options`` (levels, task_gates, heads, ...)."""

    Options = Plan
    listed = False
    uses = frozenset()

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        assert isinstance(options, Plan)
        if options.num_tasks != num_tasks:
            raise ConfigError(
                f"model.options (plan): task_gates names {options.num_tasks} task(s) but the "
                f"run has {num_tasks}"
            )
        return options
