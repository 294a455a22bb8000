"""The run specification: a YAML file (or dict) validated by pydantic.

Every section forbids unknown keys, so a typo fails early with one line that names the key,
what is allowed and the closest allowed word, instead of being silently ignored.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from polytask.errors import ConfigError, did_you_mean


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskKind(str, Enum):
    binary = "binary"
    multiclass = "multiclass"
    regression = "regression"
    multilabel = "multilabel"


class SplitSpec(_Section):
    """How to carve validation and test rows out of ``train`` when their paths are not given."""

    valid: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> SplitSpec:
        if self.valid + self.test >= 1.0:
            raise ValueError("valid + test fractions must be below 1")
        return self


class DataSpec(_Section):
    """Where the table comes from and which columns are features."""

    train: Path | None = None
    valid: Path | None = None
    test: Path | None = None
    dataset: str | None = None
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    split: SplitSpec = Field(default_factory=SplitSpec)
    categorical: list[str] | None = None
    numeric: list[str] | None = None
    drop: list[str] = Field(default_factory=list)
    min_frequency: int = Field(1, ge=1)
    scaling: Literal["standard", "none"] = "standard"

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.train is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'train' (a CSV or Parquet path) or 'dataset'")
        return self


LOSSES: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.binary: ("bce",),
    TaskKind.multiclass: ("cross_entropy",),
    TaskKind.regression: ("mse", "l1", "huber"),
    TaskKind.multilabel: ("bce",),
}
METRICS: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.binary: ("auc", "logloss", "accuracy"),
    TaskKind.multiclass: ("accuracy", "macro_f1"),
    TaskKind.regression: ("rmse", "mae", "r2"),
    TaskKind.multilabel: ("mean_auc",),
}


class TaskSpec(_Section):
    """One prediction target (or several columns, for a multilabel task)."""

    name: str
    kind: TaskKind
    target: str | None = None
    targets: list[str] | None = None
    loss: str | None = None
    metrics: list[str] | None = None
    weight: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _targets_and_defaults(self) -> TaskSpec:
        if self.kind is TaskKind.multilabel:
            if not self.targets:
                raise ValueError("a multilabel task needs 'targets': a list of 0/1 columns")
            if self.target is not None:
                raise ValueError("a multilabel task takes 'targets', not 'target'")
        else:
            if self.target is None:
                raise ValueError(f"a {self.kind.value} task needs 'target': one column name")
            if self.targets is not None:
                raise ValueError(f"a {self.kind.value} task takes 'target', not 'targets'")
        allowed_losses = LOSSES[self.kind]
        if self.loss is None:
            self.loss = allowed_losses[0]
        elif self.loss not in allowed_losses:
            raise ValueError(
                f"loss '{self.loss}' does not fit a {self.kind.value} task"
                f"{did_you_mean(self.loss, allowed_losses)}; allowed: {', '.join(allowed_losses)}"
            )
        allowed_metrics = METRICS[self.kind]
        if self.metrics is None:
            self.metrics = list(allowed_metrics)
        for metric in self.metrics:
            if metric not in allowed_metrics:
                raise ValueError(
                    f"metric '{metric}' does not fit a {self.kind.value} task"
                    f"{did_you_mean(metric, allowed_metrics)}; "
                    f"allowed: {', '.join(allowed_metrics)}"
                )
        if not self.metrics:
            raise ValueError("'metrics' must name at least one metric")
        return self

    @property
    def columns(self) -> list[str]:
        """The table columns that hold this task's labels."""
        return list(self.targets) if self.targets is not None else [str(self.target)]


# Two valid 5x5 convolutions, each followed by a 2x2 max-pool, need 16 pixels per side.
CNN_MIN_SIDE = 16


class EncoderSpec(_Section):
    """The input encoder: embeddings joined with numerics, the numeric values alone, or a
    LeNet-style CNN over images.

    ``numeric`` passes the standardised numeric columns through as they are (no embeddings,
    no missing-value flags): for dense inputs such as pixels, where an MLP should read exactly
    the F values (a missing value then reads as 0, the column mean).
    ``cnn`` reads the first C*H*W numeric feature columns (in table order, or the order of
    ``data.numeric``) as a [C, H, W] image; categorical columns and missing flags are ignored.
    ``custom`` is recorded by the trainer for a run trained with a Python ``encoder_factory``;
    loading or resuming such a run needs the same factory.
    """

    name: Literal["tabular", "numeric", "cnn", "custom"] = "tabular"
    image_shape: list[int] | None = None
    channels: list[int] = Field(default_factory=lambda: [10, 20], min_length=2, max_length=2)
    out_dim: int = Field(50, ge=1)

    @field_validator("channels")
    @classmethod
    def _positive_channels(cls, channels: list[int]) -> list[int]:
        if any(width < 1 for width in channels):
            raise ValueError("channel counts must be positive integers")
        return channels

    @model_validator(mode="after")
    def _image_shape_fits(self) -> EncoderSpec:
        if self.name != "cnn":
            if self.image_shape is not None:
                raise ValueError(f"image_shape is read only by the cnn encoder, not '{self.name}'")
            return self
        shape = self.image_shape
        if shape is None or len(shape) != 3 or any(side < 1 for side in shape):
            raise ValueError("the cnn encoder needs image_shape: three positive ints [C, H, W]")
        if min(shape[1:]) < CNN_MIN_SIDE:
            raise ValueError(
                f"the cnn encoder needs images of at least {CNN_MIN_SIDE}x{CNN_MIN_SIDE} "
                f"(two 5x5 convolutions, each followed by a 2x2 pool); got {shape[1]}x{shape[2]}"
            )
        return self


class ModelSpec(_Section):
    """The network: input encoder -> sharing architecture -> one tower per task."""

    arch: str = "mmoe"
    embedding_dim: int = Field(8, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [16], min_length=1)
    num_experts: int = Field(8, ge=1)
    tower_hidden: list[int] = Field(default_factory=lambda: [8])
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    options: dict[str, Any] = Field(default_factory=dict)
    encoder: EncoderSpec = Field(default_factory=EncoderSpec)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, name: str) -> str:
        from polytask.arch import ARCHS

        try:
            ARCHS.get(name)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return name

    @model_validator(mode="after")
    def _arch_options(self) -> ModelSpec:
        from polytask.arch import ARCHS

        try:
            ARCHS.get(self.arch).parse_options(self)
        except ConfigError as error:
            detail = str(error).removeprefix(f"model.options ({self.arch}): ")
            raise ValueError(f"options.{detail}") from None
        return self

    @field_validator("hidden", "tower_hidden")
    @classmethod
    def _positive_sizes(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError("layer sizes must be positive integers")
        return sizes


class BalanceSpec(_Section):
    """How per-task losses become one update."""

    method: str = "equal"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        from polytask.balance import BALANCERS

        try:
            BALANCERS.get(name)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return name


class EarlyStoppingSpec(_Section):
    patience: int | None = Field(5, ge=1)
    monitor: Literal["metric", "loss"] = "metric"


class ScheduleSpec(_Section):
    name: Literal["none", "cosine", "step", "exponential"] = "none"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.5, gt=0.0, le=1.0)


class TrainSpec(_Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(1024, ge=1)
    eval_batch_size: int = Field(16384, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    baseline: Path | None = None
    diagnostics_every: int | None = Field(None, ge=1)
    init: Path | None = Field(
        None,
        description="start from these weights: a finished run (same model) or a .safetensors "
        "file of this model's state",
    )
    freeze: list[str] = Field(
        default_factory=list,
        description="parameter names (shell-style patterns, e.g. 'arch.*') kept fixed",
    )
    figures: bool = Field(
        True,
        description="write the balance and expert-utilisation figures and report (a run of a "
        "stream or a benchmark may skip them)",
    )


class RunSpec(_Section):
    """A whole run: data, tasks, model, balancing and training."""

    data: DataSpec
    tasks: list[TaskSpec] = Field(min_length=1)
    model: ModelSpec = Field(default_factory=ModelSpec)
    balance: BalanceSpec = Field(default_factory=BalanceSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)

    @model_validator(mode="after")
    def _unique_names_and_columns(self) -> RunSpec:
        names = [task.name for task in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _balance_options(self) -> RunSpec:
        """Build the balancing method once, so a bad option fails at load, not mid-run."""
        from polytask.balance import BALANCERS

        method = self.balance.method
        try:
            BALANCERS.get(method)(len(self.tasks), **self.balance.options)
        except (TypeError, ValueError) as error:  # ConfigError passes through parse_spec
            raise ConfigError(f"balance.options ({method}): {error}") from None
        return self

    @property
    def target_columns(self) -> list[str]:
        return [column for task in self.tasks for column in task.columns]

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "config"


def _allowed_keys(spec_cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Walk the schema along ``loc`` (minus the bad key) to list the keys allowed there."""
    cls: Any = spec_cls
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        cls = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if cls is None:
            return []
    return list(cls.model_fields)


def format_validation_error(error: ValidationError, spec_cls: type[BaseModel] = RunSpec) -> str:
    """Turn pydantic's report into one line per problem, naming the key and what is allowed."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        where = _location(loc)
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(spec_cls, loc)
            hint = did_you_mean(str(loc[-1]), allowed)
            listed = ", ".join(allowed) if allowed else "none"
            lines.append(f"{where}: unknown key{hint}; allowed: {listed}")
        elif item["type"] == "missing":
            lines.append(f"{where}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            got = item.get("input")
            shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
            if item["type"] == "enum" or item["type"] == "literal_error":
                expected = item.get("ctx", {}).get("expected", "")
                hint = did_you_mean(str(got), [e.strip(" '") for e in expected.split(",")])
                message = f"{message}{hint}"
            lines.append(f"{where}: {message}{shown}")
    return "; ".join(lines)


def parse_spec(raw: dict[str, Any], base_dir: Path | None = None) -> RunSpec:
    """Validate a dict into a :class:`RunSpec`; relative data paths resolve against base_dir."""
    if not isinstance(raw, dict):
        raise ConfigError("config: expected a mapping with sections data, tasks, model, ...")
    try:
        spec = RunSpec.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"config: {format_validation_error(error)}") from None
    except ConfigError as error:  # raised by a registry look-up inside a validator
        raise ConfigError(f"config: {error}") from None
    if base_dir is not None:
        _resolve_paths(spec, base_dir)
    return spec


def _resolve_paths(spec: RunSpec, base_dir: Path) -> None:
    resolve_data_paths(spec.data, base_dir)
    for field in ("baseline", "init"):
        path = getattr(spec.train, field)
        if path is not None and not path.is_absolute():
            setattr(spec.train, field, (base_dir / path).resolve())


def resolve_data_paths(data: DataSpec, base_dir: Path) -> None:
    """Relative file paths of a data section (and ``dataset_options.path``) against
    ``base_dir``, in place."""
    for field in ("train", "valid", "test"):
        path = getattr(data, field)
        if path is not None and not path.is_absolute():
            setattr(data, field, (base_dir / path).resolve())
    raw_path = data.dataset_options.get("path")
    if raw_path is not None and not Path(raw_path).is_absolute():
        data.dataset_options["path"] = str((base_dir / raw_path).resolve())


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; one line naming the file (and line) where it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {path}: not valid YAML{where}") from None


def load_spec(source: str | Path | dict[str, Any] | RunSpec) -> RunSpec:
    """Read a run specification from a YAML path, a dict, or pass a RunSpec through.

    Relative paths inside a YAML file are taken relative to that file's folder, so a config
    works wherever it is launched from.
    """
    if isinstance(source, RunSpec):
        return source
    if isinstance(source, dict):
        return parse_spec(source)
    path = Path(source)
    return parse_spec(read_yaml(path), base_dir=path.parent.resolve())
