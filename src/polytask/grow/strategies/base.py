"""The contract every continual-learning strategy meets: one interface, a registry, options
declared beside each strategy.

A strategy is a set of hooks on the one training loop (:mod:`polytask.train.hooks`), not a
trainer: for each experience (new tasks with their data) it may

- grow the plan its own way (:meth:`Strategy.grow_plan`; ``expand`` adds experts);
- keep old parameters fixed (:meth:`Strategy.frozen`);
- choose the rows to train on (:meth:`Strategy.training_rows`; ``joint`` adds the old data);
- act inside every step (:meth:`Strategy.begin` returns hooks: a penalty, replayed rows,
  gradient surgery, parameter masks);
- remember what it needs for the next experience once training is over (:meth:`Strategy.end`:
  a Fisher diagonal, importances, a buffer of rows), as named tensors (:meth:`Strategy.state`)
  that a grown run keeps, so it can be grown again.

A strategy knows nothing about files or the command line.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from polytask.config import ModelSpec, TrainSpec, format_validation_error
from polytask.errors import ConfigError
from polytask.grow.data import Rows
from polytask.model import MultiTaskModel
from polytask.plan.grow import add_tasks
from polytask.plan.schema import Plan
from polytask.registry import Registry
from polytask.tasks import Task, task_losses
from polytask.train.hooks import StepHooks

Tensors = dict[str, torch.Tensor]


class StrategyOptions(BaseModel):
    """Options of one strategy (``strategy.options``); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


@dataclass
class ExperienceContext:
    """What a strategy sees of one experience.

    model: the (grown) model at its initial weights, before training. tasks: every task,
    old then new; ``new`` names this experience's. rows: the experience's training rows
    (labelling its tasks). old: rows labelling the old tasks (the old data or a kept sample),
    or None. origins: for each parameter of ``model`` that holds weights of the model before
    growth, that parameter's name there (state kept by name is renamed through it).
    """

    model: MultiTaskModel
    tasks: list[Task]
    new: list[str]
    rows: Rows
    old: Rows | None
    origins: dict[str, str]
    train: TrainSpec
    index: int
    generator: torch.Generator = field(default_factory=torch.Generator)

    @property
    def old_tasks(self) -> list[Task]:
        return [task for task in self.tasks if task.name not in self.new]

    @property
    def new_tasks(self) -> list[Task]:
        return [task for task in self.tasks if task.name in self.new]


class Strategy:
    """One continual-learning strategy (see the module docstring). Subclasses set
    ``Options`` and override what they change; every default leaves training as a plain
    fine-tune."""

    registry_name: ClassVar[str]
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    summary: ClassVar[str] = ""
    trains_on_old_rows: ClassVar[bool] = False  # joint: the old rows are training rows

    def __init__(self, options: StrategyOptions) -> None:
        self.options = options

    @classmethod
    def from_options(cls, raw: dict[str, Any] | None) -> Strategy:
        """Validate ``strategy.options`` and build the strategy."""
        try:
            options = cls.Options.model_validate(raw or {})
        except ValidationError as error:
            message = format_validation_error(error, cls.Options)
            raise ConfigError(f"strategy.options ({cls.registry_name}): {message}") from None
        return cls(options)

    def describe(self) -> dict[str, Any]:
        return {"name": self.registry_name, "options": self.options.model_dump(by_alias=True)}

    # ------------------------------------------------------------------ structure
    def grow_plan(self, plan: Plan, count: int) -> Plan:
        """The plan with ``count`` new tasks: by default a new gate and tower per task over
        the shared experts (parameters shared with the old tasks may move)."""
        return add_tasks(plan, count, experts=0)

    def frozen(self, context: ExperienceContext) -> list[str]:
        """Parameters of ``context.model`` kept fixed while the experience trains."""
        return []

    def initialise(self, grown: MultiTaskModel, base: MultiTaskModel) -> None:
        """Set the starting values of what growth added to ``base`` (``grown``'s new parts);
        by default they keep their fresh initialisation."""

    # ------------------------------------------------------------------ training
    def training_rows(self, context: ExperienceContext) -> list[Rows]:
        """The rows the experience trains on (the experience's own by default)."""
        return [context.rows]

    def begin(self, context: ExperienceContext) -> StepHooks | None:
        """Prepare the experience's training; the hooks that act inside each step."""
        return None

    def end(self, model: MultiTaskModel, context: ExperienceContext) -> None:
        """Training is over (``model`` holds the selected weights): keep what the next
        experience needs."""

    def export(self, model: MultiTaskModel, context: ExperienceContext) -> MultiTaskModel | None:
        """The form of the trained model the run saves and serves, when it is not ``model``
        itself (PackNet: one sub-network per task)."""
        return None

    # ------------------------------------------------------------------ state
    def state(self) -> Tensors:
        """What :meth:`end` kept, as named tensors (saved with a grown run)."""
        return {}

    def meta(self) -> dict[str, str]:
        """Text kept beside :meth:`state` (saved with it)."""
        return {}

    def load_state(self, state: Tensors, meta: dict[str, str]) -> None:
        """Restore :meth:`state` and :meth:`meta` (from a run grown with this strategy)."""

    def resume(self, model: MultiTaskModel, spec: ModelSpec) -> MultiTaskModel | None:
        """The model the next growth starts from, when the run's saved model is an exported
        form of it (see :meth:`export`); None: the run's own model."""
        return None


STRATEGIES: Registry[Strategy] = Registry("strategy")


def old_data_needed(strategy: str, what: str) -> ConfigError:
    """The one error for a strategy that needs old rows none were given for."""
    return ConfigError(
        f"strategy {strategy} needs {what} of the old tasks, and none is given and the run "
        "holds none from an earlier growth: set old_data (the old tasks' rows, or 'run' for "
        "the run's own data)"
    )


def renamed(state: Tensors, origins: dict[str, str], prefix: str) -> Tensors:
    """``state`` entries ``<prefix><old name>`` under the grown model's parameter names;
    entries of parameters that did not survive growth are dropped."""
    back = {old: new for new, old in origins.items()}
    out = {}
    for key, value in state.items():
        if key.startswith(prefix) and key[len(prefix) :] in back:
            out[prefix + back[key[len(prefix) :]]] = value
    return out


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def detached(model: torch.nn.Module) -> Tensors:
    """Every parameter's current value (a copy)."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def frozen_copy(model: MultiTaskModel) -> MultiTaskModel:
    """An eval-mode copy of ``model`` whose parameters take no gradient."""
    snapshot = copy.deepcopy(model).eval()
    for parameter in snapshot.parameters():
        parameter.requires_grad_(False)
    return snapshot


def rows_loss(model: MultiTaskModel, rows: Rows, tasks: list[Task]) -> torch.Tensor:
    """Sum of the per-task mean losses of ``tasks`` on ``rows`` (tasks without labels there
    add 0)."""
    labelled = [task for task in tasks if task.name in rows.labels]
    output = model(rows.features)
    index = [model.task_names.index(task.name) for task in labelled]
    losses, _ = task_losses([output.logits[i] for i in index], rows.labels, labelled)
    return losses.sum()
