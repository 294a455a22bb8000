"""The sweep specification (``sweep.yaml``): a base run spec, a search space over its dotted keys,
the objectives, and how to search. Validated like the run spec: one line per problem.

```yaml
base: census_income.yaml          # a run spec path (relative to this file) or an inline mapping
space:
  model.arch: [mmoe, omoe, ple]   # a list is a categorical choice
  balance.method: {type: categorical, choices: [equal, uw]}
  model:                           # a mapping of labelled choices: a mapping value is merged
    choices:                       # into the spec at that key, other values replace it
      cgc: {arch: cgc, options: {task_experts: 3, shared_experts: 2}}
      mmoe: {arch: mmoe}
  model.num_experts: {type: int, low: 4, high: 16, step: 4}
  train.lr: {type: log_float, low: 1.0e-4, high: 1.0e-2}
objectives: [income.auc, {metric: latency, batch: 1}]   # task.metric, latency, parameters
trials: 40
parallel: 2
sampler: tpe                       # tpe | nsga2 | random | grid (every combination once)
pruning: {warmup_epochs: 2, min_trials: 4, percentile: 50}   # or false
```
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from polytask.config import RunSpec, format_validation_error, parse_spec, read_yaml
from polytask.errors import ConfigError, did_you_mean
from polytask.tasks import HIGHER_IS_BETTER

Direction = Literal["maximize", "minimize"]
SYSTEM_OBJECTIVES: dict[str, Direction] = {"latency": "minimize", "parameters": "minimize"}
MONITOR = "monitor"  # the run's own early-stopping score (higher is better)
Primitive = str | int | float | bool | None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpace(_Section):
    """One searched key: categorical choices, or an int / float / log-scale float range."""

    type: Literal["categorical", "int", "float", "log_float"] = "categorical"
    choices: list[Any] | dict[str, Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpace:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical key needs 'choices': a list or a mapping")
            if self.low is not None or self.high is not None or self.step is not None:
                raise ValueError("a categorical key takes 'choices', not low / high / step")
            if isinstance(self.choices, list):
                if any(isinstance(c, dict | list) for c in self.choices):
                    raise ValueError(
                        "list choices must be plain values; give mappings or lists as labelled "
                        "choices: {choices: {label: value, ...}}"
                    )
                if len(set(map(repr, self.choices))) != len(self.choices):
                    raise ValueError("choices must be distinct")
            return self
        if self.choices is not None:
            raise ValueError(f"an {self.type} key takes low / high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"an {self.type} key needs 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
        if self.type == "int":
            if any(v is not None and not float(v).is_integer() for v in (self.low, self.high)):
                raise ValueError("an int key needs whole low / high")
            if self.step is not None and (self.step < 1 or not float(self.step).is_integer()):
                raise ValueError("an int key's step must be a whole number >= 1")
        if self.type == "log_float":
            if self.low <= 0:
                raise ValueError("a log_float key needs low > 0")
            if self.step is not None:
                raise ValueError("a log_float key takes no step")
        if self.step is not None and self.step <= 0:
            raise ValueError("step must be positive")
        return self

    @property
    def labels(self) -> list[Primitive]:
        """What the sampler chooses among (a labelled choice's label)."""
        assert self.choices is not None
        return list(self.choices)  # a mapping's keys, or the list itself

    def value(self, label: Any) -> Any:
        """The spec value a sampled label stands for."""
        if isinstance(self.choices, dict):
            return copy.deepcopy(self.choices[label])
        return label

    def grid(self) -> list[Primitive] | None:
        """Every value, where there is a finite list of them (categorical, or int)."""
        if self.type == "categorical":
            return self.labels
        if self.type == "int":
            assert self.low is not None and self.high is not None
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        return None


class Objective(_Section):
    """``task.metric`` on the sweep's split, ``latency`` (median ms per prediction call of
    ``batch`` rows) or ``parameters``."""

    metric: str
    direction: Direction | None = None
    batch: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _known(self) -> Objective:
        if self.metric in SYSTEM_OBJECTIVES:
            self.direction = self.direction or SYSTEM_OBJECTIVES[self.metric]
            return self
        task, _, metric = self.metric.rpartition(".")
        if not task or metric not in HIGHER_IS_BETTER:
            raise ValueError(
                f"objective '{self.metric}': expected task.metric (metric one of "
                f"{', '.join(HIGHER_IS_BETTER)}), latency or parameters"
                f"{did_you_mean(metric, HIGHER_IS_BETTER)}"
            )
        natural: Direction = "maximize" if HIGHER_IS_BETTER[metric] else "minimize"
        self.direction = self.direction or natural
        return self

    @property
    def name(self) -> str:
        return f"latency_ms@{self.batch}" if self.metric == "latency" else self.metric

    @property
    def task_metric(self) -> tuple[str, str] | None:
        if self.metric in SYSTEM_OBJECTIVES:
            return None
        task, _, metric = self.metric.rpartition(".")
        return task, metric


class PruningSpec(_Section):
    """Stop a trial whose best validation value so far is outside the top ``percentile`` % of
    finished trials at the same epoch (Optuna's percentile rule; 50 is the median rule)."""

    enabled: bool = True
    metric: str | None = None  # task.metric or 'monitor'; default: the first task objective
    warmup_epochs: int = Field(2, ge=0)
    min_trials: int = Field(4, ge=1)
    percentile: float = Field(50.0, gt=0.0, lt=100.0)


class SweepSpec(_Section):
    base: str | dict[str, Any]
    space: dict[str, ParamSpace] = Field(min_length=1)
    objectives: list[Objective] = Field(min_length=1)
    trials: int | None = Field(None, ge=1)
    parallel: int = Field(1, ge=1)
    sampler: Literal["tpe", "nsga2", "random", "grid"] = "tpe"
    seed: int = 0
    split: Literal["valid", "test"] = "valid"
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    threads: int | None = Field(None, ge=1)
    storage: str | None = None

    @field_validator("space", mode="before")
    @classmethod
    def _list_is_categorical(cls, space: Any) -> Any:
        if not isinstance(space, dict):
            return space
        return {k: {"choices": v} if isinstance(v, list) else v for k, v in space.items()}

    @field_validator("objectives", mode="before")
    @classmethod
    def _name_is_objective(cls, objectives: Any) -> Any:
        if not isinstance(objectives, list):
            return objectives
        return [{"metric": o} if isinstance(o, str) else o for o in objectives]

    @field_validator("pruning", mode="before")
    @classmethod
    def _switch(cls, pruning: Any) -> Any:
        return {"enabled": pruning} if isinstance(pruning, bool) else pruning

    @model_validator(mode="after")
    def _budget(self) -> SweepSpec:
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objectives must be distinct (got {', '.join(names)})")
        if self.sampler != "grid":
            if self.trials is None:
                raise ValueError(f"the {self.sampler} sampler needs 'trials': how many to run")
            return self
        for key, space in self.space.items():
            if space.grid() is None:
                raise ValueError(
                    f"sampler grid: space key '{key}' is a {space.type} range; a grid needs "
                    "categorical choices or an int range"
                )
        size = self.grid_size
        if self.trials is not None and self.trials > size:
            raise ValueError(f"trials ({self.trials}) exceeds the grid's {size} combinations")
        return self

    @property
    def grid_size(self) -> int:
        return math.prod(len(space.grid() or []) for space in self.space.values())

    @property
    def budget(self) -> int:
        return self.trials if self.trials is not None else self.grid_size

    def grid_points(self) -> list[dict[str, Primitive]]:
        keys = list(self.space)
        values = [self.space[k].grid() or [] for k in keys]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


class Sweep:
    """A validated sweep: its spec, the base run spec as written, and where paths resolve."""

    def __init__(self, spec: SweepSpec, base: dict[str, Any], base_dir: Path) -> None:
        self.spec = spec
        self.base = base
        self.base_dir = base_dir
        self.base_spec = _parse_base(base, base_dir)
        self._check_space()
        self._check_objectives()

    # ------------------------------------------------------------------ trial specs
    def trial_raw(self, labels: dict[str, Any], threads: int | None) -> dict[str, Any]:
        """The base spec with each searched key set to its sampled value."""
        raw = copy.deepcopy(self.base)
        for key, label in labels.items():
            set_key(raw, key, self.spec.space[key].value(label))
        train = raw.setdefault("train", {})
        if threads is not None and isinstance(train, dict) and "threads" not in train:
            train["threads"] = threads
        return raw

    def trial_spec(self, labels: dict[str, Any], threads: int | None) -> RunSpec:
        return parse_spec(self.trial_raw(labels, threads), base_dir=self.base_dir)

    def pruning_target(self) -> tuple[str, str] | None:
        """(task, metric) the pruning rule watches; None for the run's monitored score."""
        metric = self.spec.pruning.metric
        if metric == MONITOR:
            return None
        if metric is not None:
            task, _, name = metric.rpartition(".")
            return task, name
        return next((o.task_metric for o in self.spec.objectives if o.task_metric), None)

    def canonical(self) -> dict[str, Any]:
        """What defines the study: a resumed sweep must agree on it."""
        dumped = self.spec.model_dump(mode="json")
        return {
            "base": self.base,
            "base_dir": str(self.base_dir),
            **{key: dumped[key] for key in ("space", "objectives", "split", "sampler")},
        }

    # ------------------------------------------------------------------ checks
    def _check_space(self) -> None:
        reference = self.base_spec.to_yaml_dict()
        for key in self.spec.space:
            check_key(reference, key)

    def _check_objectives(self) -> None:
        tasks = {task.name: task for task in self.base_spec.tasks}
        metrics = [o.metric for o in self.spec.objectives if o.task_metric]
        if self.spec.pruning.metric not in (None, MONITOR):
            metrics.append(self.spec.pruning.metric)
        for name in metrics:
            task, _, metric = name.rpartition(".")
            if task not in tasks:
                raise ConfigError(
                    f"sweep: '{name}' names task '{task}'{did_you_mean(task, tasks)}, which "
                    f"the base spec does not have (tasks: {', '.join(tasks)})"
                )
            if metric not in (tasks[task].metrics or []):
                raise ConfigError(
                    f"sweep: '{name}': task '{task}' reports {', '.join(tasks[task].metrics or [])}"
                )


def _parse_base(base: dict[str, Any], base_dir: Path) -> RunSpec:
    try:
        return parse_spec(copy.deepcopy(base), base_dir=base_dir)
    except ConfigError as error:
        raise ConfigError(f"sweep base: {error}") from None


def _parts(key: str) -> list[str | int]:
    return [int(part) if part.isdigit() else part for part in key.split(".")]


def check_key(reference: dict[str, Any], key: str) -> None:
    """``key`` must name a place in the run spec: every part but the last must exist, and the
    last too unless its parent is a free-form mapping (``options``, ``dataset_options``)."""
    node: Any = reference
    walked: list[str] = []
    parts = _parts(key)
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        free = bool(walked) and walked[-1].endswith("options")
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_list or (isinstance(node, dict) and part in node):
            node = node[part]
        elif isinstance(node, dict) and last and free:
            return
        else:
            where = ".".join(walked) or "the run spec"
            choices = list(node) if isinstance(node, dict) else []
            raise ConfigError(
                f"sweep: space key '{key}': {where} has no '{part}'"
                f"{did_you_mean(str(part), choices)}"
                + (f"; it has: {', '.join(choices)}" if choices else "")
            )
        walked.append(str(part))


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in the raw spec (creating mappings on the way); a mapping value is
    merged into a mapping already there."""
    parts = _parts(key)
    node: Any = raw
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    existing = node[int(last)] if isinstance(node, list) else node.get(last)
    if isinstance(value, dict) and isinstance(existing, dict):
        value = _merged(existing, value)
    node[last] = value


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None) -> Sweep:
    """Read and validate ``sweep.yaml`` (with top-level keys replaced by ``overrides``, e.g.
    from the command line); a base given as a path is read relative to it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    raw = read_yaml(path, "sweep")
    if isinstance(raw, dict) and overrides:
        raw.update({k: v for k, v in overrides.items() if v is not None})
    return parse_sweep(raw, path.parent.resolve())


def parse_sweep(raw: Any, folder: Path) -> Sweep:
    if not isinstance(raw, dict):
        raise ConfigError("sweep: expected a mapping with base, space, objectives, ...")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"sweep: {format_validation_error(error, SweepSpec)}") from None
    if isinstance(spec.base, dict):
        return Sweep(spec, copy.deepcopy(spec.base), folder)
    base_path = (folder / spec.base).resolve()
    if not base_path.is_file():
        raise ConfigError(f"sweep: base run spec not found: {base_path}")
    base = read_yaml(base_path, "sweep base")
    if not isinstance(base, dict):
        raise ConfigError(f"sweep base {base_path}: expected a run spec mapping")
    return Sweep(spec, base, base_path.parent)
