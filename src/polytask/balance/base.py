"""The contract every balancing method meets.

A method declares what it needs (``needs``): only the per-task losses, per-task gradients on
the shared parameters, their Gramian, or gradients at the shared representation. The training
step provides exactly that in a :class:`StepContext` and calls :meth:`Balancer.backward`,
which leaves the combined gradient in ``.grad`` and returns the task weights it used (for
logging). A balancer knows nothing about files, data loaders or the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Literal

import torch

from polytask.balance.jacobian import gramian, task_gradients
from polytask.errors import PolytaskError
from polytask.registry import Registry


class Need(str, Enum):
    LOSSES = "losses"
    SHARED_GRADS = "shared_grads"
    GRAMIAN = "gramian"
    REPRESENTATION_GRADS = "representation_grads"


GradientSource = Literal["parameters", "representation"]


@dataclass
class StepContext:
    """What the training step hands a balancer.

    present: [T] bool, True where the batch holds at least one label of the task; absent tasks
    must get no weight and no gradient. static_weights: [T] the config's per-task weights.
    shared_params / representation are filled only when the method asks for them.
    extra_loss: an architecture's auxiliary term (load balancing, calibration, ...), added to
    the objective unweighted; it is not a task and is never balanced.
    recompute_losses: runs the model on the same batch again and returns fresh losses [T]
    with a new graph (for methods that evaluate at perturbed weights, e.g. sharpness-aware).
    """

    present: torch.Tensor
    static_weights: torch.Tensor
    step: int
    shared_params: list[torch.nn.Parameter] = field(default_factory=list)
    representation: torch.Tensor | None = None
    extra_loss: torch.Tensor | None = None
    recompute_losses: Callable[[], torch.Tensor] | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def gradients(self, losses: torch.Tensor, source: GradientSource) -> list[torch.Tensor]:
        """Per-task gradient blocks [T, ...] on the shared parameters (exact) or on the shared
        representation (the MGDA-UB estimate), computed once per step."""
        key = f"gradients:{source}"
        if key not in self._cache:
            if source == "representation":
                if self.representation is None or not self.representation.requires_grad:
                    raise PolytaskError(
                        "gradient balancing in fast mode needs a shared representation that "
                        "depends on trained parameters, and this model has none (a "
                        "parameter-free encoder under an architecture without one); "
                        "set balance.options.mode: exact"
                    )
                inputs: list[torch.Tensor] = [self.representation]
            else:
                inputs = [p for p in self.shared_params if p.requires_grad]
            self._cache[key] = task_gradients(losses, inputs)
        return self._cache[key]

    def gramian(self, losses: torch.Tensor, source: GradientSource) -> torch.Tensor:
        """The [T, T] Gramian of the per-task gradients from ``source``."""
        key = f"gramian:{source}"
        if key not in self._cache:
            self._cache[key] = gramian(self.gradients(losses, source))
        return self._cache[key]

    def objective(self, weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """``sum_t w_t L_t`` plus the architecture's auxiliary term: its gradient is the
        weighted combination of the task gradients, on every parameter."""
        total = (weights.detach() * losses).sum()
        return total + self.extra_loss if self.extra_loss is not None else total


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

    def describe(self) -> dict[str, Any]:
        """What ran, for the run summary (method, and mode where the method has modes)."""
        return {"method": self.registry_name}

    def parameters(self) -> list[torch.nn.Parameter]:
        """The method's own learnable parameters (e.g. uncertainty weighting's log-variances).

        The trainer optimises them with the model, as a second parameter group without weight
        decay; their values belong in :meth:`state_dict` too. An empty list by default.
        """
        return []

    def end_epoch(self) -> None:
        """Called by the trainer after each training epoch, before the checkpoint: for methods
        defined on per-epoch statistics (e.g. DWA). Does nothing by default."""

    def state_dict(self) -> dict[str, Any]:
        """Learned or running state, saved in checkpoints so that resume is exact."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


BALANCERS: Registry[Balancer] = Registry("balancing method")


class GramianWeighting(Balancer):
    """A method whose update is ``sum_t w_t g_t`` with weights computed from the Gramian of
    the task gradients (MGDA, UPGrad, IMTL-G, CAGrad, Nash-MTL, Aligned-MTL, PCGrad, ...).

    The maths lives in :meth:`weights_from_gramian`, on the present tasks only; this base
    decides where the Gramian comes from (``mode``) and how often it is refreshed:

    - ``mode: exact``: gradients on every shared parameter, from one batched backward pass;
    - ``mode: fast``: gradients at the shared representation (the encoder output; MGDA-UB's
      estimate), which costs only the part of the graph above it;
    - ``every: k``: recompute the weights every k steps and reuse them in between.

    The combined gradient is then one ordinary backward of ``sum_t w_t L_t``, so task-specific
    parameters get exactly their weighted gradient too.
    """

    needs = frozenset({Need.GRAMIAN})
    default_mode: ClassVar[Literal["exact", "fast"]] = "fast"

    def __init__(
        self,
        num_tasks: int,
        mode: Literal["exact", "fast"] | None = None,
        every: int = 1,
        **options: Any,
    ) -> None:
        super().__init__(num_tasks, **options)
        mode = mode or self.default_mode
        if mode not in ("exact", "fast"):
            raise TypeError(f"mode must be 'exact' or 'fast', got {mode!r}")
        if every < 1:
            raise TypeError(f"every must be a positive integer, got {every!r}")
        self.mode: Literal["exact", "fast"] = mode
        self.every = every
        self._last_weights: torch.Tensor | None = None

    @property
    def source(self) -> GradientSource:
        return "parameters" if self.mode == "exact" else "representation"

    def weights_from_gramian(self, gramian: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """[P, P] Gramian of the P present tasks (and their losses [P]) -> weights [P]."""
        raise NotImplementedError

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        present = context.present
        refresh = self._last_weights is None or context.step % self.every == 0
        if refresh:
            weights = torch.zeros(self.num_tasks, dtype=losses.dtype, device=losses.device)
            if bool(present.any()):
                full = context.gramian(losses, self.source).detach()
                index = present.nonzero().flatten()
                sub = full[index][:, index]
                weights[index] = self.weights_from_gramian(sub, losses.detach()[index])
            self._last_weights = weights
        weights = self._last_weights * present * context.static_weights  # type: ignore[operator]
        context.objective(weights, losses).backward()
        return weights.detach()

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.registry_name,
            "mode": self.mode,
            "gradients": self.source,
            "every": self.every,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"last_weights": self._last_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_weights = state.get("last_weights")
