"""Where training starts: the initial weights (``train.init``) and the parameters kept fixed
(``train.freeze``).

Fine-tuning a run on one task, growing a run with a new one, and training adapters on a
frozen backbone all start from trained weights with part of the model fixed; the run spec
says both, so that a resumed run rebuilds the same trainable set.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch
from torch import nn

from polytask.artifacts import run_dir as rd
from polytask.artifacts.weights import load_weights
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
