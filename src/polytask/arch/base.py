"""The contract every sharing architecture meets."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from polytask.config import ModelSpec, format_validation_error
from polytask.errors import ConfigError
from polytask.registry import Registry


class ArchOptions(BaseModel):
    """Options one architecture takes from ``model.options``; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class SharingArch(nn.Module):
    """Maps encoded inputs to one representation per task.

    Every architecture has the same constructor, ``(in_dim, num_tasks, spec)``, and returns a
    tensor ``[T, B, out_dim]``: towers then run fused over the task axis.

    ``input_per_task`` is True for an architecture that must not share even the input encoder
    (single-task baselines): the model then builds one encoder per task and passes
    ``[T, B, in_dim]``; otherwise it passes ``[B, in_dim]``.

    Two hooks let an architecture reach past the representation without special cases in
    the trainer: ``auxiliary_loss`` (set during a training forward pass, e.g. a load-balancing
    term; the training step adds it to the objective) and :meth:`heads` (how the towers turn
    representations into logits, e.g. ESMM's probability chain).
    """

    input_per_task: ClassVar[bool] = False
    registry_name: ClassVar[str]
    Options: ClassVar[type[ArchOptions]] = ArchOptions

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.num_tasks = num_tasks
        self.out_dim = spec.hidden[-1]
        self.options = self.parse_options(spec)
        self.auxiliary_loss: torch.Tensor | None = None
        # the last tensor every task reads ([..., B, D]), set in forward where it is more
        # telling than the encoder output (shared-bottom output, expert outputs)
        self.shared_representation: torch.Tensor | None = None
        # set by architectures whose output is one [B, D] tensor that every task reads
        # (returned expanded to [T, B, D]): plain towers then read it once, unexpanded
        self.common_output: torch.Tensor | None = None

    def __getstate__(self) -> dict:
        """Copies and pickles leave out the last step's graph-carrying tensors."""
        state = super().__getstate__()
        transient = ("auxiliary_loss", "shared_representation", "common_output")
        return {key: (None if key in transient else value) for key, value in state.items()}

    def heads(self, towers: nn.Module, representation: torch.Tensor) -> list[torch.Tensor]:
        """Per-task logits from the representation [T, B, out_dim]; plain towers by default."""
        return towers(representation)

    @classmethod
    def unused_spec_fields(cls, spec: ModelSpec) -> list[str]:
        """Names of ``model`` fields this architecture does not read (e.g. ``num_experts``
        where the options size the experts), so that setting one is a warning."""
        del spec
        return []

    @classmethod
    def parse_options(cls, spec: ModelSpec) -> ArchOptions:
        """Validate ``model.options`` against this architecture's own options."""
        try:
            return cls.Options.model_validate(spec.options)
        except ValidationError as error:
            message = format_validation_error(error, cls.Options)
            raise ConfigError(f"model.options ({spec.arch}): {message}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


ARCHS: Registry[SharingArch] = Registry("architecture")
