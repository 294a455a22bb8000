"""What each adapter method accepts in ``model.adapters.options``: one declaration per method.

The declarations live here, apart from the methods' files, because those import torch and this
module must not: a run spec is validated, and ``polytask archs`` lists the methods, without
torch (seconds to import). Each method's class points at its declaration (``Options =
LoRAOptions``). Unknown keys are errors; types are strict (``true`` is not a number).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from polytask.registry import Registry


class AdapterOptions(BaseModel):
    """Base of every method's options."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
    registry_name: ClassVar[str]

    @classmethod
    def summary(cls) -> str:
        """The first paragraph of the docstring, on one line (``polytask archs``)."""
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


ADAPTER_OPTIONS: Registry[AdapterOptions] = Registry("adapter method")


class LowRank(AdapterOptions):
    rank: int = Field(8, ge=1, le=1024, description="r, the adapters' inner width")
    alpha: float = Field(16.0, gt=0, description="the update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input")


@ADAPTER_OPTIONS.register("lora")
class LoRAOptions(LowRank):
    """One low-rank update per task on each target layer: W + (alpha/r) A_t B_t (LoRA, Hu et
    al. 2021); a mixed batch runs every row with its own task's pair in one batched product."""


@ADAPTER_OPTIONS.register("lora_moe")
class LoRAMoEOptions(LowRank):
    """A bank of LoRA experts on each target layer mixed by a router (MoLE / SMoRA style):
    per task (one learnt mixture per task) or per token (a softmax over the input, biased per
    task), optionally top-k, with a load-balancing loss."""

    rank: int = Field(4, ge=1, le=1024, description="r of each LoRA expert")
    experts: int = Field(4, ge=2, le=256, description="LoRA experts per layer")
    router: Literal["task", "token"] = Field("task", description="what the mixture reads")
    top_k: int | None = Field(None, ge=1, description="keep the k largest weights (None: all)")
    balance_weight: float = Field(
        0.01, ge=0.0, description="weight of the load-balancing loss (Switch Transformer's)"
    )

    @model_validator(mode="after")
    def _k_fits(self) -> LoRAMoEOptions:
        if self.top_k is not None and self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) must not exceed experts ({self.experts})")
        return self


@ADAPTER_OPTIONS.register("mtl_lora")
class MTLLoRAOptions(LowRank):
    """MTL-LoRA (Yang et al. 2024): a shared down-projection A, a task-specific r x r
    transform per task, and several shared up-projections B_i mixed by task-specific softmax
    weights: delta_t = sum_i w_ti B_i Lambda_t A."""

    ups: int = Field(3, ge=1, le=64, description="shared up-projections B_i")
    temperature: float = Field(0.5, gt=0, description="softmax temperature of the mixing weights")


@ADAPTER_OPTIONS.register("hyper")
class HyperOptions(AdapterOptions):
    """Bottleneck adapters whose weights a shared hypernetwork generates from a task embedding
    and a layer embedding (HyperFormer++, Mahabadi et al. 2021): one generator per layer
    width serves every task and layer."""

    size: int = Field(8, ge=1, le=1024, description="the generated adapters' bottleneck width")
    task_dim: int = Field(32, ge=1, le=4096, description="task embedding width")
    layer_dim: int = Field(8, ge=1, le=4096, description="layer embedding width")
    hidden: int = Field(64, ge=1, le=4096, description="the task projector's hidden width")


@ADAPTER_OPTIONS.register("bottleneck")
class BottleneckOptions(AdapterOptions):
    """A bottleneck adapter per task on each target layer's output, h + U_t relu(D_t h)
    (Houlsby et al. 2019); ``compose: fusion`` adds AdapterFusion (Pfeiffer et al. 2021): each
    task attends over every task's adapter output. Its second stage trains fusion on a run
    whose adapters are trained: give that run as ``backbone`` (its adapters load and stay)."""

    size: int = Field(16, ge=1, le=4096, description="bottleneck width")
    compose: Literal["none", "fusion"] = Field(
        "none", description="fusion: attention over all tasks' adapters per task"
    )
