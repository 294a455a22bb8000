"""Computing only the (row, task) pairs a batch asks for.

With many tasks and few labels per row (a school's exam scores, one market's conversions: one
or a few of T tasks labelled per entity), a dense forward pass runs every task's gate, own
experts and tower on every row, although only the labelled pairs reach the loss: T times the
work of the labels. Routed by row, the last level's experts that several task gates read (the
shared ones) still run on every row, once; everything else of task t (its gate, the experts
only its gate reads, its tower) runs on task t's pairs only, so the per-step work stops
growing with T.

The pairs are ordered task by task (:class:`RowPairs`). Each per-task layer is one batched
product against weights gathered per pair (:func:`pair_linear`), one operation whatever T is;
where the gathered weights would be large it runs expert by expert on the sorted segments
(:func:`polytask.nn.dispatch.grouped_addmm`) instead. Levels below the last run densely,
since in those every expert feeds gates that every task reads (PLE's shared gate reads every
task's experts). With one encoder per task (the single-task baseline), encoder t runs on task
t's pairs only (:func:`encode_pairs`) where nothing else reads it (:func:`reads_own_encoder`).
The function is the dense model's: tests compare the two, value and gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from polytask.nn.dispatch import grouped_addmm
from polytask.nn.encoders import TabularEncoder
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import GateBank, IdentityGates, SoftmaxGates, softmax_last
from polytask.nn.paired_gates import PairedSoftmaxGates
from polytask.nn.towers import Towers
from polytask.plan.schema import Plan

# route by row when the asked pairs are at most this share of rows x tasks; above it the
# dense pass, whose products are larger but fewer, costs less
ROUTE_SHARE = 0.5
# gathered per-pair weights up to this many elements; above it, one product per expert
GATHER_LIMIT = 1 << 22


@dataclass(frozen=True)
class RowPairs:
    """The (row, task) pairs to compute, task by task: ``tasks`` [P] (ascending), ``rows`` [P]."""

    tasks: torch.Tensor
    rows: torch.Tensor
    num_rows: int
    num_tasks: int

    @classmethod
    def of(cls, wanted: torch.Tensor) -> RowPairs:
        """The pairs ``wanted`` [B, T] marks."""
        tasks, rows = wanted.T.nonzero(as_tuple=True)
        return cls(tasks, rows, wanted.shape[0], wanted.shape[1])

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """[P, W] per pair -> [T, B, W]: each pair's values at its (task, row), zeros where a
        row did not ask for the task."""
        full = values.new_zeros(self.num_tasks, self.num_rows, values.shape[-1])
        return full.index_put((self.tasks, self.rows), values)

    def scatter(self, values: torch.Tensor, widths: Sequence[int]) -> list[torch.Tensor]:
        """Per task [B, widths[t]]: its pairs' rows of ``values`` [P, W], zeros elsewhere
        (rows that did not ask for the task; their labels are missing)."""
        full = self.spread(values)
        widest = values.shape[1]
        return [
            part if width == widest else part[:, :width]
            for part, width in zip(full.unbind(0), widths, strict=True)
        ]


def worth_routing(wanted: torch.Tensor) -> bool:
    """Whether few enough pairs are asked for that routing by row costs less."""
    return int(wanted.sum()) <= ROUTE_SHARE * wanted.numel()


def pair_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, expert: torch.Tensor
) -> torch.Tensor:
    """Row i through layer ``expert[i]`` of a bank ([E, in, out], [E, 1, out]):
    [P, in] -> [P, out]."""
    if x.shape[0] * weight.shape[1] * weight.shape[2] <= GATHER_LIMIT:
        chosen_bias = bias.index_select(0, expert)
        chosen = weight.index_select(0, expert)
        return torch.baddbmm(chosen_bias, x.unsqueeze(1), chosen).squeeze(1)
    order = torch.argsort(expert, stable=True)
    sizes = torch.bincount(expert, minlength=weight.shape[0]).tolist()
    out = grouped_addmm(x.index_select(0, order), sizes, weight, bias)
    return out.index_select(0, torch.argsort(order))


def pair_mlp(bank: ExpertBank, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """Row i through expert ``expert[i]`` of ``bank``, every layer: [P, in] -> [P, out]."""
    for index, (weight, bias) in enumerate(zip(bank.weights, bank.biases, strict=True)):
        x = bank.activate(pair_linear(x, weight, bias, expert), index)
    return x


def pair_towers(towers: Towers, x: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
    """Pair i through tower ``tasks[i]``: [P, in] -> [P, widest output]."""
    if towers.hidden is not None:
        x = pair_mlp(towers.hidden, x, tasks)
    return pair_mlp(towers.output, x, tasks)


def reads_own_encoder(plan: Plan) -> bool:
    """Whether, with one encoder per task, task t's output at a row reads encoder t at that
    row and nothing else, so that encoder t need run on task t's pairs alone: one level of
    plain MLP experts (no batch statistics across rows) under identity gates, no self gates,
    and the expert task t's gate picks reading encoder t (the single-task baseline's plan)."""
    if plan.encoders != "per_task" or len(plan.levels) != 1:
        return False
    level = plan.levels[0]
    experts, gates = level.experts, level.gates
    if experts.kind != "mlp" or experts.reads is None or level.self_gates is not None:
        return False
    if gates.kind != "identity":
        return False
    return all(
        experts.reads[gates.allowed[gate][0]] == task for task, gate in enumerate(plan.task_gates)
    )


def encode_pairs(
    encoders: nn.ModuleList,
    categorical: torch.Tensor,
    numeric: torch.Tensor,
    pairs: RowPairs,
) -> torch.Tensor:
    """[P, D]: each pair's row through its task's encoder (one encoder per task), what the
    dense pass's ``stack([encoder(rows) ...])`` holds at the pairs."""
    stacked = _stacked_tabular(encoders, categorical, numeric, pairs)
    if stacked is not None:
        return stacked
    return _encoded_task_by_task(encoders, categorical, numeric, pairs)


def _stacked_tabular(
    encoders: nn.ModuleList, categorical: torch.Tensor, numeric: torch.Tensor, pairs: RowPairs
) -> torch.Tensor | None:
    """[P, D]: each pair's row through its task's :class:`TabularEncoder`, by one gather from
    the tasks' embedding tables stacked, where the encoders are alike and the stack is small
    (it is copied every step); None otherwise."""
    tabular = [e for e in encoders if type(e) is TabularEncoder]
    if len(tabular) != len(encoders):
        return None
    first = tabular[0]
    alike = all(
        e.embedding.weight.shape == first.embedding.weight.shape
        and e.numeric_width == first.numeric_width
        and torch.equal(e.offsets, first.offsets)
        for e in tabular
    )
    if not alike or first.embedding.weight.numel() * len(tabular) > GATHER_LIMIT:
        return None
    parts = []
    if first.num_categorical:
        vocabulary, width = first.embedding.weight.shape
        table = torch.stack([e.embedding.weight for e in tabular]).view(-1, width)
        codes = categorical.index_select(0, pairs.rows) + first.offsets
        flat = (codes + pairs.tasks.unsqueeze(1) * vocabulary).flatten()
        parts.append(table.index_select(0, flat).view(len(pairs.rows), -1))
    if first.numeric_width:
        parts.append(numeric.index_select(0, pairs.rows))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _encoded_task_by_task(
    encoders: nn.ModuleList, categorical: torch.Tensor, numeric: torch.Tensor, pairs: RowPairs
) -> torch.Tensor:
    """[P, D]: encoder t on the rows of task t's pairs, one call per task."""
    counts = torch.bincount(pairs.tasks, minlength=pairs.num_tasks).tolist()
    parts = [
        encoder(categorical.index_select(0, rows), numeric.index_select(0, rows))
        for encoder, rows, count in zip(encoders, pairs.rows.split(counts), counts, strict=True)
        if count
    ]
    if not parts:  # no pair asked: the encoders' width from no rows
        parts = [encoders[0](categorical[:0], numeric[:0])]
    return torch.cat(parts)


def subset_forward(bank: ExpertBank, x: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Experts ``experts`` of ``bank`` on every row: [B, in] or [E, B, in] -> [len, B, out]."""
    if len(experts) == bank.num_experts:
        return bank(x)
    if x.dim() == 3:
        x = x.index_select(0, experts)
    for index, (weight, bias) in enumerate(zip(bank.weights, bank.biases, strict=True)):
        chosen, chosen_bias = weight.index_select(0, experts), bias.index_select(0, experts)
        x = bank.activate(ExpertBank.layer(x, chosen, chosen_bias), index)
    return x


def _rows_of(x: torch.Tensor, rows: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """What member ``members[i]`` (an expert or gate) reads at row ``rows[i]``: from the one
    shared input [B, in] or the members' own [N, B, in]."""
    if x.dim() == 2:
        return x.index_select(0, rows)
    flat = x.reshape(-1, x.shape[-1])
    return flat.index_select(0, members * x.shape[1] + rows)


class LastLevelRoute(nn.Module):
    """The last level of a plan, computed for (row, task) pairs: index tables built once.

    Supported: plain expert banks (:class:`ExpertBank`) without self gates, under identity
    or softmax gates of either layout; :meth:`supports` says whether a level qualifies.
    """

    task_gate: torch.Tensor
    allowed: torch.Tensor
    valid: torch.Tensor
    dense_experts: torch.Tensor
    dense_position: torch.Tensor
    private_experts: torch.Tensor
    private_gate: torch.Tensor
    private_position: torch.Tensor
    pair_columns: torch.Tensor

    def __init__(self, gates: GateBank, task_gates: Sequence[int]) -> None:
        super().__init__()
        allowed = [list(members) for members in gates.allowed]
        readers: dict[int, set[int]] = {}
        for gate in set(task_gates):
            for expert in allowed[gate]:
                readers.setdefault(expert, set()).add(gate)
        dense = sorted(e for e, gs in readers.items() if len(gs) > 1)
        private = sorted(e for e, gs in readers.items() if len(gs) == 1)
        width = max(len(members) for members in allowed)
        padded = [members + [members[0]] * (width - len(members)) for members in allowed]
        valid = [[a < len(members) for a in range(width)] for members in allowed]
        offsets, columns = 0, []
        for members in allowed:  # paired layout: each gate's pairs in its allowed order
            columns.append([offsets + min(a, len(members) - 1) for a in range(width)])
            offsets += len(members)
        dense_position = [-1] * gates.num_experts
        for position, expert in enumerate(dense):
            dense_position[expert] = position
        private_position = [-1] * gates.num_experts
        for position, expert in enumerate(private):
            private_position[expert] = position
        tables = {
            "task_gate": list(task_gates),
            "allowed": padded,
            "valid": valid,
            "dense_experts": dense,
            "dense_position": dense_position,
            "private_experts": private,
            "private_gate": [next(iter(readers[e])) for e in private],
            "private_position": private_position,
            "pair_columns": columns,
        }
        for name, values in tables.items():
            dtype = torch.bool if name == "valid" else torch.long
            self.register_buffer(name, torch.tensor(values, dtype=dtype), persistent=False)

    def own_inputs(
        self, experts: ExpertBank, values: torch.Tensor, pairs: RowPairs
    ) -> torch.Tensor:
        """Identity gates whose experts read each pair's own input ``values`` [P, in] (one
        encoder per task): each pair through the expert its task's gate picks, [P, out]."""
        gate = self.task_gate.index_select(0, pairs.tasks)
        return pair_mlp(experts, values, self.allowed.index_select(0, gate)[:, 0])

    @staticmethod
    def supports(experts: nn.Module, gates: GateBank, has_self_gates: bool) -> bool:
        """Whether a level can be routed by row (else it runs densely)."""
        plain_bank = type(experts) is ExpertBank and not experts.layer_adapters
        known_gates = type(gates) in (IdentityGates, SoftmaxGates, PairedSoftmaxGates)
        return plain_bank and known_gates and not has_self_gates

    def forward(
        self,
        experts: ExpertBank,
        gates: GateBank,
        expert_input: torch.Tensor,
        gate_input: torch.Tensor,
        pairs: RowPairs,
    ) -> torch.Tensor:
        """Each pair's output of its task's gate: [P, out]."""
        gate = self.task_gate.index_select(0, pairs.tasks)
        rows, num_rows = pairs.rows, pairs.num_rows
        dense_out = subset_forward(experts, expert_input, self.dense_experts)  # [Dn, B, D]
        private_out, lookup = self._private(experts, expert_input, gate, pairs)
        table = torch.cat([dense_out.reshape(-1, dense_out.shape[-1]), private_out])
        members = self.allowed.index_select(0, gate)  # [P, A]
        valid = self.valid.index_select(0, gate)
        slot = self.dense_position[members] * num_rows + rows.unsqueeze(1)
        if len(self.private_experts):  # lookup[private position, pair]
            private_slot = lookup.gather(0, self.private_position[members].clamp(min=0).T).T
            slot = torch.where(self.dense_position[members] >= 0, slot, private_slot)
        slot = torch.where(valid, slot, torch.zeros_like(slot))  # pads: any row, weight 0
        weights = self._weights(gates, gate_input, gate, rows, members, valid)  # [P, A]
        gathered = table.index_select(0, slot.flatten()).view(*slot.shape, table.shape[-1])
        return torch.bmm(weights.unsqueeze(1).to(gathered.dtype), gathered).squeeze(1)

    def _private(
        self,
        experts: ExpertBank,
        expert_input: torch.Tensor,
        gate: torch.Tensor,
        pairs: RowPairs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The private experts on their gate's pairs: outputs [C, D] sorted by expert, and
        [private experts, P] the row of the whole table (dense outputs first) holding each
        (expert, pair)'s output; -1 where the expert does not serve the pair."""
        offset = len(self.dense_experts) * pairs.num_rows
        member = gate.unsqueeze(0) == self.private_gate.unsqueeze(1)  # [Ep, P]
        which, pair = member.nonzero(as_tuple=True)
        chosen = self.private_experts.index_select(0, which)
        inputs = _rows_of(expert_input, pairs.rows.index_select(0, pair), chosen)
        out = pair_mlp(experts, inputs, chosen)
        lookup = torch.full(member.shape, -1, dtype=torch.long, device=gate.device)
        lookup[which, pair] = torch.arange(len(which), device=gate.device) + offset
        return out, lookup

    def _weights(
        self,
        gates: GateBank,
        gate_input: torch.Tensor,
        gate: torch.Tensor,
        rows: torch.Tensor,
        members: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """Each pair's gate weights over its gate's allowed experts (pads 0): [P, A]."""
        if isinstance(gates, IdentityGates):
            return valid.to(torch.float32)
        inputs = _rows_of(gate_input, rows, gate)  # [P, in]
        if isinstance(gates, PairedSoftmaxGates):
            columns = self.pair_columns.index_select(0, gate)  # [P, A]
            chosen = gates.weight.t()[columns]  # [P, A, in]
            logits = torch.bmm(chosen, inputs.unsqueeze(-1)).squeeze(-1) + gates.bias[columns]
        else:
            assert isinstance(gates, SoftmaxGates)
            full = pair_linear(inputs, gates.weight, gates.bias, gate)  # [P, E]
            logits = full.gather(1, members)
        return softmax_last(logits.masked_fill(~valid, float("-inf")))
