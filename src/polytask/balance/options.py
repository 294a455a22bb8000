"""What every balancing method accepts in ``balance.options``: one declaration, one validator.

Each method's options are a pydantic model here (name, type, range, default and a one-line
description per option); the method's class in its own file of this package points at it
(``Options = CAGradOptions``) and reads the validated values from ``self.options``. The same
declaration validates a config (:class:`polytask.config.BalanceSpec`), builds a method from
keyword arguments (:class:`polytask.balance.base.Balancer`), and is listed by
``polytask balancers`` and shown resolved by ``polytask info``.

The declarations live in this module, not in the method files, because the method files import
torch and this one must not: a config is validated, and the methods are listed, in a fraction
of a second without it (torch alone takes seconds to import).

Types are strict: ``true`` is not a number, ``1`` is not ``true`` and ``"0.5"`` is not a
number; numbers must be finite. A bad value is an :class:`~polytask.errors.OptionError` (a
ConfigError and a ValueError) with one line per problem naming ``balance.options.<name>``, what
it accepts (range or values) and the value given.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from polytask.config import describe_problem
from polytask.errors import OptionError, did_you_mean
from polytask.registry import Registry


class BalanceOptions(BaseModel):
    """Base of every method's options: unknown keys are errors, types strict, values frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
    registry_name: ClassVar[str]

    def __init__(self, **values: Any) -> None:
        """Validate ``values`` against the declaration; every way of building options (a config,
        keyword arguments to a method, Python code) passes here and fails the same way."""
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise OptionError(explain(error, type(self))) from None

    @classmethod
    def summary(cls) -> str:
        """What the method is: the first paragraph of the docstring, on one line."""
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


OPTIONS: Registry[BalanceOptions] = Registry("balancing method")


def parse_options(method: str, values: Mapping[str, Any]) -> BalanceOptions:
    """The validated options of ``method`` (unknown method: a ConfigError naming the known)."""
    options = OPTIONS.get(method)
    return options(**{str(key): value for key, value in values.items()})


def explain(error: ValidationError, options: type[BalanceOptions]) -> str:
    """One line for pydantic's report: per problem, ``balance.options.<name> (method)``, then
    what the option accepts and the value given, or the allowed keys for an unknown one."""
    method = getattr(options, "registry_name", None)
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        where = f"balance.options.{key}" + (f" ({method})" if method else "")
        field = options.model_fields.get(key)
        if field is None or item["type"] == "extra_forbidden":
            problems.append(describe_problem(item, options, where))
        else:
            given = item["input"]
            hint = did_you_mean(given, _choices(field)) if isinstance(given, str) else ""
            problems.append(f"{where}: expected {accepted(field)}, got {given!r}{hint}")
    return "; ".join(problems)


def _choices(field: FieldInfo) -> list[str]:
    """The allowed strings of a field whose type is a ``Literal`` (else none)."""
    if typing.get_origin(field.annotation) is not Literal:
        return []
    return [str(value) for value in typing.get_args(field.annotation)]


def accepted(field: FieldInfo) -> str:
    """What an option accepts, in words: ``a number in [0, 1)``, ``an integer >= 1``,
    ``one of 'exact', 'fast'``, ``true or false``."""
    annotation = field.annotation
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(value) for value in typing.get_args(annotation))
    if annotation is bool:
        return "true or false"
    kind = "an integer" if annotation is int else "a number"
    bounds = _bounds(field)
    return f"{kind}{bounds}" if bounds or annotation is int else "a finite number"


def _bounds(field: FieldInfo) -> str:
    """`` in [0, 1)``, `` >= 0``, `` < 1`` or an empty string, from the field's constraints."""
    low = high = None
    for constraint in field.metadata:
        if isinstance(constraint, annotated_types.Ge):
            low = f"[{_number(constraint.ge)}"
        elif isinstance(constraint, annotated_types.Gt):
            low = f"({_number(constraint.gt)}"
        elif isinstance(constraint, annotated_types.Le):
            high = f"{_number(constraint.le)}]"
        elif isinstance(constraint, annotated_types.Lt):
            high = f"{_number(constraint.lt)})"
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" {'>=' if low[0] == '[' else '>'} {low[1:]}"
    if high:
        return f" {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
    return ""


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------- loss weighting
@OPTIONS.register("equal")
class EqualOptions(BalanceOptions):
    """Equal weighting: the sum of the task losses, each times its tasks[].weight."""


@OPTIONS.register("uw")
class UncertaintyOptions(BalanceOptions):
    """Uncertainty weighting (Kendall et al. 2018): a learned log-variance per task."""

    init: float = Field(0.0, description="starting log-variance of every task")


@OPTIONS.register("dwa")
class DWAOptions(BalanceOptions):
    """Dynamic Weight Average (Liu et al. 2019): more weight to tasks whose loss fell slowly
    over the last epoch."""

    temperature: float = Field(
        2.0, gt=0.0, description="softmax temperature over the loss ratios (the paper's 2)"
    )


@OPTIONS.register("gradnorm")
class GradNormOptions(BalanceOptions):
    """GradNorm (Chen et al. 2018): learned weights that equalise the tasks' gradient norms at
    the shared representation, scaled by how far behind each task is."""

    alpha: float = Field(1.5, ge=0.0, description="restoring force towards the lagging tasks")
    lr: float = Field(0.025, gt=0.0, description="learning rate of the weights' own Adam")


@OPTIONS.register("rlw")
class RLWOptions(BalanceOptions):
    """Random loss weighting (Lin et al. 2022): fresh random weights on the simplex each step."""

    distribution: Literal["normal", "dirichlet"] = Field(
        "normal", description="softmax of a normal draw, or Dirichlet(1, ..., 1)"
    )
    seed: int = Field(0, ge=0, description="seeds the method's own generator of weights")


@OPTIONS.register("famo")
class FAMOOptions(BalanceOptions):
    """FAMO (Liu et al. 2023): every task's log-loss decreases at an equal rate, at O(1) cost
    per step."""

    lr: float = Field(0.025, gt=0.0, description="learning rate of the weight logits' Adam")
    weight_decay: float = Field(
        1e-3, ge=0.0, description="L2 decay of the weight logits (the authors' gamma)"
    )


@OPTIONS.register("db_mtl")
class DBMTLOptions(BalanceOptions):
    """DB-MTL (Lin et al. 2023): log losses, then every task's averaged gradient rescaled to
    the largest norm on the shared parameters."""

    beta: float = Field(0.9, ge=0.0, lt=1.0, description="rate of the gradients' moving average")
    beta_sigma: float = Field(0.5, ge=0.0, description="decay of that rate: beta / step^beta_sigma")


# ---------------------------------------------------------------------------- gradient methods
MODE = "'exact': task gradients on every shared parameter; 'fast': at the shared representation"


class GramianOptions(BalanceOptions):
    """Options of every method that weights tasks from the Gramian of their gradients."""

    mode: Literal["exact", "fast"] = Field("fast", description=MODE)
    every: int = Field(
        1, ge=1, description="recompute the weights every k steps, reuse them between"
    )


@OPTIONS.register("imtl")
class IMTLOptions(GramianOptions):
    """IMTL (Liu et al. 2021): equal projections of the update on every task's gradient (g),
    learned loss scales (l), or both."""

    variant: Literal["g", "l", "both"] = Field(
        "both", description="'g': gradient balance; 'l': loss balance only; 'both'"
    )
    lr: float = Field(1e-2, gt=0.0, description="SGD learning rate of the log loss scales")


@OPTIONS.register("mgda")
class MGDAOptions(GramianOptions):
    """MGDA (Sener & Koltun 2018): the min-norm point of the hull of the task gradients."""

    mode: Literal["exact", "fast"] = Field("exact", description=MODE)
    normalize: Literal["none", "l2", "loss", "loss+"] = Field(
        "none", description="scale each gradient by 1, its norm, its loss, or both first"
    )


@OPTIONS.register("mgda_ub")
class MGDAUBOptions(MGDAOptions):
    """MGDA-UB (Sener & Koltun 2018): MGDA on the gradients at the shared representation."""

    mode: Literal["exact", "fast"] = Field("fast", description=MODE)


@OPTIONS.register("pcgrad")
class PCGradOptions(GramianOptions):
    """PCGrad (Yu et al. 2020): each gradient loses its components that conflict with the
    others, in a random order."""

    seed: int = Field(0, ge=0, description="with the step number, seeds the random task orders")


@OPTIONS.register("gradvac")
class GradVacOptions(PCGradOptions):
    """Gradient Vaccine (Wang et al. 2021): PCGrad towards a moving-average target cosine
    between every pair of tasks."""

    beta: float = Field(
        0.01, ge=0.0, le=1.0, description="rate of the target cosines' moving average"
    )


@OPTIONS.register("cagrad")
class CAGradOptions(GramianOptions):
    """CAGrad (Liu et al. 2021): the direction near the mean gradient that most improves the
    worst task."""

    c: float = Field(
        0.4, ge=0.0, lt=1.0, description="radius around the mean gradient (0: the mean gradient)"
    )
    rescale: int = Field(
        1, ge=0, le=2, description="divide the update by 1 (0), 1 + c^2 (1) or 1 + c (2)"
    )


@OPTIONS.register("nash_mtl")
class NashMTLOptions(GramianOptions):
    """Nash-MTL (Navon et al. 2022): the Nash bargaining solution between the tasks."""

    normalize_gramian: bool = Field(
        False, description="solve for the Gramian over its norm, as the authors' code does"
    )


@OPTIONS.register("aligned_mtl")
class AlignedMTLOptions(GramianOptions):
    """Aligned-MTL (Senushkin et al. 2023): the task gradients' principal components aligned
    to equal size."""


@OPTIONS.register("upgrad")
class UPGradOptions(GramianOptions):
    """UPGrad (Quinton & Rey 2024): the mean of the task gradients projected onto their dual
    cone; no task's loss increases to first order."""


# ---------------------------------------------------------------------------- representation
@OPTIONS.register("graddrop")
class GradDropOptions(BalanceOptions):
    """GradDrop (Chen et al. 2020): at the shared representation, keep each element's task
    gradients of one randomly chosen sign."""

    leak: float = Field(
        0.0, ge=0.0, le=1.0, description="share of a dropped gradient kept (0: pure GradDrop)"
    )
    seed: int = Field(0, ge=0, description="seeds the method's own generator of drop noise")


@OPTIONS.register("sam_task")
class TaskSAMOptions(BalanceOptions):
    """Task-based SAM (Phan et al. 2022): each task's gradient taken at its own sharpest
    nearby point, then summed."""

    rho: float = Field(0.05, gt=0.0, description="radius of every task's perturbation")
