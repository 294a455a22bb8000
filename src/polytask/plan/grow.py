"""Growing a plan with new tasks: the inverse of :mod:`polytask.plan.cut`.

Pure bookkeeping over indices. Every old expert, gate and task keeps its index, so the old
plan is a prefix of the grown one at every level, and what is added is computed as a block of
its own (``blocks``, ``tower_blocks``): the old banks keep their shapes, so the old tasks'
outputs are the same floating-point operations on the same numbers, bit for bit. What is
added, per new task and level:

- ``experts`` new experts owned by the task (``task:<index>``), reading the task's own path
  on the level below (at the first level: the shared input, or the task's new encoder when
  every task has its own);
- one new gate, reading the task's own path below and allowing the old experts the task
  may use (``read``: the shared ones, or all) plus its own new ones. Old gates keep their
  allowed experts, so nothing the old tasks compute changes;
- where a level's gates are identity gates (a bottom picked whole) and the task brings no
  expert of its own there, it reads the one shared bottom instead of a new gate.

The last level's new gate is the task's tower input. Heads are unchanged: tasks outside a
chain have plain towers.
"""

from __future__ import annotations

from typing import Literal

from polytask.errors import PolytaskError
from polytask.plan.schema import GateBlock, Level, Plan

OldExperts = Literal["shared", "all"]
GROWABLE_EXPERTS = ("mlp",)
GROWABLE_GATES = ("identity", "softmax", "fixed", "stitch", "topk")


def growth_problem(plan: Plan) -> str | None:
    """Why new tasks cannot be added to this plan's structure, or None when they can."""
    if plan.heads.kind == "transfer":
        return "its transfer head reads the towers' layers of every task directly"
    for number, level in enumerate(plan.levels):
        if level.experts.kind not in GROWABLE_EXPERTS:
            return f"level {number} has {level.experts.kind} experts"
        if level.gates.kind not in GROWABLE_GATES:
            return f"level {number} has {level.gates.kind} gates"
        if level.self_gates is not None:
            return f"level {number} has self gates over each task's own experts"
    return None


def add_tasks(plan: Plan, count: int, experts: int = 0, read: OldExperts = "shared") -> Plan:
    """``plan`` with ``count`` new tasks after the old ones (see the module docstring)."""
    problem = growth_problem(plan)
    if problem is not None:
        raise PolytaskError(f"cannot add tasks to this model: {problem}")
    if count < 1 or experts < 0:
        raise PolytaskError("add at least one task, with zero or more experts per level")
    levels: list[Level] = []
    below: list[int] | None = None  # per new task: the output it reads on the level below
    for number, level in enumerate(plan.levels):
        grown, below = _grow_level(plan, number, level, count, experts, read, below)
        levels.append(grown)
    assert below is not None
    return Plan.model_validate(
        {
            **plan.model_dump(),
            "levels": [level.model_dump() for level in levels],
            "task_gates": [*plan.task_gates, *below],
            "tower_blocks": [*(plan.tower_blocks or [plan.num_tasks]), count],
        }
    )


def _grow_level(
    plan: Plan,
    number: int,
    level: Level,
    count: int,
    experts: int,
    read: OldExperts,
    below: list[int] | None,
) -> tuple[Level, list[int]]:
    """One level grown; returns it and, per new task, the output its path takes here."""
    where = f"level {number}"
    old_experts, old_gates = level.experts.count, level.gates.count
    owners = list(level.experts.owners or ["shared"] * old_experts)
    usable = [e for e, owner in enumerate(owners) if read == "all" or owner == "shared"]
    identity = level.gates.kind == "identity"
    if identity and experts > 1:
        raise PolytaskError(f"{where}: identity gates pick one bottom; add at most 1 expert there")
    expert_reads = list(level.experts.reads) if level.experts.reads is not None else None
    gate_reads = list(level.gates.reads) if level.gates.reads is not None else None
    allowed = [list(members) for members in level.gates.allowed]
    paths: list[int] = []
    for offset in range(count):
        task = plan.num_tasks + offset
        own = list(range(old_experts + offset * experts, old_experts + (offset + 1) * experts))
        owners += [f"task:{task}"] * experts
        if expert_reads is not None:  # the task's own path below, or its own encoder
            source = task if below is None else below[offset]
            expert_reads += [source] * experts
        if identity and not own:
            paths.append(_shared_bottom(level, owners, where))
            continue
        members = own if identity else [*usable, *own]
        if not members:
            raise PolytaskError(
                f"{where}: no expert there is shared, so a new task needs experts of its own "
                "(strategy expand, experts >= 1) or read: all"
            )
        top_k = getattr(level.gates, "top_k", None)
        if top_k is not None and len(members) < top_k:
            raise PolytaskError(
                f"{where}: a new task's gate would route top_k = {top_k} over only "
                f"{len(members)} expert(s); add experts"
            )
        allowed.append(members)
        if gate_reads is not None:
            assert below is not None
            gate_reads.append(below[offset])
        paths.append(len(allowed) - 1)
    total = old_experts + count * experts
    expert_blocks = level.experts.blocks or [old_experts]
    gate_blocks = level.gates.blocks or [GateBlock(count=old_gates, experts=old_experts)]
    added_gates = len(allowed) - old_gates
    grown = Level(
        experts=level.experts.model_copy(
            update={
                "count": total,
                "owners": owners,
                "reads": expert_reads,
                "blocks": [*expert_blocks, count * experts] if experts else level.experts.blocks,
            }
        ),
        gates=level.gates.model_copy(
            update={
                "allowed": allowed,
                "reads": gate_reads,
                "blocks": [*gate_blocks, GateBlock(count=added_gates, experts=total)]
                if added_gates
                else level.gates.blocks,
            }
        ),
        self_gates=None,
        name=level.name,
    )
    return grown, paths


def _shared_bottom(level: Level, owners: list[str], where: str) -> int:
    """The one identity gate over a shared bottom, which a task without its own reads."""
    shared = [
        gate for gate, members in enumerate(level.gates.allowed) if owners[members[0]] == "shared"
    ]
    if len(shared) != 1:
        raise PolytaskError(
            f"{where}: the new task needs a bottom of its own there (strategy expand, experts: 1)"
        )
    return shared[0]


def replicate(plan: Plan, copies: int, task_copy: list[int]) -> Plan:
    """``copies`` side-by-side copies of every level of ``plan`` (block-diagonal: copy c's
    experts read and its gates weight copy c's only), task t reading copy ``task_copy[t]``;
    encoders, towers and heads as they are. A model whose tasks each read their own version of
    the shared network (PackNet's per-task sub-networks) is this plan with each copy's
    weights; cut it (:mod:`polytask.plan.cut`) to drop what no task reads."""
    if plan.encoders == "per_task":
        raise PolytaskError("a plan with one encoder per task has nothing shared to copy")
    problem = growth_problem(plan)
    if problem is not None:
        raise PolytaskError(f"cannot copy this model's levels: {problem}")
    levels: list[Level] = []
    below: int | None = None  # outputs of one copy of the level below
    for level in plan.levels:
        experts, gates = level.experts, level.gates
        count, number = experts.count, gates.count

        def shifted(values: list[int] | None, size: int | None) -> list[int] | None:
            if values is None:
                return None
            assert size is not None
            return [v + c * size for c in range(copies) for v in values]

        gate_blocks = gates.blocks or [GateBlock(count=number, experts=count)]
        levels.append(
            Level(
                experts=experts.model_copy(
                    update={
                        "count": copies * count,
                        "owners": (experts.owners or ["shared"] * count) * copies,
                        "reads": shifted(experts.reads, below),
                        "blocks": (experts.blocks or [count]) * copies,
                    }
                ),
                gates=gates.model_copy(
                    update={
                        "allowed": [
                            [e + c * count for e in members]
                            for c in range(copies)
                            for members in gates.allowed
                        ],
                        "reads": shifted(gates.reads, below),
                        "blocks": [
                            GateBlock(
                                count=b.count,
                                experts=b.experts + c * count,
                                start=b.start + c * count,
                            )
                            for c in range(copies)
                            for b in gate_blocks
                        ],
                    }
                ),
                name=level.name,
            )
        )
        below = number
    assert below is not None
    return Plan.model_validate(
        {
            **plan.model_dump(),
            "levels": [level.model_dump() for level in levels],
            "task_gates": [task_copy[t] * below + g for t, g in enumerate(plan.task_gates)],
        }
    )
