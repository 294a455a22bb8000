"""The multi-task model: input encoder(s) -> sharing architecture -> fused task towers."""

from __future__ import annotations

import torch
from torch import nn

from polytask.arch import ARCHS
from polytask.config import ModelSpec
from polytask.data.preprocess import Features
from polytask.nn.encoders import TabularEncoder
from polytask.nn.towers import Towers


class MultiTaskModel(nn.Module):
    """Returns one logits tensor per task, in task order.

    Encoders are passed in so that any ``nn.Module`` mapping ``Features`` to ``[B, D]`` can
    replace the tabular one through the Python API.
    """

    def __init__(
        self, encoders: nn.ModuleList, arch: nn.Module, towers: Towers, task_names: list[str]
    ) -> None:
        super().__init__()
        self.encoders = encoders
        self.arch = arch
        self.towers = towers
        self.task_names = list(task_names)

    def encode(self, features: Features) -> torch.Tensor:
        """[B, D] from a shared encoder, or [T, B, D] from one encoder per task."""
        if len(self.encoders) == 1:
            return self.encoders[0](features.categorical, features.numeric)
        return torch.stack([enc(features.categorical, features.numeric) for enc in self.encoders])

    def forward(self, features: Features) -> list[torch.Tensor]:
        representation = self.arch(self.encode(features))
        heads = getattr(self.arch, "heads", None)
        return heads(self.towers, representation) if heads else self.towers(representation)


def build_model(
    spec: ModelSpec,
    cardinalities: list[int],
    numeric_width: int,
    out_dims: list[int],
    task_names: list[str],
) -> MultiTaskModel:
    """Build the model a run specification describes, for a fitted preprocessor's inputs."""
    arch_cls = ARCHS.get(spec.arch)
    num_tasks = len(out_dims)
    num_encoders = num_tasks if arch_cls.input_per_task else 1
    encoders = nn.ModuleList(
        TabularEncoder(cardinalities, numeric_width, spec.embedding_dim)
        for _ in range(num_encoders)
    )
    arch = arch_cls(encoders[0].out_dim, num_tasks, spec)
    towers = Towers(arch.out_dim, spec.tower_hidden, out_dims, dropout=spec.dropout)
    return MultiTaskModel(encoders, arch, towers, task_names)
