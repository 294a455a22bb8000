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

from polytask.balance.jacobian import (
    batched_vjp,
    combine,
    common_input_gradients,
    common_input_gramian,
    first_layer_deltas,
    gramian,
    separable_task_gradients,
    task_gradients_or_none,
    zeros_for_unused,
)
from polytask.balance.options import BalanceOptions, GramianOptions
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
    task_params: every other trained parameter (towers, ...), or ``None`` when the caller does
    not know them; knowing them lets :meth:`weighted_backward` skip a full backward pass in
    exact mode (train_step fills it from the model).
    task_inputs: a tensor [T, ...] (the architecture's output) that loss t reads through its
    slice t ONLY, and through which alone it reaches the shared representation and parameters
    (fused task towers); ``None`` where that is not known to hold. Per-task gradients then
    take one plain backward through the towers instead of a T-batched one.
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
    task_params: list[torch.nn.Parameter] | None = None
    task_inputs: torch.Tensor | None = None
    # Towers reading one common input x [B, D] (shared-bottom): x, the towers' first layer
    # output [T, B, width] and its weight [T, D, width]. Task t's gradient at x is then
    # delta_t W_t^T, delta = d(sum L)/d(first layer): no T-batched pass through the towers.
    common_input: torch.Tensor | None = None
    tower_first: torch.Tensor | None = None
    tower_weight: torch.Tensor | None = None
    # Applied to every Gramian before a method reads it (source given): the training step
    # divides out a loss scale (fp16) and sums the processes' Gramians (data parallel)
    finish_gramian: Callable[[torch.Tensor, GradientSource], torch.Tensor] | None = None
    # The element-wise sum of a tensor over the processes of a data-parallel run (None in
    # one process): what a method that sums over rows (``sums_over_rows``) reduces its
    # per-rank sums with
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None
    # Every process's rows of a per-row tensor, differentiably (see
    # :meth:`polytask.train.distributed.World.gather_rows`: the gathered rows, which are
    # real, where this process's start); None in one process
    gather_rows: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, int]] | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def gradients(self, losses: torch.Tensor, source: GradientSource) -> list[torch.Tensor]:
        """Per-task gradient blocks [T, ...] on the shared parameters (exact) or on the shared
        representation (the MGDA-UB estimate), computed once per step."""
        key = f"gradients:{source}"
        if key not in self._cache:
            representation: torch.Tensor | None
            if source == "representation":
                representation = self._trainable_representation()
                inputs: list[torch.Tensor] = [representation]
            else:
                representation = self.representation
                inputs = list(self._trained_shared_params())
            raw = self._task_gradients(losses, inputs, representation)
            if source == "parameters":  # what weighted_backward needs to write .grad directly
                self._cache["jacobian_losses"] = losses
                self._cache["reached:parameters"] = [g is not None for g in raw]
            self._cache[key] = zeros_for_unused(raw, inputs, losses.shape[0])
        return self._cache[key]

    def _task_gradients(
        self,
        losses: torch.Tensor,
        inputs: list[torch.Tensor],
        representation: torch.Tensor | None,
    ) -> list[torch.Tensor | None]:
        """Through the separable task inputs when the step provides them (one plain backward
        through the towers, then a batched pass below them only), else one T-batched backward
        from the losses."""
        delta = self._common_delta(losses)
        if delta is not None:
            assert self.common_input is not None and self.tower_weight is not None
            common = self.common_input
            at_common = common_input_gradients(delta, self.tower_weight.detach())
            below = [x for x in inputs if x is not common]
            below_grads = iter(batched_vjp(common, below, at_common) if below else [])
            return [at_common if x is common else next(below_grads) for x in inputs]
        if self.task_inputs is not None and self.task_inputs.requires_grad:
            grads = separable_task_gradients(losses, self.task_inputs, inputs, representation)
            if grads is not None:
                return grads
        return task_gradients_or_none(losses, inputs)

    def _common_delta(self, losses: torch.Tensor) -> torch.Tensor | None:
        """d(sum L)/d(towers' first layer) when the towers read one common input, else None."""
        if "common_delta" not in self._cache:
            delta = None
            usable = (
                self.common_input is not None
                and self.common_input.requires_grad
                and self.tower_first is not None
                and self.tower_first.requires_grad
                and self.tower_weight is not None
            )
            if usable:
                assert self.tower_first is not None
                delta = first_layer_deltas(losses, self.tower_first)
            self._cache["common_delta"] = delta
        return self._cache["common_delta"]

    def _trained_shared_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.shared_params if p.requires_grad]

    def _trainable_representation(self) -> torch.Tensor:
        representation = self.representation
        if representation is None or not representation.requires_grad:
            raise PolytaskError(
                "gradient balancing in fast mode needs a shared representation that "
                "depends on trained parameters, and this model has none (a "
                "parameter-free encoder under an architecture without one, or adapters, "
                "where each task's rows run through their own); "
                "set balance.options.mode: exact"
            )
        return representation

    def gramian(self, losses: torch.Tensor, source: GradientSource) -> torch.Tensor:
        """The [T, T] Gramian of the per-task gradients from ``source``."""
        key = f"gramian:{source}"
        if key not in self._cache:
            value = self._own_gramian(losses, source)
            if self.finish_gramian is not None:
                value = self.finish_gramian(value, source)
            self._cache[key] = value
        return self._cache[key]

    def _own_gramian(self, losses: torch.Tensor, source: GradientSource) -> torch.Tensor:
        common = self.common_input
        at_common = source == "representation" and common is not None
        if at_common and self._trainable_representation() is common:
            delta = self._common_delta(losses)
            if delta is not None:
                assert self.tower_weight is not None
                return common_input_gramian(delta, self.tower_weight.detach())
        return gramian(self.gradients(losses, source))

    def objective(self, weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """``sum_t w_t L_t`` plus the architecture's auxiliary term: its gradient is the
        weighted combination of the task gradients, on every parameter."""
        total = (weights.detach() * losses).sum()
        return total + self.extra_loss if self.extra_loss is not None else total

    def weighted_backward(self, weights: torch.Tensor, losses: torch.Tensor) -> None:
        """Accumulate the gradient of :meth:`objective` on every parameter.

        Plainly ``objective.backward()``, unless this step already holds the per-task
        gradients J of these ``losses`` on the shared parameters (exact mode, weights refreshed
        this step) and knows the other parameters (``task_params``). A full backward would
        then recompute, through the whole shared network, what J already gives: the shared
        parameters' part is ``combine(weights, J)``, written into ``.grad`` with no backward
        pass, and the objective is backpropagated into ``task_params`` only (the towers: a
        small part of the graph). Shared parameters that no task reaches keep their ``.grad``
        untouched (``None`` stays ``None``), as after a plain backward.

        ``extra_loss`` is not in J. Its gradient on the task parameters comes with the
        objective's; on the shared parameters, from one backward of ``extra_loss`` alone into
        them. That traverses only what the auxiliary term depends on (gates, usually), once,
        with one gradient row; a T+1-th row in the batched Jacobian instead would be carried
        through the whole shared network by the vmapped pass and would have to be kept out
        of the Gramian.

        The retained graph: each partial pass but the last retains it for the next; the last
        releases the saved tensors of the nodes it traverses. Nodes of the shared network
        that no pass traverses keep theirs until the graph's last reference goes (the model
        holds its last representation until its next forward pass); that is smaller than the
        Jacobian itself, so the step's peak memory does not grow.
        """
        grads = self._cache.get("gradients:parameters")
        if (
            grads is None
            or self.task_params is None
            or self._cache.get("jacobian_losses") is not losses
        ):
            self.objective(weights, losses).backward()
            return
        shared = self._trained_shared_params()
        reached: list[bool] = self._cache["reached:parameters"]
        hits = [i for i, hit in enumerate(reached) if hit]
        combined = combine(weights.detach(), [grads[i] for i in hits])
        with torch.no_grad():
            for i, grad in zip(hits, combined, strict=True):
                _accumulate_grad(shared[i], grad)
        shared_ids = {id(p) for p in shared}
        own = [p for p in self.task_params if p.requires_grad and id(p) not in shared_ids]
        extra = self.extra_loss
        extra_to_shared = extra is not None and extra.requires_grad and bool(shared)
        if own:
            torch.autograd.backward(
                self.objective(weights, losses), inputs=own, retain_graph=extra_to_shared
            )
        if extra_to_shared:
            assert extra is not None
            torch.autograd.backward(extra, inputs=shared)


def _accumulate_grad(param: torch.nn.Parameter, grad: torch.Tensor) -> None:
    """``param.grad += grad`` as a backward pass would (set when there is none)."""
    if param.grad is None:
        param.grad = grad.detach().to(param.dtype)
    else:
        param.grad.add_(grad.to(param.grad.dtype))


class Balancer:
    """Base class: turns per-task losses [T] into one backward pass.

    A method's options are declared once, as the pydantic model ``Options`` (see
    :mod:`polytask.balance.options`); the constructor validates its keyword arguments against
    it (an :class:`~polytask.errors.OptionError` otherwise) and the method reads the values
    from ``self.options``.
    """

    # what the method asks the step for; a class default that an instance may narrow (IMTL-L
    # needs only the losses)
    needs: frozenset[Need] = frozenset({Need.LOSSES})
    # True where the method reads the task gradients only through sums over the batch's rows
    # at the shared representation, which the processes of a data-parallel run add up
    # exactly: the Gramian there (``context.gramian(losses, "representation")``, summed by
    # the step) or sums it passes to ``context.sum_over_processes``. It then runs under
    # several processes (Gramian methods in fast mode are such methods by construction).
    sums_over_rows: ClassVar[bool] = False
    registry_name: ClassVar[str]
    Options: ClassVar[type[BalanceOptions]] = BalanceOptions
    options: BalanceOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        self.options = self.Options(**options)
        self.num_tasks = num_tasks

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        """Accumulate the combined gradient; return the [T] weights used (detached)."""
        raise NotImplementedError

    @classmethod
    def unused_spec_fields(cls, spec: Any) -> list[str]:
        """Dotted paths of run-spec fields this method does not read (``tasks.0.weight``), so
        that setting one is a warning. Every method here honours the task weights: none."""
        del spec
        return []

    def describe(self) -> dict[str, Any]:
        """What ran, for the run summary: the method and its options (all of them, resolved)."""
        return {"method": self.registry_name, **self.options.model_dump()}

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


def _load_methods() -> None:
    from polytask.balance import load_methods

    load_methods()


BALANCERS: Registry[Balancer] = Registry("balancing method", load=_load_methods)


class GramianWeighting(Balancer):
    """A method whose update is ``sum_t w_t g_t`` with weights computed from the Gramian of
    the task gradients (MGDA, UPGrad, IMTL-G, CAGrad, Nash-MTL, Aligned-MTL, PCGrad, ...).

    The maths lives in :meth:`weights_from_gramian`, on the present tasks only; this base
    decides where the Gramian comes from (``mode``) and how often it is refreshed:

    - ``mode: exact``: gradients on every shared parameter, from one batched backward pass;
    - ``mode: fast``: gradients at the shared representation (the encoder output; MGDA-UB's
      estimate), which costs only the part of the graph above it;
    - ``every: k``: recompute the weights every k steps and reuse them in between.

    The combined gradient is the gradient of ``sum_t w_t L_t`` on every parameter
    (:meth:`StepContext.weighted_backward`): in exact mode, ``sum_t w_t g_t`` from the
    Jacobian already computed for the shared parameters, and a backward into the task-specific
    parameters only; otherwise one ordinary backward.
    """

    needs = frozenset({Need.GRAMIAN})
    Options = GramianOptions
    options: GramianOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self._last_weights: torch.Tensor | None = None

    @property
    def mode(self) -> Literal["exact", "fast"]:
        return self.options.mode

    @property
    def every(self) -> int:
        return self.options.every

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
        assert self._last_weights is not None
        weights = self._last_weights * present * context.static_weights
        context.weighted_backward(weights, losses)
        return weights.detach()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gradients": self.source}

    def state_dict(self) -> dict[str, Any]:
        return {"last_weights": self._last_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last_weights = state.get("last_weights")
