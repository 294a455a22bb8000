"""The multi-task model: input encoder(s) -> plan network -> fused task towers -> heads.

``forward`` returns a :class:`ModelOutput`: the per-task logits and, beside them, everything
the training step and reports read (gate weights, auxiliary loss, the representations that
gradient balancing differentiates at). Nothing is left on the modules between calls, so a
model deep-copies, pickles and runs in several threads without care.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from polytask.arch import ARCHS
from polytask.config import ModelSpec
from polytask.errors import PolytaskError
from polytask.features import Features
from polytask.nn.blocks import TowerBlocks, build_towers
from polytask.nn.cnn import CNNEncoder
from polytask.nn.encoders import NumericEncoder, TabularEncoder
from polytask.nn.executor import PlanNetwork
from polytask.nn.heads import ChainHead, TransferHead
from polytask.nn.row_routing import (
    RowPairs,
    encode_pairs,
    pair_towers,
    reads_own_encoder,
    worth_routing,
)
from polytask.nn.towers import Towers
from polytask.plan.schema import Plan

if TYPE_CHECKING:
    from polytask.data.preprocess import Preprocessor
    from polytask.tasks import Task


@dataclass
class ModelOutput:
    """One forward pass.

    logits: per task [B, out_t]. auxiliary_loss: the architecture's and heads' training
    regularisers (load balancing, calibration, ...), added to the objective unweighted.
    gates: per level, each gate's weights [G, B, E] (detached; None where a level has no
    per-row weights). task_gates: the last level's weights as each task reads them [T, B, E].
    representation: what every task reads, where fast-mode balancing takes task gradients.
    task_inputs: the towers' input [T, B, D] when tower t reads only slice t (then one
    backward to it gives every task's gradient there). common_input [B, D] and tower_first
    [T, B, width]: when every tower reads the same rows, that input and the towers' first
    layer output (before the activation).
    """

    logits: list[torch.Tensor]
    representation: torch.Tensor | None = None
    auxiliary_loss: torch.Tensor | None = None
    gates: list[torch.Tensor | None] = field(default_factory=list)
    task_gates: torch.Tensor | None = None
    task_inputs: torch.Tensor | None = None
    common_input: torch.Tensor | None = None
    tower_first: torch.Tensor | None = None


def _add(left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor | None:
    if left is None:
        return right
    return left if right is None else left + right


class MultiTaskModel(nn.Module):
    """Returns a :class:`ModelOutput` with one logits tensor per task, in task order.

    Encoders are passed in so that any ``nn.Module`` mapping ``(categorical, numeric)`` to
    ``[B, D]`` can replace the tabular one through the Python API.
    """

    # whether ``forward`` runs a task only for the rows that ask for it (Features.wanted):
    # the training step then asks each row for the tasks it has labels for
    routes_rows: ClassVar[bool] = False

    def __init__(
        self,
        encoders: nn.ModuleList,
        arch: PlanNetwork,
        towers: Towers | TowerBlocks,
        task_names: list[str],
        heads: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoders = encoders
        self.arch = arch
        self.towers = towers
        self.heads = heads
        self.task_names = list(task_names)

    @property
    def plan(self) -> Plan:
        return self.arch.plan

    def encode(self, features: Features) -> torch.Tensor:
        """[B, D] from a shared encoder, or [T, B, D] from one encoder per task."""
        plan = getattr(self.arch, "plan", None)
        per_task = plan is not None and plan.encoders == "per_task"
        if len(self.encoders) == 1 and not per_task:
            return self.encoders[0](features.categorical, features.numeric)
        return torch.stack([enc(features.categorical, features.numeric) for enc in self.encoders])

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder(s), the sharing architecture and cross-task heads: what
        more than one task's loss can reach (task-specific gates inside it included)."""
        heads = list(self.heads.parameters()) if self.heads is not None else []
        return [*self.encoders.parameters(), *self.arch.parameters(), *heads]

    def task_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (the towers): what only one task's loss reaches."""
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.parameters() if id(p) not in shared]

    def separable_towers(self) -> bool:
        """Whether task t's logits read slice t of the architecture output alone: the fused
        :class:`Towers` (not a subclass: a custom towers module is not assumed to be) and no
        head that mixes tasks after them."""
        return type(self.towers) is Towers and self.heads is None

    @property
    def row_routable(self) -> bool:
        """Whether ``forward`` can compute only the (row, task) pairs ``Features.wanted``
        asks for (:mod:`polytask.nn.row_routing`): the plan's network with one shared encoder
        (or one per task that only its task reads, as in ``single``), the fused towers and no
        head that mixes tasks. The result is the dense pass's at the
        asked pairs (zeros elsewhere), so the training step asks for the labelled pairs
        whenever what it reads is the losses alone."""
        if not (isinstance(self.arch, PlanNetwork) and self.separable_towers()):
            return False
        plan = self.arch.plan
        return plan.encoders != "per_task" or reads_own_encoder(plan)

    def forward(self, features: Features) -> ModelOutput:
        wanted = features.wanted
        if wanted is not None and self.row_routable and worth_routing(wanted):
            if wanted.shape != (len(features), len(self.task_names)):
                raise PolytaskError(
                    f"features.wanted has shape {tuple(wanted.shape)}; expected "
                    f"[{len(features)}, {len(self.task_names)}] (rows, tasks)"
                )
            return self._forward_pairs(features, RowPairs.of(wanted))
        encoded = self.encode(features)
        arch = self.arch(encoded)
        representation = arch.shared if arch.shared is not None else encoded
        output = ModelOutput(
            logits=[],
            representation=representation,
            auxiliary_loss=arch.auxiliary,
            gates=arch.gates,
            task_gates=arch.task_gates,
        )
        if self.heads is not None:
            output.logits, extra = self.heads(self.towers, arch.tasks)
            output.auxiliary_loss = _add(output.auxiliary_loss, extra)
        elif arch.common is not None and type(self.towers) is Towers:
            # every tower reads the same rows: the towers take them unexpanded, and the
            # balancers find each task's gradient there from the towers' first layer
            output.logits, output.tower_first = self.towers.forward_common(arch.common)
            output.common_input = arch.common
        else:
            output.logits = list(self.towers(arch.tasks))
            output.task_inputs = arch.tasks if self.separable_towers() else None
        return output

    def _forward_pairs(self, features: Features, pairs: RowPairs) -> ModelOutput:
        """The asked pairs only: per task, logits at its asked rows and zeros elsewhere."""
        gates: list[torch.Tensor | None]
        auxiliary: torch.Tensor | None
        if self.plan.encoders == "per_task":  # each task's encoder on its own pairs
            encoded = encode_pairs(self.encoders, features.categorical, features.numeric, pairs)
            own = self.arch.forward_own_pairs(encoded, pairs)
            if own is not None:
                values, gates, auxiliary = own, [None], None
            else:
                # a grown level reads the [T, B, D] layout of one encoder per task (the rows
                # left zero are never read where reads_own_encoder holds)
                values, gates, auxiliary = self.arch.forward_pairs(pairs.spread(encoded), pairs)
        else:
            values, gates, auxiliary = self.arch.forward_pairs(self.encode(features), pairs)
        assert isinstance(self.towers, Towers)
        logits = pair_towers(self.towers, values, pairs.tasks)
        return ModelOutput(
            logits=pairs.scatter(logits, self.towers.out_dims),
            auxiliary_loss=auxiliary,
            gates=gates,
        )


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
    plan = ARCHS.get(spec.arch).plan(len(out_dims), spec)
    model = model_from_plan(
        plan,
        spec,
        out_dims,
        task_names,
        encoder_factory or encoder_from_spec(spec, cardinalities, numeric_width),
    )
    if spec.adapters is None:
        return model
    from polytask.adapters.model import AdapterModel  # it builds on this module

    return AdapterModel(model, spec.adapters)


def model_for(
    spec: ModelSpec,
    preprocessor: Preprocessor,
    tasks: Sequence[Task],
    encoder_factory: Callable[[], nn.Module] | None = None,
) -> MultiTaskModel:
    """:func:`build_model` for a fitted preprocessor's inputs and its built tasks: what a
    run's model is, whether trained, loaded or merged."""
    return build_model(
        spec,
        preprocessor.cardinalities,
        preprocessor.numeric_width,
        [task.out_dim for task in tasks],
        [task.name for task in tasks],
        encoder_factory=encoder_factory,
    )


def model_from_plan(
    plan: Plan,
    spec: ModelSpec,
    out_dims: list[int],
    task_names: list[str],
    make_encoder: Callable[[], nn.Module],
) -> MultiTaskModel:
    """Encoders, the plan's network, towers (``spec.tower_hidden``) and the plan's heads."""
    num_encoders = len(out_dims) if plan.encoders == "per_task" else 1
    encoders = nn.ModuleList(make_encoder() for _ in range(num_encoders))
    in_dim = getattr(encoders[0], "out_dim", None)
    if not isinstance(in_dim, int):
        raise PolytaskError("the encoder_factory's module must have an int attribute out_dim")
    network = PlanNetwork(plan, in_dim)
    hidden, blocks = spec.tower_hidden, plan.tower_blocks
    towers = build_towers(network.out_dim, hidden, out_dims, spec.dropout, blocks, plan.task_gates)
    heads = build_heads(plan, spec.tower_hidden, network.out_dim, out_dims)
    return MultiTaskModel(encoders, network, towers, task_names, heads)


def build_heads(
    plan: Plan, tower_hidden: list[int], representation_dim: int, out_dims: list[int]
) -> nn.Module | None:
    """The plan's cross-task head, or None for plain towers."""
    heads = plan.heads
    if heads.kind == "chain":
        return ChainHead(heads.chain, out_dims)
    if heads.kind == "transfer":
        # the width the towers' output layer reads: last tower layer, or the representation
        dim = tower_hidden[-1] if tower_hidden else representation_dim
        return TransferHead(heads.chain, out_dims, dim, heads.calibration_weight, heads.dropout)
    return None


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
    if encoder.name == "numeric":
        return lambda: NumericEncoder(numeric_width)
    if encoder.name == "cnn":
        image_shape = list(encoder.image_shape or [])
        return lambda: CNNEncoder(image_shape, encoder.channels, encoder.out_dim, numeric_width)
    return lambda: TabularEncoder(cardinalities, numeric_width, spec.embedding_dim)
