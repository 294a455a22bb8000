"""Cut the sub-network that some tasks use out of a trained multi-task model.

One procedure for every architecture, read off the model's plan (:mod:`polytask.plan`):
from the towers down, the gates the kept tasks read, the experts those gates use, then what
those experts and gates read on the level below. Which experts a gate uses comes from the
gate itself:

- gates whose experts in eval do not depend on the row (identity gates of shared-bottom,
  single-task and funnel bottoms; cross-stitch units; task-routed top-k) keep exactly those
  experts: the cut is exact;
- gates that weight experts per row (softmax gates of MMoE, OMoE, CGC, PLE, HoME; DSelect-k;
  row-routed top-k) keep the experts whose mean weight on the measured rows is above
  ``threshold``; the dropped experts' weight is renormalised over the kept ones, so the cut is
  exact only when no needed gate loses an expert it may weight (``threshold`` 0 keeps every
  expert with weight).

Other tasks' towers (and encoders, where a task has its own) are dropped, and a funnel's
kept tasks must be a prefix of its chain. The result is a real, smaller
:class:`~polytask.model.MultiTaskModel` and the ``plan`` specification that rebuilds it, so
the slim model saves and loads as an ordinary run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from polytask.config import ModelSpec
from polytask.errors import PolytaskError
from polytask.features import Features
from polytask.model import MultiTaskModel, build_heads
from polytask.nn.heads import TransferHead
from polytask.plan.cut import LevelCut, check_chain, cut_plan, kept_encoders, needed
from polytask.plan.schema import Plan

RENORMALISED = "dropped experts' gate weight is renormalised over the kept ones"


@dataclass
class SlimContext:
    """What extraction needs: the loaded model, which tasks stay, and rows to measure on.

    ``keep`` holds task indices in the model's task order. ``rows`` are preprocessed rows for
    measuring gate usage (None when the run's data cannot be read: a cut that needs usage
    then fails with a one-line error saying so).
    """

    model: MultiTaskModel
    spec: ModelSpec
    keep: list[int]
    threshold: float
    rows: Features | None
    batch_size: int = 4096
    rows_problem: str = ""

    @property
    def task_names(self) -> list[str]:
        return self.model.task_names

    def require_rows(self) -> Features:
        if self.rows is None:
            raise PolytaskError(
                f"slimming a {self.spec.arch} model measures gate usage on rows, but "
                f"{self.rows_problem or 'no rows are available'}; pass --data FILE"
            )
        return self.rows


@dataclass
class Extraction:
    """The slim model, the specification that rebuilds it, and what was kept."""

    model: MultiTaskModel
    spec: ModelSpec
    exact: bool
    experts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@torch.inference_mode()
def gate_usage(context: SlimContext) -> list[torch.Tensor | None]:
    """Mean gate weight per (gate, expert) of every level on the rows: [G_l, E_l] each (None
    for levels whose gates have no per-row weights)."""
    rows = context.require_rows()
    model = context.model.eval()
    totals: list[torch.Tensor | None] | None = None
    for start in range(0, len(rows), context.batch_size):
        batch = rows.take(torch.arange(start, min(start + context.batch_size, len(rows))))
        gates = model(batch).gates
        sums = [None if g is None else g.sum(1).double() for g in gates]
        if totals is None:
            totals = sums
        else:
            pairs = zip(totals, sums, strict=True)
            totals = [None if t is None or s is None else t + s for t, s in pairs]
    assert totals is not None
    return [None if total is None else total / len(rows) for total in totals]


class _Chooser:
    """Decides, gate by gate, which experts a cut keeps (see the module docstring), and
    records whether any needed gate lost an expert it may weight."""

    def __init__(self, context: SlimContext) -> None:
        self.context = context
        self.levels = context.model.arch.level_modules
        self.support = [level.gates.fixed_support() for level in self.levels]
        self._usage: list[torch.Tensor | None] | None = None
        self.exact = True

    def usage(self, level: int) -> torch.Tensor:
        if self._usage is None:
            self._usage = gate_usage(self.context)
        used = self._usage[level]
        assert used is not None, "gates without per-row weights have a fixed support"
        return used

    def __call__(self, level: int, gate: int, allowed: list[int]) -> list[int]:
        support = self.support[level]
        if support is not None:
            return list(support[gate])
        weights = self.usage(level)[gate]
        threshold = self.context.threshold
        kept = [e for e in allowed if float(weights[e]) > threshold]
        routed = self.context.model.plan.levels[level].gates.kind == "topk"
        if not kept and not routed:  # top-k gates route among the level's kept experts
            largest = max(float(weights[e]) for e in allowed)
            raise PolytaskError(
                f"--threshold {threshold:g} keeps no expert for {self._reader(level, gate)} "
                f"(its largest mean gate weight is {largest:.3f}, over {len(allowed)} "
                "experts); lower --threshold"
            )
        self.exact = self.exact and len(kept) == len(allowed)
        return kept

    def _reader(self, level: int, gate: int) -> str:
        plan, names = self.context.model.plan, self.context.task_names
        readers = [names[t] for t in self.context.keep if plan.task_gates[t] == gate]
        if level == len(plan.levels) - 1 and readers:
            return f"task '{readers[0]}'"
        return f"gate {gate} of level {level}, which the kept tasks read through the levels above"


def extract(context: SlimContext) -> Extraction:
    """The kept tasks' sub-network (in eval mode) and the plan specification that rebuilds it."""
    model, keep = context.model.eval(), context.keep
    plan = model.plan
    check_chain(plan, keep, context.task_names)
    chooser = _Chooser(context)
    cuts = needed(plan, keep, chooser)
    _check_top_k(plan, cuts, context.threshold)
    slim_plan = cut_plan(plan, cuts, keep)
    slim = _assemble(model, slim_plan, cuts, keep)
    notes = [] if chooser.exact else [RENORMALISED]
    exact = chooser.exact and _routes_unchanged(chooser, slim, cuts)
    if chooser.exact and not exact:
        notes.append("tied router logits: a task's slim route differs from the full model's")
    spec = context.spec.model_copy(
        update={"arch": "plan", "options": slim_plan.model_dump(mode="json")}, deep=True
    )
    return Extraction(slim.eval(), spec, exact, _record(plan, cuts, chooser, context), notes)


def _check_top_k(plan: Plan, cuts: list[LevelCut], threshold: float) -> None:
    """Top-k routing needs at least k experts to route to."""
    for level, cut in zip(plan.levels, cuts, strict=True):
        top_k = getattr(level.gates, "top_k", None)
        if top_k is not None and len(cut.experts) < top_k:
            raise PolytaskError(
                f"--threshold {threshold:g} keeps {len(cut.experts)} expert(s), fewer than "
                f"top_k ({top_k}) that every row routes to; lower --threshold"
            )


def _assemble(
    model: MultiTaskModel, plan: Plan, cuts: list[LevelCut], keep: list[int]
) -> MultiTaskModel:
    """The slim model: the cut network, copies of the kept encoders, the kept towers and
    the cut heads."""
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


def _routes_unchanged(chooser: _Chooser, slim: MultiTaskModel, cuts: list[LevelCut]) -> bool:
    """Fixed routes (top-k by task) pick the same experts after the cut (ties can differ)."""
    for number, (before, cut) in enumerate(zip(chooser.support, cuts, strict=True)):
        after = slim.arch.level_modules[number].gates.fixed_support()
        if before is None or after is None:
            continue
        for new_gate, old_gate in enumerate(cut.gates):
            if sorted(cut.experts[e] for e in after[new_gate]) != sorted(before[old_gate]):
                return False
    return True


def _record(
    plan: Plan, cuts: list[LevelCut], chooser: _Chooser, context: SlimContext
) -> list[dict[str, Any]]:
    """Per level: the kept and dropped experts (indices into the source level), gate counts,
    and each kept task's route where routes are fixed."""
    record = []
    names = context.task_names
    for number, (level, cut) in enumerate(zip(plan.levels, cuts, strict=True)):
        kept = set(cut.experts)
        entry: dict[str, Any] = {
            "level": number,
            "kept": list(cut.experts),
            "dropped": [e for e in range(level.experts.count) if e not in kept],
            "total": level.experts.count,
            "gates_kept": len(cut.gates),
            "gates_total": level.gates.count,
        }
        support = chooser.support[number]
        last = number == len(plan.levels) - 1
        if support is not None and last and level.gates.kind == "topk":
            entry["routes"] = {names[t]: list(support[plan.task_gates[t]]) for t in context.keep}
        record.append(entry)
    return record


def without_unused_experts(model: MultiTaskModel) -> MultiTaskModel:
    """The same function with experts no task can reach in eval removed (task-routed top-k
    experts that no task routes to), every task kept: exact. The model itself when there is
    nothing to remove."""
    plan = model.plan
    supports = [level.gates.fixed_support() for level in model.arch.level_modules]

    def choose(level: int, gate: int, allowed: list[int]) -> list[int]:
        support = supports[level]
        return list(support[gate]) if support is not None else allowed

    keep = list(range(len(model.task_names)))
    cuts = needed(plan, keep, choose)
    pairs = zip(cuts, plan.levels, strict=True)
    if all(len(cut.experts) == level.experts.count for cut, level in pairs):
        return model
    return _assemble(model, cut_plan(plan, cuts, keep), cuts, keep).eval()
