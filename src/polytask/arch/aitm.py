"""AITM (Xi et al., KDD 2021): adaptive information transfer along a conversion funnel; the
transfer and its calibrator are :class:`~polytask.nn.heads.TransferHead`."""

from __future__ import annotations

from pydantic import BaseModel, Field

from polytask.arch.base import ARCHS, Architecture
from polytask.arch.esmm import ChainOptions, resolve_chain, task_bottoms
from polytask.config import ModelSpec
from polytask.plan.schema import Plan, TransferHeads, full


class AITMOptions(ChainOptions):
    calibration_weight: float = Field(
        0.6, ge=0.0, description="weight of the calibrator relu(p_t - p_{t-1}) (0 disables it)"
    )


@ARCHS.register("aitm")
class AITM(Architecture):
    """AITM (Xi et al. 2021): per-task bottoms; along the funnel each tower attends over its
    own representation and information transferred from the step before; calibrator loss."""

    Options = AITMOptions

    @classmethod
    def build(cls, num_tasks: int, spec: ModelSpec, options: BaseModel) -> Plan:
        assert isinstance(options, AITMOptions)
        heads = TransferHeads(
            chain=resolve_chain(spec.arch, options, num_tasks),
            calibration_weight=options.calibration_weight,
            dropout=spec.dropout,
        )
        return Plan(
            levels=[task_bottoms(num_tasks, spec)],
            task_gates=full(num_tasks),
            heads=heads,
            source="aitm",
        )
