"""A routed mixture of the fine-tuned runs, in the spirit of WEMoE (Tang et al., ICML 2024).

WEMoE turns the MLPs of a merged transformer into mixtures: the task vectors of the chosen
layers become experts, a router reading the layer's input weights them per input, and the
router is trained on unlabelled rows by entropy minimisation; everything else is merged by
task arithmetic. Here the chosen layers are levels of the plan: each expert e of a routed
level becomes K experts, (e, k) = θ_0,e + τ_k,e (run k's fine-tuned expert e), and every gate
of the level becomes a softmax gate over the copies of the experts it allowed, reading what
it read. A gate that allowed several experts starts from its own logits for each copy (so
the mixture starts as the gate's mixture of the runs' average output), plus ``own_bias`` on
the copies of the run that alone holds the gate (a task's own gate, as in MMoE, starts
routing to the experts fine-tuned with it); an identity gate starts uniform. Only the
routers train (Adam, the summed prediction entropy of each run's tasks on its unlabelled
rows); the rest is task arithmetic with ``scaling``.

The difference from WEMoE: it mixes task vectors in weight space, θ(x) = θ_TA + Σ_k r_k(x) τ_k
with an unnormalised two-layer router; this mixes the fine-tuned experts' outputs with a
linear softmax router, which is the same thing for a single linear layer and keeps the
result an ordinary plan of experts and gates. So the merged run predicts, serves, exports
and slims like any run: ``polytask slim MERGED --tasks t --data t_rows.csv`` keeps the experts
task t's rows are routed to; when those are run t's copies, that is task t's fine-tuned
level again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, cast

import torch
from pydantic import Field

from polytask.errors import ConfigError
from polytask.features import Features
from polytask.merge.base import MERGERS, MergeMethod, RowOptions, Split, StateDict
from polytask.model import MultiTaskModel
from polytask.nn.executor import LevelModule
from polytask.plan.schema import Level, Plan, SoftmaxGates

ROUTABLE_GATES = ("identity", "softmax")


def check_routable(plan: Plan, levels: Sequence[int]) -> None:
    """Only levels of plain MLP experts mixed by identity or softmax gates are routed."""
    for number in levels:
        if not 0 <= number < len(plan.levels):
            raise ConfigError(f"--option levels: the plan has levels 0..{len(plan.levels) - 1}")
        level = plan.levels[number]
        if level.experts.kind != "mlp":
            raise ConfigError(
                f"routed_moe routes levels of mlp experts; level {number} has "
                f"{level.experts.kind} experts"
            )
        if level.gates.kind not in ROUTABLE_GATES or level.self_gates is not None:
            raise ConfigError(
                f"routed_moe routes levels whose gates are identity or softmax; level {number} "
                f"has {level.gates.kind} gates{' with self gates' if level.self_gates else ''}"
            )


def route_plan(plan: Plan, levels: Sequence[int], owners: Sequence[str]) -> Plan:
    """The plan with each routed level's expert e copied once per run k (index e K + k,
    owner ``owners[k]``) and its gates made softmax gates over the copies."""
    count = len(owners)
    new_levels = []
    for number, level in enumerate(plan.levels):
        if number not in levels:
            new_levels.append(level)
            continue
        experts = level.experts
        copies = [(e, k) for e in range(experts.count) for k in range(count)]
        reads = None if experts.reads is None else [experts.reads[e] for e, _ in copies]
        new_experts = experts.model_copy(
            update={"count": len(copies), "reads": reads, "owners": [owners[k] for _, k in copies]}
        )
        allowed = [
            [e * count + k for e in members for k in range(count)]
            for members in level.gates.allowed
        ]
        gates = SoftmaxGates(allowed=allowed, reads=level.gates.reads)
        new_levels.append(Level(experts=new_experts, gates=gates, name=level.name))
    return Plan.model_validate(
        {**plan.model_dump(), "levels": [lv.model_dump() for lv in new_levels]}
    )


def route_state(
    merged: StateDict,
    runs: Sequence[StateDict],
    plan: Plan,
    levels: Sequence[int],
    gate_shapes: dict[str, torch.Size],
    gate_owners: dict[int, list[int | None]] | None = None,
    own_bias: float = 0.0,
) -> StateDict:
    """The routed model's state: routed experts stacked from the runs (expert-major), routed
    gates' logit weights repeated for each copy (zeros for identity gates), the rest as
    ``merged``. ``gate_shapes``: the new gates' tensor shapes, by name. ``gate_owners``: per
    routed level, the run that alone holds each gate (None where several do); that run's
    copies start with ``own_bias`` added to their logits."""
    count = len(runs)
    state = dict(merged)
    for number in levels:
        prefix = f"arch.levels.{number}."
        for key in [k for k in merged if k.startswith(prefix + "experts.")]:
            stacked = torch.stack([run[key] for run in runs], dim=1)  # [E, K, ...]
            state[key] = stacked.reshape(-1, *stacked.shape[2:])
        if plan.levels[number].gates.kind == "softmax":
            for name in ("weight", "bias"):
                key = f"{prefix}gates.{name}"
                state[key] = merged[key].repeat_interleave(count, dim=-1)
            owners = (gate_owners or {}).get(number, [])
            bias = state[f"{prefix}gates.bias"]  # [G, 1, E K]
            for gate, owner in enumerate(owners):
                if owner is not None:
                    bias[gate, 0, owner::count] += own_bias
        else:
            for name in ("weight", "bias"):
                key = f"{prefix}gates.{name}"
                state[key] = torch.zeros(gate_shapes[key])
    return state


def shared_levels(plan: Plan, holders: dict[str, torch.Tensor]) -> list[int]:
    """The levels whose experts' weights at least two runs hold (what routing can mix)."""
    levels = []
    for number in range(len(plan.levels)):
        prefix = f"arch.levels.{number}.experts."
        if any(
            key.startswith(prefix) and bool((count >= 2).any()) for key, count in holders.items()
        ):
            levels.append(number)
    return levels


class RoutedOptions(RowOptions):
    split: Split = Field("valid", description="which split of each run's data trains the routers")
    samples: int = Field(1024, ge=1, description="rows per run to draw batches from")
    levels: list[int] | None = Field(
        None, description="plan levels to route (default: every level whose experts two runs share)"
    )
    scaling: float = Field(0.3, description="task-arithmetic λ for everything not routed")
    objective: Literal["entropy", "source"] = Field(
        "entropy",
        description="what the routers minimise: the prediction entropy of each run's tasks on "
        "its rows (WEMoE's), or the cross-entropy of routing a row to the run it came from",
    )
    own_bias: float = Field(
        5.0,
        description="added to the starting logits of a task-owned gate for its own run's "
        "copies (the gate routes to the experts fine-tuned with it)",
    )
    steps: int = Field(300, ge=0, description="Adam steps training the routers")
    lr: float = Field(1e-2, gt=0.0, description="Adam learning rate")
    batch_size: int = Field(16, ge=1, description="rows per run per step")


@MERGERS.register("routed_moe")
class RoutedMoE(MergeMethod):
    """Routed MoE (after WEMoE): the chosen levels' experts from every run side by side,
    mixed per row by routers trained on unlabelled rows; the rest task arithmetic."""

    Options = RoutedOptions
    reads = ("entropy",)
    kind = "routed"


def gate_weights(model: MultiTaskModel, features: Features, level: int) -> torch.Tensor:
    """Level ``level``'s gate weights [G, B, E] for ``features``, differentiable (the model's
    own output reports them detached)."""
    levels = cast(list[LevelModule], list(model.arch.levels))
    x = model.encode(features)
    for number in range(level):
        x = levels[number](x).out
    return levels[level].gates(levels[level].gate_reader(x))


def source_loss(weights: torch.Tensor, slices: Sequence[slice], count: int) -> torch.Tensor:
    """Mean over gates and runs of -log (the weight a gate puts on the copies of the run each
    row came from); weights [G, B, E K], copy e K + k, rows of run k at ``slices[k]``."""
    mass = weights.view(weights.shape[0], weights.shape[1], -1, count).sum(2)  # [G, B, K]
    losses = [-torch.log(mass[:, rows, k].clamp(min=1e-12)).mean() for k, rows in enumerate(slices)]
    return torch.stack(losses).mean()


def train_routers(
    model: torch.nn.Module,
    levels: Sequence[int],
    loss: Callable[[torch.nn.Module], torch.Tensor],
    steps: int,
    lr: float,
) -> list[float]:
    """Adam on the routed levels' gate parameters only (everything else fixed, eval mode),
    minimising ``loss(model)``; returns the loss at every step."""
    prefixes = tuple(f"arch.levels.{number}.gates." for number in levels)
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(prefixes))
        if parameter.requires_grad:
            trainable.append(parameter)
    model.eval()
    history: list[float] = []
    if not trainable or steps == 0:
        return history
    optimizer = torch.optim.Adam(trainable, lr=lr)
    for _ in range(steps):
        value = loss(model)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        history.append(float(value.detach()))
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return history
