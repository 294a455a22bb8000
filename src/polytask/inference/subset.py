"""Some tasks of a model, exactly: the sub-network those tasks read, nothing else computed.

``predict --tasks`` and the server's ``tasks`` compute only the asked tasks: the other tasks'
towers go, and so do experts and gates that only other tasks read (task-specific experts of
CGC / PLE, other tasks' gates, an unused task-routed expert, other tasks' encoders of
``single``). Every expert a kept gate may weight stays, so the outputs equal the full model's
for the kept tasks; this is the exact case of slimming (:mod:`polytask.slim.extract`), which
may also drop rarely used experts.
"""

from __future__ import annotations

import copy

from torch import nn

from polytask.model import MultiTaskModel, build_heads
from polytask.nn.heads import TransferHead
from polytask.plan.cut import LevelCut, check_chain, cut_plan, kept_encoders, needed
from polytask.plan.schema import Plan


def assemble(
    model: MultiTaskModel, plan: Plan, cuts: list[LevelCut], keep: list[int]
) -> MultiTaskModel:
    """The cut model: the cut network, copies of the kept encoders, the kept towers and the
    cut heads (``plan`` is ``model``'s plan cut by ``cuts``)."""
    encoders = nn.ModuleList(
        copy.deepcopy(model.encoders[i]) for i in kept_encoders(model.plan, cuts, keep)
    )
    network = model.arch.cut(cuts, plan)
    towers = model.towers.select(keep)
    tower_hidden = towers.hidden.hidden if towers.hidden is not None else []
    heads = build_heads(plan, tower_hidden, network.out_dim, towers.out_dims)
    if isinstance(heads, TransferHead):
        assert isinstance(model.heads, TransferHead)
        heads.copy_prefix(model.heads)
    names = [model.task_names[t] for t in keep]
    return MultiTaskModel(encoders, network, towers, names, heads)


def exact_cuts(model: MultiTaskModel, keep: list[int]) -> list[LevelCut]:
    """What ``keep`` reads, level by level: a gate with a fixed route (task-routed top-k,
    identity, cross-stitch) keeps its route, any other gate every expert it may weight."""
    supports = [level.gates.fixed_support() for level in model.arch.level_modules]

    def choose(level: int, gate: int, allowed: list[int]) -> list[int]:
        support = supports[level]
        return list(support[gate]) if support is not None else allowed

    return needed(model.plan, keep, choose)


def task_subset(model: MultiTaskModel, keep: list[int]) -> MultiTaskModel:
    """The tasks ``keep`` (indices, in the model's order) of ``model``, in eval mode, with
    the same outputs for them; a funnel's kept tasks must be a prefix of its chain."""
    check_chain(model.plan, keep, model.task_names)
    cuts = exact_cuts(model, keep)
    return assemble(model, cut_plan(model.plan, cuts, keep), cuts, keep).eval()


def without_unused_experts(model: MultiTaskModel) -> MultiTaskModel:
    """The same function with experts no task can reach in eval removed (task-routed top-k
    experts that no task routes to), every task kept: exact. The model itself when there is
    nothing to remove."""
    keep = list(range(len(model.task_names)))
    cuts = exact_cuts(model, keep)
    pairs = zip(cuts, model.plan.levels, strict=True)
    if all(len(cut.experts) == level.experts.count for cut, level in pairs):
        return model
    return assemble(model, cut_plan(model.plan, cuts, keep), cuts, keep).eval()
