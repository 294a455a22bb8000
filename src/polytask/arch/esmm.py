"""ESMM (Ma et al., SIGIR 2018): entire-space multi-task model for a chain of dependent binary
tasks (impression -> click -> conversion).

Each task has its own bottom over the shared embedding. The towers give one logit per task,
read as a *conditional* probability (pCTR, then pCVR given a click, ...). The head returned for
the k-th task of the chain is the logit of the *product* of the conditional probabilities up to
k (pCTCVR = pCTR * pCVR), so the ordinary binary cross-entropy on the conversion label over all
impressions is exactly ESMM's CTCVR loss: pCVR is never fitted on the biased clicked-only
sample, which is the point of the paper.

Labels: the k-th chained task's label is the *joint* event over every row (1 only if all the
earlier steps happened too, 0 otherwise: a conversion column with 0 on non-clicked rows). Its
predictions are joint probabilities (pCTCVR), not the conditional pCVR.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from polytask.arch.base import ARCHS, ArchOptions, SharingArch
from polytask.config import ModelSpec
from polytask.errors import ConfigError
from polytask.nn.experts import ExpertBank


class ChainOptions(ArchOptions):
    """Options of an architecture over an ordered chain of dependent binary tasks."""

    chain: list[int] | None = Field(
        None,
        min_length=2,
        description="task indices in funnel order (default: every task, in config order)",
    )

    @field_validator("chain")
    @classmethod
    def _distinct_non_negative(cls, chain: list[int] | None) -> list[int] | None:
        if chain is None:
            return chain
        if any(index < 0 for index in chain):
            raise ValueError("task indices must be 0 or more")
        if len(set(chain)) != len(chain):
            raise ValueError("a task may appear only once in the chain")
        return chain


def resolve_chain(arch_name: str, options: ChainOptions, num_tasks: int) -> list[int]:
    """The chain as task indices, checked against the number of tasks (known only here)."""
    chain = list(range(num_tasks)) if options.chain is None else list(options.chain)
    for index in chain:
        if index >= num_tasks:
            raise ConfigError(
                f"model.options ({arch_name}): chain: task index {index} is out of range for "
                f"{num_tasks} task(s) (valid: 0..{num_tasks - 1})"
            )
    return chain


def check_binary_heads(arch_name: str, chain: list[int], out_dims: list[int]) -> None:
    """Chained tasks are probabilities of one event each: one logit per task."""
    for index in chain:
        if out_dims[index] != 1:
            raise ConfigError(
                f"model.options ({arch_name}): chain: task {index} has {out_dims[index]} "
                "outputs; chained tasks must be binary"
            )


def log1mexp(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(log_p)) for log_p < 0, accurate for p near 0 and near 1 (Maechler, 2012).

    Near p = 1 the difference 1 - p is taken by ``expm1`` (no cancellation); far from it
    ``log1p`` keeps precision where 1 - p is close to 1. Each branch sees its input clamped to
    its own domain, so the branch ``where`` discards cannot put inf/NaN into the gradient.
    """
    cut = -math.log(2.0)
    near_one = torch.log(-torch.expm1(log_p.clamp(min=cut)))
    far_from_one = torch.log1p(-torch.exp(log_p.clamp(max=cut)))
    return torch.where(log_p > cut, near_one, far_from_one)


def chained_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits of cumulative products of sigmoid probabilities along the first axis.

    logits [K, B] (conditional logits, chain order) -> [K, B] where row k is
    logit(prod_{j<=k} sigmoid(logits[j])). log p is a sum of logsigmoids (no underflow of the
    product); log p is kept strictly below 0 so that saturated towers give a large finite logit
    rather than +inf. Row 0 is returned unchanged: the first task is an ordinary binary head.
    """
    log_p = torch.cumsum(F.logsigmoid(logits), dim=0)
    log_p = log_p.clamp(max=-torch.finfo(log_p.dtype).tiny)
    joint = log_p - log1mexp(log_p)
    return torch.cat([logits[:1], joint[1:]], dim=0)


@ARCHS.register("esmm")
class ESMM(SharingArch):
    """One bottom per task (fused, all reading the shared embedding); chained heads.

    Shapes: x [B, in_dim] -> representation [T, B, hidden[-1]]; heads -> T logits [B, out_t],
    the chained ones being joint-probability logits.
    """

    Options = ChainOptions

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        options: ChainOptions = self.options  # type: ignore[assignment]
        self.chain = resolve_chain(spec.arch, options, num_tasks)
        self.arch_name = spec.arch
        self.bottoms = ExpertBank(num_tasks, in_dim, spec.hidden, dropout=spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottoms(x)  # [T, B, out]

    def heads(self, towers: nn.Module, representation: torch.Tensor) -> list[torch.Tensor]:
        """Plain tower logits, with the chained tasks' replaced by joint-probability logits."""
        logits = list(towers(representation))
        check_binary_heads(self.arch_name, self.chain, towers.out_dims)
        conditional = torch.stack([logits[t][:, 0] for t in self.chain])  # [K, B]
        joint = chained_logits(conditional)
        for position, task in enumerate(self.chain):
            logits[task] = joint[position].unsqueeze(1)
        return logits

    def extra_repr(self) -> str:
        return f"chain={self.chain}"
