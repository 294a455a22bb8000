"""DSelect-k (Hazimeh et al., NeurIPS 2021): a differentiable gate that selects at most k of
E shared experts per task.

Each task owns k single-expert selectors. A selector holds m = ceil(log2 E) logits z; the
smooth-step S (0 below -gamma/2, 1 above gamma/2, cubic between) turns each into a soft bit,
and the probability of expert l is the product over bits of S(z_j) where l's binary code has
a 1 and 1 - S(z_j) where it has a 0. Once every S saturates the selector is exactly one-hot,
so the mixture is sparse while training stays smooth. A softmax over the k selectors weighs
them; an optional entropy penalty speeds each selector towards one-hot.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from polytask.arch.base import ARCHS, ArchOptions, SharingArch
from polytask.config import ModelSpec
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import mix_experts

EPSILON = 1e-6  # keeps the entropy's log(0) finite, as in the official code


class DSelectKOptions(ArchOptions):
    k: int = Field(2, ge=1, description="selectors per task: at most k experts get weight")
    gamma: float = Field(
        1.0, gt=0.0, description="width of the smooth-step's cubic region; smaller saturates"
    )
    entropy_reg: float = Field(
        0.0, ge=0.0, description="weight of the selectors' entropy penalty (pushes to one-hot)"
    )
    per_example: bool = Field(
        False, description="gate logits from a linear map of each input row instead of static"
    )


def smooth_step(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """S(t): 0 for t <= -gamma/2, 1 for t >= gamma/2, -2t^3/gamma^3 + 3t/(2 gamma) + 1/2
    between. Written as the cubic of clamped t: the cubic is 0 and 1 at the clamp limits with
    zero slope there, and clamping gives zero gradient outside, as S has."""
    t = t.clamp(-gamma / 2, gamma / 2)
    return -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5


def binary_codes(num_experts: int) -> torch.Tensor:
    """[2^m, m] bool, m = ceil(log2 E): row l is l's binary code, least significant bit first."""
    bits = max(math.ceil(math.log2(num_experts)), 0)
    return (torch.arange(2**bits)[:, None] >> torch.arange(bits)) & 1 == 1


def code_to_expert(num_experts: int) -> torch.Tensor:
    """[2^m, E] 0/1 matrix sending code l to expert l, and a code l >= E that names no expert
    to expert l - 2^(m-1) (its top bit cleared; E > 2^(m-1), so that expert exists)."""
    num_codes = 2 ** max(math.ceil(math.log2(num_experts)), 0)
    codes = torch.arange(num_codes)
    target = torch.where(codes < num_experts, codes, codes - num_codes // 2)
    return F.one_hot(target, num_experts).float()


class DSelectKGates(nn.Module):
    """T gates of k selectors each over E experts, static or per example.

    When E is not a power of two, the 2^m - E codes that name no expert keep probability 0:
    each hands its mass to the expert named by the same code with the top bit cleared, one
    constant [2^m, E] product. Every distribution then sums to exactly 1 and a saturated
    selector is one-hot on a real expert whatever its bits. (Dropping those codes and
    renormalising instead leaves a selector saturated on such a code with no mass at all and
    no gradient to leave it; the official code keeps the weights unnormalised and adds a
    penalty 1/sum(weights). The price here: at the start, when every code has mass 2^-m,
    the 2^m - E experts that receive a second code start with twice the weight.)

    Shapes: x [B, in] -> (expert weights [T, B, E], selector distributions [T, k, E] when
    static or [T, B, k, E] per example).
    """

    def __init__(
        self, num_tasks: int, in_dim: int, num_experts: int, options: DSelectKOptions
    ) -> None:
        super().__init__()
        self.num_tasks, self.k, self.gamma = num_tasks, options.k, options.gamma
        self.per_example = options.per_example
        codes = binary_codes(num_experts)
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("fold", code_to_expert(num_experts), persistent=False)
        self.num_bits = codes.shape[1]
        self.folds = num_experts != codes.shape[0]
        z_shape, w_shape = (num_tasks, options.k, self.num_bits), (num_tasks, options.k)
        if self.per_example:
            self.z_logits = nn.Linear(in_dim, math.prod(z_shape))
            self.w_logits = nn.Linear(in_dim, math.prod(w_shape))
            z_params, w_params = list(self.z_logits.parameters()), self.w_logits.parameters()
        else:
            self.z_logits = nn.Parameter(torch.empty(z_shape))
            self.w_logits = nn.Parameter(torch.empty(w_shape))
            z_params, w_params = [self.z_logits], [self.w_logits]
        # As in the official code: z near 0 (every soft bit near 1/2, a near-uniform start).
        for param in z_params:
            nn.init.uniform_(param, -self.gamma / 100, self.gamma / 100)
        for param in w_params:
            nn.init.uniform_(param, -0.05, 0.05)

    def selectors(self, z: torch.Tensor) -> torch.Tensor:
        """Selector logits [..., m] -> distributions over experts [..., E]."""
        soft_bits = smooth_step(z, self.gamma).unsqueeze(-2)  # [..., 1, m]
        probs = torch.where(self.codes, soft_bits, 1.0 - soft_bits).prod(-1)  # [..., 2^m]
        return probs @ self.fold if self.folds else probs  # [..., E]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.per_example:
            dists = self.selectors(self.z_logits)  # [T, k, E]
            weights = torch.softmax(self.w_logits, dim=-1)  # [T, k]
            mixed = torch.einsum("tk,tke->te", weights, dists)
            return mixed.unsqueeze(1).expand(-1, x.shape[0], -1), dists
        batch = x.shape[0]
        z = self.z_logits(x).view(batch, self.num_tasks, self.k, self.num_bits)
        dists = self.selectors(z.transpose(0, 1))  # [T, B, k, E]
        logits = self.w_logits(x).view(batch, self.num_tasks, self.k).transpose(0, 1)
        weights = torch.softmax(logits, dim=-1)  # [T, B, k]
        return torch.einsum("tbk,tbke->tbe", weights, dists), dists


def selector_entropy(dists: torch.Tensor) -> torch.Tensor:
    """Summed entropy of the selectors [T, k, E] or [T, B, k, E] (averaged over rows, so that
    the penalty's strength does not depend on the batch size)."""
    entropy = -(dists * torch.log(dists + EPSILON)).sum(-1)
    return entropy.sum() if dists.dim() == 3 else entropy.sum() / dists.shape[1]


@ARCHS.register("dselect_k")
class DSelectK(SharingArch):
    """E shared experts (one fused bank) mixed per task by a DSelect-k gate.

    ``last_gate_weights`` holds the expert weights [T, B, E] of the last forward pass (the same
    row for every example when gating is static). With ``entropy_reg > 0``, a training forward
    pass sets ``auxiliary_loss = entropy_reg * summed selector entropy``.
    """

    Options = DSelectKOptions

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        options: DSelectKOptions = self.options  # type: ignore[assignment]
        self.entropy_reg = options.entropy_reg
        self.experts = ExpertBank(spec.num_experts, in_dim, spec.hidden, dropout=spec.dropout)
        self.gates = DSelectKGates(num_tasks, in_dim, spec.num_experts, options)
        self.last_gate_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, dists = self.gates(x)  # [T, B, E]
        self.last_gate_weights = weights.detach()
        use_penalty = self.training and self.entropy_reg > 0
        self.auxiliary_loss = self.entropy_reg * selector_entropy(dists) if use_penalty else None
        experts = self.experts(x)  # [E, B, D]
        if self.gates.per_example:
            return mix_experts(weights, experts)
        return torch.einsum("te,ebd->tbd", weights[:, 0], experts)
