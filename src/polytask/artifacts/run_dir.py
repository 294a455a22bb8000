"""Layout of a run directory, and its life cycle.

While training, everything lives in ``<out>.partial/``; only a finished run is renamed to
``<out>``. A killed run therefore never leaves a directory that looks complete, and
``--resume`` finds its checkpoint in the ``.partial`` folder.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from polytask.artifacts.atomic import write_json, write_text
from polytask.config import RunSpec, parse_spec
from polytask.errors import PolytaskError

CONFIG = "config.yaml"
PREPROCESSOR = "preprocessor.json"
WEIGHTS = "model.safetensors"
EPOCH_LOG = "metrics.jsonl"
FINAL_METRICS = "metrics.json"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
EXPERTS = "experts.json"
EXPERTS_PLOT = "experts.png"
BALANCE_PLOT = "balance.png"
PARTIAL_SUFFIX = ".partial"


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + PARTIAL_SUFFIX)


def final_path(path: Path) -> Path:
    """The finished run's path for either the run path or its ``.partial`` folder."""
    name = path.name.removesuffix(PARTIAL_SUFFIX)
    return path.with_name(name)


def is_complete(run: Path) -> bool:
    return (run / SUMMARY).is_file()


def require_complete(run: Path) -> Path:
    run = Path(run)
    if is_complete(run):
        return run
    partial = partial_path(final_path(run))
    if partial.is_dir():
        raise PolytaskError(
            f"run {final_path(run)} did not finish; continue it with "
            f"`polytask train --resume {final_path(run)}`"
        )
    raise PolytaskError(f"no finished run at {run} (expected {SUMMARY} there)")


def save_config(folder: Path, spec: RunSpec) -> None:
    write_text(folder / CONFIG, yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False))


def load_config(folder: Path) -> RunSpec:
    return parse_spec(yaml.safe_load((folder / CONFIG).read_text()))


def save_json(folder: Path, name: str, payload: Any) -> None:
    write_json(folder / name, _finite(payload))


def load_json(folder: Path, name: str) -> Any:
    return json.loads((folder / name).read_text())


def write_epoch_log(folder: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the whole per-epoch log: it is small, and a rewrite keeps it in step with the
    checkpoint after a resume."""
    lines = [json.dumps(_finite(row)) for row in history]
    write_text(folder / EPOCH_LOG, "\n".join(lines) + ("\n" if lines else ""))


def claim_partial(out: Path, overwrite: bool, marker: str, what: str) -> Path:
    """A fresh ``<out>.partial`` to build in. An existing ``out`` is replaced only with
    ``overwrite`` and only when it holds ``marker`` (polytask wrote it)."""
    if out.exists():
        if not overwrite:
            raise PolytaskError(f"{out} already exists; pass --overwrite to replace it")
        if not (out / marker).is_file():
            raise PolytaskError(f"{out} is not {what}; not replacing it")
    partial = partial_path(out)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    return partial


def publish(partial: Path, out: Path) -> None:
    """Move a finished ``.partial`` folder into place, replacing an older run at ``out``."""
    (partial / CHECKPOINT).unlink(missing_ok=True)
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        partial.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(out)


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
