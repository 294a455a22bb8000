"""The multi-task model: input encoder(s) -> sharing architecture -> fused task towers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from polytask.arch import ARCHS
from polytask.arch.base import SharingArch
from polytask.config import ModelSpec
from polytask.data.preprocess import Features
from polytask.errors import PolytaskError
from polytask.nn.cnn import CNNEncoder
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
        self.last_representation: torch.Tensor | None = None
        self.last_task_inputs: torch.Tensor | None = None
        self.last_common_input: torch.Tensor | None = None

    def encode(self, features: Features) -> torch.Tensor:
        """[B, D] from a shared encoder, or [T, B, D] from one encoder per task."""
        if len(self.encoders) == 1:
            return self.encoders[0](features.categorical, features.numeric)
        return torch.stack([enc(features.categorical, features.numeric) for enc in self.encoders])

    def __getstate__(self) -> dict:
        """Copies and pickles leave out the last step's graph-carrying tensors."""
        transient = ("last_representation", "last_task_inputs", "last_common_input")
        return drop_transient(super().__getstate__(), transient)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder(s) and sharing architecture: what more than one task's
        loss can reach (task-specific gates inside an architecture included)."""
        return [*self.encoders.parameters(), *self.arch.parameters()]

    def task_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (the towers): what only one task's loss reaches."""
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.parameters() if id(p) not in shared]

    def separable_towers(self) -> bool:
        """Whether task t's logits read slice t of the architecture output [T, B, D] alone.

        True for the fused :class:`Towers` (an expert bank over the task axis) under an
        architecture that leaves them alone (no ``heads`` of its own: ESMM's and AITM's mix
        tasks after the towers). A custom towers module, even a subclass, is not assumed to be.
        """
        heads = getattr(type(self.arch), "heads", None)
        return type(self.towers) is Towers and (heads is None or heads is SharingArch.heads)

    def forward(self, features: Features) -> list[torch.Tensor]:
        encoded = self.encode(features)
        representation = self.arch(encoded)
        # What every task reads, for gradient balancing at the shared representation
        # (MGDA-UB style): the architecture's own (shared-bottom output, expert outputs) where
        # it names one, else the encoder output.
        shared = getattr(self.arch, "shared_representation", None)
        self.last_representation = shared if shared is not None else encoded
        # The architecture output when tower t reads only its slice t: then one ordinary
        # backward to it gives every task's gradient there (StepContext.task_inputs), and a
        # T-batched pass through the towers is not needed.
        separable = (
            self.separable_towers()
            and representation.dim() == 3
            and representation.shape[0] == len(self.task_names)
        )
        common = getattr(self.arch, "common_output", None)
        if separable and common is not None:
            # every tower reads the same rows: the towers take them unexpanded, and the
            # balancers find each task's gradient there from the towers' first layer
            self.last_task_inputs = None
            self.last_common_input = common
            return self.towers(common)
        self.last_task_inputs = representation if separable else None
        self.last_common_input = None
        heads = getattr(self.arch, "heads", None)
        return heads(self.towers, representation) if heads else self.towers(representation)


def build_model(
    spec: ModelSpec,
    cardinalities: list[int],
    numeric_width: int,
    out_dims: list[int],
    task_names: list[str],
    encoder_factory: Callable[[], nn.Module] | None = None,
) -> MultiTaskModel:
    """Build the model a run specification describes, for a fitted preprocessor's inputs.

    ``encoder_factory`` (a user's module taking ``(categorical, numeric)`` and exposing
    ``out_dim``) replaces the encoder ``spec.encoder`` names; it is called once per encoder.
    """
    arch_cls = ARCHS.get(spec.arch)
    num_tasks = len(out_dims)
    num_encoders = num_tasks if arch_cls.input_per_task else 1
    make_encoder = encoder_factory or encoder_from_spec(spec, cardinalities, numeric_width)
    encoders = nn.ModuleList(make_encoder() for _ in range(num_encoders))
    if not isinstance(getattr(encoders[0], "out_dim", None), int):
        raise PolytaskError("the encoder_factory's module must have an int attribute out_dim")
    arch = arch_cls(encoders[0].out_dim, num_tasks, spec)
    towers = Towers(arch.out_dim, spec.tower_hidden, out_dims, dropout=spec.dropout)
    return MultiTaskModel(encoders, arch, towers, task_names)


def encoder_from_spec(
    spec: ModelSpec, cardinalities: list[int], numeric_width: int
) -> Callable[[], nn.Module]:
    """A constructor for the encoder ``spec.encoder`` names."""
    encoder = spec.encoder
    if encoder.name == "custom":
        raise PolytaskError(
            "this model was trained with a custom encoder (model.encoder.name: custom); "
            "pass the encoder_factory it was trained with (to polytask.load, or to "
            "polytask.train with resume=True)"
        )
    if encoder.name == "cnn":
        image_shape = list(encoder.image_shape or [])
        return lambda: CNNEncoder(image_shape, encoder.channels, encoder.out_dim, numeric_width)
    return lambda: TabularEncoder(cardinalities, numeric_width, spec.embedding_dim)


def drop_transient(state: dict, names: tuple[str, ...]) -> dict:
    """A module's state without per-step tensors that hold autograd graphs (they cannot be
    deep-copied and would pin the graph's memory in a pickle)."""
    return {key: (None if key in names else value) for key, value in state.items()}
