"""Cutting a plan down to what some tasks need: which gates and experts, level by level.

Pure bookkeeping over indices. Which experts a needed gate keeps is decided by the caller
(``choose``): every expert a fixed route uses, or those above a usage threshold; this module
walks the plan from the towers down, collects what the kept tasks read, and renumbers the
survivors into a smaller plan that describes exactly the kept sub-network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from polytask.errors import PolytaskError
from polytask.plan.schema import GateBlock, HeadsSpec, Level, PlainHeads, Plan

Choose = Callable[[int, int, list[int]], list[int]]
"""(level index, gate index, the gate's allowed experts) -> the experts to keep for it."""


@dataclass
class LevelCut:
    """What one level keeps: gates and experts, as ascending indices into that level."""

    gates: list[int]
    experts: list[int]


def needed(plan: Plan, keep: list[int], choose: Choose) -> list[LevelCut]:
    """From the last level down: the gates the kept tasks read, the experts ``choose`` keeps
    for them (plus their self-gated own experts), then the inputs below that those experts
    and gates read."""
    gates = sorted({plan.task_gates[t] for t in keep})
    cuts: list[LevelCut] = []
    for number in range(len(plan.levels) - 1, -1, -1):
        level = plan.levels[number]
        experts: set[int] = set()
        for gate in gates:
            experts.update(choose(number, gate, list(level.gates.allowed[gate])))
            if level.self_gates is not None:
                experts.update(level.self_gates[gate])
        cuts.append(LevelCut(gates, sorted(experts)))
        if number > 0:
            reads, gate_reads = level.experts.reads, level.gates.reads
            assert reads is not None and gate_reads is not None
            gates = sorted({reads[e] for e in experts} | {gate_reads[g] for g in gates})
    cuts.reverse()
    return cuts


def kept_encoders(plan: Plan, cuts: list[LevelCut], keep: list[int]) -> list[int]:
    """The encoders the cut model keeps: the one shared encoder, or the per-task encoders
    that its first-level experts read."""
    if plan.encoders == "shared":
        return [0]
    reads = plan.levels[0].experts.reads
    assert reads is not None
    return sorted({reads[e] for e in cuts[0].experts})


def cut_plan(plan: Plan, cuts: list[LevelCut], keep: list[int]) -> Plan:
    """The plan of the kept sub-network, every index renumbered into the kept lists."""
    levels: list[Level] = []
    below: dict[int, int] | None = None  # old output index -> new, on the level below
    if plan.encoders == "per_task":
        below = {e: i for i, e in enumerate(kept_encoders(plan, cuts, keep))}
    for number, (level, cut) in enumerate(zip(plan.levels, cuts, strict=True)):
        position = {expert: index for index, expert in enumerate(cut.experts)}
        experts, gates = level.experts, level.gates
        expert_update: dict[str, object] = {"count": len(cut.experts)}
        if experts.owners is not None:
            expert_update["owners"] = [experts.owners[e] for e in cut.experts]
        if experts.reads is not None:
            assert below is not None
            expert_update["reads"] = [below[experts.reads[e]] for e in cut.experts]
        if experts.blocks is not None:
            expert_update["blocks"] = cut_sizes(experts.blocks, cut.experts)
        gate_update: dict[str, object] = {
            "allowed": [[position[e] for e in gates.allowed[g] if e in position] for g in cut.gates]
        }
        if gates.reads is not None:
            assert below is not None and number > 0
            gate_update["reads"] = [below[gates.reads[g]] for g in cut.gates]
        if gates.blocks is not None:
            gate_update["blocks"] = cut_gate_blocks(gates.blocks, cut.gates, cut.experts)
        if gates.kind == "dselect":
            source = gates.columns or list(range(experts.count))
            gate_update["columns"] = [source[e] for e in cut.experts]
            gate_update["source_experts"] = gates.source_experts or experts.count
        self_gates = None
        if level.self_gates is not None:
            self_gates = [[position[e] for e in level.self_gates[g]] for g in cut.gates]
        levels.append(
            Level(
                experts=experts.model_copy(update=expert_update),
                gates=gates.model_copy(update=gate_update),
                self_gates=self_gates,
                name=level.name,
            )
        )
        below = {gate: index for index, gate in enumerate(cut.gates)}
    assert below is not None
    check_chain(plan, keep, [str(t) for t in range(plan.num_tasks)])
    return Plan.model_validate(
        {
            **plan.model_dump(),
            "levels": [level.model_dump() for level in levels],
            "task_gates": [below[plan.task_gates[t]] for t in keep],
            "heads": _cut_heads(plan, keep).model_dump(),
            "tower_blocks": cut_sizes(plan.tower_blocks, keep) if plan.tower_blocks else None,
        }
    )


def cut_sizes(sizes: list[int], kept: list[int]) -> list[int] | None:
    """Block sizes after keeping the members ``kept`` (ascending): empty blocks go, and a
    single block is no block (None)."""
    counts, start = [], 0
    for size in sizes:
        counts.append(sum(start <= member < start + size for member in kept))
        start += size
    remaining = [count for count in counts if count]
    return remaining if len(remaining) > 1 else None


def cut_gate_blocks(
    blocks: list[GateBlock], gates: list[int], experts: list[int]
) -> list[GateBlock] | None:
    """Gate blocks after keeping ``gates`` over the kept ``experts``; None when one block
    over every kept expert is left."""
    kept, first = [], 0
    for block in blocks:
        count = sum(first <= gate < first + block.count for gate in gates)
        if count:
            start = sum(expert < block.start for expert in experts)
            end = sum(expert < block.experts for expert in experts)
            kept.append(GateBlock(count=count, experts=end, start=start))
        first += block.count
    if len(kept) == 1 and kept[0].start == 0 and kept[0].experts == len(experts):
        return None
    return kept


def check_chain(plan: Plan, keep: list[int], names: list[str]) -> None:
    """A funnel's kept tasks must be a prefix of its chain: each step's output needs every
    step before it."""
    chain = getattr(plan.heads, "chain", None)
    if chain is None:
        return
    kept_chain = [task for task in chain if task in keep]
    prefix = chain[: len(kept_chain)]
    if kept_chain != prefix:
        missing = [names[task] for task in prefix if task not in keep]
        raise PolytaskError(
            f"the chain {[names[t] for t in chain]} makes each task's output depend on the "
            f"steps before it; keep {', '.join(missing)} too "
            f"(--tasks {' --tasks '.join(missing)})"
        )


def _cut_heads(plan: Plan, keep: list[int]) -> HeadsSpec:
    """The chain renumbered into the kept tasks (a checked prefix); a chain of one step is a
    plain head."""
    heads = plan.heads
    chain = getattr(heads, "chain", None)
    if chain is None:
        return heads
    kept_chain = [task for task in chain if task in keep]
    if len(kept_chain) < 2:
        return PlainHeads()
    position = {task: index for index, task in enumerate(keep)}
    return heads.model_copy(update={"chain": [position[t] for t in kept_chain]})
