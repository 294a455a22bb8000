"""The run specification: a YAML file (or dict) validated by pydantic.

Every section forbids unknown keys, so a typo fails early with one line that names the key,
what is allowed and the closest allowed word, instead of being silently ignored.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from polytask.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from polytask.balance.options import BalanceOptions


def _not_a_boolean(value: Any) -> Any:
    """YAML reads ``true`` as a boolean, which pydantic would take as the number 1."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, not the boolean {str(value).lower()}")
    return value


# Numbers in a spec: never a boolean; floats never NaN or infinite (``allow_inf_nan`` below).
Int = Annotated[int, BeforeValidator(_not_a_boolean)]
Float = Annotated[float, BeforeValidator(_not_a_boolean)]
# Seeds feed numpy and torch generators (torch takes at most 64 bits, and the trainer derives
# per-epoch seeds from this one): 32 bits, as numpy's legacy seeding allows.
SEED_LIMIT = 2**32
Seed = Annotated[Int, Field(ge=0, lt=SEED_LIMIT)]
MAX_THREADS = 1024
# train.device: a torch device name polytask knows how to place a run on.
DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)\Z")
# A task name becomes part of file names (plots, cascade folders) and output columns: a word.
TASK_NAME = re.compile(r"\w[\w.-]{0,99}\Z")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TaskKind(str, Enum):
    binary = "binary"
    multiclass = "multiclass"
    regression = "regression"
    multilabel = "multilabel"


class SplitSpec(_Section):
    """How to carve validation and test rows out of ``train`` when their paths are not given:
    at random (the default), by ``group`` (every row of a group in one split), ``stratify``
    (each class of a classification task in the same shares in every split) or ``time``
    (ordered by a column: the latest rows are the test rows). See polytask.data.splits."""

    valid: Float = Field(0.1, ge=0.0, lt=1.0)
    test: Float = Field(0.1, ge=0.0, lt=1.0)
    seed: Seed = 0
    group: str | None = None
    stratify: str | None = Field(None, description="a binary or multiclass task's name")
    time: str | None = None

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> SplitSpec:
        if self.valid + self.test >= 1.0:
            raise ValueError("valid + test fractions must be below 1")
        chosen = [key for key in ("group", "stratify", "time") if getattr(self, key) is not None]
        if len(chosen) > 1:
            raise ValueError(
                f"give at most one of group, stratify and time (got {', '.join(chosen)})"
            )
        return self

    @property
    def kind(self) -> str:
        """random | group | stratify | time."""
        return next(
            (key for key in ("group", "stratify", "time") if getattr(self, key) is not None),
            "random",
        )


def _stream_switch(value: Any) -> Any:
    """``stream: true`` is the default options; ``false`` is no streaming."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


class StreamSpec(_Section):
    """Streaming a Parquet training table instead of loading it (polytask.data.stream)."""

    # rows read and preprocessed at a time (a Parquet record batch)
    batch_rows: Int = Field(65_536, ge=1)
    # rows held in the shuffle buffer: rows are shuffled within it, so memory is bounded by it
    buffer_rows: Int = Field(1_000_000, ge=1)
    # rows of the uniform reservoir sample the numeric scalers' clipping quantiles and
    # winsorised moments are fitted on (exact when the table has no more rows)
    sample_rows: Int = Field(1_000_000, ge=1)


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
    min_frequency: Int = Field(1, ge=1)
    # a categorical column keeps at most this many values (the most frequent; see
    # polytask.data.preprocess); null: no cap
    max_categories: Int | None = Field(10_000, ge=1)
    # standard: per column; block: one mean and std over all numeric columns (pixels);
    # none: raw values; auto: block for the cnn encoder's pixels, standard otherwise
    scaling: Literal["auto", "standard", "block", "none"] = "auto"
    # auto: by the file's extension (polytask.data.readers); a name forces that reader
    reader: Literal["auto", "csv", "tsv", "parquet", "jsonl", "feather", "mat"] = "auto"
    # wide: one row per entity, one column per target; long: one row per (entity, task,
    # label), pivoted to wide (polytask.data.long)
    format: Literal["wide", "long"] = "wide"
    entity: str | None = None
    task_column: str | None = None
    label_column: str | None = None
    # the model's inputs, exactly (else: every column but the targets, data.drop, the entity,
    # the split group and the weight columns)
    inputs: list[str] | None = None
    # per-row sample weights: one column for every task, or {task: column}
    weight: str | dict[str, str] | None = None
    # stream the training table (a Parquet file or folder) rather than load it: true, or
    # {batch_rows, buffer_rows, sample_rows}; valid and test stay files read in memory
    stream: Annotated[StreamSpec | None, BeforeValidator(_stream_switch)] = None
    # keep the encoded tensors of these files, keyed by their content, for the next run on
    # them (polytask.data.cache; POLYTASK_TENSOR_CACHE=off turns it off everywhere)
    cache: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.train is None) == (self.dataset is None):
            raise ValueError("give exactly one of 'train' (a data file) or 'dataset'")
        return self

    @model_validator(mode="after")
    def _streamable(self) -> DataSpec:
        """A streamed table is a Parquet data set of wide rows, never split in memory."""
        if self.stream is None:
            return self
        if self.train is None:
            raise ValueError("stream reads data.train (a Parquet file or folder), not a dataset")
        if self.reader not in ("auto", "parquet"):
            raise ValueError(f"stream reads Parquet only, not reader {self.reader}")
        if self.format != "wide":
            raise ValueError(
                "stream reads wide tables only (format: long is pivoted to a wide table that "
                "is held in memory)"
            )
        if self.split != SplitSpec():
            raise ValueError(
                "split: a streamed table is not split; give data.valid and data.test as files"
            )
        return self

    @model_validator(mode="after")
    def _long_format_columns(self) -> DataSpec:
        keys = ("entity", "task_column", "label_column")
        if self.format == "long":
            missing = [key for key in keys if getattr(self, key) is None]
            if missing:
                raise ValueError(f"format long needs {', '.join(missing)}: the column names")
            if isinstance(self.weight, dict):
                raise ValueError(
                    "weight: a long table's weights are one column (a weight per row, so per "
                    "task), not one per task"
                )
            names = [getattr(self, key) for key in keys]
            if len(set(names)) < 3:
                raise ValueError("entity, task_column and label_column must be three columns")
        else:
            given = [key for key in keys if getattr(self, key) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} is read only with format: long")
        return self

    @model_validator(mode="after")
    def _inputs_are_inputs(self) -> DataSpec:
        if self.inputs is None:
            return self
        if not self.inputs:
            raise ValueError("inputs: list at least one column (or leave it out)")
        repeated = sorted({c for c in self.inputs if self.inputs.count(c) > 1})
        if repeated:
            raise ValueError(f"inputs: repeated column {repeated[0]!r}")
        for listed, where in ((self.categorical, "categorical"), (self.numeric, "numeric")):
            outside = [c for c in listed or [] if c not in self.inputs]
            if outside:
                raise ValueError(f"{where} names '{outside[0]}', which is not in inputs")
        for column in self.drop:
            if column in self.inputs:
                raise ValueError(f"column '{column}' is in both inputs and drop")
        return self

    def input_rule(self) -> str:
        """Which columns are inputs, in words (``polytask info`` prints it)."""
        if self.inputs is not None:
            return "data.inputs: exactly the columns listed"
        return (
            "every column of the training table but the targets, data.drop and the row "
            "columns (entity, split group, weights); list data.inputs to choose them"
        )

    def weight_columns(self, tasks: list[TaskSpec]) -> dict[str, str]:
        """Task name -> the column of its rows' sample weights (tasks without are absent).
        A long table's weight column is per (entity, task) row: pivoted, task ``t``'s
        weights are the column ``<column>[<t's target>]``."""
        columns = {}
        for task in tasks:
            weight = self.weight.get(task.name) if isinstance(self.weight, dict) else self.weight
            if weight is not None and self.format == "long":
                weight = f"{weight}[{task.target}]"
            if weight is not None:
                columns[task.name] = weight
        return columns

    def row_columns(self) -> list[str]:
        """Columns that describe rows rather than inputs: the entity, the split group and the
        sample weights. They are never inputs (an id would be learnt by heart)."""
        weight = self.weight
        weights = [weight] if isinstance(weight, str) else list((weight or {}).values())
        listed = [self.entity, self.split.group, *weights]
        return [c for c in dict.fromkeys(listed) if c is not None]


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
    metrics: list[str] = Field(
        default_factory=list, description="metrics to report; default: every one of the kind"
    )
    weight: Float = Field(1.0, ge=0.0)

    @field_validator("name")
    @classmethod
    def _a_name(cls, name: str) -> str:
        if not TASK_NAME.match(name) or name in (".", ".."):
            raise ValueError(
                f"task name {name!r} must start with a letter, digit or underscore and hold "
                "only those, '.' and '-' (at most 100 characters): it names files and columns"
            )
        return name

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
        if "metrics" not in self.model_fields_set:
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
    image_shape: list[Int] | None = None
    channels: list[Int] = Field(default_factory=lambda: [10, 20], min_length=2, max_length=2)
    out_dim: Int = Field(50, ge=1)

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


class AdaptersSpec(_Section):
    """Adapters on a frozen backbone (``polytask.adapters``): which method, on which linear
    layers, over which weights.

    ``backbone``: a finished run (its model section, fitted inputs and weights are taken; leave
    the rest of ``model`` unset) or a ``.safetensors`` file of this model's weights (or of its
    encoders and experts). Every parameter loaded from it stays fixed; the adapters, the
    towers (``heads: train``) and whatever the backbone lacks (the towers and gates of tasks
    it does not have) train. Without a backbone the model as built is the backbone (a
    pretrained ``encoder_factory`` module) and everything but the adapters and towers stays.
    ``targets``: shell-style patterns over the linear layers of the encoders and the plan
    network (default: all of them), named (``encoders.0.linear``,
    ``arch.levels.0.experts.0``; an unmatched pattern lists them all).
    """

    method: str
    backbone: Path | None = None
    targets: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)
    heads: Literal["train", "freeze"] = "train"

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        from polytask.adapters.options import ADAPTER_OPTIONS

        try:
            ADAPTER_OPTIONS.get(name)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return name

    @model_validator(mode="after")
    def _valid_options(self) -> AdaptersSpec:
        from polytask.adapters.options import ADAPTER_OPTIONS

        declared = ADAPTER_OPTIONS.get(self.method)
        try:
            declared.model_validate(self.options)
        except ValidationError as error:
            problems = [
                describe_problem(
                    item, declared, where=".".join(["options", *map(str, item["loc"])])
                )
                for item in error.errors()
            ]
            raise ValueError("; ".join(problems)) from None
        return self


class ModelSpec(_Section):
    """The network: input encoder -> sharing architecture -> one tower per task."""

    arch: str = "mmoe"
    embedding_dim: Int = Field(8, ge=1)
    hidden: list[Int] = Field(default_factory=lambda: [16], min_length=1)
    num_experts: Int = Field(8, ge=1)
    tower_hidden: list[Int] = Field(default_factory=lambda: [8])
    dropout: Float = Field(0.0, ge=0.0, lt=1.0)
    options: dict[str, Any] = Field(default_factory=dict)
    encoder: EncoderSpec = Field(default_factory=EncoderSpec)
    adapters: AdaptersSpec | None = None

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
        from polytask.balance.options import OPTIONS

        try:
            OPTIONS.get(name)
        except ConfigError as error:
            raise ValueError(str(error)) from None
        return name

    @model_validator(mode="after")
    def _valid_options(self) -> BalanceSpec:
        """Check ``options`` against the method's declaration (no torch, no balancer built),
        so a bad option fails at load, not mid-run."""
        self.resolved_options()
        return self

    def resolved_options(self) -> BalanceOptions:
        """The method's options: those given, validated, and the declared defaults for the
        rest (what the method runs with)."""
        from polytask.balance.options import parse_options

        try:
            return parse_options(self.method, self.options)
        except ConfigError as error:
            # a plain ConfigError: pydantic would wrap an OptionError, which is a ValueError too
            raise ConfigError(str(error)) from None


class EarlyStoppingSpec(_Section):
    patience: Int | None = Field(5, ge=1)
    monitor: Literal["metric", "loss"] = "metric"


class ScheduleSpec(_Section):
    name: Literal["none", "cosine", "step", "exponential"] = "none"
    step_size: Int = Field(10, ge=1)
    gamma: Float = Field(0.5, gt=0.0, le=1.0)


class RelationsSpec(_Section):
    """Record task relations while training (``polytask.relations``): every ``every`` steps,
    TAG's lookahead affinity and the task-gradient cosines on the first ``rows`` rows of the
    (shuffled) batch (``null``: the whole batch), averaged per epoch; the lookahead step
    uses ``lr`` (default: the optimizer's current learning rate).

    A measurement costs T forward and T backward passes over its rows, so its rows set the
    cost: 32 rows every 10 steps kept it within 15 % of training time at T = 12 in
    ``benchmarks/relations_cost.py``; the epoch average makes up for the smaller sample."""

    every: int = Field(10, ge=1)
    lr: float | None = Field(None, gt=0.0)
    rows: int | None = Field(32, ge=2)


class TrainSpec(_Section):
    epochs: Int = Field(20, ge=1)
    batch_size: Int = Field(1024, ge=1)
    eval_batch_size: Int = Field(16384, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Float = Field(1e-3, gt=0.0)
    weight_decay: Float = Field(0.0, ge=0.0)
    momentum: Float = Field(0.9, ge=0.0, lt=1.0)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    seed: Seed = 0
    # torch intra-op threads; bounded, as torch crashes (segfault) on absurd counts
    threads: Int | None = Field(None, ge=1, le=MAX_THREADS)
    baseline: Path | None = None
    diagnostics_every: Int | None = Field(None, ge=1)
    init: Path | None = Field(
        None,
        description="start from these weights: a finished run (same model) or a .safetensors "
        "file of this model's state (with the preprocessor.json beside it, when there is one)",
    )
    freeze: list[str] = Field(
        default_factory=list,
        description="parameter names (shell-style patterns, e.g. 'arch.*') kept fixed",
    )
    relations: RelationsSpec | None = None
    # where training runs: auto picks a CUDA GPU, then Apple's MPS, then the CPU
    device: str = "auto"
    # fp16 scales the loss with a gradient scaler (CUDA only); bf16 needs none
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not DEVICE.match(device):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, not '{device}'")
        return device

    figures: bool = Field(
        True,
        description="write the balance and expert-utilisation figures and report (a run of a "
        "stream or a benchmark may skip them)",
    )


# An MLflow tracking URI names its store by scheme (sqlite:///, http://, databricks, ...); a bare
# path to a ``.db`` file is taken as a SQLite store.
TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


class TrackSpec(_Section):
    """Experiment tracking, off unless asked: ``mlflow: true`` logs to MLflow's local store
    (``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` under the working directory); a
    string names the store (a tracking URI, or a path to a ``.db`` file)."""

    mlflow: bool | str = False
    experiment: str = Field("polytask", min_length=1)
    run_name: str | None = None
    log_model: bool = True
    log_artifacts: bool = True

    @field_validator("mlflow")
    @classmethod
    def _tracking_uri(cls, value: bool | str) -> bool | str:
        if isinstance(value, bool):
            return value
        text = value.strip()
        scheme = text.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme in TRACKING_SCHEMES or text.endswith(".db"):
            return text
        raise ValueError(
            "expected true, false or an MLflow tracking URI such as sqlite:///mlflow.db or "
            f"http://host:5000 (schemes: {', '.join(TRACKING_SCHEMES)})"
        )

    @property
    def enabled(self) -> bool:
        return self.mlflow is not False


class RunSpec(_Section):
    """A whole run: data, tasks, model, balancing, training and (optional) tracking."""

    data: DataSpec
    tasks: list[TaskSpec] = Field(min_length=1)
    model: ModelSpec = Field(default_factory=ModelSpec)
    balance: BalanceSpec = Field(default_factory=BalanceSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    track: TrackSpec = Field(default_factory=TrackSpec)

    @model_validator(mode="after")
    def _unique_names_and_columns(self) -> RunSpec:
        names = [task.name for task in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @model_validator(mode="after")
    def _stream_buffer_holds_a_batch(self) -> RunSpec:
        stream = self.data.stream
        if stream is not None and stream.buffer_rows < self.train.batch_size:
            raise ValueError(
                f"data.stream.buffer_rows ({stream.buffer_rows:,}) must hold at least one "
                f"global batch (train.batch_size {self.train.batch_size:,})"
            )
        return self

    @model_validator(mode="after")
    def _data_names_tasks(self) -> RunSpec:
        """``data.split.stratify`` and ``data.weight``'s keys name tasks of this spec."""
        by_name = {task.name: task for task in self.tasks}
        stratify = self.data.split.stratify
        if stratify is not None:
            task = by_name.get(stratify)
            if task is None:
                raise ValueError(
                    f"data.split.stratify: no task is named '{stratify}'"
                    f"{did_you_mean(stratify, by_name)}"
                )
            if task.kind not in (TaskKind.binary, TaskKind.multiclass):
                raise ValueError(
                    f"data.split.stratify: task '{stratify}' is {task.kind.value}; "
                    "only a binary or multiclass task's classes can be strata"
                )
        if isinstance(self.data.weight, dict):
            for name in self.data.weight:
                if name not in by_name:
                    raise ValueError(
                        f"data.weight: no task is named '{name}'{did_you_mean(name, by_name)}"
                    )
        targets = set(self.target_columns)
        for column in self.data.row_columns():
            if column in targets:
                raise ValueError(f"data: column '{column}' is a task's target and a row column")
        for column in self.data.inputs or []:
            if column in targets or column in self.data.row_columns():
                raise ValueError(
                    f"data.inputs: '{column}' is a target, entity, group or weight column"
                )
        return self

    @property
    def target_columns(self) -> list[str]:
        return [column for task in self.tasks for column in task.columns]

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc)


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
    return "; ".join(describe_problem(item, spec_cls) for item in error.errors())


def describe_problem(
    item: ErrorDetails, spec_cls: type[BaseModel] = RunSpec, where: str | None = None
) -> str:
    """One problem of a pydantic report as ``where: what is wrong``; ``where`` defaults to the
    dotted location (a caller that knows a better name for it, e.g. ``balance.options.c``,
    passes it)."""
    loc = tuple(item["loc"])
    where = where or _location(loc)
    if item["type"] == "extra_forbidden":
        allowed = _allowed_keys(spec_cls, loc)
        hint = did_you_mean(str(loc[-1]), allowed)
        listed = ", ".join(allowed) if allowed else "none"
        return f"{where}: unknown key{hint}; allowed: {listed}"
    if item["type"] == "missing":
        return f"{where}: required key is missing"
    message = item["msg"].removeprefix("Value error, ")
    got = item.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
    if item["type"] == "enum" or item["type"] == "literal_error":
        expected = item.get("ctx", {}).get("expected", "")
        hint = did_you_mean(str(got), [e.strip(" '") for e in expected.split(",")])
        message = f"{message}{hint}"
    prefix = f"{where}: " if where else ""
    return f"{prefix}{message}{shown}"


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
    adapters = spec.model.adapters
    backbone = adapters.backbone if adapters is not None else None
    if adapters is not None and backbone is not None and not backbone.is_absolute():
        adapters.backbone = (base_dir / backbone).resolve()


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
    return parse_spec(read_yaml(path, "config"), base_dir=path.parent.resolve())


def read_yaml(path: Path, what: str) -> Any:
    """A YAML file's content; a missing file, text that is not UTF-8 or invalid YAML is one
    line naming the file (and the line)."""
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} {path}: not valid YAML{where}") from None


def with_overrides(spec: RunSpec, **sections: dict[str, Any]) -> RunSpec:
    """A copy of ``spec`` with some keys of some sections replaced (``train={"seed": 3}``),
    validated like a config file, so that a command-line override cannot slip past a check."""
    raw = spec.model_dump(mode="json", exclude_unset=True)
    for section, values in sections.items():
        raw.setdefault(section, {}).update(
            {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
        )
    return parse_spec(raw)


def _is_set(model: BaseModel, path: str) -> bool:
    """Whether the user wrote the key at ``path`` (``tasks.0.weight``); defaults are not."""
    *parents, last = path.split(".")
    node: Any = model
    for part in parents:
        node = node[int(part)] if part.isdigit() else getattr(node, part, None)
        if not isinstance(node, BaseModel | list):
            return False
    return isinstance(node, BaseModel) and last in node.model_fields_set


def unused_spec_fields(spec: RunSpec) -> list[str]:
    """The keys the user set that this run will never read, as dotted paths
    (``model.num_experts`` under ``arch: ple``): the architecture and the balancing method say
    which of their fields they ignore (``unused_spec_fields`` on their classes), and the
    optimizer, schedule and encoder settings that only some choices read are checked here.
    Keys left at their defaults are never reported."""
    from polytask.arch import ARCHS
    from polytask.balance import BALANCERS

    model, train = spec.model, spec.train
    paths = [f"model.{name}" for name in ARCHS.get(model.arch).unused_spec_fields(model)]
    paths += BALANCERS.get(spec.balance.method).unused_spec_fields(spec)
    if model.encoder.name == "cnn":
        paths.append("model.embedding_dim")  # the cnn encoder reads no categorical column
    else:
        paths += ["model.encoder.channels", "model.encoder.out_dim"]
    if train.optimizer != "sgd":
        paths.append("train.momentum")
    if train.schedule.name != "step":
        paths.append("train.schedule.step_size")
    if train.schedule.name not in ("step", "exponential"):
        paths.append("train.schedule.gamma")
    return [path for path in dict.fromkeys(paths) if _is_set(spec, path)]


def check_unused(spec: RunSpec, strict: bool = False) -> list[str]:
    """Warn about (or, ``strict``, refuse) keys set in ``spec`` that the run does not read."""
    from polytask.errors import warn

    unused = unused_spec_fields(spec)
    if unused:
        choices = (
            f"arch {spec.model.arch}, balance {spec.balance.method}, "
            f"optimizer {spec.train.optimizer}, schedule {spec.train.schedule.name}, "
            f"encoder {spec.model.encoder.name}"
        )
        keys = ", ".join(unused)
        verb = "is" if len(unused) == 1 else "are"
        message = f"config: {keys} {verb} set but not used by this run ({choices})"
        if strict:
            raise ConfigError(f"{message}; remove {'it' if len(unused) == 1 else 'them'}")
        warn(message)
    return unused
