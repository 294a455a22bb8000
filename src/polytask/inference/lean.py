"""The lean serving form of a trained model: the same function in as few operations as it takes.

At serving batch sizes a small multi-task model spends its time in per-operation overhead, not
in arithmetic: the eager model runs an embedding gather, a concatenation, the fused expert
bank, the gates, the mixture and the fused towers, each a handful of tensor operations. For
inference the weights are fixed, so most of that can be folded away once, at load time:

* The encoder's embedding table and the first layer of everything that reads the encoder
  output (all experts' first layers and all gate logits, side by side) are one linear map of
  the one-hot codes and the numeric features. Its categorical half is precomputed as a table
  of per-code contributions and read with one ``embedding_bag`` sum; the first layer's bias
  rides in the rows of the first categorical column (every row picks exactly one of them).
  The first layer is then one gather-sum plus one ``addmm``.
* Fixed mixture weights (task-level MoE under task routing, shared-bottom's single bottom,
  static DSelect-k gates) are folded into the next linear layer of each task's tower, so the
  mixture costs nothing; per-example softmax gates (MMoE, OMoE, masked CGC-style gates) are
  computed from their folded logit columns over the allowed experts only.
* Each task's tower is a plain chain of ``addmm``.

The result equals the eager model up to float rounding (summation order changes); it is the
form :class:`~polytask.inference.predictor.Predictor` (and so the server) runs whenever a model
has it (:func:`lean_form` returns ``None`` and the eager model serves otherwise: per-task
encoders, HoME's normalised experts, several levels, ESMM/AITM's cross-task heads).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from polytask.artifacts import run_dir as rd
from polytask.artifacts.weights import save_weights
from polytask.features import Features
from polytask.inference.arrays import ArrayHead, LeanArrays
from polytask.model import ModelOutput, MultiTaskModel
from polytask.nn.blocks import ExpertBlocks, TowerBlocks
from polytask.nn.encoders import TabularEncoder
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import LeanMixture, softmax_last
from polytask.nn.towers import Towers

# Fold the embedding into the first layer only while the folded table stays this small
# (floats); beyond it the gather of a wide table costs more than the product it saves.
MAX_FOLDED_TABLE = 1 << 23
FIRST_LAYER_ALIGN = 16
# Bag start positions kept for batches up to this many rows (larger ones compute theirs).
CACHED_BAGS = 4096


class FoldedInput(nn.Module):
    """``x @ W + b`` where ``x`` is the tabular encoder's output, read straight from the codes.

    Shapes: categorical [B, C], numeric [B, N] -> [B, width].
    """

    table: torch.Tensor
    offsets: torch.Tensor
    bag_starts: torch.Tensor
    bias: torch.Tensor | None
    numeric_weight: torch.Tensor

    def __init__(self, encoder: TabularEncoder, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        columns, dim = encoder.num_categorical, encoder.embedding_dim
        self.num_categorical = columns
        table = encoder.embedding.weight.detach()
        if columns:
            owner = torch.bucketize(torch.arange(len(table)), encoder.offsets, right=True) - 1
            # code v of column j contributes E[v] @ W[j*D:(j+1)*D]
            blocks = weight[: columns * dim].view(columns, dim, -1)  # [C, D, W]
            folded = torch.einsum("vd,vdw->vw", table, blocks[owner])
            first = slice(0, int(encoder.offsets[1]) if columns > 1 else len(table))
            folded[first] += bias  # every row reads exactly one code of column 0
            self.register_buffer("table", folded.contiguous())
            self.register_buffer("offsets", encoder.offsets.clone())
            starts = torch.arange(0, CACHED_BAGS * columns, columns)
            self.register_buffer("bag_starts", starts, persistent=False)
        self.register_buffer("bias", None if columns else bias.clone())
        self.register_buffer("numeric_weight", weight[columns * dim :].contiguous())

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            return torch.addmm(self.bias, numeric, self.numeric_weight)
        rows, columns = categorical.shape
        # The aten op directly: F.embedding_bag's argument checks cost as much as the gather
        # at batch 1. Bags are the rows: bag i starts at flat position i * C.
        starts = self.bag_starts
        if rows <= len(starts):
            starts = starts[:rows]
        else:
            starts = torch.arange(0, rows * columns, columns, device=categorical.device)
        codes = (categorical + self.offsets).flatten()
        summed = torch.embedding_bag(self.table, codes, starts, False, 0)[0]
        if self.numeric_weight.shape[0] == 0:
            return summed
        return summed.addmm_(numeric, self.numeric_weight)  # in place: no [B, W] copy


class EncodedInput(nn.Module):
    """``encoder(x) @ W + b`` for any other encoder (a CNN, a user's module)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, encoder: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("bias", bias.clone())

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, self.encoder(categorical, numeric), self.weight)


@dataclass
class LeanHead:
    """One task: its mixture of the experts' outputs, then its tower as a chain of addmm.

    ``gate_columns``: the slice of the first-layer output holding the task's gate logits (a
    per-example gate), or ``None`` (fixed weights, already folded into ``layers[0]``).
    ``experts``: the experts its gate weighs, ``None`` for all of them.
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # (weight [in, out], bias [out])
    gate_columns: slice | None
    experts: torch.Tensor | None
    out_dim: int


# Above this many rows the written-out softmax and a broadcast multiply-sum beat
# torch.softmax over a few experts and B tiny matrix products; below, the reverse.
SMALL_BATCH = 64


class LeanModel(nn.Module):
    """A trained model's inference function in folded form (see the module docstring).

    The forward pass is one flat function over precomputed tensors (no submodule calls, no
    attribute lookups by name): at batch 1 Python overhead is most of the cost.

    Shapes: Features -> list of T logits [B, out_t].
    """

    def __init__(
        self,
        first: FoldedInput | EncodedInput,
        num_experts: int,
        expert_width: int,
        deeper: list[tuple[torch.Tensor, torch.Tensor]],
        heads: list[LeanHead],
    ) -> None:
        super().__init__()
        self.first = first
        self.num_experts = num_experts
        self.expert_width = expert_width  # leading columns of the first-layer output
        self.deeper = deeper  # per deeper expert layer: weight [E, in, out], bias [E, 1, out]
        self.heads = heads
        self.task_names: list[str] = []

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> LeanModel:
        """Move or cast the plain tensor lists along with the registered ones."""
        super()._apply(fn, recurse)
        self.deeper = [(fn(w), fn(b)) for w, b in self.deeper]
        for head in self.heads:
            head.layers = [(fn(w), fn(b)) for w, b in head.layers]
            head.experts = None if head.experts is None else fn(head.experts)
        return self

    def forward(self, features: Features) -> ModelOutput:
        first = self.first.forward(features.categorical, features.numeric)
        rows = first.shape[0]
        flat = torch.relu(first[:, : self.expert_width])  # [B, E*H1], expert-major
        if self.deeper:
            x = flat.view(rows, self.num_experts, -1).transpose(0, 1)  # [E, B, H1]
            for weight, bias in self.deeper:
                x = torch.relu(torch.baddbmm(bias, x, weight))
            flat = x.transpose(0, 1).reshape(rows, -1)
        small = rows <= SMALL_BATCH
        outputs = []
        for head in self.heads:
            x = flat
            if head.gate_columns is not None:
                x = self._mix(first[:, head.gate_columns], flat, head.experts, small)
            last = len(head.layers) - 1
            for index, (weight, bias) in enumerate(head.layers):
                x = torch.addmm(bias, x, weight)
                if index < last:
                    x = torch.relu(x)
            outputs.append(x if x.shape[1] == head.out_dim else x[:, : head.out_dim])
        return ModelOutput(outputs)

    def to_arrays(self) -> LeanArrays | None:
        """The same form as numpy arrays (:mod:`polytask.inference.arrays`), where the first
        layer is folded from a tabular encoder (a CNN or a user's encoder needs torch)."""
        first = self.first
        if not isinstance(first, FoldedInput):
            return None
        categorical = first.num_categorical > 0
        heads = [
            ArrayHead(
                [(w.numpy(), b.numpy()) for w, b in head.layers],
                None if head.gate_columns is None else _bounds(head.gate_columns),
                None if head.experts is None else head.experts.numpy(),
                head.out_dim,
            )
            for head in self.heads
        ]
        return LeanArrays(
            table=first.table.numpy() if categorical else None,
            offsets=first.offsets.numpy() if categorical else None,
            bias=None if first.bias is None else first.bias.numpy(),
            numeric_weight=first.numeric_weight.numpy(),
            num_experts=self.num_experts,
            expert_width=self.expert_width,
            deeper=[(w.numpy(), b.numpy()) for w, b in self.deeper],
            heads=heads,
        )

    def _mix(
        self, logits: torch.Tensor, flat: torch.Tensor, experts: torch.Tensor | None, small: bool
    ) -> torch.Tensor:
        """Softmax gate over the allowed experts, and the weighted sum of their outputs."""
        stacked = flat.view(flat.shape[0], self.num_experts, -1)  # [B, E, H]
        if experts is not None:
            stacked = stacked[:, experts]
        if small:
            gates = torch.softmax(logits, dim=-1)
            return torch.bmm(gates.unsqueeze(1), stacked).squeeze(1)
        gates = softmax_last(logits)
        return (gates.unsqueeze(-1) * stacked).sum(1)


def _bounds(columns: slice) -> tuple[int, int]:
    return int(columns.start), int(columns.stop)


def save_model(folder: Path, model: MultiTaskModel) -> None:
    """A run's model files: its weights, then (where it has them) its lean arrays."""
    save_weights(folder / rd.WEIGHTS, model.state_dict())
    save_lean_arrays(folder, model)


def save_lean_arrays(folder: Path, model: MultiTaskModel) -> bool:
    """Write the run's lean arrays (``lean.safetensors``) after its weights, where the model
    has a numpy form; say whether it did. Predicting on raw rows then needs no torch."""
    lean = lean_form(model)
    arrays = None if lean is None else lean.cpu().to_arrays()
    if arrays is None:
        return False
    arrays.save(folder)
    return True


def _bank_layers(bank: ExpertBank, index: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One member of an expert bank (or one tower) as (weight [in, out], bias [out]) layers."""
    return [(w[index], b[index, 0]) for w, b in zip(bank.weights, bank.biases, strict=True)]


def _tower_layers(towers: nn.Module, task: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Task ``task``'s tower as layers, from plain towers or towers in blocks (a grown model)."""
    if isinstance(towers, TowerBlocks):
        for block, size in zip(towers.blocks, towers.sizes, strict=True):
            if task < size:
                return _tower_layers(block, task)
            task -= size
        raise IndexError(task)
    assert isinstance(towers, Towers)
    layers = _bank_layers(towers.hidden, task) if towers.hidden is not None else []
    return [*layers, *_bank_layers(towers.output, task)]


@dataclass
class _Experts:
    """A level's experts as one bank's tensors: a plain bank's, or the blocks of a grown
    level side by side (the folded form computes every expert in one product anyway)."""

    weights: list[torch.Tensor]  # per layer [E, in, out]
    biases: list[torch.Tensor]  # per layer [E, 1, out]
    in_dim: int
    hidden: list[int]

    @property
    def num_experts(self) -> int:
        return self.weights[0].shape[0]

    @classmethod
    def of(cls, experts: nn.Module) -> _Experts | None:
        if isinstance(experts, ExpertBank):
            banks = [experts]
        elif isinstance(experts, ExpertBlocks):
            banks = [bank for bank in experts.banks if isinstance(bank, ExpertBank)]
        else:
            return None
        layers = range(len(banks[0].weights))
        return cls(
            [torch.cat([bank.weights[i].detach() for bank in banks]) for i in layers],
            [torch.cat([bank.biases[i].detach() for bank in banks]) for i in layers],
            banks[0].in_dim,
            list(banks[0].hidden),
        )


def _fold_fixed_mixture(
    layer: tuple[torch.Tensor, torch.Tensor], mixture: LeanMixture, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_k w_k h_{e_k} @ W  ==  [h_0 ... h_{E-1}] @ W' with W' = stacked w_e W (0 elsewhere)."""
    weight, bias = layer
    assert mixture.weights is not None
    width = weight.shape[0]
    folded = weight.new_zeros(num_experts * width, weight.shape[1])
    for expert, share in zip(mixture.experts, mixture.weights.tolist(), strict=True):
        folded[expert * width : (expert + 1) * width] += share * weight
    return folded, bias


def _mixtures(model: MultiTaskModel) -> tuple[_Experts, list[LeanMixture]] | None:
    """The one level's experts and each task's eval-time mixture, where the model has the
    shape the folded form covers: one shared encoder, one level of plain MLP experts reading
    it (in blocks, for a grown model), gates with a folded form (fixed weights or a softmax
    of the input), plain separable towers (in blocks, for a grown model)."""
    plan = model.plan
    towers = model.separable_towers() or (type(model.towers) is TowerBlocks and model.heads is None)
    if len(model.encoders) != 1 or plan.encoders != "shared" or not towers:
        return None
    if len(plan.levels) != 1 or plan.levels[0].self_gates is not None:
        return None
    level = model.arch.level_modules[0]
    bank = _Experts.of(level.experts)
    if bank is None or plan.levels[0].experts.reads is not None:
        return None
    mixtures = [level.gates.lean(gate) for gate in plan.task_gates]
    if any(mixture is None for mixture in mixtures):
        return None
    return bank, [m for m in mixtures if m is not None]


@torch.no_grad()
def lean_form(model: MultiTaskModel) -> LeanModel | None:
    """The folded inference form of ``model``, or ``None`` where it has none (see module doc).

    Built from the weights as they are now: rebuild it after changing them.
    """
    if model.routes_rows:  # adapters change the layers per task: fold one task first
        return None
    found = _mixtures(model)
    if found is None:
        return None
    bank, mixtures = found
    num_experts, first_width = bank.num_experts, bank.hidden[0]
    # First layer: every expert's first layer (expert-major), then each gated task's logits.
    weights = [bank.weights[0].permute(1, 0, 2).reshape(bank.in_dim, -1)]
    biases = [bank.biases[0].reshape(-1)]
    width = num_experts * first_width
    gate_columns: list[slice | None] = []
    placed: dict[int, slice] = {}  # tasks reading one gate (OMoE) share its columns
    for mixture in mixtures:
        if mixture.weights is not None:
            gate_columns.append(None)
            continue
        if mixture.gate in placed:
            gate_columns.append(placed[mixture.gate])
            continue
        assert mixture.logit_weight is not None and mixture.logit_bias is not None
        weights.append(mixture.logit_weight.detach())
        biases.append(mixture.logit_bias.detach())
        logit_columns = slice(width, width + len(mixture.experts))
        gate_columns.append(logit_columns)
        placed[mixture.gate] = logit_columns
        width += len(mixture.experts)
    # Zero columns up to a multiple of 16: the gather-sum kernel runs its vector path then
    # (in a one-off timing on this AVX-512 machine, 96 columns ran faster than 85).
    padding = -width % FIRST_LAYER_ALIGN
    weights.append(weights[0].new_zeros(bank.in_dim, padding))
    biases.append(biases[0].new_zeros(padding))
    weight, bias = torch.cat(weights, 1), torch.cat(biases)
    first = _first_layer(model.encoders[0], weight, bias)
    deeper = list(zip(bank.weights[1:], bank.biases[1:], strict=True))
    heads = []
    for task, (mixture, columns) in enumerate(zip(mixtures, gate_columns, strict=True)):
        layers = _tower_layers(model.towers, task)
        experts: torch.Tensor | None = None
        if mixture.weights is not None:
            layers[0] = _fold_fixed_mixture(layers[0], mixture, num_experts)
        elif mixture.experts != list(range(num_experts)):
            experts = torch.tensor(mixture.experts)
        layers = [(w.detach().contiguous(), b.detach().contiguous()) for w, b in layers]
        heads.append(LeanHead(layers, columns, experts, model.towers.out_dims[task]))
    lean = LeanModel(first, num_experts, num_experts * first_width, deeper, heads)
    lean.task_names = list(model.task_names)
    return lean.eval()


def _first_layer(
    encoder: nn.Module, weight: torch.Tensor, bias: torch.Tensor
) -> FoldedInput | EncodedInput:
    if isinstance(encoder, TabularEncoder):
        rows = encoder.embedding.weight.shape[0] if encoder.num_categorical else 0
        if rows * weight.shape[1] <= MAX_FOLDED_TABLE:
            return FoldedInput(encoder, weight, bias)
    return EncodedInput(encoder, weight, bias)
