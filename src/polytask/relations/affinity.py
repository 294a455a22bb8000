"""How tasks act on each other on one batch: TAG's lookahead affinity and gradient cosines.

Lookahead inter-task affinity (Fifty et al., "Efficiently Identifying Task Groupings for
Multi-Task Learning", NeurIPS 2021): update the shared parameters with task i's gradient
alone and see how task j's loss on the same batch changes,

    Z[i, j] = 1 - L_j(theta_s - lr * g_i, theta_j) / L_j(theta_s, theta_j),

positive when a step on i helps j, negative when it hurts. The update rule is the paper's
plain gradient step with learning rate ``lr`` (the optimizer's current rate by default, as
in TAG; with Adam the optimizer's own step has another scale and direction). Task-specific
parameters stay as they are. The cosine matrix is that of the task gradients g_i on the
shared parameters.

Cost: one forward pass, ONE batched backward pass for all T task gradients
(:func:`polytask.balance.jacobian.task_gradients`), and the T lookahead forward passes
batched into one with ``torch.func.vmap`` over the stacked shared parameters (a loop of
T passes where an operation has no batching rule). Every loss is the training loss as
defined, sample weights included (``data.weight``: ``sum(w * loss) / sum(w)`` over a task's
labelled rows), so the relations are those of the objective the run trains. No optimizer
state, parameter or random stream of the training run is touched: recording relations does
not change the run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.func import functional_call, vmap

from polytask.balance.jacobian import gramian, task_gradients
from polytask.features import Features
from polytask.model import MultiTaskModel
from polytask.tasks import Task
from polytask.train.diagnostics import cosine_matrix
from polytask.train.step import task_losses

# dropout masks in the measurement come from this seed (the run's own generator is left alone)
MEASUREMENT_SEED = 20_211


@dataclass
class BatchRelations:
    """One measurement. affinity [T, T] (row i: the task stepped on, column j: the task
    measured); cosine [T, T]; valid [T, T] bool: pairs measured (both tasks labelled in the
    batch, and a non-zero loss for j)."""

    affinity: torch.Tensor
    cosine: torch.Tensor
    valid: torch.Tensor


def shared_named_parameters(model: MultiTaskModel) -> dict[str, torch.nn.Parameter]:
    """The trained shared parameters by their names in ``model.named_parameters()``."""
    names = {id(p): name for name, p in model.named_parameters()}
    return {names[id(p)]: p for p in model.shared_parameters() if p.requires_grad}


def measure(
    model: MultiTaskModel,
    features: Features,
    labels: dict[str, torch.Tensor],
    tasks: list[Task],
    lr: float,
    weights: dict[str, torch.Tensor] | None = None,
) -> BatchRelations:
    """Affinity and gradient cosines of ``tasks`` on one batch, at the model's weights;
    ``weights``: the sample weights [B] of the tasks that have them."""
    shared = shared_named_parameters(model)
    if not shared:
        raise ValueError("the model has no trained shared parameters to relate tasks through")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MEASUREMENT_SEED)
        with torch.enable_grad():
            losses, present = task_losses(model(features).logits, labels, tasks, weights)
            grads = task_gradients(losses, list(shared.values()), retain_graph=False)
        before = losses.detach()
        with torch.no_grad():
            stacked = {
                name: param.detach() - lr * grad
                for (name, param), grad in zip(shared.items(), grads, strict=True)
            }
            torch.manual_seed(MEASUREMENT_SEED)
            after = lookahead_losses(model, stacked, features, labels, tasks, weights)
    cosine = cosine_matrix(gramian([g.detach() for g in grads]))
    valid = torch.outer(present, present & (before > 0))
    safe = torch.where(before > 0, before, torch.ones_like(before))
    affinity = torch.where(valid, 1.0 - after / safe.unsqueeze(0), torch.zeros_like(after))
    return BatchRelations(affinity, cosine * valid, valid)


def lookahead_losses(
    model: MultiTaskModel,
    stacked: dict[str, torch.Tensor],
    features: Features,
    labels: dict[str, torch.Tensor],
    tasks: list[Task],
    weights: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """[T, T]: row i holds every task's loss (sample-weighted where ``weights`` has the
    task) with the shared parameters ``stacked[.][i]``."""

    def losses_at(params: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = functional_call(model, params, (features,), strict=False).logits
        return task_losses(outputs, labels, tasks, weights)[0]

    try:
        with warnings.catch_warnings():  # ops without a batching rule run per row: still right
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            return vmap(losses_at, randomness="same")(stacked)
    except (RuntimeError, NotImplementedError):  # an op without a batching rule: T passes
        rows = len(next(iter(stacked.values())))
        return torch.stack(
            [losses_at({name: value[i] for name, value in stacked.items()}) for i in range(rows)]
        )
