"""What every merging method meets: options in, merged parameters out.

A method merges the parameters that several fine-tuned runs hold of one base model. It sees
state dicts only (tensor name -> tensor): the base's values ``θ_0``, each run's values ``θ_k``
laid out like the base's, and which elements each run holds (fine-tuned); the task vector of
run k is ``τ_k = θ_k - θ_0``. The maths of each method is a set of pure functions over such
dicts in the method's own file; the class around them declares the options (a pydantic model,
validated at the command line) and asks :class:`Statistics` for what needs the model and data
(Fisher information, the inputs' Gram matrices, the entropy of predictions on unlabelled
rows). Reading runs, checking they share a base and writing the merged run stay outside,
in :mod:`polytask.merge.runs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polytask.config import format_validation_error
from polytask.errors import ConfigError
from polytask.registry import Registry

StateDict = dict[str, torch.Tensor]
Split = Literal["train", "valid", "test"]


class MethodOptions(BaseModel):
    """Options one method takes (``--option key=value``); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class RowOptions(MethodOptions):
    """Options of methods that read rows of each run's data (labels are not used)."""

    split: Split = Field("train", description="which split of each run's data to read")
    samples: int = Field(256, ge=1, description="rows per run")
    seed: int = Field(0, description="seeds the row sample")


@dataclass
class Gram:
    """Inner products of one linear layer's inputs, ``X^T X / n``.

    gram: [in, in] for one matrix, [M, in, in] for a bank of M members. ``input_last``: the
    weight is stored [out, in] (``nn.Linear``, x @ W^T); otherwise [in, out] (x @ W, the fused
    banks' layout, one [in, out] matrix per member).
    """

    gram: torch.Tensor
    input_last: bool


Objective = Callable[[StateDict], torch.Tensor]
"""Merged values of the merged tensors -> a differentiable scalar to minimise."""


class Statistics(Protocol):
    """Model- and data-dependent quantities, computed on demand for the methods that ask."""

    def fisher(
        self, options: RowOptions, estimate: str = "exact", batch_size: int = 32
    ) -> list[StateDict]:
        """Per run: the diagonal Fisher information of its tasks' predictive distribution
        (``exact``: the expectation over labels; ``sampled``: one label drawn per row;
        ``batch``: FusionBench's estimate, one squared gradient per ``batch_size`` rows)."""
        ...

    def grams(self, options: RowOptions) -> list[dict[str, Gram]]:
        """Per run: the Gram matrix of the inputs of every linear layer it holds."""
        ...

    def entropy(self, options: RowOptions, batch_size: int) -> Objective:
        """The sum over runs of the mean prediction entropy of the run's tasks on a fresh
        batch of its unlabelled rows, as a function of the merged tensors."""
        ...


@dataclass
class MergeInputs:
    """The tensors to merge.

    base: θ_0 per tensor. tuned: per run, θ_k (the base's value where run k holds nothing).
    held: per run, boolean masks of the elements run k holds. depth: per tensor, its layer's
    position from the input (0, 1, ...). statistics: what needs the model and rows.
    """

    base: StateDict
    tuned: list[StateDict]
    held: list[StateDict]
    depth: dict[str, int]
    statistics: Statistics | None = None

    def vectors(self) -> list[StateDict]:
        """Task vectors τ_k = θ_k - θ_0 (zero where run k holds nothing)."""
        return [{key: tuned[key] - self.base[key] for key in self.base} for tuned in self.tuned]

    def require_statistics(self, method: str) -> Statistics:
        if self.statistics is None:
            raise ConfigError(f"merge method '{method}' reads the runs' rows; none are available")
        return self.statistics


class MergeMethod:
    """One merging method: ``merge`` maps :class:`MergeInputs` to merged tensors (the same
    keys as ``inputs.base``)."""

    registry_name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    kind: ClassVar[Literal["weights", "routed"]] = "weights"
    reads: ClassVar[tuple[str, ...]] = ()  # what it asks Statistics for: fisher, grams, entropy

    def __init__(self, options: MethodOptions) -> None:
        self.options = options
        self.report: dict[str, Any] = {}  # what a method learnt (coefficients, ...), for summary

    @classmethod
    def from_options(cls, raw: dict[str, Any]) -> MergeMethod:
        """Validate ``raw`` against the method's options (one line per problem)."""
        try:
            options = cls.Options.model_validate(raw)
        except ValidationError as error:
            message = format_validation_error(error, cls.Options)
            raise ConfigError(f"--option ({cls.registry_name}): {message}") from None
        return cls(options)

    def merge(self, inputs: MergeInputs) -> StateDict:
        raise NotImplementedError

    @classmethod
    def summary(cls) -> str:
        """The first paragraph of the docstring, on one line."""
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


MERGERS: Registry[MergeMethod] = Registry("merge method")
