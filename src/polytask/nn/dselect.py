"""DSelect-k gates (Hazimeh et al., NeurIPS 2021): a differentiable gate that selects at most
k of E experts.

Each gate owns k single-expert selectors. A selector holds m = ceil(log2 E) logits z; the
smooth-step S (0 below -gamma/2, 1 above gamma/2, cubic between) turns each into a soft bit,
and the probability of expert l is the product over bits of S(z_j) where l's binary code has
a 1 and 1 - S(z_j) where it has a 0. Once every S saturates the selector is exactly one-hot,
so the mixture is sparse while training stays smooth. A softmax over the k selectors weighs
them; an optional entropy penalty speeds each selector towards one-hot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from polytask.nn.gates import GateBank, LeanMixture, Mixed, mix_experts, renumber_allowed

EPSILON = 1e-6  # keeps the entropy's log(0) finite, as in the official code


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


def selector_entropy(dists: torch.Tensor) -> torch.Tensor:
    """Summed entropy of the selectors [G, k, E] or [G, B, k, E] (averaged over rows, so that
    the penalty's strength does not depend on the batch size)."""
    entropy = -(dists * torch.log(dists + EPSILON)).sum(-1)
    return entropy.sum() if dists.dim() == 3 else entropy.sum() / dists.shape[1]


class DSelectKGates(GateBank):
    """G gates of k selectors each over a pool of E experts, static or per example.

    When E is not a power of two, the 2^m - E codes that name no expert keep probability 0:
    each hands its mass to the expert named by the same code with the top bit cleared, one
    constant [2^m, E] product. Every distribution then sums to exactly 1 and a saturated
    selector is one-hot on a real expert whatever its bits. (Dropping those codes and
    renormalising instead leaves a selector saturated on such a code with no mass at all and
    no gradient to leave it; the official code keeps the weights unnormalised and adds a
    penalty 1/sum(weights). The price here: at the start, when every code has mass 2^-m,
    the 2^m - E experts that receive a second code start with twice the weight.)

    ``columns`` (a slimmed gate): the selectors stay over the pool of ``source_experts`` they
    were trained on, and only the kept experts' weights are read and renormalised to sum to
    1 (a binary-code parametrisation cannot drop experts itself).

    Shapes: x [B, in] -> expert weights [G, B, E_kept].
    """

    codes: torch.Tensor
    fold: torch.Tensor
    columns: torch.Tensor | None

    def __init__(
        self,
        allowed: Sequence[Sequence[int]],
        num_experts: int,
        in_dim: int,
        *,
        k: int = 2,
        gamma: float = 1.0,
        per_example: bool = False,
        entropy_reg: float = 0.0,
        source_experts: int | None = None,
        columns: Sequence[int] | None = None,
    ) -> None:
        super().__init__(allowed, num_experts)
        self.in_dim, self.k, self.gamma = in_dim, k, gamma
        self.per_example, self.entropy_reg = per_example, entropy_reg
        self.source_experts = source_experts or num_experts
        kept = None if columns is None else torch.tensor(list(columns), dtype=torch.long)
        self.register_buffer("columns", kept, persistent=False)
        codes = binary_codes(self.source_experts)
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("fold", code_to_expert(self.source_experts), persistent=False)
        self.num_bits = codes.shape[1]
        self.folds = self.source_experts != codes.shape[0]
        z_shape, w_shape = (self.num_gates, k, self.num_bits), (self.num_gates, k)
        self.z_logits: nn.Linear | nn.Parameter
        self.w_logits: nn.Linear | nn.Parameter
        if per_example:
            self.z_logits = nn.Linear(in_dim, math.prod(z_shape))
            self.w_logits = nn.Linear(in_dim, math.prod(w_shape))
            z_params = list(self.z_logits.parameters())
            w_params = list(self.w_logits.parameters())
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
        """Selector logits [..., m] -> distributions over the source pool [..., E]."""
        soft_bits = smooth_step(z, self.gamma).unsqueeze(-2)  # [..., 1, m]
        probs = torch.where(self.codes, soft_bits, 1.0 - soft_bits).prod(-1)  # [..., 2^m]
        return probs @ self.fold if self.folds else probs  # [..., E]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert weights [G, B, E_kept], selector distributions [G, k, E] when static or
        [G, B, k, E] per example)."""
        if isinstance(self.z_logits, nn.Parameter):
            assert isinstance(self.w_logits, nn.Parameter)
            dists = self.selectors(self.z_logits)  # [G, k, E]
            weights = torch.softmax(self.w_logits, dim=-1)  # [G, k]
            mixed = torch.einsum("tk,tke->te", weights, dists).unsqueeze(1)
            return self._kept(mixed).expand(-1, x.shape[0], -1), dists
        assert isinstance(self.w_logits, nn.Linear)
        batch = x.shape[0]
        z = self.z_logits(x).view(batch, self.num_gates, self.k, self.num_bits)
        dists = self.selectors(z.transpose(0, 1))  # [G, B, k, E]
        logits = self.w_logits(x).view(batch, self.num_gates, self.k).transpose(0, 1)
        weights = torch.softmax(logits, dim=-1)  # [G, B, k]
        return self._kept(torch.einsum("tbk,tbke->tbe", weights, dists)), dists

    def _kept(self, weights: torch.Tensor) -> torch.Tensor:
        """The kept experts' weights, renormalised (all of them when nothing was cut)."""
        if self.columns is None:
            return weights
        kept = weights[..., self.columns]
        return kept / kept.sum(-1, keepdim=True).clamp(min=torch.finfo(kept.dtype).tiny)

    def mix(
        self, gate_input: torch.Tensor, expert_input: torch.Tensor, experts: nn.Module
    ) -> Mixed:
        weights, dists = self(gate_input)  # [G, B, E]
        penalty = self.training and self.entropy_reg > 0
        auxiliary = self.entropy_reg * selector_entropy(dists) if penalty else None
        expert_out = experts(expert_input)
        if self.per_example:
            out = mix_experts(weights, expert_out)
        else:
            out = torch.einsum("te,ebd->tbd", weights[:, 0], expert_out)
        return Mixed(out, expert_out, weights.detach(), auxiliary)

    def select(self, gates: Sequence[int], experts: Sequence[int]) -> DSelectKGates:
        source = self.columns.tolist() if self.columns is not None else range(self.num_experts)
        source = list(source)
        kept = DSelectKGates(
            renumber_allowed(self.allowed, gates, experts),
            len(experts),
            self.in_dim,
            k=self.k,
            gamma=self.gamma,
            per_example=self.per_example,
            entropy_reg=self.entropy_reg,
            source_experts=self.source_experts,
            columns=[source[e] for e in experts],
        )
        rows = torch.tensor(list(gates), dtype=torch.long)
        with torch.no_grad():
            for name in ("z_logits", "w_logits"):
                mine, theirs = getattr(self, name), getattr(kept, name)
                if isinstance(mine, nn.Linear):
                    width = mine.in_features
                    theirs.weight.copy_(
                        mine.weight.view(self.num_gates, -1, width)[rows].reshape(-1, width)
                    )
                    theirs.bias.copy_(mine.bias.view(self.num_gates, -1)[rows].reshape(-1))
                else:
                    theirs.copy_(mine[rows])
        return kept

    def lean(self, gate: int) -> LeanMixture | None:
        if self.per_example:
            return None
        with torch.no_grad():
            table = self(torch.zeros(1, self.in_dim))[0][:, 0]  # [G, E]: fixed in eval
        return LeanMixture(gate, list(range(self.num_experts)), table[gate])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, per_example={self.per_example}"
