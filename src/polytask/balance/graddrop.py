"""GradDrop: Chen, Ngiam, Huang, Luong, Kretzschmar, Chai and Anguelov, "Just Pick a Sign:
Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS 2020.

At the shared representation A, each task's gradient ``g_t = dL_t/dA`` is kept or dropped per
element according to a randomly chosen sign, picked with the probability of the sign's share
in the gradients (Algorithm 1 of the paper, with f(p) = p):

    G_t = sum_batch sign(A) * g_t                     (batch-separated activations)
    P   = 1/2 (1 + sum_t G_t / sum_t |G_t|)            (positive sign purity, in [0, 1])
    M_t = [P > U] [G_t > 0] + [P < U] [G_t < 0],       U ~ Uniform(0, 1), one draw per element
    new = sum_t (leak + (1 - leak) M_t) g_t            (M_t broadcast over the batch)

``new`` replaces the gradient at A, so the encoder below A is trained on it; the parameters
above A (sharing architecture, towers) get the plain gradient of ``sum_t w_t L_t``. Both come
from ONE backward pass of the usual objective with a hook on A that swaps the gradient flowing
into the encoder for ``new`` (plus the auxiliary loss's own gradient at A, which is never
dropped). A is ``[B, D]`` (batch dimension 0) or, with one encoder per task, ``[T, B, D]``
(batch dimension 1). Static weights scale each ``g_t`` before everything else; absent tasks
have no gradient and take no part in P. The noise comes from the balancer's own generator
(option ``seed``), checkpointed with the run.

Under several processes each rank holds its rows' gradients: the statistics ``G_t`` are sums
over rows, so the ranks add theirs (T x D numbers a step), and every rank draws the same
noise from the same generator: the masks, and so the trained model, are those of one process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from polytask.balance.base import BALANCERS, Balancer, Need, StepContext
from polytask.balance.options import GradDropOptions

EPS = 1e-12


def batch_dimension(representation: torch.Tensor) -> int:
    """Where the batch is in polytask's encoder outputs: [B, D] -> 0, [T, B, D] -> 1."""
    return 1 if representation.dim() == 3 else 0


def sign_statistics(
    grads: torch.Tensor, representation: torch.Tensor, batch_dim: int
) -> torch.Tensor:
    """``G_t = sum_batch sign(A) * g_t``: [T, *A.shape without the batch dimension]."""
    return (torch.sign(representation).unsqueeze(0) * grads).sum(dim=batch_dim + 1)


def purity(stats: torch.Tensor) -> torch.Tensor:
    """Positive sign purity ``P = 1/2 (1 + sum_t G_t / sum_t |G_t|)`` (0.5 where all are 0)."""
    return 0.5 * (1 + stats.sum(dim=0) / (stats.abs().sum(dim=0) + EPS))


def drop_masks(stats: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``M_t = [P > U][G_t > 0] + [P < U][G_t < 0]`` [T, ...] for stats [T, ...], noise U."""
    p = purity(stats)
    return ((p > noise) & (stats > 0)) | ((p < noise) & (stats < 0))


def graddrop_gradient(
    grads: torch.Tensor,
    representation: torch.Tensor,
    noise: torch.Tensor,
    leak: float = 0.0,
    batch_dim: int = 0,
    sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The GradDrop gradient at A, shaped like A, from per-task gradients [T, *A.shape] and one
    uniform draw shaped like A without its batch dimension (``sum_over_processes``: adds the
    ranks' statistics, whose rows are theirs)."""
    stats = sign_statistics(grads, representation, batch_dim)
    if sum_over_processes is not None:
        stats = sum_over_processes(stats)
    masks = drop_masks(stats, noise)
    keep = (leak + (1 - leak) * masks.to(grads.dtype)).unsqueeze(batch_dim + 1)
    return (keep * grads).sum(dim=0)


@BALANCERS.register("graddrop")
class GradDrop(Balancer):
    """Sign-dropped gradients at the shared representation (option ``leak``: how much of a
    dropped gradient is kept).

    Returns the static weights of the present tasks [T] (the weights of the plain sum).
    """

    needs = frozenset({Need.REPRESENTATION_GRADS})
    sums_over_rows = True
    Options = GradDropOptions
    options: GradDropOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self.generator = torch.Generator().manual_seed(self.options.seed)

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        weights = (context.static_weights * context.present).to(losses.dtype)
        representation = context.representation
        if representation is None:
            raise ValueError("graddrop needs the model's shared representation")
        grads = context.gradients(losses, "representation")[0].detach()
        grads = grads * weights.view(-1, *[1] * representation.dim())
        batch_dim = batch_dimension(representation)
        shape = [n for i, n in enumerate(representation.shape) if i != batch_dim]
        noise = torch.rand(shape, generator=self.generator, dtype=grads.dtype)
        leak = self.options.leak
        new = graddrop_gradient(
            grads, representation.detach(), noise, leak, batch_dim, context.sum_over_processes
        )
        extra = context.extra_loss
        if extra is not None and extra.requires_grad:
            (extra_grad,) = torch.autograd.grad(
                extra, representation, retain_graph=True, allow_unused=True
            )
            if extra_grad is not None:
                new = new + extra_grad
        handle = representation.register_hook(lambda _: new)
        try:
            context.objective(weights, losses).backward()
        finally:
            handle.remove()
        return weights.detach()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "gradients": "representation"}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
