"""Entries of parameters that training must not move: the old slice of a tensor a grown
model appended new rows to, or the weights another task owns (PackNet).

Whole parameters are frozen with ``requires_grad`` (``train.freeze``); a part of one cannot
be. :class:`FixedEntries` holds such parts at given values through any optimizer:

- before the update, their gradient is set to zero, so the optimizer's running statistics
  (Adam's moments, momentum) never see them;
- after the update, their values are written back, which undoes whatever the optimizer did
  regardless of its gradient (decoupled weight decay, an L2 term added inside ``step``,
  momentum left from before they were fixed).

Together the held entries stay bit-identical, whatever ``train.optimizer`` and
``train.weight_decay`` say.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from polytask.errors import PolytaskError
from polytask.train.hooks import StepHooks


@dataclass
class Held:
    parameter: nn.Parameter
    mask: torch.Tensor  # bool, the parameter's shape: True where held
    values: torch.Tensor  # the parameter's shape: what held entries are kept at


class FixedEntries(StepHooks):
    """Hold some entries of some parameters fixed (see the module docstring).

    ``masks`` maps parameter names of ``model`` to boolean tensors of their shape, True
    where the entry is held; entries are held at their current values unless ``values``
    gives others (e.g. zero for pruned weights).
    """

    def __init__(
        self,
        model: nn.Module,
        masks: dict[str, torch.Tensor],
        values: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.held: list[Held] = []
        self.hold(model, masks, values)

    def hold(
        self,
        model: nn.Module,
        masks: dict[str, torch.Tensor],
        values: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Replace what is held by ``masks`` (and ``values``); held values are written into
        the parameters at once."""
        parameters = dict(model.named_parameters())
        unknown = sorted(set(masks) - set(parameters))
        if unknown:
            raise PolytaskError(f"fixed entries name no parameter of the model: {unknown[:3]}")
        self.held = []
        for name, mask in masks.items():
            parameter = parameters[name]
            if mask.shape != parameter.shape or mask.dtype != torch.bool:
                raise PolytaskError(f"fixed entries of {name}: need a bool mask of its shape")
            if not bool(mask.any()):
                continue
            given = (values or {}).get(name)
            held = (given if given is not None else parameter.detach()).clone()
            self.held.append(Held(parameter, mask, held))
        self.restore()

    @property
    def count(self) -> int:
        """How many entries are held."""
        return sum(int(item.mask.sum()) for item in self.held)

    def before_update(self, model: nn.Module) -> None:
        for item in self.held:
            if item.parameter.grad is not None:
                item.parameter.grad.masked_fill_(item.mask, 0.0)

    def after_update(self, model: nn.Module) -> None:
        self.restore()

    def restore(self) -> None:
        """Write the held values back."""
        with torch.no_grad():
            for item in self.held:
                item.parameter.copy_(torch.where(item.mask, item.values, item.parameter))
