"""Cross-stitch networks (Misra et al., CVPR 2016): one MLP column per task, the columns'
activations linearly mixed after every layer by a learned T x T cross-stitch matrix."""

from __future__ import annotations

from pydantic import BaseModel, Field

from polytask.arch.base import ARCHS, Architecture, ArchOptions
from polytask.config import ModelSpec
from polytask.plan.schema import Level, MLPExperts, Plan, StitchGates, full


class CrossStitchOptions(ArchOptions):
    init_self: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="each column's weight on itself at initialisation; the other columns "
        "share the rest, (1 - init_self) / (T - 1) each",
    )


@ARCHS.register("cross_stitch")
class CrossStitch(Architecture):
    """Cross-stitch networks (Misra et al. 2016): one column per task, each layer of
    ``model.hidden`` followed by a learned linear mix of all columns (x_t <- sum_s a_ts x_s)."""

    Options = CrossStitchOptions

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        assert isinstance(options, CrossStitchOptions)
        columns = full(num_tasks)
        levels = []
        for number, width in enumerate(spec.hidden):
            reads = None if number == 0 else columns
            levels.append(
                Level(
                    experts=MLPExperts(
                        count=num_tasks,
                        hidden=[width],
                        dropout=spec.dropout,
                        reads=reads,
                        owners=[f"task:{t}" for t in columns],
                    ),
                    gates=StitchGates(
                        allowed=[columns] * num_tasks, reads=reads, init_self=options.init_self
                    ),
                    name=f"layer {number}",
                )
            )
        return Plan(levels=levels, task_gates=columns, source="cross_stitch")
