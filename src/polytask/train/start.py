"""Where training starts: the initial weights (``train.init``) and the parameters kept fixed
(``train.freeze``).

Fine-tuning a run on one task, growing a run with a new one, and training adapters on a
frozen backbone all start from trained weights with part of the model fixed; the run spec
says both, so that a resumed run rebuilds the same trainable set.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polytask.artifacts import run_dir as rd
from polytask.artifacts.weights import file_sha256, load_weights, save_weights
from polytask.config import RunSpec
from polytask.errors import ConfigError


def initial_state(path: Path) -> dict[str, torch.Tensor]:
    """The weights ``train.init`` names: a folder's model.safetensors (a finished run, or what
    ``polytask grow`` prepares), or a .safetensors file."""
    path = Path(path)
    if path.is_dir() and (path / rd.WEIGHTS).is_file():
        model = rd.load_raw_config(path).get("model", {}) if (path / rd.CONFIG).is_file() else {}
        return load_weights(path / rd.WEIGHTS, model)
    if path.suffix == ".safetensors" and path.is_file():
        return load_weights(path, {})
    raise ConfigError(
        f"train.init: {path} is neither a folder with {rd.WEIGHTS} (a finished run) nor a "
        ".safetensors file"
    )


def initial_preprocessor(path: Path | None) -> dict | None:
    """The fitted preprocessor beside ``train.init``'s weights (in the run folder, or in the
    folder of the .safetensors file), which the model's input layers were built for; None
    when there is none (it is then fitted on the data)."""
    if path is None:
        return None
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    file = folder / rd.PREPROCESSOR
    return rd.load_json(folder, rd.PREPROCESSOR) if file.is_file() else None


def load_initial(model: nn.Module, path: Path) -> None:
    """Load ``train.init`` into ``model``; the weights must be this model's, every one."""
    state = initial_state(path)
    mine = model.state_dict()
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    wrong = sorted(k for k in set(mine) & set(state) if mine[k].shape != state[k].shape)
    problems = [
        f"{label} {names[:3]}{' ...' if len(names) > 3 else ''}"
        for label, names in (
            ("missing", missing),
            ("not in this model", unexpected),
            ("of another shape", wrong),
        )
        if names
    ]
    if problems:
        raise ConfigError(
            f"train.init: {path} does not hold this model's weights: " + "; ".join(problems)
        )
    model.load_state_dict(state)


def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """Keep the parameters whose names match a pattern fixed; return their names. A pattern
    that matches nothing is an error (a typo would otherwise train what was meant to stay)."""
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ConfigError(
                f"train.freeze: '{pattern}' matches no parameter (names look like "
                f"{', '.join(names[:3])}, ...)"
            )
    frozen = []
    for name, parameter in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            parameter.requires_grad_(False)
            frozen.append(name)
    if len(frozen) == len(names):
        raise ConfigError("train.freeze: every parameter is frozen; nothing would train")
    return frozen


def load_matching(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` into the model's tensors of the same name (a partial start: e.g. the
    shared part of another run, for a transfer map); a name the model lacks or a tensor of
    another shape is an error (a silent partial start would mislead)."""
    state = model.state_dict()
    for name, value in weights.items():
        if name not in state or state[name].shape != value.shape:
            raise ConfigError(
                f"initial weight '{name}' {tuple(value.shape)} does not fit this model"
                + (f" (expects {tuple(state[name].shape)})" if name in state else "")
            )
    model.load_state_dict({**state, **weights})


# ---------------------------------------------------------------------- adapters' backbone
def backbone_run(spec: RunSpec) -> Path | None:
    """The finished run ``model.adapters.backbone`` names, or None (a weights file, none)."""
    adapters = spec.model.adapters
    if adapters is None or adapters.backbone is None:
        return None
    path = Path(adapters.backbone)
    if path.is_dir():
        if not rd.is_complete(path):
            raise ConfigError(f"model.adapters.backbone: {path} is a folder but not a finished run")
        return path
    if path.suffix == ".safetensors" and path.is_file():
        return None
    raise ConfigError(
        f"model.adapters.backbone: {path} is neither a finished run nor a .safetensors file"
    )


def with_backbone_model(spec: RunSpec) -> RunSpec:
    """A spec whose adapters sit on a finished run takes that run's model section (its
    architecture, encoder and sizes, which its weights were made for), keeping its own
    adapters; a field set here that differs from the run's is refused, naming it."""
    folder = backbone_run(spec)
    if folder is None:
        return spec
    adapters = spec.model.adapters
    theirs = rd.load_config(folder).model
    for name in sorted(spec.model.model_fields_set - {"adapters"}):
        if getattr(spec.model, name) != getattr(theirs, name):
            raise ConfigError(
                f"model.{name}: the backbone run {folder} sets it to {getattr(theirs, name)!r}; "
                "a model with adapters on a run takes the run's model section: leave it unset"
            )
    model = theirs.model_copy(update={"adapters": adapters})
    return spec.model_copy(update={"model": model})


def _task_free(name: str) -> bool:
    """Parameters every task reads the same way (encoders, experts), which load into a model
    of other tasks; gates and towers are per task."""
    return name.startswith("encoders.") or (name.startswith("arch.") and ".experts." in name)


def _is_head(name: str) -> bool:
    return name.startswith(("towers.", "heads."))


def load_backbone(model: nn.Module, spec: RunSpec) -> list[str]:
    """Load ``model.adapters.backbone`` into an adapter model; return the names to keep
    fixed: everything loaded (the towers too, with ``heads: freeze``). Without a backbone,
    the model as built is it: everything but the adapters (and the towers) is fixed.

    From a run of the same tasks every tensor loads; from a run of other tasks only the
    encoders and experts do (the new tasks' gates and towers start fresh and train), and an
    architecture whose experts depend on the tasks is refused."""
    adapters = spec.model.adapters
    assert adapters is not None
    mine = model.state_dict()
    keep_heads = adapters.heads == "train"
    if adapters.backbone is None:
        return [
            name
            for name, _ in model.named_parameters()
            if not name.startswith(("adapters.", "adapter_shared."))
            and not (keep_heads and _is_head(name))
        ]
    state = initial_state(Path(adapters.backbone))
    folder = backbone_run(spec)
    same_tasks = folder is None or [t.name for t in rd.load_config(folder).tasks] == [
        t.name for t in spec.tasks
    ]
    foreign = sorted(k for k in state if k not in mine and (same_tasks or _task_free(k)))
    if foreign:
        raise ConfigError(
            f"model.adapters.backbone: {adapters.backbone} holds weights this model does not "
            f"have ({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); a run with "
            "adapters is continued with the same method and targets (e.g. compose: fusion)"
        )
    loaded: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if not (same_tasks or _task_free(name)):
            continue
        if mine[name].shape != value.shape:
            raise ConfigError(
                f"model.adapters.backbone: weight '{name}' {tuple(value.shape)} does not fit "
                f"this model's {tuple(mine[name].shape)}"
                + (
                    ""
                    if same_tasks
                    else "; with other tasks than the backbone's, use an "
                    "architecture whose experts do not depend on the tasks (shared_bottom, "
                    "mmoe, omoe, single)"
                )
            )
        loaded[name] = value
    if not loaded:
        raise ConfigError(f"model.adapters.backbone: nothing in {adapters.backbone} fits")
    model.load_state_dict(loaded, strict=False)
    parameters = dict(model.named_parameters())
    return sorted(n for n in loaded if n in parameters and not (keep_heads and _is_head(n)))


def save_adapters(folder: Path, model: nn.Module, spec: RunSpec) -> dict[str, Any] | None:
    """Beside an adapter run's full weights, its trained tensors alone
    (``adapters.safetensors``: a few percent of the model), and what they need: the
    backbone's weights file and its SHA-256, which loading them checks. None for a model
    without adapters."""
    adapters = spec.model.adapters
    trained = getattr(model, "trained_state", None)
    if adapters is None or trained is None:
        return None
    state = trained()
    save_weights(folder / rd.ADAPTERS, state)
    record: dict[str, Any] = {
        "file": rd.ADAPTERS,
        "parameters": sum(v.numel() for v in state.values()),
        "bytes": (folder / rd.ADAPTERS).stat().st_size,
        "model_bytes": (folder / rd.WEIGHTS).stat().st_size,
        "backbone": None,
    }
    if adapters.backbone is not None:
        source = Path(adapters.backbone)
        weights = source / rd.WEIGHTS if source.is_dir() else source
        record["backbone"] = {"weights": str(weights.resolve()), "sha256": file_sha256(weights)}
    return record
