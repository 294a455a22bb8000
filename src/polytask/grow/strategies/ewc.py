"""Elastic weight consolidation, online (Kirkpatrick et al., PNAS 2017; online form: Schwarz et
al., ICML 2018).

After each experience the diagonal of the empirical Fisher information of its tasks' loss is
estimated at the trained weights theta*, and accumulated: ``F <- decay * F + F_new``. While a
later experience trains, the objective gains

    (lambda / 2) * sum_i F_i (theta_i - theta*_i)^2

over every parameter that existed then. The Fisher diagonal is the mean, over mini-batches of
``fisher_batch`` rows, of the squared gradient of the batch's summed task losses: with one row
per batch (the default) that is the empirical Fisher of the paper; with the training batch
size it is the estimate Avalanche computes (cheaper, and smaller by about that factor where
per-row gradients disagree).

Growing a run that was not trained with EWC needs the old tasks' rows once (``old_data``), to
estimate their Fisher at the run's weights; a run grown with EWC keeps F and theta*.
"""

from __future__ import annotations

import torch
from pydantic import Field

from polytask.grow.data import Rows, sample
from polytask.grow.strategies.base import (
    STRATEGIES,
    ExperienceContext,
    Strategy,
    StrategyOptions,
    Tensors,
    detached,
    old_data_needed,
    renamed,
    rows_loss,
    trainable,
)
from polytask.model import MultiTaskModel
from polytask.tasks import Task
from polytask.train.hooks import StepHooks

FISHER, ANCHOR = "fisher.", "anchor."


class EWCOptions(StrategyOptions):
    lambda_: float = Field(100.0, ge=0.0, alias="lambda", description="penalty strength")
    decay: float = Field(
        1.0, ge=0.0, le=1.0, description="online EWC: weight of the Fisher kept from before"
    )
    fisher_batch: int = Field(1, ge=1, description="rows per gradient in the Fisher estimate")
    fisher_rows: int | None = Field(
        1000, ge=1, description="rows the Fisher is estimated on (None: every row)"
    )


def fisher_diagonal(model: MultiTaskModel, rows: Rows, tasks: list[Task], batch: int) -> Tensors:
    """Mean over mini-batches of ``batch`` rows of the squared gradient of the summed task
    losses, for every trainable parameter (eval mode: no dropout noise)."""
    parameters = trainable(model)
    totals = {name: torch.zeros_like(p) for name, p in parameters.items()}
    was_training = model.training
    model.eval()
    batches = 0
    for start in range(0, len(rows), batch):
        part = rows.take(torch.arange(start, min(start + batch, len(rows))))
        loss = rows_loss(model, part, tasks)
        grads = torch.autograd.grad(loss, list(parameters.values()), allow_unused=True)
        for name, grad in zip(parameters, grads, strict=True):
            if grad is not None:
                totals[name] += grad.detach().square()
        batches += 1
    model.train(was_training)
    return {name: total / max(batches, 1) for name, total in totals.items()}


class EWCPenalty(StepHooks):
    """(lambda / 2) sum F (theta - theta*)^2 over the parameters F and theta* name."""

    def __init__(self, model: MultiTaskModel, fisher: Tensors, anchor: Tensors, strength: float):
        parameters = dict(model.named_parameters())
        self.terms = [
            (parameters[name], fisher[name], anchor[name])
            for name in fisher
            if name in parameters and parameters[name].requires_grad
        ]
        self.strength = strength

    def penalty(self, model, features, output) -> torch.Tensor | None:
        if not self.terms or self.strength == 0:
            return None
        total = torch.stack([((p - a).square() * f).sum() for p, f, a in self.terms]).sum()
        return 0.5 * self.strength * total


@STRATEGIES.register("ewc")
class EWC(Strategy):
    """Online EWC: a quadratic penalty weighted by the accumulated Fisher diagonal."""

    Options = EWCOptions
    summary = "online EWC: Fisher-weighted quadratic penalty towards the old weights"

    def __init__(self, options: StrategyOptions) -> None:
        super().__init__(options)
        self.fisher: Tensors = {}
        self.anchor: Tensors = {}

    @property
    def opts(self) -> EWCOptions:
        assert isinstance(self.options, EWCOptions)
        return self.options

    def begin(self, context: ExperienceContext) -> StepHooks | None:
        self.fisher = _strip(renamed(_prefixed(FISHER, self.fisher), context.origins, FISHER))
        self.anchor = _strip(renamed(_prefixed(ANCHOR, self.anchor), context.origins, ANCHOR))
        if context.old_tasks and not self.fisher:
            if context.old is None:
                raise old_data_needed(self.registry_name, "rows (to estimate the Fisher)")
            old = sample(context.old, self.opts.fisher_rows, context.generator)
            self.fisher = fisher_diagonal(
                context.model, old, context.old_tasks, self.opts.fisher_batch
            )
            self.fisher = {k: v for k, v in self.fisher.items() if k in context.origins}
            self.anchor = {k: v for k, v in detached(context.model).items() if k in self.fisher}
        return EWCPenalty(context.model, self.fisher, self.anchor, self.opts.lambda_)

    def end(self, model: MultiTaskModel, context: ExperienceContext) -> None:
        rows = sample(context.rows, self.opts.fisher_rows, context.generator)
        new = fisher_diagonal(model, rows, context.new_tasks, self.opts.fisher_batch)
        for name, value in new.items():
            kept = self.fisher.get(name)
            self.fisher[name] = value if kept is None else self.opts.decay * kept + value
        self.anchor = {k: v for k, v in detached(model).items() if k in self.fisher}

    def state(self) -> Tensors:
        return {**_prefixed(FISHER, self.fisher), **_prefixed(ANCHOR, self.anchor)}

    def load_state(self, state: Tensors, meta: dict[str, str]) -> None:
        self.fisher = _strip({k: v for k, v in state.items() if k.startswith(FISHER)})
        self.anchor = _strip({k: v for k, v in state.items() if k.startswith(ANCHOR)})


def _prefixed(prefix: str, tensors: Tensors) -> Tensors:
    return {prefix + k: v for k, v in tensors.items()}


def _strip(tensors: Tensors) -> Tensors:
    return {k.split(".", 1)[1]: v for k, v in tensors.items()}
