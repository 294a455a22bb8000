"""Gates: how a level turns its experts' outputs into one output per gate.

Every gate kind of :mod:`polytask.plan.schema` is one :class:`GateBank` subclass holding all
gates of a level in fused tensors. They share one interface, so the executor needs no
knowledge of kinds:

* :meth:`GateBank.mix` runs the experts (most kinds: densely, all experts on all rows; top-k
  routing: sparsely, :mod:`polytask.nn.topk`) and mixes them per gate;
* :meth:`GateBank.select` keeps some gates and some experts (slimming, growing);
* :meth:`GateBank.fixed_support` says which experts each gate uses in eval when that does
  not depend on the rows (then a slim cut keeps exactly those, and is exact);
* :meth:`GateBank.lean` gives a gate's eval-time mixture for the folded serving form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# gates x experts x width up to which mix_experts broadcasts (2 gates x 1024 as measured)
ELEMENTWISE_MIX_LIMIT = 2048


def softmax_last(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over a short last axis (the experts), written out: on CPU ``torch.softmax``
    over an axis of a few elements costs several times more than these three fused-friendly
    elementwise ops. Entries at -inf get weight exactly 0."""
    shifted = logits - logits.amax(dim=-1, keepdim=True).detach()
    exp = shifted.exp()
    return exp / exp.sum(dim=-1, keepdim=True)


def mix_experts(gates: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Gate-weighted sum of expert outputs.

    gates [G, B, E], experts [E, B, D] -> [G, B, D]. For few small experts a broadcast
    multiply and a sum over experts beats B tiny matrix products on CPU; for wide ones, or
    many gates, the broadcast intermediate [G, B, E, D] costs more memory traffic than
    einsum's batched contraction (measured on the MMoE paper's 2 x 8 x 16, a 2 x 16 x 128 bank
    and 150 gates over 8 x 16, where broadcasting made MMoE's step 20 times slower).
    """
    if gates.shape[0] * experts.shape[0] * experts.shape[2] <= ELEMENTWISE_MIX_LIMIT:
        return (gates.unsqueeze(-1) * experts.transpose(0, 1).unsqueeze(0)).sum(2)
    return torch.einsum("gbe,ebd->gbd", gates, experts)


def allowed_mask(allowed: Sequence[Sequence[int]], num_experts: int) -> torch.Tensor:
    """[G, E] bool: which experts each gate may weight."""
    mask = torch.zeros(len(allowed), num_experts, dtype=torch.bool)
    for gate, members in enumerate(allowed):
        mask[gate, list(members)] = True
    return mask


def blocked_mask(allowed: Sequence[Sequence[int]], num_experts: int) -> torch.Tensor | None:
    """[G, 1, E] bool, True where a gate may not weight an expert; None when every gate may
    weight every expert (nothing to mask)."""
    mask = allowed_mask(allowed, num_experts)
    return None if bool(mask.all()) else ~mask.unsqueeze(1)


def renumber_allowed(
    allowed: Sequence[Sequence[int]], gates: Sequence[int], experts: Sequence[int]
) -> list[list[int]]:
    """The kept gates' allowed lists as positions among the kept experts."""
    position = {expert: index for index, expert in enumerate(experts)}
    return [[position[e] for e in allowed[g] if e in position] for g in gates]


def init_like_linear(in_dim: int, *parameters: torch.Tensor) -> None:
    """Uniform in +-1/sqrt(in_dim), as ``nn.Linear`` initialises its weight and bias."""
    bound = 1.0 / in_dim**0.5
    for parameter in parameters:
        nn.init.uniform_(parameter, -bound, bound)


def _index(values: Sequence[int]) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.long)


@dataclass
class Mixed:
    """What a level's gates produce.

    out [G, B, D]: one mixture per gate. experts [E, B, D]: the expert outputs when they ran
    densely (None under sparse routing). weights [G, B, E] (detached): each gate's weight per
    expert, for reports and slimming; None for kinds without per-row weights (identity,
    cross-stitch). auxiliary: a training regulariser the gates add to the objective.
    """

    out: torch.Tensor
    experts: torch.Tensor | None
    weights: torch.Tensor | None
    auxiliary: torch.Tensor | None = None


@dataclass
class LeanMixture:
    """One gate's mixture in eval, for the folded serving form: fixed ``weights`` over
    ``experts``, or (``weights`` None) a softmax of ``x @ logit_weight + logit_bias``."""

    gate: int
    experts: list[int]
    weights: torch.Tensor | None
    logit_weight: torch.Tensor | None = None
    logit_bias: torch.Tensor | None = None


class GateBank(nn.Module):
    """All gates of one level (see the module docstring for the interface)."""

    def __init__(self, allowed: Sequence[Sequence[int]], num_experts: int) -> None:
        super().__init__()
        self.allowed = [list(members) for members in allowed]
        self.num_gates, self.num_experts = len(self.allowed), num_experts

    def mix(
        self, gate_input: torch.Tensor, expert_input: torch.Tensor, experts: nn.Module
    ) -> Mixed:
        raise NotImplementedError

    def select(self, gates: Sequence[int], experts: Sequence[int]) -> GateBank:
        raise NotImplementedError

    def fixed_support(self) -> list[list[int]] | None:
        """Each gate's experts in eval when rows cannot change them, else None."""
        return None

    def lean(self, gate: int) -> LeanMixture | None:
        """Gate ``gate``'s eval-time mixture, or None where it has no folded form."""
        return None

    def extra_repr(self) -> str:
        return f"gates={self.num_gates}, experts={self.num_experts}"


class IdentityGates(GateBank):
    """Output g is expert ``allowed[g][0]``'s output: no parameters, no mixing."""

    pick: torch.Tensor

    def __init__(self, allowed: Sequence[Sequence[int]], num_experts: int) -> None:
        super().__init__(allowed, num_experts)
        picks = [members[0] for members in self.allowed]
        self.register_buffer("pick", _index(picks), persistent=False)
        self.in_order = picks == list(range(num_experts))

    def mix(
        self, gate_input: torch.Tensor, expert_input: torch.Tensor, experts: nn.Module
    ) -> Mixed:
        out = experts(expert_input)
        return Mixed(out if self.in_order else out.index_select(0, self.pick), out, None)

    def select(self, gates: Sequence[int], experts: Sequence[int]) -> IdentityGates:
        return IdentityGates(renumber_allowed(self.allowed, gates, experts), len(experts))

    def fixed_support(self) -> list[list[int]]:
        return [list(members) for members in self.allowed]

    def lean(self, gate: int) -> LeanMixture:
        return LeanMixture(gate, list(self.allowed[gate]), torch.ones(1))


class SoftmaxGates(GateBank):
    """G linear-softmax gates over the allowed experts, all in one product.

    Laying every gate over the level's whole pool, with the experts it may not weight masked
    to zero weight, keeps all gates in one product and all mixing in one batched product.
    Gates read the shared input [B, in] (one [B, in] x [in, G*E] product) or one input each
    [G, B, in] (``per_gate_input``, one batched product).

    Shapes: x [B, in] or [G, B, in] -> weights [G, B, E], zero where not allowed.
    """

    blocked: torch.Tensor | None

    def __init__(
        self,
        allowed: Sequence[Sequence[int]],
        num_experts: int,
        in_dim: int,
        per_gate_input: bool = False,
    ) -> None:
        super().__init__(allowed, num_experts)
        self.in_dim, self.per_gate_input = in_dim, per_gate_input
        self.weight = nn.Parameter(torch.empty(self.num_gates, in_dim, num_experts))
        self.bias = nn.Parameter(torch.empty(self.num_gates, 1, num_experts))
        self.register_buffer("blocked", blocked_mask(self.allowed, num_experts), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each gate initialised like an ``nn.Linear(in_dim, E)``."""
        init_like_linear(self.in_dim, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_gate_input:
            logits = torch.baddbmm(self.bias, x, self.weight)  # [G, B, E]
        else:
            flat = self.weight.permute(1, 0, 2).reshape(self.in_dim, -1)
            logits = torch.addmm(self.bias.reshape(-1), x, flat)
            logits = logits.view(x.shape[0], self.num_gates, self.num_experts).transpose(0, 1)
        if self.blocked is not None:
            logits = logits.masked_fill(self.blocked, float("-inf"))
        return softmax_last(logits)

    def mix(
        self, gate_input: torch.Tensor, expert_input: torch.Tensor, experts: nn.Module
    ) -> Mixed:
        weights = self(gate_input)
        expert_out = experts(expert_input)
        return Mixed(mix_experts(weights, expert_out), expert_out, weights.detach())

    def select(self, gates: Sequence[int], experts: Sequence[int]) -> SoftmaxGates:
        kept = SoftmaxGates(
            renumber_allowed(self.allowed, gates, experts),
            len(experts),
            self.in_dim,
            self.per_gate_input,
        )
        rows, columns = _index(gates), _index(experts)
        with torch.no_grad():
            kept.weight.copy_(self.weight[rows][:, :, columns])
            kept.bias.copy_(self.bias[rows][:, :, columns])
        return kept

    def lean(self, gate: int) -> LeanMixture:
        members = self.allowed[gate]
        columns = _index(members)
        return LeanMixture(
            gate,
            list(members),
            None,
            logit_weight=self.weight[gate][:, columns].detach(),
            logit_bias=self.bias[gate, 0, columns].detach(),
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, per_gate_input={self.per_gate_input}"


class FixedGates(GateBank):
    """A learned table of expert weights per gate, the same for every row, renormalised over
    the allowed experts (what a static gate becomes when nothing about it depends on x).

    Shapes: weights [G, E] (rows sum to 1) -> mixtures [G, B, D].
    """

    mask: torch.Tensor

    def __init__(self, allowed: Sequence[Sequence[int]], num_experts: int) -> None:
        super().__init__(allowed, num_experts)
        mask = allowed_mask(self.allowed, num_experts)
        self.register_buffer("mask", mask, persistent=False)
        self.table = nn.Parameter(mask.float() / mask.sum(-1, keepdim=True))

    def weights(self) -> torch.Tensor:
        table = self.table * self.mask
        return table / table.sum(-1, keepdim=True)

    def mix(
        self, gate_input: torch.Tensor, expert_input: torch.Tensor, experts: nn.Module
    ) -> Mixed:
        weights = self.weights()
        expert_out = experts(expert_input)
        out = torch.einsum("ge,ebd->gbd", weights, expert_out)
        report = weights.detach().unsqueeze(1).expand(-1, expert_out.shape[1], -1)
        return Mixed(out, expert_out, report)

    def select(self, gates: Sequence[int], experts: Sequence[int]) -> FixedGates:
        kept = FixedGates(renumber_allowed(self.allowed, gates, experts), len(experts))
        with torch.no_grad():
            kept.table.copy_(self.table[_index(gates)][:, _index(experts)])
        return kept

    def lean(self, gate: int) -> LeanMixture:
        members = self.allowed[gate]
        return LeanMixture(gate, list(members), self.weights()[gate, members].detach())


def stitch_init(num_gates: int, num_experts: int, init_self: float) -> torch.Tensor:
    """[G, E] with ``init_self`` where gate g meets expert g and rows summing to 1."""
    if num_experts == 1:
        return torch.ones(num_gates, 1)
    other = (1.0 - init_self) / (num_experts - 1)
    table = torch.full((num_gates, num_experts), other)
    diagonal = torch.arange(min(num_gates, num_experts))
    table[diagonal, diagonal] = init_self
    return table


class StitchGates(GateBank):
    """Cross-stitch units (Misra et al. 2016): output g = sum_e alpha[g, e] expert_e, with
    alpha learned and unconstrained. A diagonal alpha gives independent columns, a uniform
    one a shared network; training moves between them.

    Entries outside a gate's allowed experts are held at zero (a grown model's new gates may
    read some of the old columns only).

    Shapes: alpha [G, E]; experts [E, B, D] -> [G, B, D].
    """

    keep: torch.Tensor | None

    def __init__(
        self, allowed: Sequence[Sequence[int]], num_experts: int, init_self: float = 0.9
    ) -> None:
        super().__init__(allowed, num_experts)
        self.init_self = init_self
        self.alpha = nn.Parameter(stitch_init(self.num_gates, num_experts, init_self))
        mask = allowed_mask(self.allowed, num_experts)
        self.register_buffer("keep", None if bool(mask.all()) else mask.float(), persistent=False)
        if self.keep is not None:  # each gate starts mostly on its last allowed (its own)
            with torch.no_grad():
                for gate, members in enumerate(self.allowed):
                    row = stitch_init(1, len(members), init_self).flip(-1)[0]
                    self.alpha[gate].zero_()
                    self.alpha[gate, members] = row

    def mix(
        self, gate_input: torch.Tensor, expert_input: torch.Tensor, experts: nn.Module
    ) -> Mixed:
        expert_out = experts(expert_input)
        alpha = self.alpha if self.keep is None else self.alpha * self.keep
        return Mixed(torch.einsum("ge,ebd->gbd", alpha, expert_out), expert_out, None)

    def select(self, gates: Sequence[int], experts: Sequence[int]) -> StitchGates:
        kept = StitchGates(
            renumber_allowed(self.allowed, gates, experts), len(experts), self.init_self
        )
        with torch.no_grad():
            kept.alpha.copy_(self.alpha[_index(gates)][:, _index(experts)])
        return kept

    def fixed_support(self) -> list[list[int]]:
        return [list(members) for members in self.allowed]

    def lean(self, gate: int) -> LeanMixture:
        members = self.allowed[gate]
        return LeanMixture(gate, list(members), self.alpha[gate, members].detach())


class SelfGates(nn.Module):
    """HoME's self gate: per gate, a residual mixture of that gate's own experts, weighted by
    a sigmoid (one own expert) or a softmax (several) of a linear map of the gate's input.

    Shapes: gate input [B, in] or [G, B, in], experts [E, B, D] -> [G, B, D].
    """

    own: torch.Tensor

    def __init__(self, own: Sequence[Sequence[int]], in_dim: int) -> None:
        super().__init__()
        self.register_buffer(
            "own",
            _index([e for members in own for e in members]).view(len(own), -1),
            persistent=False,
        )
        num_gates, count = self.own.shape
        self.weight = nn.Parameter(torch.empty(num_gates, in_dim, count))
        self.bias = nn.Parameter(torch.empty(num_gates, 1, count))
        bound = 1.0 / in_dim**0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, gate_input: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        if gate_input.dim() == 2:
            logits = torch.einsum("bi,gij->gbj", gate_input, self.weight) + self.bias
        else:
            logits = torch.baddbmm(self.bias, gate_input, self.weight)  # [G, B, j]
        count = self.own.shape[1]
        weights = torch.sigmoid(logits) if count == 1 else torch.softmax(logits, dim=-1)
        return torch.einsum("gbj,gjbd->gbd", weights, experts[self.own])

    def select(self, gates: Sequence[int], experts: Sequence[int]) -> SelfGates:
        position = {expert: index for index, expert in enumerate(experts)}
        own = [[position[int(e)] for e in self.own[g]] for g in gates]
        kept = SelfGates(own, self.weight.shape[1])
        rows = _index(gates)
        with torch.no_grad():
            kept.weight.copy_(self.weight[rows])
            kept.bias.copy_(self.bias[rows])
        return kept
