"""PackNet (Mallya & Lazebnik, CVPR 2018): one network, a disjoint set of weights per task.

The weight tensors of the shared network (every level's expert and gate weights) carry an
owner per entry: 0 while free, k once experience k has kept it. While experience k trains,
the entries owned before stay exactly as they are (:class:`polytask.train.fixed.
FixedEntries`); the free ones learn. ``retrain_epochs`` before the end, the free entries of
each tensor are pruned: the ``1 - prune`` share of largest magnitude becomes experience k's,
the rest are set to zero and stay free for later experiences, and the remaining epochs
retrain experience k's own entries with everything else held. Biases and input layers train
in the first experience only; each task's tower is its own.

Task t of experience k then computes with the entries owned by experiences 1..k (later
ones at zero), so learning a new task never changes an old task's outputs. The run saves
that as an ordinary model: the shared levels once per experience, each copy holding its
experience's sub-network (:func:`polytask.plan.grow.replicate`), so ``polytask slim --tasks
t`` cuts out exactly task t's sub-network. The compact network and the owners are kept in
the run's strategy state for the next growth.
"""

from __future__ import annotations

import copy
import json
from typing import cast

import torch
from pydantic import Field
from torch import nn

from polytask.config import ModelSpec
from polytask.errors import ConfigError
from polytask.grow.strategies.base import (
    STRATEGIES,
    ExperienceContext,
    Strategy,
    StrategyOptions,
    Tensors,
)
from polytask.model import MultiTaskModel, model_from_plan
from polytask.nn.blocks import parts
from polytask.nn.executor import PlanNetwork
from polytask.plan.cut import cut_plan, needed
from polytask.plan.grow import replicate
from polytask.plan.schema import Plan
from polytask.train.fixed import FixedEntries
from polytask.train.hooks import StepHooks

WEIGHTS, OWNER = "weights.", "owner."


class PackNetOptions(StrategyOptions):
    prune: float = Field(
        0.5, gt=0.0, lt=1.0, description="share of each experience's free weights pruned"
    )
    retrain_epochs: int = Field(
        1, ge=0, description="epochs after pruning that retrain the kept weights"
    )


def prunable(model: MultiTaskModel) -> list[str]:
    """The shared network's weight tensors (levels' expert and gate weights, not biases)."""
    return [
        name for name, p in model.named_parameters() if name.startswith("arch.") and p.dim() >= 2
    ]


def prune_free(parameter: torch.Tensor, owner: torch.Tensor, share: float, experience: int) -> None:
    """Of the free entries (owner 0), give the ``1 - share`` of largest magnitude to
    ``experience`` and set the others to zero (they stay free)."""
    free = (owner == 0).reshape(-1)
    count = int(free.sum())
    keep = round((1.0 - share) * count)
    flat_owner = owner.reshape(-1)
    with torch.no_grad():
        values = parameter.detach().reshape(-1)
        positions = free.nonzero().flatten()
        order = values[positions].abs().argsort(descending=True, stable=True)
        kept, dropped = positions[order[:keep]], positions[order[keep:]]
        flat_owner[kept] = experience
        parameter.view(-1)[dropped] = 0.0


class Packing(StepHooks):
    """Holds the weights other experiences own; prunes this experience's at ``prune_at``."""

    def __init__(
        self,
        model: MultiTaskModel,
        owners: Tensors,
        experience: int,
        options: PackNetOptions,
        prune_at: int,
    ) -> None:
        self.owners, self.experience, self.options = owners, experience, options
        self.prune_at, self.pruned = prune_at, False
        self.fixed = FixedEntries(model, {name: owner != 0 for name, owner in owners.items()})

    def before_update(self, model) -> None:
        self.fixed.before_update(model)

    def after_update(self, model) -> None:
        self.fixed.after_update(model)

    def end_epoch(self, model, epoch: int) -> bool:
        if epoch == self.prune_at:
            self.prune(model)
        return True  # every epoch changes what is held: keep the last epoch's weights

    def prune(self, model) -> None:
        parameters = dict(model.named_parameters())
        for name, owner in self.owners.items():
            prune_free(parameters[name], owner, self.options.prune, self.experience)
        held = {name: owner != self.experience for name, owner in self.owners.items()}
        self.fixed.hold(model, held)
        self.pruned = True

    def finish(self, model, folder) -> None:
        if not self.pruned:  # no retraining epochs: prune once training is over
            self.prune(model)


@STRATEGIES.register("packnet")
class PackNet(Strategy):
    """PackNet: prune, then retrain; each experience keeps a disjoint set of weights."""

    Options = PackNetOptions
    summary = "PackNet: per-experience weight masks by pruning; old outputs unchanged"

    def __init__(self, options: StrategyOptions) -> None:
        super().__init__(options)
        self.owners: Tensors = {}
        self.experience_of: dict[str, int] = {}  # task -> experience (1-based)
        self.compact: MultiTaskModel | None = None
        self.hooks: Packing | None = None

    @property
    def opts(self) -> PackNetOptions:
        assert isinstance(self.options, PackNetOptions)
        return self.options

    def frozen(self, context: ExperienceContext) -> list[str]:
        return sorted(name for name in context.origins if name not in self.owners)

    def begin(self, context: ExperienceContext) -> StepHooks | None:
        if context.model.plan.encoders == "per_task":
            raise ConfigError("packnet: every task of this model has its own network already")
        back = {old: new for new, old in context.origins.items()}
        if context.old_tasks and not self.owners:
            raise ConfigError(
                "strategy packnet needs the run's weights split by experience (a run trained "
                "or grown with packnet, e.g. by polytask stream); this run's weights all "
                "serve its old tasks"
            )
        self.owners = {back[name]: owner for name, owner in self.owners.items() if name in back}
        if not self.owners:
            self.owners = {
                name: torch.zeros_like(p, dtype=torch.int16)
                for name, p in context.model.named_parameters()
                if name in prunable(context.model)
            }
        experience = 1 + max(self.experience_of.values(), default=0)
        for name in context.new:
            self.experience_of[name] = experience
        prune_at = context.train.epochs - self.opts.retrain_epochs
        self.hooks = Packing(context.model, self.owners, experience, self.opts, prune_at)
        return self.hooks

    def end(self, model: MultiTaskModel, context: ExperienceContext) -> None:
        self.compact = model

    def export(self, model: MultiTaskModel, context: ExperienceContext) -> MultiTaskModel:
        return materialise(model, self.owners, [self.experience_of[n] for n in model.task_names])

    def state(self) -> Tensors:
        assert self.compact is not None
        weights = {WEIGHTS + k: v for k, v in self.compact.state_dict().items()}
        return {**weights, **{OWNER + k: v for k, v in self.owners.items()}}

    def meta(self) -> dict[str, str]:
        assert self.compact is not None
        return {
            "plan": self.compact.plan.model_dump_json(),
            "experience_of": json.dumps(self.experience_of),
        }

    def load_state(self, state: Tensors, meta: dict[str, str]) -> None:
        self.owners = {k[len(OWNER) :]: v for k, v in state.items() if k.startswith(OWNER)}
        self.weights = {k[len(WEIGHTS) :]: v for k, v in state.items() if k.startswith(WEIGHTS)}
        self.experience_of = json.loads(meta["experience_of"])
        self.plan = Plan.model_validate_json(meta["plan"])

    def resume(self, model: MultiTaskModel, spec: ModelSpec) -> MultiTaskModel | None:
        """The compact network the run's saved copies were made from."""
        if not self.owners:
            return None
        dims = list(model.towers.out_dims)
        encoders = iter(copy.deepcopy(list(model.encoders)))
        compact = model_from_plan(self.plan, spec, dims, model.task_names, lambda: next(encoders))
        compact.load_state_dict(self.weights)
        self.compact = compact
        return compact


def materialise(model: MultiTaskModel, owners: Tensors, experience_of: list[int]) -> MultiTaskModel:
    """``model`` as one sub-network per experience: task t computes with the entries owned by
    experiences 1..experience_of[t] (later ones zero), each copy a block of its own."""
    copies = max(experience_of)
    plan = replicate(model.plan, copies, [e - 1 for e in experience_of])
    network = PlanNetwork(plan, model.arch.in_dim)
    for experience in range(1, copies + 1):
        masked = copy.deepcopy(model.arch)
        with torch.no_grad():
            for name, parameter in masked.named_parameters():
                owner = owners.get(f"arch.{name}")
                if owner is not None:
                    parameter.mul_(((owner >= 1) & (owner <= experience)).to(parameter.dtype))
        for target, source in zip(network.levels, masked.levels, strict=True):
            pairs = [(target.experts, source.experts), (target.gates, source.gates)]
            for new, old in cast(list[tuple[nn.Module, nn.Module]], pairs):
                blocks = parts(old)
                for index, block in enumerate(blocks):
                    parts(new)[(experience - 1) * len(blocks) + index].load_state_dict(
                        block.state_dict()
                    )
    keep = list(range(plan.num_tasks))
    cuts = needed(plan, keep, lambda level, gate, allowed: allowed)
    trimmed = cut_plan(plan, cuts, keep)
    return MultiTaskModel(
        copy.deepcopy(model.encoders),
        network.cut(cuts, trimmed),
        copy.deepcopy(model.towers),
        list(model.task_names),
        copy.deepcopy(model.heads),
    ).train(model.training)
