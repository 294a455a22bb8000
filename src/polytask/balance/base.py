"""The contract every balancing method meets.

A method declares what it needs (``needs``): only the per-task losses, per-task gradients on
the shared parameters, their Gramian, or gradients at the shared representation. The training
step provides exactly that in a :class:`StepContext` and calls :meth:`Balancer.backward`,
which leaves the combined gradient in ``.grad`` and returns the task weights it used (for
logging). A balancer knows nothing about files, data loaders or the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import torch

from polytask.registry import Registry


class Need(str, Enum):
    LOSSES = "losses"
    SHARED_GRADS = "shared_grads"
    GRAMIAN = "gramian"
    REPRESENTATION_GRADS = "representation_grads"


@dataclass
class StepContext:
    """What the training step hands a balancer.

    present: [T] bool, True where the batch holds at least one label of the task; absent tasks
    must get no weight and no gradient. static_weights: [T] the config's per-task weights.
    shared_params / representation are filled only when the method asks for them.
    extra_loss: an architecture's auxiliary term (load balancing, calibration, ...), added to
    the objective unweighted; it is not a task and is never balanced.
    """

    present: torch.Tensor
    static_weights: torch.Tensor
    step: int
    shared_params: list[torch.nn.Parameter] = field(default_factory=list)
    representation: torch.Tensor | None = None
    extra_loss: torch.Tensor | None = None


class Balancer:
    """Base class: turns per-task losses [T] into one backward pass."""

    needs: ClassVar[frozenset[Need]] = frozenset({Need.LOSSES})
    registry_name: ClassVar[str]

    def __init__(self, num_tasks: int, **options: Any) -> None:
        if options:
            raise TypeError(f"unexpected option(s): {', '.join(sorted(options))}")
        self.num_tasks = num_tasks

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        """Accumulate the combined gradient; return the [T] weights used (detached)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Learned or running state, saved in checkpoints so that resume is exact."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


BALANCERS: Registry[Balancer] = Registry("balancing method")
