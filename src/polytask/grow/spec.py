"""``grow.yaml`` and ``stream.yaml``: validated like a run specification (unknown keys are
errors, one line naming the key), in the same task and data syntax.

A grow spec names the new tasks, their data, the strategy and the training budget; a stream
spec names a model and a sequence of experiences (tasks with their data) trained one after
another with one strategy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from polytask.config import (
    BalanceSpec,
    DataSpec,
    ModelSpec,
    TaskSpec,
    TrainSpec,
    format_validation_error,
    read_yaml,
    resolve_data_paths,
)
from polytask.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StrategySpec(_Section):
    name: str = "naive"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from polytask.grow.strategies import STRATEGIES

        try:
            STRATEGIES.get(name)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return name


class GrowSpec(_Section):
    """``polytask grow RUN grow.yaml``: new tasks on a finished run."""

    tasks: list[TaskSpec] = Field(min_length=1, description="the new tasks")
    data: DataSpec = Field(description="the new tasks' rows (the run's inputs are kept)")
    old_data: Literal["run"] | DataSpec | None = Field(
        None,
        description="the old tasks' rows, for strategies that need them: a data section, or "
        "'run' for the data the run (and its earlier growths) trained on",
    )
    old_rows: int | None = Field(
        2000, ge=1, description="old training rows kept (a uniform sample; null: all)"
    )
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    balance: BalanceSpec = Field(default_factory=BalanceSpec)


class ExperienceSpec(_Section):
    name: str | None = None
    tasks: list[TaskSpec] = Field(min_length=1)
    data: DataSpec


class StreamSpec(_Section):
    """``polytask stream stream.yaml``: experiences trained one after another."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    experiences: list[ExperienceSpec] = Field(min_length=1)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    balance: BalanceSpec = Field(default_factory=BalanceSpec)
    random_baseline: bool = Field(
        True, description="evaluate a randomly initialised model too (forward transfer)"
    )
    optimizer_state: Literal["fresh", "kept"] = Field(
        "fresh",
        description="fresh: each experience's optimizer starts anew; kept: from the state "
        "the previous experience's ended with (Adam's moments and step count), for every "
        "parameter that existed then, as Avalanche's strategies keep it by default",
    )

    def task_names(self) -> list[str]:
        return [task.name for experience in self.experiences for task in experience.tasks]


def _parse(cls: type[BaseModel], raw: Any, what: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{what}: expected a mapping with {', '.join(cls.model_fields)}")
    try:
        return cls.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{what}: {format_validation_error(error, cls)}") from None
    except ConfigError as error:
        raise ConfigError(f"{what}: {error}") from None


def _read(source: str | Path | dict[str, Any], what: str) -> tuple[Any, Path | None]:
    """A spec's raw content and the folder its relative paths resolve against (None for a
    dict)."""
    if isinstance(source, dict):
        return source, None
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    return read_yaml(path, what), path.parent.resolve()


def load_grow_spec(source: str | Path | dict[str, Any] | GrowSpec) -> GrowSpec:
    """A grow spec from YAML (paths relative to its folder), a dict or itself."""
    if isinstance(source, GrowSpec):
        return source
    raw, base_dir = _read(source, "grow spec")
    spec: GrowSpec = _parse(GrowSpec, raw, "grow spec")
    if base_dir is not None:
        resolve_data_paths(spec.data, base_dir)
        if isinstance(spec.old_data, DataSpec):
            resolve_data_paths(spec.old_data, base_dir)
    return spec


def load_stream_spec(source: str | Path | dict[str, Any] | StreamSpec) -> StreamSpec:
    """A stream spec from YAML (paths relative to its folder), a dict or itself; task names
    unique over the whole stream."""
    if isinstance(source, StreamSpec):
        return source
    raw, base_dir = _read(source, "stream spec")
    spec: StreamSpec = _parse(StreamSpec, raw, "stream spec")
    names = spec.task_names()
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"stream spec: task names must be unique; repeated: {repeated}")
    if base_dir is not None:
        for experience in spec.experiences:
            resolve_data_paths(experience.data, base_dir)
    return spec
