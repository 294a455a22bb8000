"""Learning without forgetting (Li & Hoiem, ECCV 2016; TPAMI 2018).

The model as it was before the experience is the teacher: on every training batch of the new
data, each old task's head is pulled towards the teacher's output for the same rows, so no
old data is needed. The objective gains

    alpha * sum_{old tasks t} D_t(teacher_t(x), model_t(x))

with D the batch mean of: KL(softmax(z_teacher / T) || softmax(z / T)) for multiclass tasks
(the form Avalanche uses), the same for Bernoulli outputs (binary; per label and averaged
over labels for multilabel), and the squared difference for regression tasks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from polytask.config import TaskKind
from polytask.features import Features
from polytask.grow.strategies.base import (
    STRATEGIES,
    ExperienceContext,
    Strategy,
    StrategyOptions,
    frozen_copy,
)
from polytask.model import ModelOutput, MultiTaskModel
from polytask.tasks import Task
from polytask.train.hooks import StepHooks


class LwFOptions(StrategyOptions):
    alpha: float = Field(1.0, ge=0.0, description="weight of the distillation term")
    temperature: float = Field(2.0, gt=0.0, description="softmax / sigmoid temperature")


def bernoulli_kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(teacher)) || Bernoulli(sigmoid(student))) elementwise, from
    logits (stable: log-sigmoids)."""
    p = torch.sigmoid(teacher)
    return p * (F.logsigmoid(teacher) - F.logsigmoid(student)) + (1 - p) * (
        F.logsigmoid(-teacher) - F.logsigmoid(-student)
    )


def distillation(task: Task, student: torch.Tensor, teacher: torch.Tensor, temperature: float):
    """D_t (see the module docstring), a batch mean; logits [B, out]."""
    if task.kind is TaskKind.multiclass:
        log_p = torch.log_softmax(student / temperature, dim=1)
        q = torch.softmax(teacher / temperature, dim=1)
        return F.kl_div(log_p, q, reduction="batchmean")
    if task.kind is TaskKind.regression:
        return (student - teacher).square().mean()
    return bernoulli_kl(teacher / temperature, student / temperature).mean(1).mean()


class Distillation(StepHooks):
    """alpha * sum over the old tasks of D_t(teacher, model) on the step's rows."""

    def __init__(self, teacher: MultiTaskModel, tasks: list[Task], options: LwFOptions) -> None:
        self.teacher, self.tasks, self.options = teacher, tasks, options

    def targets(self, features: Features) -> list[torch.Tensor]:
        """The teacher's logits for each old task on these rows."""
        with torch.no_grad():
            logits = self.teacher(features).logits
        return [logits[self.teacher.task_names.index(task.name)] for task in self.tasks]

    def penalty(self, model, features: Features, output: ModelOutput) -> torch.Tensor | None:
        if not self.tasks or self.options.alpha == 0:
            return None
        total = output.logits[0].new_zeros(())
        for task, target in zip(self.tasks, self.targets(features), strict=True):
            student = output.logits[model.task_names.index(task.name)]
            total = total + distillation(task, student, target, self.options.temperature)
        return self.options.alpha * total


@STRATEGIES.register("lwf")
class LwF(Strategy):
    """Learning without forgetting: distil the old tasks' outputs on the new data."""

    Options = LwFOptions
    summary = "learning without forgetting: distil old heads on the new data (no old data)"

    def begin(self, context: ExperienceContext) -> StepHooks | None:
        assert isinstance(self.options, LwFOptions)
        return Distillation(frozen_copy(context.model), context.old_tasks, self.options)
