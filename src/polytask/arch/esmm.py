"""ESMM (Ma et al., SIGIR 2018): entire-space multi-task model for a chain of dependent binary
tasks (impression -> click -> conversion); the chained head is :class:`~polytask.nn.heads.
ChainHead`.

Labels: the k-th chained task's label is the *joint* event over every row (1 only if all the
earlier steps happened too, 0 otherwise: a conversion column with 0 on non-clicked rows). Its
predictions are joint probabilities (pCTCVR), not the conditional pCVR.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from polytask.arch.base import ARCHS, Architecture, ArchOptions
from polytask.config import ModelSpec
from polytask.errors import ConfigError
from polytask.plan.schema import ChainHeads, IdentityGates, Level, MLPExperts, Plan, full


class ChainOptions(ArchOptions):
    """Options of an architecture over an ordered chain of dependent binary tasks."""

    chain: list[int] | None = Field(
        None,
        min_length=2,
        description="task indices in funnel order (default: every task, in config order)",
    )

    @field_validator("chain")
    @classmethod
    def _distinct_non_negative(cls, chain: list[int] | None) -> list[int] | None:
        if chain is None:
            return chain
        if any(index < 0 for index in chain):
            raise ValueError("task indices must be 0 or more")
        if len(set(chain)) != len(chain):
            raise ValueError("a task may appear only once in the chain")
        return chain


def resolve_chain(arch_name: str, options: ChainOptions, num_tasks: int) -> list[int]:
    """The chain as task indices, checked against the number of tasks (known only here)."""
    chain = list(range(num_tasks)) if options.chain is None else list(options.chain)
    for index in chain:
        if index >= num_tasks:
            raise ConfigError(
                f"model.options ({arch_name}): chain: task index {index} is out of range for "
                f"{num_tasks} task(s) (valid: 0..{num_tasks - 1})"
            )
    if len(chain) < 2:
        raise ConfigError(f"model.options ({arch_name}): a chain needs at least two tasks")
    return chain


def task_bottoms(num_tasks: int, spec: ModelSpec) -> Level:
    """One bottom MLP per task (fused), all reading the shared embedding."""
    bottoms = MLPExperts(
        count=num_tasks,
        hidden=spec.hidden,
        dropout=spec.dropout,
        owners=[f"task:{t}" for t in range(num_tasks)],
    )
    return Level(experts=bottoms, gates=IdentityGates(allowed=[[t] for t in range(num_tasks)]))


@ARCHS.register("esmm")
class ESMM(Architecture):
    """ESMM (Ma et al. 2018): a bottom per task and chained heads for a funnel of binary tasks
    (click -> conversion); the k-th chained task predicts the joint probability."""

    Options = ChainOptions

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        assert isinstance(options, ChainOptions)
        chain = resolve_chain(spec.arch, options, num_tasks)
        return Plan(
            levels=[task_bottoms(num_tasks, spec)],
            task_gates=full(num_tasks),
            heads=ChainHeads(chain=chain),
            source="esmm",
        )
