"""A run's weights file: safetensors, tagged with the layout it was written in.

Format 2 (this version) stores architectures as plan levels; a file without the tag was
written by an older polytask (format 1) and is migrated on load by
:mod:`polytask.artifacts.legacy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from polytask.artifacts.atomic import write_atomic

FORMAT_KEY = "polytask_weights_format"
FORMAT = "2"


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Write ``state`` atomically, tagged with the current format."""
    weights = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    write_atomic(path, lambda temp: save_file(weights, str(temp), metadata={FORMAT_KEY: FORMAT}))


def load_weights(path: Path, model_section: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights in the current layout; ``model_section`` is the run's config ``model``
    section as written (the old layout depends on it). An untagged file outside a run
    (``model_section`` empty) is taken as it is."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    state = load_file(str(path))
    if metadata.get(FORMAT_KEY) == FORMAT or not model_section:
        return state
    from polytask.artifacts.legacy import upgrade_state

    return upgrade_state(state, model_section)
