"""Layout of a run directory, and its life cycle.

While training, everything lives in ``<out>.partial/``; only a finished run is renamed to
``<out>``. A killed run therefore never leaves a directory that looks complete, and
``--resume`` finds its checkpoint in the ``.partial`` folder. What may be created, replaced
or cleaned up is decided by :mod:`polytask.artifacts.ownership`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from polytask.artifacts.atomic import write_json, write_text
from polytask.artifacts.ownership import PARTIAL_SUFFIX as PARTIAL_SUFFIX
from polytask.artifacts.ownership import OutputFolder
from polytask.artifacts.ownership import partial_path as partial_path
from polytask.config import RunSpec, parse_spec
from polytask.errors import ConfigError, PolytaskError

CONFIG = "config.yaml"
PREPROCESSOR = "preprocessor.json"
WEIGHTS = "model.safetensors"
LEAN = "lean.safetensors"  # the folded form as arrays: torch-free predictions (inference.arrays)
ADAPTERS = "adapters.safetensors"  # an adapter run's trained tensors alone (polytask.adapters)
EPOCH_LOG = "metrics.jsonl"
FINAL_METRICS = "metrics.json"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
EXPERTS = "experts.json"
EXPERTS_PLOT = "experts.png"
BALANCE_PLOT = "balance.png"
TRACKING = "tracking.json"  # where an MLflow-tracked run was logged (polytask.track)
# Every file a training run may write (its manifest lists those it did).
RUN_FILES = frozenset(
    {
        CONFIG,
        PREPROCESSOR,
        WEIGHTS,
        LEAN,
        ADAPTERS,
        EPOCH_LOG,
        FINAL_METRICS,
        SUMMARY,
        CHECKPOINT,
        EXPERTS,
        EXPERTS_PLOT,
        BALANCE_PLOT,
    }
)


def has_checkpoint(partial: Path) -> bool:
    return (partial / CHECKPOINT).is_file()


def run_folder(
    out: Path,
    *,
    overwrite: bool = False,
    sources: Sequence[Path] = (),
    resume: bool = False,
    files: frozenset[str] = RUN_FILES,
    kind: str = "run",
) -> OutputFolder:
    """The output folder of a run being trained (or slimmed): built in ``<out>.partial``."""
    if resume:
        return OutputFolder.resume(out, kind, files)
    return OutputFolder(
        out, kind, files, overwrite=overwrite, sources=sources, resumable=has_checkpoint
    )


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
    final = final_path(run)
    partial = partial_path(final)
    if has_checkpoint(partial):
        raise PolytaskError(
            f"run {final} did not finish; continue it with `polytask train --resume {final}`"
        )
    if partial.is_dir():
        raise PolytaskError(
            f"run {final} did not finish and stopped before its first checkpoint, so there "
            f"is nothing to resume; train it again (that removes {partial.name})"
        )
    raise PolytaskError(f"no finished run at {run} (expected {SUMMARY} there)")


def save_config(folder: Path, spec: RunSpec) -> None:
    write_text(folder / CONFIG, yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False))


def load_raw_config(folder: Path) -> dict[str, Any]:
    """The run's config.yaml as written (before any migration)."""
    return yaml.safe_load((folder / CONFIG).read_text())


def load_config(folder: Path) -> RunSpec:
    """The run's specification; a slim run of an older polytask gets its model as a plan."""
    try:
        raw = load_raw_config(folder)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise PolytaskError(f"run {folder}: {CONFIG} could not be read") from None
    model = raw.get("model") if isinstance(raw, dict) else None
    if isinstance(model, dict) and model.get("arch") in ("slim_moe", "task_subset"):
        from polytask.artifacts.legacy import upgrade_model_section

        raw["model"] = upgrade_model_section(model)
    try:
        return parse_spec(raw)
    except ConfigError as error:
        raise ConfigError(f"run {folder}: {CONFIG}: {error}") from None


def save_json(folder: Path, name: str, payload: Any) -> None:
    write_json(folder / name, _finite(payload))


def load_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PolytaskError(f"run {folder}: {name} could not be read ({error})") from None


def write_epoch_log(folder: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the whole per-epoch log: it is small, and a rewrite keeps it in step with the
    checkpoint after a resume."""
    lines = [json.dumps(_finite(row)) for row in history]
    write_text(folder / EPOCH_LOG, "\n".join(lines) + ("\n" if lines else ""))


def publish(folder: OutputFolder) -> Path:
    """Swap a finished run into place (its checkpoint is only for resuming: dropped)."""
    (folder.partial / CHECKPOINT).unlink(missing_ok=True)
    return folder.publish()


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def describe(run: str | Path) -> dict[str, Any]:
    """What ``polytask info`` shows: tasks, architecture, balancing method (options resolved),
    inputs and summary, read from the run's files alone (no model is built, so no torch: the
    command answers at once)."""
    folder = require_complete(Path(run))
    spec = load_config(folder)
    balance = spec.balance
    try:
        config = yaml.safe_load((folder / CONFIG).read_text())
        inputs = load_json(folder, PREPROCESSOR)
        summary = load_json(folder, SUMMARY)
        tasks = {task["name"]: task["kind"] for task in config["tasks"]}
        columns = {
            "categorical": inputs["categorical"],
            "numeric": inputs["numeric"],
            "ignored": inputs.get("ignored_columns", []),
            "rule": spec.data.input_rule(),
        }
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as error:
        raise PolytaskError(f"run {folder} could not be read ({type(error).__name__})") from None
    described: dict[str, Any] = {
        "run": str(folder),
        "arch": config.get("model", {}).get("arch"),
        "tasks": tasks,
        "balance": {"method": balance.method, "options": balance.resolved_options().model_dump()},
        "inputs": columns,
    }
    adapters = spec.model.adapters
    if adapters is not None:
        from polytask.adapters.options import ADAPTER_OPTIONS  # torch-free declarations

        options = ADAPTER_OPTIONS.get(adapters.method).model_validate(adapters.options)
        described["adapters"] = {
            **adapters.model_dump(mode="json", exclude={"options"}),
            "options": options.model_dump(),
        }
    described["summary"] = summary
    return described
