"""Softmax gates stored per allowed (gate, expert) pair: linear in the number of tasks.

CGC and PLE give each task a gate over its own experts and the shared ones. Laid over the
level's whole pool (:class:`~polytask.nn.gates.SoftmaxGates`), T gates over T task experts
plus the shared ones cost T x (T + S) logits, weights and mixing terms, most of them masked
to zero: at T = 150 that is 150 x 154 where 150 x 5 are used, and it made an epoch of CGC 95
times slower than at T = 10. Here every gate keeps only its allowed pairs (parameters
[in, P] and [P] over the P pairs, gate by gate), so parameters grow with P, linearly in T.

The mixture is computed by groups of gates of the same shape (:class:`GateGroup`): the
experts many gates read (the shared ones) mix by one batched matrix product per group, and
each gate's few experts of its own by an elementwise product, with one softmax per group
over a [rows, gates, pairs] block. A gather of every pair's expert output ([P, rows, width])
and an ``index_add`` back, as an earlier version did, moved six times the data of the
mixture itself and made CGC's epoch at T = 150 20 times the T = 10 one.

The function is the same as the dense layout's (same logits, same softmax over the allowed
experts, same mixture); :func:`softmax_gates` picks this layout where the allowed pairs are
at most :data:`PAIRED_SHARE` of the pool. A run saved with the dense layout loads into this
one (the allowed entries of the dense tensors are copied).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from polytask.nn.gates import (
    GateBank,
    LeanMixture,
    Mixed,
    SoftmaxGates,
    init_like_linear,
    renumber_allowed,
    softmax_last,
)

# Paired layout where the allowed (gate, expert) pairs are at most this share of G x E.
PAIRED_SHARE = 0.25


@dataclass(frozen=True)
class GateGroup:
    """Gates of one shape: each reads ``own`` experts of its own (as many for every gate of the
    group) and the same ``common`` experts.

    gates [G_k]; own [G_k, k] expert indices; common [S] expert indices; pairs [G_k, k + S]:
    the pair index of each (gate, expert), own first, then common.
    """

    gates: list[int]
    own: list[list[int]]
    common: list[int]
    pairs: list[list[int]]


def gate_groups(allowed: Sequence[Sequence[int]]) -> list[GateGroup]:
    """Group gates by the experts they share with most others.

    An expert read by at least two gates and by more than half of them is common to the
    gates that read it; a gate's other experts are its own. Gates with the same common
    experts and as many own ones form a group (CGC's task gates: one group, their own
    experts a diagonal and the shared ones a block). A group of one gate reads all its
    experts as common, one matrix product (PLE's shared gate over every expert).
    """
    readers = [0] * (1 + max((e for members in allowed for e in members), default=-1))
    for members in allowed:
        for expert in set(members):
            readers[expert] += 1
    threshold = max(2, len(allowed) // 2 + 1)
    pair_of: dict[tuple[int, int], int] = {}
    for gate, members in enumerate(allowed):
        for expert in members:
            pair_of[(gate, expert)] = len(pair_of)
    keyed: dict[tuple[tuple[int, ...], int], list[tuple[int, list[int]]]] = {}
    for gate, members in enumerate(allowed):
        common = tuple(sorted(e for e in members if readers[e] >= threshold))
        own = [e for e in members if readers[e] < threshold]
        keyed.setdefault((common, len(own)), []).append((gate, own))
    groups = []
    for (common, _), gates in keyed.items():
        if len(gates) == 1:
            gate, own = gates[0]
            common, own = tuple(sorted({*common, *own})), []
            gates = [(gate, own)]
        groups.append(
            GateGroup(
                gates=[gate for gate, _ in gates],
                own=[own for _, own in gates],
                common=list(common),
                pairs=[[pair_of[(gate, e)] for e in (*own, *common)] for gate, own in gates],
            )
        )
    return groups


def _take(values: torch.Tensor, index: torch.Tensor, start: int | None) -> torch.Tensor:
    """values[index] along dim 0: a view where the index is a contiguous range."""
    if start is not None:
        return values.narrow(0, start, len(index))
    return values.index_select(0, index)


def _range_start(values: Sequence[int]) -> int | None:
    """The first value where ``values`` is a run of consecutive integers, else None."""
    values = list(values)
    if values and values == list(range(values[0], values[0] + len(values))):
        return values[0]
    return None


class _GroupIndex(nn.Module):
    """One :class:`GateGroup` as index buffers (moved with the module, not saved)."""

    gates: torch.Tensor
    own: torch.Tensor
    common: torch.Tensor

    def __init__(self, group: GateGroup) -> None:
        super().__init__()
        self.size, self.own_count = len(group.gates), len(group.own[0])
        flat_own = [e for members in group.own for e in members]
        for name, values in (("gates", group.gates), ("own", flat_own), ("common", group.common)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.long), persistent=False)
        self.gates_start = _range_start(group.gates)
        self.own_start = _range_start(flat_own)
        self.common_start = _range_start(group.common)

    def ranges(self) -> list[tuple[int, int]]:
        """The (start, length) runs of experts this group reads as views."""
        runs = []
        if len(self.common) and self.common_start is not None:
            runs.append((self.common_start, len(self.common)))
        if self.own_count and self.own_start is not None:
            runs.append((self.own_start, len(self.own)))
        return runs

    def mix(self, weights: torch.Tensor, take: ExpertTake) -> torch.Tensor:
        """weights [B, G_k, k + S] (own first) -> [G_k, B, D]; ``take`` gives expert outputs."""
        k = self.own_count
        out: torch.Tensor | None = None
        if len(self.common):
            shared = take(self.common, self.common_start)  # [S, B, D]
            out = torch.bmm(weights[:, :, k:], shared.transpose(0, 1)).transpose(0, 1)
        if k:
            own = take(self.own, self.own_start)  # [G_k * k, B, D]
            if k == 1:
                mixed = own * weights[:, :, 0].t().unsqueeze(-1)
            else:
                own = own.view(self.size, k, *own.shape[1:])
                mixed = (own * weights[:, :, :k].permute(1, 2, 0).unsqueeze(-1)).sum(1)
            out = mixed if out is None else out + mixed
        assert out is not None
        return out


ExpertTake = Callable[[torch.Tensor, "int | None"], torch.Tensor]


def split_points(ranges: Sequence[tuple[int, int]], total: int) -> list[int] | None:
    """Sizes that split [0, total) so that every range is one piece; None if ranges overlap.

    Why: a narrowed view's backward fills a zero tensor of the whole [E, B, D] expert output
    per view; ``split``'s concatenates the pieces' gradients once."""
    distinct = sorted(set(ranges))
    for (a, n), (b, _) in itertools.pairwise(distinct):
        if a + n > b:
            return None
    bounds = sorted({0, total, *(a for a, _ in distinct), *(a + n for a, n in distinct)})
    return [stop - start for start, stop in itertools.pairwise(bounds)]


class PairedSoftmaxGates(GateBank):
    """G linear-softmax gates, each over its allowed experts only.

    Shapes: x [B, in] or [G, B, in] -> weights [B, P] over the pairs; mixtures [G, B, D].
    Pairs are ordered gate by gate, each gate's in the order of its allowed list.
    """

    gate_of: torch.Tensor
    expert_of: torch.Tensor
    pair_order: torch.Tensor
    pair_place: torch.Tensor
    gate_place: torch.Tensor

    def __init__(
        self,
        allowed: Sequence[Sequence[int]],
        num_experts: int,
        in_dim: int,
        per_gate_input: bool = False,
    ) -> None:
        super().__init__(allowed, num_experts)
        self.in_dim, self.per_gate_input = in_dim, per_gate_input
        gate_of = [g for g, members in enumerate(self.allowed) for _ in members]
        expert_of = [e for members in self.allowed for e in members]
        self.register_buffer("gate_of", torch.tensor(gate_of, dtype=torch.long), persistent=False)
        self.register_buffer(
            "expert_of", torch.tensor(expert_of, dtype=torch.long), persistent=False
        )
        self.weight = nn.Parameter(torch.empty(in_dim, len(expert_of)))
        self.bias = nn.Parameter(torch.empty(len(expert_of)))
        groups = gate_groups(self.allowed)
        self.groups = nn.ModuleList(_GroupIndex(group) for group in groups)
        order = [p for group in groups for pairs in group.pairs for p in pairs]
        gate_order = [g for group in groups for g in group.gates]
        # pairs in group order (each group's [G_k, k + S] block flat), and back
        self.register_buffer("pair_order", torch.tensor(order), persistent=False)
        self.register_buffer("pair_place", torch.argsort(torch.tensor(order)), persistent=False)
        self.register_buffer(
            "gate_place", torch.argsort(torch.tensor(gate_order)), persistent=False
        )
        self.in_order = gate_order == list(range(len(gate_order)))
        runs = [run for group in self.group_modules() for run in group.ranges()]
        self.expert_split = split_points(runs, num_experts)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each gate initialised like an ``nn.Linear(in_dim, E)`` (as the dense layout)."""
        init_like_linear(self.in_dim, self.weight, self.bias)

    def _taker(self, expert_out: torch.Tensor) -> ExpertTake:
        """Expert outputs by index: pieces of one split where the groups read disjoint runs."""
        if self.expert_split is None:
            return lambda index, start: _take(expert_out, index, start)
        pieces, begin = {}, 0
        for size, piece in zip(self.expert_split, expert_out.split(self.expert_split), strict=True):
            pieces[(begin, size)] = piece
            begin += size

        def take(index: torch.Tensor, start: int | None) -> torch.Tensor:
            if start is not None and (start, len(index)) in pieces:
                return pieces[(start, len(index))]
            return _take(expert_out, index, start)

        return take

    def group_modules(self) -> list[_GroupIndex]:
        return [group for group in self.groups if isinstance(group, _GroupIndex)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate weights per pair [B, P]: per gate a softmax over its pairs."""
        return self.pair_weights(self.group_weights(x))

    def pair_weights(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """The groups' weight blocks as one [B, P] in pair order."""
        flat = torch.cat([block.flatten(1) for block in blocks], dim=1)
        return flat.index_select(1, self.pair_place)

    def group_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per group, its gates' weights [B, G_k, k + S] (a softmax over the last axis)."""
        weight = self.weight.index_select(1, self.pair_order)
        bias = self.bias.index_select(0, self.pair_order)
        blocks, start = [], 0
        for group in self.group_modules():
            width = group.own_count + len(group.common)
            stop = start + group.size * width
            w, b = weight[:, start:stop], bias[start:stop]
            if self.per_gate_input:  # each gate reads its own input
                inputs = _take(x, group.gates, group.gates_start)  # [G_k, B, in]
                w = w.reshape(self.in_dim, group.size, width).transpose(0, 1)
                logits = torch.baddbmm(b.view(group.size, 1, width), inputs, w)
                logits = logits.transpose(0, 1)  # [B, G_k, width]
            else:
                logits = torch.addmm(b, x, w).view(x.shape[0], group.size, width)
            blocks.append(softmax_last(logits))
            start = stop
        return blocks

    def dense(self, weights: torch.Tensor) -> torch.Tensor:
        """Pair weights [B, P] as the dense layout's [G, B, E] (0 where not allowed)."""
        rows = weights.shape[0]
        flat = torch.zeros(rows, self.num_gates * self.num_experts, dtype=weights.dtype)
        flat[:, self.gate_of * self.num_experts + self.expert_of] = weights
        return flat.view(rows, self.num_gates, self.num_experts).transpose(0, 1)

    def mix(
        self, gate_input: torch.Tensor, expert_input: torch.Tensor, experts: nn.Module
    ) -> Mixed:
        blocks = self.group_weights(gate_input)
        expert_out = experts(expert_input)  # [E, B, D]
        take = self._taker(expert_out)
        parts = [
            group.mix(block, take)
            for group, block in zip(self.group_modules(), blocks, strict=True)
        ]
        out = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
        if not self.in_order:
            out = out.index_select(0, self.gate_place)
        # the dense [G, B, E] weights are for reports and slimming (eval): not built in training
        report = None
        if not self.training:
            report = self.dense(self.pair_weights([block.detach() for block in blocks]))
        return Mixed(out, expert_out, report)

    # ------------------------------------------------------------------ the dense layout
    def dense_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameters as the dense layout holds them: [G, in, E] and [G, 1, E]."""
        weight = torch.zeros(self.num_gates, self.in_dim, self.num_experts)
        bias = torch.zeros(self.num_gates, 1, self.num_experts)
        weight[self.gate_of, :, self.expert_of] = self.weight.detach().t()
        bias[self.gate_of, 0, self.expert_of] = self.bias.detach()
        return weight, bias

    def load_dense(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Take the allowed entries of dense-layout parameters [G, in, E], [G, 1, E]."""
        with torch.no_grad():
            self.weight.copy_(weight[self.gate_of, :, self.expert_of].t())
            self.bias.copy_(bias[self.gate_of, 0, self.expert_of])

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        """A state saved with the dense layout (a run of an earlier polytask) is converted."""
        weight, bias = state_dict.get(prefix + "weight"), state_dict.get(prefix + "bias")
        if weight is not None and bias is not None and weight.dim() == 3:
            state_dict[prefix + "weight"] = weight[self.gate_of, :, self.expert_of].t()
            state_dict[prefix + "bias"] = bias[self.gate_of, 0, self.expert_of]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def select(self, gates: Sequence[int], experts: Sequence[int]) -> GateBank:
        weight, bias = self.dense_parameters()
        kept = softmax_gates(
            renumber_allowed(self.allowed, gates, experts),
            len(experts),
            self.in_dim,
            self.per_gate_input,
        )
        rows, columns = torch.tensor(list(gates)), torch.tensor(list(experts))
        load_dense(kept, weight[rows][:, :, columns], bias[rows][:, :, columns])
        return kept

    def lean(self, gate: int) -> LeanMixture:
        pairs = (self.gate_of == gate).nonzero().flatten()
        return LeanMixture(
            gate,
            list(self.allowed[gate]),
            None,
            logit_weight=self.weight[:, pairs].detach(),
            logit_bias=self.bias[pairs].detach(),
        )

    def extra_repr(self) -> str:
        pairs = len(self.expert_of)
        return f"{super().extra_repr()}, pairs={pairs}, per_gate_input={self.per_gate_input}"


def softmax_gates(
    allowed: Sequence[Sequence[int]], num_experts: int, in_dim: int, per_gate_input: bool
) -> GateBank:
    """Softmax gates in the layout that costs less: paired where few pairs are allowed."""
    pairs = sum(len(members) for members in allowed)
    if pairs <= PAIRED_SHARE * len(allowed) * num_experts:
        return PairedSoftmaxGates(allowed, num_experts, in_dim, per_gate_input)
    return SoftmaxGates(allowed, num_experts, in_dim, per_gate_input)


def load_dense(gates: GateBank, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Fill softmax gates of either layout from dense-layout parameters."""
    if isinstance(gates, PairedSoftmaxGates):
        gates.load_dense(weight, bias)
        return
    assert isinstance(gates, SoftmaxGates)
    with torch.no_grad():
        gates.weight.copy_(weight)
        gates.bias.copy_(bias)
