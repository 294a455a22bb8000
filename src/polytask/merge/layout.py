"""Where a fine-tuned run's weights sit in its base model, found by tagging every weight.

A run fine-tuned on some tasks holds the base's sub-network for those tasks
(:func:`polytask.slim.extract.task_subnetwork`): fewer experts, gates and towers, renumbered.
Rather than teach merging how every expert and gate kind is cut, the cut is run once on a
copy of the base whose every floating-point element holds its own id (in float64, exact):
each tensor of the cut model then says, element by element, which base element it is a copy
of. The same map puts a run's weights back into the base's layout (:func:`expand`) and tells
which base elements the run holds, so that merging knows which runs share an element
(merged), which one run owns it (taken from that run) and which no run touched (the base's).
"""

from __future__ import annotations

import copy
import hashlib
from bisect import bisect_right
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from polytask.errors import PolytaskError
from polytask.merge.base import StateDict
from polytask.model import MultiTaskModel
from polytask.plan.schema import Plan
from polytask.slim.extract import task_subnetwork

ID_OFFSET = float(2**40)  # ids start here: an untouched 0.0 or 1.0 is never mistaken for one


@dataclass
class RunLayout:
    """A run's place in its base: per floating tensor of the run, the base tensor and the flat
    positions its elements copy; ``plan`` is the run's plan (the base's, cut)."""

    index: dict[str, tuple[str, torch.Tensor]]
    plan: Plan
    shapes: dict[str, torch.Size]


def floating_keys(state: StateDict) -> list[str]:
    return [key for key, value in state.items() if value.is_floating_point()]


@contextmanager
def _float64_defaults():
    """Modules built inside (the cut's fresh banks) hold float64, so ids stay exact."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def run_layout(base: MultiTaskModel, keep: list[int]) -> RunLayout:
    """The map from the sub-network of tasks ``keep`` back into ``base``."""
    probe = copy.deepcopy(base).double()
    state = probe.state_dict()
    keys = floating_keys(state)
    starts, total = [], 0
    with torch.no_grad():
        for key in keys:
            starts.append(total)
            size = state[key].numel()
            ids = torch.arange(total, total + size, dtype=torch.float64) + ID_OFFSET
            state[key].copy_(ids.view_as(state[key]))
            total += size
        with _float64_defaults():
            cut, plan = task_subnetwork(probe, keep)
    index: dict[str, tuple[str, torch.Tensor]] = {}
    shapes = {}
    for key, tensor in cut.state_dict().items():
        if not tensor.is_floating_point():
            continue
        values = tensor.detach().reshape(-1) - ID_OFFSET
        if values.numel() == 0:
            continue
        ids = values.round().long()
        if not torch.equal(ids.double(), values) or ids.min() < 0 or ids.max() >= total:
            raise RuntimeError(f"merge: the cut does not copy '{key}' from the base")
        owner = bisect_right(starts, int(ids.min())) - 1
        if bisect_right(starts, int(ids.max())) - 1 != owner:
            raise RuntimeError(f"merge: '{key}' copies from several base tensors")
        index[key] = (keys[owner], ids - starts[owner])
        shapes[key] = tensor.shape
    return RunLayout(index, plan, shapes)


def expand(base: StateDict, run: StateDict, layout: RunLayout) -> tuple[StateDict, StateDict]:
    """The run's weights in the base's layout (the base's values where it holds nothing), and
    per base tensor a boolean mask of the elements the run holds."""
    expanded = {key: value.clone() for key, value in base.items()}
    held = {key: torch.zeros_like(value, dtype=torch.bool) for key, value in base.items()}
    for key, (target, positions) in layout.index.items():
        flat = expanded[target].view(-1)
        flat[positions] = run[key].reshape(-1).to(flat.dtype)
        held[target].view(-1)[positions] = True
    return expanded, held


def check_shapes(run: StateDict, layout: RunLayout, where: str) -> None:
    """The run's floating tensors are exactly those of the base's cut, shape for shape."""
    mine = {key: value.shape for key, value in run.items() if value.is_floating_point()}
    missing = sorted(set(layout.shapes) - set(mine))
    extra = sorted(set(mine) - set(layout.shapes))
    wrong = sorted(k for k in set(mine) & set(layout.shapes) if mine[k] != layout.shapes[k])
    for label, names in (("lacks", missing), ("has extra", extra), ("has reshaped", wrong)):
        if names:
            raise PolytaskError(
                f"{where} does not have the base's architecture for its tasks: it {label} "
                f"weights {names[:3]}{' ...' if len(names) > 3 else ''}"
            )


def weights_hash(state: StateDict) -> str:
    """A content hash of a model's weights: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().contiguous().cpu()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()
