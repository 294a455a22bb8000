"""Where adapters attach: the linear layers of a model, found by name.

Two kinds of layer are targets. An ``nn.Linear`` anywhere in the encoders or the plan network
(a CNN's last layer, the layers of a user's module) is named by its module path, e.g.
``encoders.0.linear``; the adapter runs in a forward hook on it. A layer of a fused expert
bank (:class:`~polytask.nn.experts.ExpertBank`: E experts' layer i as one [E, in, out] tensor)
is named ``<bank path>.<i>``, e.g. ``arch.levels.0.experts.0``; the bank calls the adapter
itself. Neither changes the backbone's parameter names, so its weights load as they are.

The adapter is kept on the layer as a plain attribute (``object.__setattr__``), not as a
registered child: the adapter model owns and saves it once, under ``adapters.<key>``; a deep
copy of the model copies each adapter once and keeps the layer pointing at the copy.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from polytask.adapters.base import Adapter, LayerShape
from polytask.adapters.routing import current
from polytask.errors import ConfigError
from polytask.nn.experts import ExpertBank

ATTRIBUTE = "_polytask_adapter"


@dataclass(frozen=True)
class Site:
    """One target layer. ``weight``: the state-dict key of its weight, stored [out, in]
    (``input_last``, an ``nn.Linear``) or [E, in, out] (a bank)."""

    name: str
    shape: LayerShape
    weight: str
    input_last: bool
    module: nn.Module
    layer: int = 0

    @property
    def key(self) -> str:
        """The adapter's name under ``adapters.`` (module names may not hold dots)."""
        return self.name.replace(".", "__")

    def attach(self, adapter: Adapter) -> None:
        if isinstance(self.module, ExpertBank):
            self.module.layer_adapters[self.layer] = _BankLayer(adapter)
        else:
            object.__setattr__(self.module, ATTRIBUTE, adapter)
            self.module.register_forward_hook(_linear_hook)


def sites(model: nn.Module, scope: tuple[str, ...] = ("encoders", "arch")) -> list[Site]:
    """Every layer an adapter can sit on, in module order."""
    found: list[Site] = []
    for path, module in model.named_modules():
        if not path.startswith(scope):
            continue
        if isinstance(module, nn.Linear):
            shape = LayerShape(module.in_features, module.out_features)
            found.append(Site(path, shape, f"{path}.weight", True, module))
        elif isinstance(module, ExpertBank):
            for index, weight in enumerate(module.weights):
                experts, fan_in, fan_out = weight.shape
                shape = LayerShape(fan_in, fan_out, experts)
                weight_key = f"{path}.weights.{index}"
                found.append(Site(f"{path}.{index}", shape, weight_key, False, module, index))
    return found


def targeted(model: nn.Module, patterns: list[str]) -> list[Site]:
    """The sites ``model.adapters.targets`` names (shell-style patterns); a pattern that
    matches none is refused with the names there are."""
    available = sites(model)
    chosen: list[Site] = []
    for pattern in patterns:
        matched = [s for s in available if fnmatch.fnmatchcase(s.name, pattern)]
        if not matched:
            names = ", ".join(s.name for s in available) or "none"
            raise ConfigError(
                f"model.adapters.targets: '{pattern}' matches no linear layer; the layers "
                f"adapters can sit on are: {names}"
            )
        chosen.extend(s for s in matched if s not in chosen)
    return chosen


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """[P, ..., F] -> [1, P, K, F]: the rows first, every other axis as tokens."""
    return tensor.reshape(1, tensor.shape[0], -1, tensor.shape[-1])


def _linear_hook(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
    """The adapter kept on an ``nn.Linear`` applied to its output (module-level, so the model
    pickles and deep-copies)."""
    adapter: Adapter = getattr(module, ATTRIBUTE)
    x = inputs[0]
    rows = current(x.shape[0])
    return adapter(_flat(x), _flat(output), rows).reshape(output.shape)


class _BankLayer:
    """What an expert bank calls after layer i: x [B, in] or [E, B, in], out [E, B, out]."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        rows = current(out.shape[1])
        inputs = x[None, :, None] if x.dim() == 2 else x[:, :, None]
        result: torch.Tensor = self.adapter(inputs, out[:, :, None], rows)
        return result[:, :, 0]
