"""The contract every sharing architecture meets: options in, a plan out.

An architecture is data before it is code. Each one is a small class in its own file of this
package that validates its ``model.options`` (a pydantic model, listed by ``polytask archs``)
and writes its structure as a :class:`~polytask.plan.schema.Plan`. One executor runs every
plan (:class:`polytask.nn.executor.PlanNetwork`), and slimming, the lean serving form and
export read the same plan, so adding an architecture is adding one file here.

Nothing here imports torch: validating a config and listing architectures stay fast.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from polytask.config import ModelSpec, format_validation_error
from polytask.errors import ConfigError
from polytask.plan.schema import Plan
from polytask.registry import Registry

# The model.* fields an architecture may read; the others (arch, options, encoder,
# embedding_dim, tower_hidden) belong to the encoder, the towers or the spec itself.
ARCH_FIELDS = frozenset({"hidden", "num_experts", "dropout"})


class ArchOptions(BaseModel):
    """Options one architecture takes from ``model.options``; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Architecture:
    """A sharing architecture: its options and the plan it builds for T tasks.

    ``uses`` names the ``model`` fields the plan reads (of :data:`ARCH_FIELDS`); a field the
    user sets that the architecture does not read is reported (:meth:`unused_spec_fields`).
    ``listed`` is False for internal architectures that ``polytask archs`` does not show.
    """

    registry_name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = ArchOptions
    uses: ClassVar[frozenset[str]] = frozenset({"hidden", "dropout"})
    listed: ClassVar[bool] = True

    @classmethod
    def parse_options(cls, spec: ModelSpec) -> BaseModel:
        """Validate ``model.options`` against this architecture's own options."""
        try:
            return cls.Options.model_validate(spec.options)
        except ValidationError as error:
            message = format_validation_error(error, cls.Options)
            raise ConfigError(f"model.options ({spec.arch}): {message}") from None

    @classmethod
    def plan(cls, num_tasks: int, spec: ModelSpec) -> Plan:
        """The plan for ``num_tasks`` tasks (options validated first)."""
        return cls.build(num_tasks, spec, cls.parse_options(spec))

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        raise NotImplementedError

    @classmethod
    def unused_spec_fields(cls, spec: ModelSpec) -> list[str]:
        """``model`` fields the user set that this architecture does not read."""
        return sorted((spec.model_fields_set & ARCH_FIELDS) - cls.uses)

    @classmethod
    def summary(cls) -> str:
        """The first paragraph of the docstring, on one line."""
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


ARCHS: Registry[Architecture] = Registry("architecture")
