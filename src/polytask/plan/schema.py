"""An architecture as data: levels of experts, the gates that mix them, towers and heads.

Every sharing architecture in polytask is written as one :class:`Plan`. The plan is plain,
validated data (no torch): it says how many experts each level has and what each reads, which
experts each gate may weight and how, which gate each task's tower reads, and what happens
after the towers. Everything that needs to know the architecture reads the plan instead of
inspecting modules: the executor that trains it (:mod:`polytask.nn.executor`), the lean
serving form, slimming (which experts and gates a task's path needs), export, and growing a
model with new tasks.

A level takes R input representations (the encoder output at the first level, or the
outputs of the level below) and returns one output per gate::

    expert e reads input  experts.reads[e]   (None: every expert reads the one shared input)
    gate   g reads input  gates.reads[g]     (likewise) and weights experts gates.allowed[g]
    output g = mixture of the experts gate g allows, by gate g's weights
               (+ HoME's self-gated residual over self_gates[g], when given)

The first level's inputs are the encoder outputs: one shared encoder (``reads`` None) or one
encoder per task (``encoders: per_task``; expert e then reads encoder ``reads[e]``). Task t's
tower reads output ``task_gates[t]`` of the last level.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

Indices = list[NonNegativeInt]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------- experts
class _ExpertsBase(_Strict):
    count: int = Field(ge=1, description="experts in this level")
    hidden: list[Annotated[int, Field(ge=1)]] = Field(
        min_length=1, description="each expert's layer widths; the last is its output width"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after hidden activations")
    reads: Indices | None = Field(
        None, description="per expert, which input it reads; None: all read the shared input"
    )
    owners: list[str] | None = Field(
        None,
        description="per expert, who it serves ('shared', 'task:<t>', 'group:<g>'); "
        "for reports, growing and merging; does not change the computation",
    )
    blocks: list[Annotated[int, Field(ge=1)]] | None = Field(
        None,
        description="sizes of the consecutive groups of experts computed as separate banks "
        "(a grown level: the old bank, then each growth's experts); None: one bank",
    )

    @property
    def out_dim(self) -> int:
        return self.hidden[-1]


class MLPExperts(_ExpertsBase):
    """ReLU MLPs, all experts of the level computed as one fused bank."""

    kind: Literal["mlp"] = "mlp"


class NormedExperts(_ExpertsBase):
    """HoME's experts: every layer is linear -> per-expert normalisation -> Swish, optionally
    behind per-expert low-rank feature gates ``x * 2 sigmoid(x A_e B_e)``."""

    kind: Literal["normed"] = "normed"
    norm: Literal["batch", "layer"] = "batch"
    feature_gate_rank: int = Field(0, ge=0, description="0: no feature gates")


class TaskBottomExperts(_ExpertsBase):
    """DTRN-style task-specific bottoms: expert t is task t's squeeze-excitation feature gate,
    a shared transform with a hypernetwork-generated low-rank correction, and an MLP whose
    weights all experts share (see :class:`polytask.nn.task_bottom.TaskBottomBank`)."""

    kind: Literal["task_bottom"] = "task_bottom"
    se_hidden: int = Field(16, ge=1)
    task_embedding_dim: int = Field(8, ge=1)
    hyper_rank: int = Field(4, ge=1)
    transform_dim: int | None = Field(None, ge=1)


ExpertsSpec = Annotated[MLPExperts | NormedExperts | TaskBottomExperts, Field(discriminator="kind")]


# ---------------------------------------------------------------------- gates
class GateBlock(_Strict):
    """Consecutive gates computed as one bank over the level's experts ``start`` up to (not
    including) ``experts``."""

    count: int = Field(ge=1, description="gates in the block")
    experts: int = Field(ge=1, description="the block's gates weight among experts below this")
    start: int = Field(0, ge=0, description="and from this one on")


class _GatesBase(_Strict):
    allowed: list[Indices] = Field(
        min_length=1, description="per gate, the experts of this level it may weight"
    )
    reads: Indices | None = Field(
        None, description="per gate, which input its logits read; None: the shared input"
    )
    blocks: list[GateBlock] | None = Field(
        None,
        description="consecutive groups of gates computed as separate banks, each over a "
        "prefix of the experts (a grown level: the old gates over the old experts, then each "
        "growth's gates); None: one bank over every expert",
    )

    @property
    def count(self) -> int:
        return len(self.allowed)


class IdentityGates(_GatesBase):
    """Output g is expert ``allowed[g][0]`` itself (no parameters): shared-bottom's single
    bottom, the per-task bottoms of single-task and funnel models."""

    kind: Literal["identity"] = "identity"


class SoftmaxGates(_GatesBase):
    """Per-row softmax over the allowed experts of a linear map of the gate's input
    (MMoE, OMoE, CGC/PLE and HoME gates)."""

    kind: Literal["softmax"] = "softmax"


class FixedGates(_GatesBase):
    """A learned table of non-negative weights per gate, the same for every row, renormalised
    over the allowed experts."""

    kind: Literal["fixed"] = "fixed"


class StitchGates(_GatesBase):
    """Cross-stitch units: output g = sum_e alpha[g, e] expert_e, alpha learned and
    unconstrained, initialised with ``init_self`` on the diagonal."""

    kind: Literal["stitch"] = "stitch"
    init_self: float = Field(0.9, gt=0.0, le=1.0)


class DSelectGates(_GatesBase):
    """DSelect-k (Hazimeh et al. 2021): k binary-encoded selectors per gate, static or per
    row. ``source_experts``/``columns`` let a slimmed gate keep its selectors over the pool it
    was trained on while reading (and renormalising over) the kept experts only."""

    kind: Literal["dselect"] = "dselect"
    k: int = Field(2, ge=1)
    gamma: float = Field(1.0, gt=0.0)
    per_example: bool = False
    entropy_reg: float = Field(0.0, ge=0.0)
    source_experts: int | None = Field(None, ge=1)
    columns: Indices | None = None


class TopKGates(_GatesBase):
    """Sparse top-k routing (task-level MoE): routed by a learned [G, E] table (``task``) or
    by a linear router per row (``row``); only the chosen experts run on a row, among the
    gate's allowed ones. Training adds the Switch load-balancing term and minus the
    task-expert mutual information."""

    kind: Literal["topk"] = "topk"
    top_k: int = Field(2, ge=1)
    routing: Literal["task", "row"] = "task"
    noise: float = Field(1.0, ge=0.0)
    balance_weight: float = Field(0.01, ge=0.0)
    mi_weight: float = Field(0.01, ge=0.0)


GatesSpec = Annotated[
    IdentityGates | SoftmaxGates | FixedGates | StitchGates | DSelectGates | TopKGates,
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------------- heads
class PlainHeads(_Strict):
    """Each task's tower output is its logits."""

    kind: Literal["plain"] = "plain"


class ChainHeads(_Strict):
    """ESMM: along ``chain`` (task indices, funnel order) the k-th task's logit becomes the
    logit of the product of the chain's conditional probabilities up to k."""

    kind: Literal["chain"] = "chain"
    chain: Indices = Field(min_length=2)


class TransferHeads(_Strict):
    """AITM: along ``chain`` each tower's last representation attends over its own and the
    information transferred from the previous step; a calibrator penalises a later step
    predicted as more likely than an earlier one."""

    kind: Literal["transfer"] = "transfer"
    chain: Indices = Field(min_length=2)
    calibration_weight: float = Field(0.6, ge=0.0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


HeadsSpec = Annotated[PlainHeads | ChainHeads | TransferHeads, Field(discriminator="kind")]


# ---------------------------------------------------------------------- the plan
class Level(_Strict):
    experts: ExpertsSpec
    gates: GatesSpec
    self_gates: list[Indices] | None = Field(
        None,
        description="HoME: per gate, the own experts a sigmoid/softmax self gate adds as a "
        "residual (one equally long list per gate)",
    )
    name: str | None = None


class Plan(_Strict):
    """A whole sharing architecture (see the module docstring)."""

    levels: list[Level] = Field(min_length=1)
    task_gates: Indices = Field(min_length=1, description="per task, the last level's output")
    encoders: Literal["shared", "per_task"] = "shared"
    heads: HeadsSpec = Field(default_factory=PlainHeads)
    balance_at: Literal["input", "experts", "output"] = Field(
        "input",
        description="where fast-mode gradient balancing takes task gradients: the encoder "
        "output, the first level's expert outputs, or the last level's output",
    )
    source: str | None = Field(None, description="the architecture this plan was made from")
    tower_blocks: list[Annotated[int, Field(ge=1)]] | None = Field(
        None,
        description="numbers of consecutive tasks whose towers are computed as separate banks "
        "(a grown model: the old tasks', then each growth's); None: one bank",
    )

    @property
    def num_tasks(self) -> int:
        return len(self.task_gates)

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        inputs: int | None = None  # outputs of the level below; None: the encoder(s)
        for number, level in enumerate(self.levels):
            _check_level(level, number, inputs, self.encoders == "per_task" and number == 0)
            inputs = level.gates.count
        assert inputs is not None
        if max(self.task_gates) >= inputs:
            raise ValueError(f"task_gates: indices must be in 0..{inputs - 1}")
        chain = getattr(self.heads, "chain", None)
        if chain is not None and (max(chain) >= self.num_tasks or len(set(chain)) != len(chain)):
            raise ValueError(f"heads.chain: distinct task indices in 0..{self.num_tasks - 1}")
        if self.tower_blocks is not None and sum(self.tower_blocks) != self.num_tasks:
            raise ValueError(f"tower_blocks must add up to the {self.num_tasks} task(s)")
        if self.encoders == "per_task":
            reads = self.levels[0].experts.reads
            if reads is None or max(reads) >= self.num_tasks:
                raise ValueError(
                    "encoders per_task: levels[0].experts.reads names each expert's encoder "
                    f"(0..{self.num_tasks - 1})"
                )
        return self


def _check_level(level: Level, number: int, inputs: int | None, per_task: bool) -> None:
    """Indices in range and kind-specific rules for one level (``inputs``: outputs below)."""
    where = f"levels[{number}]"
    experts, gates = level.experts, level.gates
    for name, values, count in (
        ("experts.owners", experts.owners, experts.count),
        ("experts.reads", experts.reads, experts.count),
        ("gates.reads", gates.reads, gates.count),
    ):
        if values is not None and len(values) != count:
            raise ValueError(f"{where}: {name} needs {count} entries (got {len(values)})")
    if inputs is not None:
        for name, values in (("experts.reads", experts.reads), ("gates.reads", gates.reads)):
            if values is None or max(values) >= inputs:
                raise ValueError(f"{where}: {name} needs indices in 0..{inputs - 1}")
    elif gates.reads is not None:
        raise ValueError(f"{where}: the first level's gates read the encoder output (no reads)")
    elif experts.reads is not None and not per_task:
        raise ValueError(f"{where}: experts.reads at the first level needs encoders: per_task")
    for index, allowed in enumerate(gates.allowed):
        if not allowed or max(allowed) >= experts.count or len(set(allowed)) != len(allowed):
            raise ValueError(
                f"{where}: gate {index} must allow distinct experts in 0..{experts.count - 1}"
            )
        if gates.kind == "identity" and len(allowed) != 1:
            raise ValueError(f"{where}: an identity gate allows exactly one expert")
        if gates.kind == "topk" and gates.top_k > len(allowed):
            raise ValueError(
                f"{where}: top_k ({gates.top_k}) is more than gate {index}'s {len(allowed)} experts"
            )
    _check_blocks(level, where)
    if gates.kind in ("dselect", "topk") and gates.reads is not None:
        raise ValueError(f"{where}: {gates.kind} gates read the shared input (first level only)")
    if gates.kind == "dselect" and (gates.columns is None) != (gates.source_experts is None):
        raise ValueError(f"{where}: dselect columns and source_experts go together")
    if gates.kind == "dselect" and gates.columns is not None:
        assert gates.source_experts is not None
        if len(gates.columns) != experts.count or max(gates.columns) >= gates.source_experts:
            raise ValueError(f"{where}: dselect columns: one source index per expert")
    if gates.kind in ("dselect", "topk", "stitch", "fixed") and level.self_gates is not None:
        raise ValueError(f"{where}: self_gates go with softmax gates only")
    if level.self_gates is not None:
        sizes = {len(own) for own in level.self_gates}
        if len(level.self_gates) != gates.count or len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"{where}: self_gates needs one equally long list per gate")
        if max(max(own) for own in level.self_gates) >= experts.count:
            raise ValueError(f"{where}: self_gates index out of range")
    if gates.kind == "topk" and experts.kind != "mlp":
        raise ValueError(f"{where}: topk gates route over the experts of an mlp level")
    if per_task and gates.kind != "identity":
        raise ValueError(f"{where}: with per-task encoders the first level's gates are identity")
    if experts.kind == "task_bottom" and experts.reads is not None:
        raise ValueError(f"{where}: task_bottom experts read the shared input")


def _check_blocks(level: Level, where: str) -> None:
    """Expert blocks cover the experts; gate blocks cover the gates, each over a range of
    the experts that starts and ends on expert blocks' boundaries, allowing nothing outside."""
    experts, gates = level.experts, level.gates
    bounds = {0, experts.count}
    if experts.blocks is not None:
        if experts.kind != "mlp":
            raise ValueError(f"{where}: only mlp experts are computed in blocks")
        if sum(experts.blocks) != experts.count:
            raise ValueError(f"{where}: experts.blocks must add up to {experts.count} experts")
        bounds = {0, *(sum(experts.blocks[: i + 1]) for i in range(len(experts.blocks)))}
    if gates.blocks is None:
        return
    if gates.kind == "dselect":
        raise ValueError(f"{where}: dselect gates are computed as one bank")
    if sum(block.count for block in gates.blocks) != gates.count:
        raise ValueError(f"{where}: gates.blocks must add up to {gates.count} gates")
    first = 0
    for block in gates.blocks:
        if block.experts not in bounds or block.start not in bounds or block.start >= block.experts:
            raise ValueError(
                f"{where}: a gate block's experts must start and end on expert blocks' boundaries"
            )
        for members in gates.allowed[first : first + block.count]:
            outside = [e for e in members if not block.start <= e < block.experts]
            if outside:
                raise ValueError(
                    f"{where}: a gate of a block over experts {block.start}..{block.experts - 1}"
                    f" allows expert {outside[0]}"
                )
        first += block.count


def full(count: int) -> Indices:
    """Every index of a pool of ``count``."""
    return list(range(count))
