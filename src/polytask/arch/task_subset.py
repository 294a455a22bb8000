"""Some tasks of another architecture: what ``polytask slim`` saves where tasks cannot be cut
apart inside the architecture.

Cross-stitch mixes every task's column into every other after each layer, so a kept task's
representation depends on all columns: the only exact slim model keeps the architecture whole
and drops the other tasks' towers. This wrapper runs the source architecture with its original
task count and returns the kept tasks' rows; the towers outside it are already only the kept
tasks'. It serves any architecture with plain towers and one shared encoder.
"""

from __future__ import annotations

import torch
from pydantic import Field, NonNegativeInt, model_validator

from polytask.arch.base import ARCHS, ArchOptions, SharingArch
from polytask.config import ModelSpec
from polytask.errors import ConfigError


class TaskSubsetOptions(ArchOptions):
    source: str = Field(description="the architecture that computes every source task")
    source_options: dict = Field(default_factory=dict, description="its model.options")
    source_tasks: int = Field(ge=1, description="how many tasks it was trained with")
    tasks: list[NonNegativeInt] = Field(min_length=1, description="source rows kept, in order")

    @model_validator(mode="after")
    def _rows_in_range(self) -> TaskSubsetOptions:
        if max(self.tasks) >= self.source_tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks: distinct indices in 0..{self.source_tasks - 1}")
        return self


def source_spec(spec: ModelSpec, options: TaskSubsetOptions) -> ModelSpec:
    """The model specification the wrapped architecture was built from."""
    return spec.model_copy(update={"arch": options.source, "options": options.source_options})


@ARCHS.register("task_subset")
class TaskSubset(SharingArch):
    """Another architecture run whole, its kept tasks' representations returned (what `polytask
    slim` saves for cross_stitch and architectures it cannot cut apart)."""

    Options = TaskSubsetOptions
    options: TaskSubsetOptions

    def __init__(self, in_dim: int, num_tasks: int, spec: ModelSpec) -> None:
        super().__init__(in_dim, num_tasks, spec)
        options = self.options
        if len(options.tasks) != num_tasks:
            raise ConfigError(
                f"model.options ({spec.arch}): tasks lists {len(options.tasks)} row(s) for "
                f"{num_tasks} task(s)"
            )
        self.source = ARCHS.get(options.source)(
            in_dim, options.source_tasks, source_spec(spec, options)
        )
        self.register_buffer("rows", torch.tensor(options.tasks), persistent=False)

    @classmethod
    def parse_options(cls, spec: ModelSpec) -> ArchOptions:
        """Also validate the source's own options, and refuse sources this cannot wrap."""
        options = super().parse_options(spec)
        assert isinstance(options, TaskSubsetOptions)
        if options.source == spec.arch:
            raise ConfigError(f"model.options ({spec.arch}): source cannot be {spec.arch} itself")
        source_cls = ARCHS.get(options.source)
        if source_cls.input_per_task or source_cls.heads is not SharingArch.heads:
            raise ConfigError(
                f"model.options ({spec.arch}): source '{options.source}' has per-task encoders "
                "or its own heads, which a subset of its rows cannot reproduce"
            )
        source_cls.parse_options(source_spec(spec, options))
        return options

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.source(x)[self.rows]  # [T_source, B, out] -> [T, B, out]

    def extra_repr(self) -> str:
        return f"source={self.options.source}, rows={self.options.tasks}"
