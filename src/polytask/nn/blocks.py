"""Banks in blocks: a grown level computes its old experts, gates and towers exactly as before
and what growth added beside them.

A fused bank's floating-point result depends on its shape: a BLAS kernel picks its blocking
and accumulation order by the matrix sizes, so the old experts' columns of a wider product,
or an old gate's softmax over a longer row, can differ in the last bit from what the smaller
bank computed. Growing a model by appending rows to its tensors therefore cannot keep the old
tasks' outputs bit-identical. Instead each growth adds a block:

- :class:`ExpertBlocks`: the experts of a level as consecutive banks; every block runs on
  its own rows exactly as a bank of its size would;
- :class:`GateBlocks`: consecutive groups of gates, group b a plain gate bank over a range
  of the level's experts (those that existed when it was added; a copy's own, for PackNet's
  per-task copies), mixing the outputs of exactly those experts. Group 0 receives the very
  tensor the old level's bank produced, so it repeats the old computation;
- :class:`TowerBlocks`: the towers as consecutive :class:`~polytask.nn.towers.Towers`; a
  block whose tasks all read one representation reads it once, as the old towers did.

The old blocks keep their tensors whole, so growing freezes them with ``requires_grad``
instead of masks, and their gradients are never computed. Every block interface is the
flat one of a plain bank (:meth:`select` for slimming, :meth:`fixed_support`,
:meth:`lean`), indices running over all blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import cast

import torch
from torch import nn

from polytask.nn.experts import ExpertBank
from polytask.nn.gates import GateBank, LeanMixture, Mixed
from polytask.nn.towers import Towers


def _spans(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of each consecutive block."""
    ends = list(accumulate(sizes))
    return [(end - size, end) for size, end in zip(sizes, ends, strict=True)]


def _split(members: Sequence[int], sizes: Sequence[int]) -> list[list[int]]:
    """Ascending global indices -> per block, the local indices of those inside it."""
    return [[m - start for m in members if start <= m < end] for start, end in _spans(sizes)]


# ---------------------------------------------------------------------- experts
class ExpertBlocks(nn.Module):
    """The experts of a level as consecutive :class:`ExpertBank` blocks.

    Shapes: [B, in] (every expert reads it) or [E, B, in] -> [E, B, out], block by block.
    """

    banks: nn.ModuleList

    def __init__(self, banks: Sequence[ExpertBank]) -> None:
        super().__init__()
        self.banks = nn.ModuleList(banks)
        self.sizes = [bank.num_experts for bank in banks]
        first = banks[0]
        self.num_experts, self.in_dim, self.hidden = sum(self.sizes), first.in_dim, first.hidden

    @property
    def out_dim(self) -> int:
        return self.hidden[-1]

    @property
    def parts(self) -> list[ExpertBank]:
        return cast(list[ExpertBank], list(self.banks))

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's output [E_b, B, out], each computed as by a bank of its own."""
        if x.dim() == 2:
            return [bank(x) for bank in self.parts]
        return [bank(part) for bank, part in zip(self.parts, x.split(self.sizes), strict=True)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.forward_blocks(x))

    def forward_segments(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """Rows sorted by expert (segment e: ``sizes[e]`` rows) through their experts: each
        block runs its own experts' segments (sparse dispatch over several blocks)."""
        pieces, row = [], 0
        for bank, (start, end) in zip(self.parts, _spans(self.sizes), strict=True):
            count = sum(sizes[start:end])
            pieces.append(bank.forward_segments(x[row : row + count], sizes[start:end]))
            row += count
        return torch.cat(pieces)

    def span(self, start: int, end: int) -> nn.Module:
        """Experts ``start`` to ``end - 1`` (whole blocks) as one module."""
        bounds = [0, *accumulate(self.sizes)]
        first, last = bounds.index(start), bounds.index(end)
        chosen = self.parts[first:last]
        return chosen[0] if len(chosen) == 1 else ExpertBlocks(chosen)

    def select(self, experts: Sequence[int]) -> nn.Module:
        """The given experts (ascending), block by block; one bank when one block is left."""
        kept = [
            bank.select(local)
            for bank, local in zip(self.parts, _split(experts, self.sizes), strict=True)
            if local
        ]
        return kept[0] if len(kept) == 1 else ExpertBlocks(kept)

    def extra_repr(self) -> str:
        return f"blocks={self.sizes}"


def expert_span(experts: nn.Module, start: int, end: int) -> nn.Module:
    """A level's experts ``start`` to ``end - 1`` as one module (the bank itself when that
    is all of it)."""
    if isinstance(experts, ExpertBlocks):
        return experts.span(start, end)
    return experts


def expert_blocks(experts: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """A level's expert outputs per block (one block for a plain bank)."""
    if isinstance(experts, ExpertBlocks):
        return experts.forward_blocks(x)
    return [experts(x)]


# ---------------------------------------------------------------------- gates
class _Given(nn.Module):
    """Stands in for an expert bank whose outputs are already computed (a gate bank's
    ``mix`` runs its experts; a block's experts ran once for every gate block)."""

    def __init__(self, outputs: torch.Tensor) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs


class GateBlocks(GateBank):
    """Consecutive gate banks, bank b over the level's experts ``pools[b] = (start, end)``
    (see the module docstring), its allowed experts numbered from ``start``. Dense kinds mix
    expert outputs computed once per expert block; top-k routing dispatches each block over
    its own range of the experts.

    Shapes: as the plain banks; weights reported [G, B, E] (zero outside a block's range).
    """

    banks: nn.ModuleList

    def __init__(self, banks: Sequence[GateBank], pools: Sequence[tuple[int, int]]) -> None:
        allowed = [
            [e + start for e in members]
            for bank, (start, _) in zip(banks, pools, strict=True)
            for members in bank.allowed
        ]
        super().__init__(allowed, max(end for _, end in pools))
        self.banks = nn.ModuleList(banks)
        self.pools = [(int(start), int(end)) for start, end in pools]
        self.counts = [bank.num_gates for bank in banks]
        self.dense = not any(hasattr(bank, "top_k") for bank in banks)

    @property
    def parts(self) -> list[GateBank]:
        return cast(list[GateBank], list(self.banks))

    def mix(
        self, gate_input: torch.Tensor, expert_input: torch.Tensor, experts: nn.Module
    ) -> Mixed:
        per_gate = gate_input.dim() == 3 and gate_input.shape[0] == self.num_gates
        inputs = gate_input.split(self.counts) if per_gate else [gate_input] * len(self.banks)
        blocks = expert_blocks(experts, expert_input) if self.dense else []
        bounds = [0, *accumulate(b.shape[0] for b in blocks)]
        mixes = []
        for bank, (start, end), part in zip(self.parts, self.pools, inputs, strict=True):
            if self.dense:
                used = blocks[bounds.index(start) : bounds.index(end)]
                given = _Given(used[0] if len(used) == 1 else torch.cat(used))
                mixes.append(bank.mix(part, expert_input, given))
            else:
                mixes.append(bank.mix(part, expert_input, expert_span(experts, start, end)))
        return Mixed(
            torch.cat([m.out for m in mixes]),
            (blocks[0] if len(blocks) == 1 else torch.cat(blocks)) if self.dense else None,
            self._report(mixes),
            _sum([m.auxiliary for m in mixes]),
        )

    def _report(self, mixes: list[Mixed]) -> torch.Tensor | None:
        """Each block's weights laid over the whole level, zero outside its range."""
        if any(m.weights is None for m in mixes):
            return None
        padded = [
            nn.functional.pad(m.weights, (start, self.num_experts - end))
            for m, (start, end) in zip(mixes, self.pools, strict=True)
            if m.weights is not None
        ]
        return torch.cat(padded)

    def _locate(self, gate: int) -> tuple[int, int]:
        for number, (start, end) in enumerate(_spans(self.counts)):
            if start <= gate < end:
                return number, gate - start
        raise IndexError(gate)

    def select(self, gates: Sequence[int], experts: Sequence[int]) -> GateBank:
        """The given gates over the given experts (ascending), block by block."""
        kept, pools = [], []
        chosen = _split(gates, self.counts)
        for bank, (start, end), local in zip(self.parts, self.pools, chosen, strict=True):
            if local:
                inside = [e - start for e in experts if start <= e < end]
                kept.append(bank.select(local, inside))
                before = sum(e < start for e in experts)
                pools.append((before, before + len(inside)))
        if len(kept) == 1 and pools[0] == (0, len(experts)):
            return kept[0]
        return GateBlocks(kept, pools)

    def fixed_support(self) -> list[list[int]] | None:
        supports = [bank.fixed_support() for bank in self.parts]
        if any(support is None for support in supports):
            return None
        return [
            [e + start for e in members]
            for support, (start, _) in zip(supports, self.pools, strict=True)
            if support is not None
            for members in support
        ]

    def lean(self, gate: int) -> LeanMixture | None:
        number, local = self._locate(gate)
        mixture = self.parts[number].lean(local)
        if mixture is not None:
            start = self.pools[number][0]
            mixture.gate = gate
            mixture.experts = [e + start for e in mixture.experts]
        return mixture

    def extra_repr(self) -> str:
        return f"gates={self.counts}, pools={self.pools}"


def _sum(terms: list[torch.Tensor | None]) -> torch.Tensor | None:
    present = [term for term in terms if term is not None]
    if not present:
        return None
    total = present[0]
    for term in present[1:]:
        total = total + term
    return total


# ---------------------------------------------------------------------- towers
class TowerBlocks(nn.Module):
    """The task towers as consecutive :class:`Towers` blocks.

    ``task_gates`` (which representation each task reads) says which blocks read one
    representation only: those take it once, through :meth:`Towers.forward_common`, as a
    plain model whose towers all read one representation does.

    Shapes: x [T, B, in] (tower t reads slice t) or [B, in] -> list of T [B, out_t].
    """

    blocks: nn.ModuleList

    def __init__(self, blocks: Sequence[Towers], task_gates: Sequence[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.sizes = [len(block.out_dims) for block in blocks]
        self.task_gates = list(task_gates)
        self.out_dims = [dim for block in blocks for dim in block.out_dims]
        self.common = [
            len(set(self.task_gates[start:end])) == 1 for start, end in _spans(self.sizes)
        ]

    @property
    def parts(self) -> list[Towers]:
        return cast(list[Towers], list(self.blocks))

    @property
    def hidden(self) -> ExpertBank | None:
        """The hidden layers' bank of the first block (its widths are every block's)."""
        return self.parts[0].hidden

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        spans = _spans(self.sizes)
        for block, common, (start, end) in zip(self.parts, self.common, spans, strict=True):
            if x.dim() == 2:
                outputs += block.forward_common(x)[0]
            elif common:
                outputs += block.forward_common(x[start])[0]
            else:
                outputs += block(x[start:end])
        return outputs

    def select(self, keep: Sequence[int]) -> Towers | TowerBlocks:
        """The kept tasks' towers (ascending), block by block; plain towers when one block
        is left."""
        kept, gates = [], []
        for block, local, (start, _) in zip(
            self.parts, _split(keep, self.sizes), _spans(self.sizes), strict=True
        ):
            if local:
                kept.append(block.select(local))
                gates.append([self.task_gates[start + t] for t in local])
        if len(kept) == 1:
            return kept[0]
        return TowerBlocks(kept, [gate for block in gates for gate in block])

    def extra_repr(self) -> str:
        return f"blocks={self.sizes}, common={self.common}"


# ---------------------------------------------------------------------- building, growing
def build_towers(
    in_dim: int,
    hidden: list[int],
    out_dims: list[int],
    dropout: float,
    blocks: list[int] | None,
    task_gates: list[int],
) -> Towers | TowerBlocks:
    """Plain fused towers, or towers in ``blocks`` (a grown plan's ``tower_blocks``)."""
    if blocks is None:
        return Towers(in_dim, hidden, out_dims, dropout=dropout)
    parts = [Towers(in_dim, hidden, out_dims[start:end], dropout) for start, end in _spans(blocks)]
    return TowerBlocks(parts, task_gates)


def parts(module: nn.Module) -> list[nn.Module]:
    """A module's blocks, in order: itself when it is a plain bank or plain towers."""
    if isinstance(module, ExpertBlocks | GateBlocks):
        return list(module.banks)
    if isinstance(module, TowerBlocks):
        return list(module.blocks)
    return [module]


def load_first_blocks(target: nn.Module, source: nn.Module) -> None:
    """Load ``source`` (plain, or in blocks) into the first blocks of ``target``, block by
    block: what a grown module holds of the module it grew from."""
    sources, targets = parts(source), parts(target)
    if len(sources) > len(targets):
        raise ValueError("the grown module has fewer blocks than its source")
    for old, new in zip(sources, targets, strict=False):
        new.load_state_dict(old.state_dict())
