"""Small pure helpers over state dicts that several merging methods share."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import torch

from polytask.merge.base import StateDict


def flatten(states: Sequence[StateDict], keys: Sequence[str]) -> torch.Tensor:
    """[K, N]: each state's tensors of ``keys`` laid end to end (one row per state)."""
    return torch.stack([torch.cat([state[key].reshape(-1) for key in keys]) for state in states])


def unflatten(vector: torch.Tensor, like: StateDict, keys: Sequence[str]) -> StateDict:
    """The inverse of :func:`flatten` for one row: tensors shaped as in ``like``."""
    out, start = {}, 0
    for key in keys:
        size = like[key].numel()
        out[key] = vector[start : start + size].view_as(like[key]).clone()
        start += size
    return out


def apply(base: StateDict, vector: StateDict, scaling: float = 1.0) -> StateDict:
    """θ_0 + scaling * τ, tensor by tensor."""
    return {key: base[key] + scaling * vector[key] for key in base}


def holders(held: Sequence[StateDict]) -> StateDict:
    """Per element, how many runs hold it (float, for dividing)."""
    keys = held[0].keys()
    return {key: torch.stack([mask[key] for mask in held]).sum(0).float() for key in keys}


def mean_over_holders(vectors: Sequence[StateDict], held: Sequence[StateDict]) -> StateDict:
    """Per element, the mean of the task vectors of the runs that hold it (0 where none).

    Runs that do not hold an element have a zero task vector there; dividing by the number of
    holders instead of by K keeps their absence from pulling the mean towards the base."""
    counts = holders(held)
    return {
        key: sum(vector[key] for vector in vectors) / counts[key].clamp(min=1.0)
        for key in vectors[0]
    }


def is_matrix(shape: torch.Size) -> bool:
    """A 2-D tensor with both sides above 1 (a linear map), as opposed to a vector."""
    return len(shape) == 2 and min(shape) > 1


def matrix_slices(tensor: torch.Tensor) -> Iterator[tuple[tuple[int, ...], torch.Tensor]]:
    """The linear maps a tensor holds: itself when it is a matrix, each member of a fused bank
    ([M, in, out], one matrix per leading index) when it is 3-D; nothing otherwise (vectors,
    convolution kernels, tables). Yields (index, matrix view)."""
    if is_matrix(tensor.shape):
        yield (), tensor
    elif tensor.dim() == 3 and is_matrix(tensor.shape[1:]):
        for member in range(tensor.shape[0]):
            yield (member,), tensor[member]


_LIST_ITEM = re.compile(r"^(.*)\.(weights|biases)\.(\d+)$")


def layer_of(key: str) -> str:
    """The layer a tensor belongs to: its module, or for a fused bank's ``weights.i`` /
    ``biases.i`` the bank's layer i (so a layer's weight and bias share one depth)."""
    match = _LIST_ITEM.match(key)
    if match:
        return f"{match.group(1)}#{match.group(3)}"
    return key.rsplit(".", 1)[0]


def layer_depths(keys: Sequence[str]) -> dict[str, int]:
    """Each tensor's layer position, counting layers in the order the model registers them
    (input side first): what layer-dependent methods (LiNeS, layer-wise AdaMerging) read."""
    order: dict[str, int] = {}
    for key in keys:
        order.setdefault(layer_of(key), len(order))
    return {key: order[layer_of(key)] for key in keys}
