"""Where a run trains and in which precision: ``train.device`` and ``train.precision``.

The model lives on one device; the table stays in host memory and every batch is moved there
whole (through page-locked memory on CUDA, so the copy overlaps the previous step). Mixed
precision runs the forward pass under ``torch.autocast``; the losses, the balancers' maths and
the weights stay in float32. fp16 needs a gradient scaler (its small gradients underflow) and
is offered on CUDA only; bf16 has float32's range and needs none, on the CPU as on a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from polytask.config import TrainSpec
from polytask.errors import ConfigError
from polytask.features import Features

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``train.device`` as a torch device on this machine. ``auto`` takes a CUDA GPU, then
    MPS, then the CPU; under torchrun (``local_rank`` given) ``auto`` and ``cuda`` take the
    rank's own GPU, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            name = "mps"
        else:
            return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError("train.device: mps was asked for but this torch sees no MPS device")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"train.device: {name} was asked for but this torch sees no CUDA GPU "
            "(torch.cuda.is_available() is False); use auto or cpu"
        )
    count = torch.cuda.device_count()
    if name == "cuda":
        index = local_rank or 0
    else:
        if local_rank is not None:
            raise ConfigError(
                f"train.device: {name} names one GPU, which every process would share; under "
                "torchrun use cuda or auto (each process takes cuda:LOCAL_RANK)"
            )
        index = int(name.split(":", 1)[1])
    if index >= count:
        raise ConfigError(
            f"train.device: cuda:{index} does not exist (this machine has {count} CUDA "
            f"device{'s' if count != 1 else ''}: cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


@dataclass(frozen=True)
class Placement:
    """The device a run trains on and its precision (``fp32``, ``bf16`` or ``fp16``)."""

    device: torch.device
    precision: str = "fp32"

    @property
    def pinned(self) -> bool:
        """Batches go through page-locked host memory (CUDA only)."""
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The forward pass's precision context (a no-op in fp32)."""
        dtype = AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """fp16's gradient scaler; None otherwise."""
        if self.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)

    def batch(
        self, features: Features, labels: dict[str, torch.Tensor]
    ) -> tuple[Features, dict[str, torch.Tensor]]:
        """One batch on the device, moved whole (pinned and asynchronous on CUDA)."""
        if self.device.type == "cpu":
            return features, labels
        if self.pinned:
            features = features.pin_memory()
            labels = {name: values.pin_memory() for name, values in labels.items()}
        moved = features.to(self.device, non_blocking=self.pinned)
        return moved, {
            name: values.to(self.device, non_blocking=self.pinned)
            for name, values in labels.items()
        }

    def describe(self) -> dict[str, str]:
        return {"device": str(self.device), "precision": self.precision}


def placement(train: TrainSpec, local_rank: int | None = None) -> Placement:
    """The spec's device and precision on this machine; a combination it cannot run is one
    ConfigError naming the field."""
    device = resolve_device(train.device, local_rank)
    if train.precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision: fp16 needs a CUDA device (train.device '{train.device}' is "
            f"{device.type} here); use bf16 or fp32"
        )
    if train.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"train.precision: bf16 is not supported by {torch.cuda.get_device_name(device)}; "
            "use fp16 or fp32"
        )
    return Placement(device, train.precision)
