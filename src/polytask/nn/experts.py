"""A bank of identically shaped MLPs computed together.

Every layer of every expert is one tensor ``[E, in, out]``. When all experts read the same
input, the first layer is a single matrix product against the experts' weights laid side by
side; after that (or when each expert has its own input) the layers are batched products
(``baddbmm``). No Python loop over experts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from polytask.errors import ConfigError
from polytask.nn.dispatch import grouped_addmm


class ExpertBank(nn.Module):
    """E parallel MLPs ``in_dim -> hidden[0] -> ... -> hidden[-1]``.

    Args:
        num_experts: E.
        in_dim: input width.
        hidden: layer widths; the last one is the expert's output width.
        activate_last: apply the activation after the last layer too (true for experts whose
            output feeds a tower; false for an output layer).
        dropout: dropout after each hidden activation.

    Shapes: input [B, in_dim] (shared) or [E, B, in_dim] (one input per expert)
    -> output [E, B, hidden[-1]].
    """

    def __init__(
        self,
        num_experts: int,
        in_dim: int,
        hidden: list[int],
        activate_last: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.in_dim = in_dim
        self.hidden = list(hidden)
        self.activate_last = activate_last
        sizes = [in_dim, *hidden]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(num_experts, fan_in, fan_out))
            for fan_in, fan_out in itertools.pairwise(sizes)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.empty(num_experts, 1, fan_out)) for fan_out in hidden
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # layer index -> an adapter (polytask.adapters) that edits that layer's output; not a
        # registered submodule: the adapter model that attached it owns its parameters
        self.layer_adapters: dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
        self.reset_parameters()

    @property
    def out_dim(self) -> int:
        return self.hidden[-1]

    def reset_parameters(self) -> None:
        """Each expert initialised like an ``nn.Linear`` of its own shape."""
        for weight, bias in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(weight.shape[1])
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Layers ``start`` onwards; ``x`` is layer ``start``'s input ([B, in] shared, or
        [E, B, in])."""
        for index in range(start, len(self.weights)):
            x = self.activate(self.linear(x, index), index)
        return x

    def linear(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Layer ``index`` before its activation: [B, in] or [E, B, in] -> [E, B, out]."""
        out = self.layer(x, self.weights[index], self.biases[index])
        adapter = self.layer_adapters.get(index) if self.layer_adapters else None
        return out if adapter is None else adapter(x, out)

    def activate(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Layer ``index``'s activation (ReLU, then dropout); none after an output layer."""
        if index < len(self.weights) - 1 or self.activate_last:
            return self.dropout(torch.relu(x))
        return x

    @staticmethod
    def layer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """One layer of the experts ``weight`` [E, in, out], ``bias`` [E, 1, out] holds (all
        of a bank's, or a chosen few): [B, in] shared or [E, B, in] -> [E, B, out]."""
        if x.dim() == 2:
            return ExpertBank._shared_input_layer(x, weight, bias)
        return torch.baddbmm(bias, x, weight)

    @staticmethod
    def _shared_input_layer(
        x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """[B, in] x [E, in, out] -> [E, B, out] as one [B, in] x [in, E*out] product."""
        experts, fan_in, fan_out = weight.shape
        side_by_side = weight.permute(1, 0, 2).reshape(fan_in, experts * fan_out)
        flat_bias = bias.reshape(experts * fan_out)
        out = torch.addmm(flat_bias, x, side_by_side)  # [B, E*out]
        return out.view(x.shape[0], experts, fan_out).transpose(0, 1)

    def forward_segments(self, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        """The MLP on rows sorted by expert, segment e (``sizes[e]`` rows) through expert e
        only, each layer a grouped GEMM: [P, in] -> [P, out] (sparse dispatch)."""
        if self.layer_adapters:
            raise ConfigError(
                "adapters cannot sit on experts that rows reach by sparse dispatch "
                "(top-k routing); target another layer"
            )
        last = len(self.weights) - 1
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = grouped_addmm(x, sizes, weight, bias)
            if index < last or self.activate_last:
                x = self.dropout(torch.relu(x))
        return x

    def select(self, experts: Sequence[int]) -> ExpertBank:
        """A bank of the given experts (copies of their weights), in that order."""
        index = torch.tensor(list(experts), dtype=torch.long)
        dropout = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        bank = ExpertBank(len(index), self.in_dim, self.hidden, self.activate_last, dropout)
        with torch.no_grad():
            for target, source in zip(bank.weights, self.weights, strict=True):
                target.copy_(source[index])
            for target, source in zip(bank.biases, self.biases, strict=True):
                target.copy_(source[index])
        return bank.train(self.training)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, in_dim={self.in_dim}, hidden={self.hidden}"
