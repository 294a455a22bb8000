"""Sums of per-row squared gradients from one backward pass over a whole chunk of rows.

The Fisher diagonal needs Σ_r g_r² with g_r the gradient of one row's log-likelihood (or of
one row's output along a direction u_r). A per-row Jacobian (``vmap(jacrev)``) builds every
g_r with a vectorised copy of the whole model; but the layers that hold almost every weight
make g_r from two factors that one ordinary backward pass over the chunk already has: the
layer's input a_r (kept by a forward hook) and the gradient δ_r at the layer's output. For a
linear layer g_r = δ_r a_rᵀ, so Σ_r g_r² = (δ²)ᵀ (a²) without forming any g_r; a convolution's
g_r is δ_r against the unfolded input patches. This holds because in evaluation mode rows do
not interact (dropout off, batch norm on running statistics): the backward pass of
Σ_r u_r · output_r gives each row's δ_r untouched by the other rows.

Covered: ``nn.Linear``, ``nn.Conv2d`` (zero padding, one group) and every layer of a fused
:class:`polytask.nn.experts.ExpertBank` (dense path, no adapters). Every other parameter, and
any covered one whose hooks did not see all its uses (checked on the first chunk: the hooks'
Σ_r g_r must equal autograd's gradient), is left to the caller (:attr:`RowSquares.uncovered`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from polytask.nn.experts import ExpertBank

Cotangents = list[torch.Tensor]  # per output tensor, u with the output's shape ([R, O])


@dataclass
class Call:
    """One use of a covered layer in a forward pass: its input and the tensor whose gradient
    is δ (for a bank layer: before the activation; ``index``: the bank's layer)."""

    layer: str  # module name
    inputs: torch.Tensor
    output: torch.Tensor
    version: int
    index: int = 0
    patches: torch.Tensor | None = None  # a convolution's unfolded input, once computed


@dataclass
class _Capture:
    rows: int = 0
    calls: list[Call] = field(default_factory=list)
    refused: set[str] = field(default_factory=set)  # layers used in a way the hooks can't see


def _conv_covered(module: nn.Conv2d) -> bool:
    return (
        module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _layer_params(name: str, module: nn.Module) -> dict[str, str]:
    """Covered parameter name -> what it is in the layer ('weight', 'bias', 'weight.i'...)."""
    prefix = f"{name}." if name else ""
    if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and _conv_covered(module)):
        names = {f"{prefix}weight": "weight"}
        if module.bias is not None:
            names[f"{prefix}bias"] = "bias"
        return names
    if isinstance(module, ExpertBank):
        names = {}
        for index in range(len(module.weights)):
            names[f"{prefix}weights.{index}"] = f"weight.{index}"
            names[f"{prefix}biases.{index}"] = f"bias.{index}"
        return names
    return {}


class RowSquares:
    """Hooks on ``model``'s covered layers; per forward pass of R rows, :meth:`add` adds
    Σ_r g_r² for one set of output cotangents, g_r being row r's gradient of Σ_o u_ro z_ro.

    names: the parameters wanted; those no hook covers are in :attr:`uncovered` from the
    start, and :meth:`check` moves there any whose hooks missed a use.
    """

    def __init__(self, model: nn.Module, names: set[str]) -> None:
        self.model = model
        self.modules = dict(model.named_modules())
        self.owner: dict[str, tuple[str, str]] = {}  # parameter -> (layer, role)
        for layer, module in self.modules.items():
            for param, role in _layer_params(layer, module).items():
                if param in names:
                    self.owner[param] = (layer, role)
        shared = self._shared_parameters()
        self.uncovered = {n for n in names if n not in self.owner or n in shared}
        for name in self.uncovered:
            self.owner.pop(name, None)
        self.totals = {
            name: torch.zeros_like(self.model.get_parameter(name)) for name in self.owner
        }
        self._capture = _Capture()

    def _shared_parameters(self) -> set[str]:
        """Parameters registered under more than one name (tied weights): a hook sees only
        the uses through one module."""
        seen: dict[int, list[str]] = {}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            seen.setdefault(id(param), []).append(name)
        return {n for names in seen.values() if len(names) > 1 for n in names}

    # ------------------------------------------------------------ forward
    @contextmanager
    def forward(self, rows: int) -> Iterator[_Capture]:
        """Hooks on while the block runs a forward pass of ``rows`` rows."""
        self._capture = _Capture(rows=rows)
        layers = {layer for layer, _ in self.owner.values()}
        handles, patched = [], []
        for layer in layers:
            module = self.modules[layer]
            if isinstance(module, ExpertBank):
                patched.append(module)
                self._patch_bank(layer, module)
            else:
                handles.append(module.register_forward_hook(self._hook(layer)))
        try:
            yield self._capture
        finally:
            for handle in handles:
                handle.remove()
            for bank in patched:
                del bank.linear, bank.forward_segments  # the class's methods again
        for call in self._capture.calls:  # an in-place change would give δ of another tensor
            if call.output._version != call.version:
                self._capture.refused.add(call.layer)
        for name, (layer, _) in list(self.owner.items()):
            if layer in self._capture.refused:
                self._uncover(name)

    def _uncover(self, name: str) -> None:
        """Leave ``name`` to the caller, for every row (what the hooks added is dropped)."""
        self.uncovered.add(name)
        self.owner.pop(name, None)
        self.totals.pop(name, None)

    def _record(self, layer: str, inputs: torch.Tensor, output: torch.Tensor, index: int) -> None:
        capture = self._capture
        bank = isinstance(self.modules[layer], ExpertBank)  # rows: [B, in] / [E, B, in]
        rows = inputs.shape[-2] if bank else inputs.shape[0]
        if rows != capture.rows:
            capture.refused.add(layer)
        capture.calls.append(Call(layer, inputs.detach(), output, output._version, index))

    def _hook(self, layer: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self._record(layer, args[0], output, 0)

        return hook

    def _patch_bank(self, layer: str, bank: ExpertBank) -> None:
        """The bank's layers are not modules: its ``linear`` is shadowed on the instance to
        see each layer's input and pre-activation output. Adapters edit that output, and
        sparse dispatch computes the layers elsewhere: both leave the bank uncovered."""
        if bank.layer_adapters:
            self._capture.refused.add(layer)
        dense = type(bank).linear.__get__(bank)
        segments = type(bank).forward_segments.__get__(bank)

        def linear(x: torch.Tensor, index: int) -> torch.Tensor:
            out = dense(x, index)
            self._record(layer, x, out, index)
            return out

        def forward_segments(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
            self._capture.refused.add(layer)
            return segments(x, sizes)

        bank.linear = linear  # type: ignore[method-assign]
        bank.forward_segments = forward_segments  # type: ignore[method-assign]

    # ------------------------------------------------------------ backward
    def _deltas(
        self, outputs: list[torch.Tensor], cotangents: Cotangents, params: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """δ at every captured output and the parameters' gradients for one set of output
        cotangents: one backward pass over the chunk."""
        calls = self._capture.calls
        wanted = [c.output for c in calls] + params
        grads = torch.autograd.grad(
            outputs, wanted, cotangents, retain_graph=True, allow_unused=True
        )
        return list(grads[: len(calls)]), list(grads[len(calls) :])

    def check(self, outputs: list[torch.Tensor], generator: torch.Generator) -> None:
        """After a forward pass (a few rows suffice: it checks the model, not the rows),
        compare along a random direction Σ_r g_r from the hooks with autograd's gradient of
        every covered parameter; one that differs (a use the hooks did not see) moves to
        :attr:`uncovered`."""
        names = list(self.owner)
        if not names or not outputs:  # nothing wanted reaches the outputs: no information
            return
        cotangents = [torch.randn(o.shape, generator=generator) for o in outputs]
        params: list[torch.Tensor] = [self.model.get_parameter(n) for n in names]
        deltas, grads = self._deltas(outputs, cotangents, params)
        sums: dict[str, torch.Tensor] = {}
        for call, delta in zip(self._capture.calls, deltas, strict=True):
            if delta is None:
                continue
            for key, rows in self._row_grads(call, delta).items():
                sums[key] = sums[key] + rows.sum(0) if key in sums else rows.sum(0)
        for name, param, autograd in zip(names, params, grads, strict=True):
            if autograd is None and name not in sums:
                continue  # no use at all: no information
            ours = sums.get(name, torch.zeros_like(param))
            theirs = autograd if autograd is not None else torch.zeros_like(ours)
            scale = float(theirs.abs().max()) + 1e-12
            if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5 * scale):
                self._uncover(name)

    def add(self, outputs: list[torch.Tensor], cotangents: Cotangents) -> None:
        """totals += Σ_r g_r² for g_r = ∂(Σ_o u_ro z_ro)/∂θ (outputs z [R, O], cotangents u
        of the same shapes): one backward pass."""
        calls = self._capture.calls
        if not self.owner or not calls or not outputs:
            return
        deltas, _ = self._deltas(outputs, cotangents, [])
        per_layer: dict[str, list[tuple[Call, torch.Tensor]]] = {}
        for call, delta in zip(calls, deltas, strict=True):
            if delta is not None:
                per_layer.setdefault(f"{call.layer}#{call.index}", []).append((call, delta))
        for uses in per_layer.values():
            if len(uses) == 1:  # one use per forward pass: the factorised form
                squares = self._row_squares(*uses[0])
            else:  # several: each row's gradients add up before they are squared
                rows: dict[str, torch.Tensor] = {}
                for call, delta in uses:
                    for param, grad in self._row_grads(call, delta).items():
                        rows[param] = rows[param] + grad if param in rows else grad
                squares = {param: (grad * grad).sum(0) for param, grad in rows.items()}
            for param, value in squares.items():
                if param in self.totals:
                    self.totals[param] += value

    # ------------------------------------------------------------ per layer kind
    def _names(self, call: Call) -> tuple[str, str]:
        module = self.modules[call.layer]
        prefix = f"{call.layer}." if call.layer else ""
        if isinstance(module, ExpertBank):
            return f"{prefix}weights.{call.index}", f"{prefix}biases.{call.index}"
        return f"{prefix}weight", f"{prefix}bias"

    def _row_squares(self, call: Call, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Σ_r g_r² of one use, factorised where the layer allows it (g_r = δ_r a_rᵀ squares
        to δ_r² (a_r²)ᵀ)."""
        module = self.modules[call.layer]
        weight, bias = self._names(call)
        a = call.inputs
        if isinstance(module, ExpertBank):  # a [R, in] or [E, R, in]; δ [E, R, out]
            d2 = delta * delta
            pattern = "ri,ero->eio" if a.dim() == 2 else "eri,ero->eio"
            return {weight: torch.einsum(pattern, a * a, d2), bias: d2.sum(1, keepdim=True)}
        if isinstance(module, nn.Linear) and a.dim() == 2:  # a [R, in]; δ [R, out]
            d2 = delta * delta
            return {weight: d2.T @ (a * a), bias: d2.sum(0)}
        return {param: (grad * grad).sum(0) for param, grad in self._row_grads(call, delta).items()}

    def _row_grads(self, call: Call, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every row's gradient of one use ([R, *parameter shape])."""
        module = self.modules[call.layer]
        weight, bias = self._names(call)
        a = call.inputs
        if isinstance(module, ExpertBank):
            pattern = "ri,ero->reio" if a.dim() == 2 else "eri,ero->reio"
            return {
                weight: torch.einsum(pattern, a, delta),
                bias: delta.transpose(0, 1).unsqueeze(2),
            }
        rows = a.shape[0]
        if isinstance(module, nn.Conv2d):  # [R, out, P] x [R, P, in * kh * kw]
            d = delta.reshape(rows, delta.shape[1], -1)
            patches = self._patches(call, module).transpose(1, 2)
            grads = {weight: torch.bmm(d, patches).reshape(rows, *module.weight.shape)}
            if module.bias is not None:
                grads[bias] = d.sum(2)
            return grads
        assert isinstance(module, nn.Linear)
        x = a.reshape(rows, -1, a.shape[-1])  # [R, M, in]
        d = delta.reshape(rows, -1, delta.shape[-1])  # [R, M, out]
        grads = {weight: torch.einsum("rmo,rmi->roi", d, x)}
        if module.bias is not None:
            grads[bias] = d.sum(1)
        return grads

    @staticmethod
    def _patches(call: Call, module: nn.Conv2d) -> torch.Tensor:
        """The convolution's input patches [R, in * kh * kw, P], unfolded once per use."""
        if call.patches is None:
            assert isinstance(module.padding, tuple)
            call.patches = F.unfold(
                call.inputs, module.kernel_size, module.dilation, module.padding, module.stride
            )
        return call.patches
