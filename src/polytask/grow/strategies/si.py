"""Synaptic intelligence (Zenke, Poole & Ganguli, ICML 2017).

While an experience trains, each parameter's contribution to the drop in the objective is
accumulated along the optimizer's path: ``w_i += -g_i * delta_i`` at every update (g the
gradient the update used, delta the step it took). At the end its importance grows by
``w_i / (Delta_i^2 + xi)``, Delta_i the parameter's total move over the experience, and the
anchor theta* becomes the trained weights. Later experiences add

    c * sum_i Omega_i (theta_i - theta*_i)^2

to the objective. The importances are measured while the old tasks train, so SI grows a run
only if that run was trained (or grown) with SI.
"""

from __future__ import annotations

import torch
from pydantic import Field

from polytask.errors import ConfigError
from polytask.grow.strategies.base import (
    STRATEGIES,
    ExperienceContext,
    Strategy,
    StrategyOptions,
    Tensors,
    detached,
    renamed,
    trainable,
)
from polytask.grow.strategies.ewc import EWCPenalty, _prefixed, _strip
from polytask.model import MultiTaskModel
from polytask.train.hooks import StepHooks

IMPORTANCE, ANCHOR = "importance.", "anchor."


class SIOptions(StrategyOptions):
    c: float = Field(1.0, ge=0.0, description="penalty strength")
    xi: float = Field(1e-7, gt=0.0, description="damping of the importance denominator")


class PathIntegral(EWCPenalty):
    """The SI penalty, and the path integral of the current experience's updates."""

    def __init__(
        self, model: MultiTaskModel, importance: Tensors, anchor: Tensors, strength: float
    ) -> None:
        # c * Omega (theta - theta*)^2 is the EWC form with lambda / 2 = c
        super().__init__(model, importance, anchor, 2.0 * strength)
        self.parameters = trainable(model)
        self.path = {name: torch.zeros_like(p) for name, p in self.parameters.items()}
        self.before: Tensors = {}
        self.grads: Tensors = {}

    def before_update(self, model) -> None:
        self.before = {name: p.detach().clone() for name, p in self.parameters.items()}
        self.grads = {
            name: p.grad.detach().clone()
            for name, p in self.parameters.items()
            if p.grad is not None
        }

    def after_update(self, model) -> None:
        for name, grad in self.grads.items():
            step = self.parameters[name].detach() - self.before[name]
            self.path[name] -= grad * step


@STRATEGIES.register("si")
class SI(Strategy):
    """Synaptic intelligence: importances from each parameter's path-integral contribution."""

    Options = SIOptions
    summary = "synaptic intelligence: path-integral importances, quadratic penalty"

    def __init__(self, options: StrategyOptions) -> None:
        super().__init__(options)
        self.importance: Tensors = {}
        self.anchor: Tensors = {}
        self.start: Tensors = {}
        self.hooks: PathIntegral | None = None

    @property
    def opts(self) -> SIOptions:
        assert isinstance(self.options, SIOptions)
        return self.options

    def begin(self, context: ExperienceContext) -> StepHooks | None:
        self.importance = _strip(
            renamed(_prefixed(IMPORTANCE, self.importance), context.origins, IMPORTANCE)
        )
        self.anchor = _strip(renamed(_prefixed(ANCHOR, self.anchor), context.origins, ANCHOR))
        if context.old_tasks and not self.importance:
            raise ConfigError(
                "strategy si needs the importances measured while the old tasks trained; "
                "this run was not trained or grown with si (use ewc with old_data, or lwf)"
            )
        self.start = detached(context.model)
        self.hooks = PathIntegral(context.model, self.importance, self.anchor, self.opts.c)
        return self.hooks

    def end(self, model: MultiTaskModel, context: ExperienceContext) -> None:
        assert self.hooks is not None
        now = detached(model)
        for name, path in self.hooks.path.items():
            moved = (now[name] - self.start[name]).square()
            gained = path / (moved + self.opts.xi)
            kept = self.importance.get(name)
            self.importance[name] = gained if kept is None else kept + gained
        self.anchor = {k: v for k, v in now.items() if k in self.importance}

    def state(self) -> Tensors:
        return {**_prefixed(IMPORTANCE, self.importance), **_prefixed(ANCHOR, self.anchor)}

    def load_state(self, state: Tensors, meta: dict[str, str]) -> None:
        self.importance = _strip({k: v for k, v in state.items() if k.startswith(IMPORTANCE)})
        self.anchor = _strip({k: v for k, v in state.items() if k.startswith(ANCHOR)})
