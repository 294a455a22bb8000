"""A run's weights file: safetensors, tagged with the layout it was written in.

Format 2 (this version) stores architectures as plan levels; a file without the tag was
written by an older polytask (format 1) and is migrated on load by
:mod:`polytask.artifacts.legacy`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from polytask.artifacts.atomic import write_atomic
from polytask.errors import PolytaskError

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


def file_sha256(path: Path) -> str:
    """A file's content hash, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_from_adapters(
    folder: Path, adapters_file: Path, record: dict[str, Any] | None
) -> dict[str, torch.Tensor]:
    """An adapter run's full weights from its backbone's file and its trained tensors
    (``adapters_file``), when its full weights were left out to ship the adapters alone;
    ``record``: the run summary's ``adapters`` entry. The backbone file must be the one
    the adapters were trained on (its SHA-256)."""
    backbone = (record or {}).get("backbone")
    if backbone is None:
        raise PolytaskError(
            f"run {folder}: its full weights are missing and its adapters were trained "
            "without a backbone file to load them onto"
        )
    weights = Path(backbone["weights"])
    if not weights.is_file():
        raise PolytaskError(
            f"run {folder}: its full weights are missing and its backbone {weights} is not there"
        )
    if file_sha256(weights) != backbone["sha256"]:
        raise PolytaskError(
            f"run {folder}: its backbone {weights} changed since the adapters were trained "
            "(SHA-256 differs)"
        )
    config = weights.parent / "config.yaml"
    section = (
        (yaml.safe_load(config.read_text()) or {}).get("model", {}) if config.is_file() else {}
    )
    return {**load_weights(weights, section), **load_weights(adapters_file, {})}
