"""Cut the sub-network that some tasks use out of a trained multi-task model.

One extractor per architecture family, looked up by ``model.arch`` in :data:`EXTRACTORS`
(architectures without one fall back to :func:`extract_subset`). Each returns a real, smaller
:class:`~polytask.model.MultiTaskModel` built from the same polytask modules plus the
:class:`~polytask.config.ModelSpec` that rebuilds it, so that the slim model saves and loads
as an ordinary run. Other tasks' towers (and encoders, where a task has its own) are always
dropped; what else goes depends on the family:

- ``task_moe`` with task routing: each task uses fixed experts in eval, so the union of the
  kept tasks' experts is the whole sub-network: exact.
- gated mixtures (``mmoe``, ``omoe``, ``cgc``, ``ple``, ``home``, ``dselect_k``, and
  ``slim_moe`` itself): the model is first rewritten, with the same weights, as a level-by-level
  :class:`~polytask.arch.slim_moe.SlimMoE`; then, from the last level down, an expert is kept
  when a gate that a kept task needs gives it a mean weight above ``threshold`` on the
  measured rows, and gates are renormalised over the kept experts. Exact only when no gate
  loses an expert it could weight; otherwise the quality change is measured and reported.
  ``task_moe`` with row routing is pruned the same way (top-k over the kept experts).
- ``shared_bottom``, ``single``, ``task_bottom``, ``esmm``, ``aitm``: the same architecture
  with fewer tasks (per-task parts sliced): exact.
- ``cross_stitch`` and any other architecture with plain towers: wrapped whole in a
  :class:`~polytask.arch.task_subset.TaskSubset` that returns the kept rows: exact.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from polytask.arch import ARCHS, SharingArch
from polytask.arch.aitm import AITM
from polytask.arch.dselect_k import DSelectK
from polytask.arch.esmm import ESMM
from polytask.arch.home import ExpertNorm, FeatureGates, HoME, NormedExperts
from polytask.arch.mmoe import MMoE
from polytask.arch.omoe import OMoE
from polytask.arch.ple import PLE
from polytask.arch.shared_bottom import SharedBottom
from polytask.arch.single import SingleTask
from polytask.arch.slim_moe import (
    DSelectSource,
    SelectedDSelectK,
    SlimGates,
    SlimLevel,
    SlimLevelModule,
    SlimMoE,
    SlimMoEOptions,
    StaticGates,
)
from polytask.arch.task_bottom import TaskBottom
from polytask.arch.task_moe import TaskMoE
from polytask.arch.task_subset import TaskSubsetOptions
from polytask.config import ModelSpec
from polytask.data.preprocess import Features
from polytask.errors import PolytaskError
from polytask.model import MultiTaskModel
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import MaskedGates, SoftmaxGates
from polytask.nn.towers import Towers


@dataclass
class SlimContext:
    """What an extractor needs: the loaded model, which tasks stay, and rows to measure on.

    ``keep`` holds task indices in the model's task order. ``rows`` are preprocessed rows for
    measuring gate usage (None when the run's data cannot be read: extractors that need
    usage then fail with a one-line error saying so).
    """

    model: MultiTaskModel
    spec: ModelSpec
    keep: list[int]
    threshold: float
    rows: Features | None
    batch_size: int = 4096
    rows_problem: str = ""

    @property
    def arch(self) -> SharingArch:
        return self.model.arch  # type: ignore[return-value]

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


Extractor = Callable[[SlimContext], Extraction]
EXTRACTORS: dict[str, Extractor] = {}


def register(*names: str) -> Callable[[Extractor], Extractor]:
    """Register an extractor for one or more ``model.arch`` names."""

    def decorate(function: Extractor) -> Extractor:
        for name in names:
            EXTRACTORS[name] = function
        return function

    return decorate


def extract(context: SlimContext) -> Extraction:
    """Run the extractor for the model's architecture; the result is in eval mode."""
    extractor = EXTRACTORS.get(context.spec.arch, extract_subset)
    extraction = extractor(context)
    extraction.model.eval()
    return extraction


# ---------------------------------------------------------------------- building blocks
@torch.no_grad()
def _put(target: torch.Tensor, value: torch.Tensor) -> None:
    """Copy into a parameter or buffer; a shape mismatch is a bug here, so it raises."""
    if target.shape != value.shape:
        raise RuntimeError(f"slim: shape {tuple(value.shape)} does not fit {tuple(target.shape)}")
    target.copy_(value)


def _index(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


def take_bank(dst: ExpertBank, src: ExpertBank, rows: list[int]) -> None:
    """dst's experts := src's experts ``rows`` (every layer's weights are [E, in, out])."""
    index = _index(rows)
    for target, source in zip(dst.weights, src.weights, strict=True):
        _put(target, source[index])
    for target, source in zip(dst.biases, src.biases, strict=True):
        _put(target, source[index])


def take_towers(towers: Towers, keep: list[int], hidden: list[int], dropout: float) -> Towers:
    """The kept tasks' towers, the fused output layer narrowed to their widest head."""
    out_dims = [towers.out_dims[t] for t in keep]
    in_dim = towers.hidden.in_dim if towers.hidden is not None else towers.output.in_dim
    slim = Towers(in_dim, hidden, out_dims, dropout=dropout)
    if towers.hidden is not None:
        assert slim.hidden is not None
        take_bank(slim.hidden, towers.hidden, keep)
    index, width = _index(keep), max(out_dims)
    _put(slim.output.weights[0], towers.output.weights[0][index, :, :width])
    _put(slim.output.biases[0], towers.output.biases[0][index, :, :width])
    return slim


def assemble(
    context: SlimContext,
    spec: ModelSpec,
    fill: Callable[[nn.Module], None],
    encoders: list[int] | None = None,
) -> MultiTaskModel:
    """The slim model: ``spec``'s architecture for the kept tasks, filled by ``fill``, with
    copies of the encoders (``encoders`` picks per-task ones) and the kept towers."""
    model = context.model
    picked = encoders if encoders is not None else list(range(len(model.encoders)))
    kept_encoders = nn.ModuleList(copy.deepcopy(model.encoders[i]) for i in picked)
    arch = ARCHS.get(spec.arch)(model.encoders[0].out_dim, len(context.keep), spec)
    fill(arch)
    towers = take_towers(model.towers, context.keep, spec.tower_hidden, spec.dropout)
    names = [context.task_names[t] for t in context.keep]
    return MultiTaskModel(kept_encoders, arch, towers, names).eval()


def with_options(spec: ModelSpec, **update: Any) -> ModelSpec:
    """A copy of ``spec`` with fields replaced (options validated when the run is loaded)."""
    return spec.model_copy(update=update, deep=True)


# ---------------------------------------------------------------------- exact: same arch
@register("shared_bottom")
def extract_shared_bottom(context: SlimContext) -> Extraction:
    """One bottom under every tower: keep it, drop the other towers."""
    source: SharedBottom = context.arch  # type: ignore[assignment]

    def fill(arch: nn.Module) -> None:
        arch.load_state_dict(source.state_dict())

    return Extraction(assemble(context, context.spec, fill), context.spec, exact=True)


@register("single")
def extract_single(context: SlimContext) -> Extraction:
    """Independent networks: keep the kept tasks' encoders, bottoms and towers."""
    source: SingleTask = context.arch  # type: ignore[assignment]

    def fill(arch: nn.Module) -> None:
        take_bank(arch.bottoms, source.bottoms, context.keep)

    model = assemble(context, context.spec, fill, encoders=context.keep)
    return Extraction(model, context.spec, exact=True)


@register("task_bottom")
def extract_task_bottom(context: SlimContext) -> Extraction:
    """Per-task feature gates and task embeddings sliced; the shared transform and MLP kept.
    A task's representation reads only its own gate and embedding, so this is exact."""
    source: TaskBottom = context.arch  # type: ignore[assignment]

    def fill(arch: nn.Module) -> None:
        take_bank(arch.gates, source.gates, context.keep)
        arch.mlp.load_state_dict(source.mlp.state_dict())
        state = source.transform.state_dict()
        state["task_embedding"] = state["task_embedding"][_index(context.keep)]
        arch.transform.load_state_dict(state)

    return Extraction(assemble(context, context.spec, fill), context.spec, exact=True)


@register("esmm", "aitm")
def extract_chain(context: SlimContext) -> Extraction:
    """Funnel architectures: a chained task's output needs every earlier step of the chain,
    so the kept chain tasks must be a prefix of the chain; bottoms (and AITM's transfer
    layers, one per step) are sliced and the chain renumbered."""
    source: ESMM | AITM = context.arch  # type: ignore[assignment]
    names, keep = context.task_names, context.keep
    kept_chain = [task for task in source.chain if task in keep]
    needed = source.chain[: len(kept_chain)]
    if kept_chain != needed:
        missing = [names[t] for t in needed if t not in keep]
        raise PolytaskError(
            f"{context.spec.arch}: the chain {[names[t] for t in source.chain]} makes each "
            f"task's output depend on the steps before it; keep {', '.join(missing)} too "
            f"(--tasks {' --tasks '.join(missing)})"
        )
    position = {task: index for index, task in enumerate(keep)}
    chain = [position[task] for task in kept_chain]
    options = dict(context.spec.options)
    if len(chain) >= 2:
        options["chain"] = chain
    elif len(keep) == 1:
        options.pop("chain", None)  # one task: its chain is itself, a plain head
    else:
        # esmm/aitm chain every task when no chain is given, and a chain needs two steps
        raise PolytaskError(
            f"{context.spec.arch}: a slim model keeps either two or more steps of the chain "
            f"{[names[t] for t in source.chain]} or a single task; got {len(chain)} chain "
            f"step(s) among {len(keep)} tasks"
        )
    spec = with_options(context.spec, options=options)
    steps = max(len(chain) - 1, 0)

    def fill(arch: nn.Module) -> None:
        take_bank(arch.bottoms, source.bottoms, keep)
        if isinstance(source, AITM):
            _put(arch.transfer_weight, source.transfer_weight[:steps])
            _put(arch.transfer_bias, source.transfer_bias[:steps])
            arch.attention.load_state_dict(source.attention.state_dict())

    return Extraction(assemble(context, spec, fill), spec, exact=True)


def extract_subset(context: SlimContext) -> Extraction:
    """Any other architecture with one shared encoder and plain towers (cross-stitch among
    them): run it whole inside a ``task_subset`` and keep the kept tasks' rows and towers."""
    source_cls = type(context.arch)
    if source_cls.input_per_task or source_cls.heads is not SharingArch.heads:
        raise PolytaskError(
            f"slimming a {context.spec.arch} model is not supported: it has per-task encoders "
            "or its own heads, and no extractor knows how to cut it"
        )
    options = TaskSubsetOptions(
        source=context.spec.arch,
        source_options=dict(context.spec.options),
        source_tasks=len(context.task_names),
        tasks=list(context.keep),
    )
    spec = with_options(context.spec, arch="task_subset", options=options.model_dump())

    def fill(arch: nn.Module) -> None:
        arch.source.load_state_dict(context.arch.state_dict())

    note = (
        f"{context.spec.arch} mixes every task's computation into every other, so the "
        "architecture is kept whole; only the other tasks' towers are dropped"
    )
    return Extraction(assemble(context, spec, fill), spec, exact=True, notes=[note])


# ---------------------------------------------------------------------- task_moe
@register("task_moe")
def extract_task_moe(context: SlimContext) -> Extraction:
    """Task routing: the kept tasks' experts, exact. Row routing: pruned by gate usage."""
    source: TaskMoE = context.arch  # type: ignore[assignment]
    keep, names = context.keep, context.task_names
    if source.task_logits is None:
        return _prune_row_routed(context, source)
    routes = source.task_experts()
    union = sorted({expert for task in keep for expert in routes[task]})
    spec = with_options(context.spec, num_experts=len(union))

    def fill(arch: nn.Module) -> None:
        take_bank(arch.experts, source.experts, union)
        assert source.task_logits is not None
        _put(arch.task_logits, source.task_logits[_index(keep)][:, _index(union)])

    model = assemble(context, spec, fill)
    slim_routes = model.arch.task_experts()  # type: ignore[operator]
    exact = all([union[e] for e in slim_routes[i]] == routes[task] for i, task in enumerate(keep))
    notes = [] if exact else ["tied router logits: a task's slim route differs from the full"]
    experts = [
        {
            "level": 0,
            "kept": union,
            "total": source.num_experts,
            "routes": {names[task]: routes[task] for task in keep},
        }
    ]
    return Extraction(model, spec, exact=exact, experts=experts, notes=notes)


@torch.inference_mode()
def _task_moe_usage(context: SlimContext, source: TaskMoE) -> torch.Tensor:
    """Mean routing weight per (task, expert) on the rows: [T, E]."""
    rows = context.require_rows()
    model = context.model.eval()
    total = torch.zeros(source.num_tasks, source.num_experts)
    size = context.batch_size
    for start in range(0, len(rows), size):
        source(model.encode(rows.take(torch.arange(start, min(start + size, len(rows))))))
        assert source.last_gate_weights is not None
        total += source.last_gate_weights.sum(1)
    return total / len(rows)


def _prune_row_routed(context: SlimContext, source: TaskMoE) -> Extraction:
    """Row routing: keep experts a kept task routes above ``threshold`` mean weight; the
    router's columns for dropped experts go, so top-k picks among the kept ones."""
    usage = _task_moe_usage(context, source)[_index(context.keep)]  # [T', E]
    kept = [e for e in range(source.num_experts) if bool((usage[:, e] > context.threshold).any())]
    top_k = source.options.top_k
    if len(kept) < top_k:
        raise PolytaskError(
            f"--threshold {context.threshold:g} keeps {len(kept)} expert(s), fewer than "
            f"top_k ({top_k}) that every row routes to; lower --threshold"
        )
    spec = with_options(context.spec, num_experts=len(kept))
    keep, experts, width = _index(context.keep), _index(kept), source.in_dim

    def fill(arch: nn.Module) -> None:
        take_bank(arch.experts, source.experts, kept)
        assert source.router is not None
        weight = source.router.weight.view(source.num_tasks, source.num_experts, width)
        bias = source.router.bias.view(source.num_tasks, source.num_experts)
        _put(arch.router.weight, weight[keep][:, experts].reshape(-1, width))
        _put(arch.router.bias, bias[keep][:, experts].reshape(-1))

    record = [{"level": 0, "kept": kept, "total": source.num_experts}]
    exact = len(kept) == source.num_experts
    return Extraction(assemble(context, spec, fill), spec, exact=exact, experts=record)


# ---------------------------------------------------------------------- gated mixtures
def _allowed(gates: MaskedGates) -> list[list[int]]:
    """Each gate's allowed experts, from the mask a MaskedGates keeps."""
    blocked = gates.blocked[:, 0]  # [G, E]
    return [(~row).nonzero().flatten().tolist() for row in blocked]


def lift(context: SlimContext) -> tuple[SlimMoEOptions, SlimMoE]:
    """The model's gated architecture rewritten as a :class:`SlimMoE` with the same weights
    (the same outputs up to float rounding), so that one procedure prunes every family."""
    arch, num_tasks = context.arch, len(context.task_names)
    if isinstance(arch, SlimMoE):
        return arch.options, arch
    in_dim = context.model.encoders[0].out_dim
    task_gates = list(range(num_tasks))
    extra: dict[str, Any] = {}
    sources: list[tuple[Any, ...]]  # per level: experts, gates, feature gates, self-gated
    if isinstance(arch, MMoE | OMoE):
        pool = arch.experts.num_experts
        one_gate = isinstance(arch, OMoE)
        task_gates = [0] * num_tasks if one_gate else task_gates
        allowed = [list(range(pool))] * (1 if one_gate else num_tasks)
        levels = [
            SlimLevel(experts=list(range(pool)), gates=SlimGates(kind="softmax", allowed=allowed))
        ]
        sources = [(arch.experts, arch.gates, None, None)]
    elif isinstance(arch, PLE):
        levels, sources = [], []
        for number, level in enumerate(arch.levels):
            first = number == 0
            levels.append(
                SlimLevel(
                    experts=list(range(level.experts.num_experts)),
                    owner=None if first else level.owner.tolist(),
                    gates=SlimGates(
                        kind="masked",
                        allowed=_allowed(level.gates),
                        inputs=None if first else list(range(level.gates.num_gates)),
                    ),
                )
            )
            sources.append((level.experts, level.gates, None, None))
    elif isinstance(arch, HoME):
        extra = {
            "expert": "normed",
            "expert_norm": arch.options.expert_norm,  # type: ignore[attr-defined]
            "feature_gate_rank": arch.options.feature_gate_rank,  # type: ignore[attr-defined]
        }
        meta, task = arch.meta, arch.task
        own = task.task_experts
        first_own = task.gates.num_experts - num_tasks * own
        levels = [
            SlimLevel(
                experts=list(range(meta.gates.num_experts)),
                gates=SlimGates(kind="masked", allowed=_allowed(meta.gates)),
            ),
            SlimLevel(
                experts=list(range(task.gates.num_experts)),
                owner=task.owner.tolist(),
                gates=SlimGates(
                    kind="masked", allowed=_allowed(task.gates), inputs=task.gate_input.tolist()
                ),
                self_gates=[
                    list(range(first_own + t * own, first_own + (t + 1) * own))
                    for t in range(num_tasks)
                ],
            ),
        ]
        sources = [
            (meta.experts, meta.gates, meta.feature_gates, None),
            (task.experts, task.gates, task.feature_gates, task),
        ]
    elif isinstance(arch, DSelectK):
        pool = arch.experts.num_experts
        if arch.gates.per_example:
            dselect = DSelectSource(
                source_experts=pool,
                columns=list(range(pool)),
                k=arch.gates.k,
                gamma=arch.gates.gamma,
            )
            gates = SlimGates(
                kind="dselect", allowed=[list(range(pool))] * num_tasks, dselect=dselect
            )
            sources = [(arch.experts, arch.gates, None, None)]
        else:
            with torch.no_grad():
                table = arch.gates(torch.zeros(1, in_dim))[0][:, 0]  # [T, E]: fixed in eval
            support = [row.nonzero().flatten().tolist() for row in table]
            gates = SlimGates(kind="static", allowed=support)
            sources = [(arch.experts, table, None, None)]
        levels = [SlimLevel(experts=list(range(pool)), gates=gates)]
    else:  # pragma: no cover - the registration below lists exactly these families
        raise PolytaskError(f"no gated layout is known for {context.spec.arch}")
    options = SlimMoEOptions(
        source=context.spec.arch, levels=levels, task_gates=task_gates, **extra
    )
    lifted = SlimMoE(
        in_dim, num_tasks, with_options(context.spec, arch="slim_moe", options=options.model_dump())
    )
    for level, (experts, gates, feature_gates, self_gated) in zip(
        lifted.levels, sources, strict=True
    ):
        level.experts.load_state_dict(experts.state_dict())
        if isinstance(level.gates, StaticGates):
            _put(level.gates.table, gates)
        elif isinstance(level.gates, SelectedDSelectK):
            level.gates.gates.load_state_dict(gates.state_dict())
        else:
            level.gates.load_state_dict(gates.state_dict())
        if feature_gates is not None:
            level.feature_gates.load_state_dict(feature_gates.state_dict())
        if self_gated is not None:
            assert level.self_weight is not None and level.self_bias is not None
            _put(level.self_weight, self_gated.self_weight)
            _put(level.self_bias, self_gated.self_bias)
    return options, lifted.eval()


@torch.inference_mode()
def gate_usage(context: SlimContext, arch: SlimMoE) -> list[torch.Tensor]:
    """Mean gate weight per (gate, expert) of every level on the rows: [G_l, E_l] each."""
    rows = context.require_rows()
    encoder_model = context.model.eval()
    totals: list[torch.Tensor] = [
        torch.zeros(len(level.gates.allowed), len(level.experts), dtype=torch.float64)
        for level in arch.options.levels
    ]
    for start in range(0, len(rows), context.batch_size):
        batch = rows.take(torch.arange(start, min(start + context.batch_size, len(rows))))
        arch(encoder_model.encode(batch))
        for total, level in zip(totals, arch.levels, strict=True):
            total += level.last_gate_weights.sum(1).double()
    return [total / len(rows) for total in totals]


@dataclass
class LevelCut:
    """What one level keeps: gates and experts, as indices into that level."""

    gates: list[int]
    experts: list[int]


def plan_cuts(
    options: SlimMoEOptions,
    keep: list[int],
    usage: list[torch.Tensor],
    threshold: float,
    names: list[str],
) -> tuple[list[LevelCut], bool]:
    """From the last level down: the gates the kept tasks need, the experts those gates weight
    above ``threshold`` (plus HoME's self-gated own experts, whose residual has no threshold),
    then the representations below that those experts and gates read. Exact when no needed
    gate loses an expert it may weight."""
    needed = sorted({options.task_gates[t] for t in keep})
    cuts: list[LevelCut] = []
    exact = True
    last = len(options.levels) - 1
    for number in range(last, -1, -1):
        level, weights = options.levels[number], usage[number]
        kept: set[int] = set()
        for gate in needed:
            allowed = level.gates.allowed[gate]
            used = [e for e in allowed if float(weights[gate, e]) > threshold]
            if not used:
                readers = [names[t] for t in keep if options.task_gates[t] == gate]
                who = (
                    f"task '{readers[0]}'"
                    if number == last and readers
                    else f"gate {gate} of level {number}, which the kept tasks read through "
                    "the levels above"
                )
                largest = max(float(weights[gate, e]) for e in allowed)
                raise PolytaskError(
                    f"--threshold {threshold:g} keeps no expert for {who} (its largest mean "
                    f"gate weight is {largest:.3f}, over {len(allowed)} experts); lower "
                    "--threshold"
                )
            kept.update(used)
            if level.self_gates is not None:
                kept.update(level.self_gates[gate])
        exact = exact and all(set(level.gates.allowed[g]) <= kept for g in needed)
        cuts.append(LevelCut(needed, sorted(kept)))
        if number > 0:
            assert level.owner is not None and level.gates.inputs is not None
            needed = sorted(
                {level.owner[e] for e in kept} | {level.gates.inputs[g] for g in needed}
            )
    cuts.reverse()
    return cuts, exact


def cut_options(options: SlimMoEOptions, cuts: list[LevelCut], keep: list[int]) -> SlimMoEOptions:
    """The layout after the cuts, every index renumbered into the kept lists."""
    levels = []
    below: dict[int, int] | None = None  # old gate index -> new, on the level below
    for level, cut in zip(options.levels, cuts, strict=True):
        position = {expert: index for index, expert in enumerate(cut.experts)}
        gates = level.gates
        dselect = None
        if gates.dselect is not None:
            columns = [gates.dselect.columns[e] for e in cut.experts]
            dselect = gates.dselect.model_copy(update={"columns": columns})
        levels.append(
            SlimLevel(
                experts=[level.experts[e] for e in cut.experts],
                owner=None
                if below is None or level.owner is None
                else [below[level.owner[e]] for e in cut.experts],
                gates=SlimGates(
                    kind=gates.kind,
                    allowed=[
                        [position[e] for e in gates.allowed[g] if e in position] for g in cut.gates
                    ],
                    inputs=None
                    if below is None or gates.inputs is None
                    else [below[gates.inputs[g]] for g in cut.gates],
                    dselect=dselect,
                ),
                self_gates=None
                if level.self_gates is None
                else [[position[e] for e in level.self_gates[g]] for g in cut.gates],
            )
        )
        below = {gate: index for index, gate in enumerate(cut.gates)}
    assert below is not None
    return SlimMoEOptions(
        source=options.source,
        expert=options.expert,
        expert_norm=options.expert_norm,
        feature_gate_rank=options.feature_gate_rank,
        levels=levels,
        task_gates=[below[options.task_gates[t]] for t in keep],
    )


def cut_level(dst: SlimLevelModule, src: SlimLevelModule, cut: LevelCut) -> None:
    """Copy the kept gates' and experts' weights of one level."""
    gates, experts = _index(cut.gates), _index(cut.experts)
    if isinstance(src.experts, ExpertBank):
        take_bank(dst.experts, src.experts, cut.experts)  # type: ignore[arg-type]
    else:
        assert isinstance(src.experts, NormedExperts) and isinstance(dst.experts, NormedExperts)
        for target, source in zip(dst.experts.layers, src.experts.layers, strict=True):
            take_bank(target, source, cut.experts)
        for target_norm, source_norm in zip(dst.experts.norms, src.experts.norms, strict=True):
            _take_norm(target_norm, source_norm, experts)
    if isinstance(src.feature_gates, FeatureGates):
        assert isinstance(dst.feature_gates, FeatureGates)
        _put(dst.feature_gates.down, src.feature_gates.down[experts])
        _put(dst.feature_gates.up, src.feature_gates.up[experts])
    source_gates, target_gates = src.gates, dst.gates
    if isinstance(source_gates, SoftmaxGates):
        assert isinstance(target_gates, SoftmaxGates)
        linear, shape = source_gates.linear, (source_gates.num_gates, source_gates.num_experts)
        width = linear.in_features
        _put(
            target_gates.linear.weight,
            linear.weight.view(*shape, width)[gates][:, experts].reshape(-1, width),
        )
        _put(target_gates.linear.bias, linear.bias.view(*shape)[gates][:, experts].reshape(-1))
    elif isinstance(source_gates, MaskedGates):
        assert isinstance(target_gates, MaskedGates)
        _put(target_gates.weight, source_gates.weight[gates][:, :, experts])
        _put(target_gates.bias, source_gates.bias[gates][:, :, experts])
    elif isinstance(source_gates, StaticGates):
        assert isinstance(target_gates, StaticGates)
        _put(target_gates.table, source_gates.table[gates][:, experts])
    else:
        assert isinstance(source_gates, SelectedDSelectK)
        assert isinstance(target_gates, SelectedDSelectK)
        rows = source_gates.gates.num_tasks
        for name in ("z_logits", "w_logits"):
            source, target = getattr(source_gates.gates, name), getattr(target_gates.gates, name)
            width = source.in_features
            _put(target.weight, source.weight.view(rows, -1, width)[gates].reshape(-1, width))
            _put(target.bias, source.bias.view(rows, -1)[gates].reshape(-1))
    if src.self_weight is not None:
        assert dst.self_weight is not None and src.self_bias is not None
        _put(dst.self_weight, src.self_weight[gates])
        _put(dst.self_bias, src.self_bias[gates])  # type: ignore[arg-type]


def _take_norm(dst: ExpertNorm, src: ExpertNorm, experts: torch.Tensor) -> None:
    """Per-expert affine parameters and (batch norm) running statistics [E * D]."""
    _put(dst.weight, src.weight[experts])
    _put(dst.bias, src.bias[experts])
    if src.kind == "batch":
        count = src.weight.shape[0]
        for name in ("running_mean", "running_var"):
            stats = getattr(src, name).view(count, -1)[experts].reshape(-1)
            _put(getattr(dst, name), stats)


@register("mmoe", "omoe", "cgc", "ple", "home", "dselect_k", "slim_moe")
def extract_gated(context: SlimContext) -> Extraction:
    """Gated mixtures: rewrite as SlimMoE, measure gate usage, cut, renormalise."""
    options, lifted = lift(context)
    usage = gate_usage(context, lifted)
    cuts, exact = plan_cuts(options, context.keep, usage, context.threshold, context.task_names)
    slim_options = cut_options(options, cuts, context.keep)
    spec = with_options(
        context.spec,
        arch="slim_moe",
        num_experts=sum(len(cut.experts) for cut in cuts),
        options=slim_options.model_dump(),
    )

    def fill(arch: nn.Module) -> None:
        for target, source, cut in zip(arch.levels, lifted.levels, cuts, strict=True):
            cut_level(target, source, cut)

    record = []
    for number, (level, cut) in enumerate(zip(options.levels, cuts, strict=True)):
        kept = set(cut.experts)
        record.append(
            {
                "level": number,
                "kept": [level.experts[e] for e in cut.experts],
                "dropped": [e for i, e in enumerate(level.experts) if i not in kept],
                "total": len(level.experts),
                "gates_kept": len(cut.gates),
                "gates_total": len(level.gates.allowed),
            }
        )
    notes = [] if exact else ["dropped experts' gate weight is renormalised over the kept ones"]
    return Extraction(assemble(context, spec, fill), spec, exact=exact, experts=record, notes=notes)
