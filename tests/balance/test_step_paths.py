"""The cheap paths of the training step give what the plain definitions give.

- fast mode: gradients at the shared representation from one plain backward to the separable
  tower inputs (``StepContext.task_inputs``) equal the T-batched backward from the losses;
- exact mode: ``.grad`` written from the shared-parameter Jacobian plus a backward into the
  task parameters only equals one full backward of ``sum_t w_t L_t`` (+ auxiliary loss).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from polytask.arch import ARCHS
from polytask.balance import BALANCERS, StepContext
from polytask.balance.jacobian import (
    common_input_gramian,
    gramian,
    is_task_expand,
    separable_task_gradients,
    task_gradients,
    task_gradients_or_none,
)
from polytask.config import ModelSpec, TaskSpec
from polytask.features import Features
from polytask.model import ModelOutput, MultiTaskModel, build_model
from polytask.nn.executor import ArchOutput
from polytask.nn.experts import ExpertBank
from polytask.nn.towers import Towers
from polytask.tasks import Task, task_losses

ROWS = 16
CHAINED = ("esmm", "aitm")  # heads of their own: tasks mix after the towers
NEED_OPTIONS = ("plan",)  # a whole plan given as options (what slimming saves)
COMMON = ("shared_bottom", "omoe")  # every task reads one representation: towers read it once
ARCH_NAMES = [name for name in ARCHS.names() if name not in NEED_OPTIONS]
# auxiliary terms switched on (dselect_k's is off by default) and made large enough to matter
OPTIONS: dict[str, dict[str, Any]] = {
    "dselect_k": {"entropy_reg": 0.1},
    "task_moe": {"balance_weight": 0.5, "mi_weight": 0.3},
    "aitm": {"calibration_weight": 2.0},
}

Batch = tuple[MultiTaskModel, Features, dict[str, torch.Tensor], list[Task]]


def _batch(arch: str, dropout: float = 0.1, tower_hidden: list[int] | None = None) -> Batch:
    torch.manual_seed(0)
    if arch in CHAINED:  # chained tasks must be binary
        kinds = [("a", "binary", 1), ("b", "binary", 1), ("c", "binary", 1)]
    else:
        kinds = [("a", "binary", 1), ("b", "multiclass", 3), ("c", "regression", 1)]
    tasks = [Task(TaskSpec(name=n, kind=k, target=n), out_dim=d) for n, k, d in kinds]
    spec = ModelSpec(
        arch=arch,
        embedding_dim=2,
        hidden=[6],
        num_experts=3,
        tower_hidden=[4] if tower_hidden is None else tower_hidden,
        dropout=dropout,
        options=OPTIONS.get(arch, {}),
    )
    names = [task.spec.name for task in tasks]
    model = build_model(spec, [3, 4], 4, [task.out_dim for task in tasks], names)
    features = Features(
        categorical=torch.stack([torch.randint(0, 3, (ROWS,)), torch.randint(0, 4, (ROWS,))], 1),
        numeric=torch.randn(ROWS, 4),
    )
    labels = {
        "a": torch.randint(0, 2, (ROWS,)).float(),
        "b": torch.randint(0, 2 if arch in CHAINED else 3, (ROWS,)).float(),
        "c": torch.randint(0, 2, (ROWS,)).float() if arch in CHAINED else torch.randn(ROWS),
    }
    labels["a"][:3] = float("nan")
    return model, features, labels, tasks


def _forward(batch: Batch, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, ModelOutput]:
    """Losses [T], presence [T] and the forward's output; the seed fixes dropout and routing
    noise."""
    model, features, labels, tasks = batch
    torch.manual_seed(seed)
    output = model(features)
    losses, present = task_losses(output.logits, labels, tasks)
    return losses, present, output


# ------------------------------------------------------------------------------ fast mode
@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_fast_gradients_through_task_inputs_equal_the_batched_backward(arch):
    batch = _batch(arch)
    model = batch[0]
    model.train()
    losses, present, output = _forward(batch)
    representation, task_inputs = output.representation, output.task_inputs
    assert representation is not None
    if arch in CHAINED:  # not separable: the plain batched backward is used
        assert task_inputs is None
        return
    if arch in COMMON:  # the towers read one common input (the representation itself, for
        # shared-bottom): covered by the common-input tests below
        assert task_inputs is None and output.common_input is not None
        assert (output.common_input is representation) == (arch == "shared_bottom")
        return
    assert task_inputs is not None and task_inputs.shape[0] == 3
    assert not is_task_expand(task_inputs, representation)  # the towers read mixtures of it
    cheap = separable_task_gradients(losses, task_inputs, [representation], representation)
    (reference,) = task_gradients(losses, [representation])
    assert cheap is not None and cheap[0] is not None
    assert cheap[0].shape == (3, *representation.shape)
    torch.testing.assert_close(cheap[0], reference)
    context = StepContext(
        present, torch.ones(3), 0, representation=representation, task_inputs=task_inputs
    )
    torch.testing.assert_close(context.gramian(losses, "representation"), gramian([reference]))


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_parameter_jacobian_through_task_inputs_equals_the_batched_backward(arch):
    batch = _batch(arch)
    model = batch[0]
    model.train()
    losses, _, output = _forward(batch)
    task_inputs = output.task_inputs
    if task_inputs is None:
        assert arch in (*CHAINED, *COMMON)
        return
    shared = model.shared_parameters()
    cheap = separable_task_gradients(losses, task_inputs, shared, output.representation)
    reference = task_gradients_or_none(losses, shared)
    assert cheap is not None
    names = [name for name, p in model.named_parameters() if any(p is q for q in shared)]
    for name, actual, expected in zip(names, cheap, reference, strict=True):
        assert (actual is None) == (expected is None), name
        if expected is not None:
            torch.testing.assert_close(actual, expected, msg=name)


class _MLPEncoder(nn.Module):
    """A custom encoder whose output is a view ([0] of a one-expert bank), as in
    benchmarks/balance_speed.py."""

    def __init__(self) -> None:
        super().__init__()
        self.bank = ExpertBank(1, 4, [6, 5])
        self.out_dim = 5

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        del categorical
        return self.bank(numeric)[0]


class _PassThrough(nn.Module):
    """A hand-written architecture module (any module returning an ArchOutput will do) with
    no representation of its own: every tower reads the encoder output, expanded."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks

    def tasks(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(self.num_tasks, -1, -1)

    def forward(self, x: torch.Tensor) -> ArchOutput:
        return ArchOutput(self.tasks(x), None, [], None, None)


class _Mixing(_PassThrough):
    """No representation of its own, and the towers read a learned mix of the encoder output
    (so the tower inputs are not an expand of it)."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, num_tasks).view(-1, 1, 1))

    def tasks(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.scale * x.unsqueeze(0))


def _custom_model(arch_cls: type[_PassThrough], towers: nn.Module | None = None) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(
        nn.ModuleList([_MLPEncoder()]),
        arch_cls(3),  # type: ignore[arg-type]
        towers if towers is not None else Towers(5, [3], [1, 1, 1]),  # type: ignore[arg-type]
        ["a", "b", "c"],
    )


def _custom_losses(model: MultiTaskModel) -> tuple[torch.Tensor, ModelOutput]:
    torch.manual_seed(2)
    x = torch.randn(ROWS, 4)
    y = torch.randn(ROWS, 3)
    output = model(Features(torch.empty(ROWS, 0, dtype=torch.int64), x))
    losses = [((out[:, 0] - y[:, t]) ** 2).mean() for t, out in enumerate(output.logits)]
    return torch.stack(losses), output


@pytest.mark.parametrize(("arch_cls", "expand"), [(_PassThrough, True), (_Mixing, False)])
def test_fast_gradients_at_the_encoder_output_without_an_arch_representation(arch_cls, expand):
    model = _custom_model(arch_cls)
    losses, output = _custom_losses(model)
    representation, task_inputs = output.representation, output.task_inputs
    assert representation is not None and task_inputs is not None
    assert representation.shape == (ROWS, 5)  # the encoder output
    assert is_task_expand(task_inputs, representation) == expand
    cheap = separable_task_gradients(losses, task_inputs, [representation], representation)
    (reference,) = task_gradients(losses, [representation])
    assert cheap is not None and cheap[0] is not None
    torch.testing.assert_close(cheap[0], reference)
    params = list(model.encoders.parameters())
    below = separable_task_gradients(losses, task_inputs, params, representation)
    assert below is not None
    for actual, expected in zip(below, task_gradients(losses, params), strict=True):
        assert actual is not None
        torch.testing.assert_close(actual, expected)


class _Subclass(Towers):
    """A towers subclass: it could read several slices, so it is not assumed separable."""


def test_only_the_fused_towers_under_default_heads_are_separable():
    assert _custom_model(_PassThrough).separable_towers()
    custom = _custom_model(_PassThrough, _Subclass(5, [3], [1, 1, 1]))
    assert not custom.separable_towers()
    assert _custom_losses(custom)[1].task_inputs is None
    for arch in CHAINED:
        assert not _batch(arch)[0].separable_towers()


def test_losses_not_reaching_the_task_inputs_fall_back():
    model = _custom_model(_PassThrough)
    stale = _custom_losses(model)[1].task_inputs
    assert stale is not None
    losses, output = _custom_losses(model)  # a new graph: the old tensor is not in it
    representation = output.representation
    assert separable_task_gradients(losses, stale, [representation], representation) is None
    context = StepContext(
        torch.ones(3, dtype=torch.bool),
        torch.ones(3),
        0,
        representation=representation,
        task_inputs=stale,
    )
    (reference,) = task_gradients(losses, [representation])
    torch.testing.assert_close(context.gradients(losses, "representation")[0], reference)


# ------------------------------------------------------------------- common tower input
def _common_fields(model: MultiTaskModel, output: ModelOutput) -> dict[str, Any]:
    """What train_step gives the context when the towers read one common input."""
    common = output.common_input
    if common is None:
        return {}
    towers = model.towers
    assert isinstance(towers, Towers)
    return {
        "common_input": common,
        "tower_first": output.tower_first,
        "tower_weight": towers.first_layer.weights[0],
    }


@pytest.mark.parametrize("tower_hidden", [[4], []])
def test_common_input_gradients_and_gramian_equal_the_batched_backward(tower_hidden):
    """Shared-bottom: task t's gradient at the bottom output is delta_t W_t^T (delta from one
    plain backward to the towers' first layer); its Gramian, formed from the thin factors,
    and the shared parameters' Jacobian below it equal the T-batched backward's."""
    batch = _batch("shared_bottom", tower_hidden=tower_hidden)
    model = batch[0]
    model.train()
    losses, present, output = _forward(batch)
    representation = output.representation
    assert representation is not None and output.common_input is representation
    context = StepContext(
        present, torch.ones(3), 0, representation=representation, **_common_fields(model, output)
    )
    (reference,) = task_gradients(losses, [representation])
    torch.testing.assert_close(context.gramian(losses, "representation"), gramian([reference]))
    torch.testing.assert_close(context.gradients(losses, "representation")[0], reference)
    shared = model.shared_parameters()
    context = StepContext(
        present,
        torch.ones(3),
        0,
        shared_params=shared,
        representation=representation,
        **_common_fields(model, output),
    )
    expected = task_gradients(losses, shared)
    for actual, wanted in zip(context.gradients(losses, "parameters"), expected, strict=True):
        torch.testing.assert_close(actual, wanted)


@pytest.mark.parametrize("width", [1, 3, 40])
def test_common_input_gramian_is_the_gramian_of_the_factor_products(width):
    generator = torch.Generator().manual_seed(width)
    delta = torch.randn(5, 17, width, generator=generator, dtype=torch.float64)
    weight = torch.randn(5, 11, width, generator=generator, dtype=torch.float64)
    explicit = torch.stack([(delta[t] @ weight[t].T).flatten() for t in range(5)])
    torch.testing.assert_close(common_input_gramian(delta, weight), explicit @ explicit.T)


# ------------------------------------------------------------------------------ exact mode
def _grads_after(batch: Batch, method: str, task_params: bool, **options: Any) -> list[Any]:
    """Every model parameter's .grad after one exact-mode balancer call (starting from
    non-zero .grad on half the parameters, to check accumulation). ``task_params``: give the
    context what train_step gives it (task parameters, separable tower inputs); otherwise the
    plain definition runs (batched Jacobian from the losses, one full weighted backward)."""
    model = batch[0]
    model.train()
    for index, param in enumerate(model.parameters()):
        param.grad = torch.full_like(param, 0.25) if index % 2 else None
    losses, present, output = _forward(batch)
    context = StepContext(
        present=present,
        static_weights=torch.tensor([1.0, 0.5, 2.0]),
        step=0,
        shared_params=model.shared_parameters(),
        representation=output.representation,
        extra_loss=output.auxiliary_loss,
        task_params=model.task_parameters() if task_params else None,
        task_inputs=output.task_inputs if task_params else None,
        **(_common_fields(model, output) if task_params else {}),
    )
    BALANCERS.get(method)(3, mode="exact", **options).backward(losses, context)
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "arch", ["shared_bottom", "mmoe", "task_moe", "dselect_k", "aitm", "esmm", "cross_stitch"]
)
@pytest.mark.parametrize("method", ["mgda", "upgrad"])
def test_exact_mode_without_a_second_full_backward_gives_the_same_gradients(arch, method):
    batch = _batch(arch)
    if arch in ("task_moe", "dselect_k", "aitm"):
        aux = _forward(batch)[2].auxiliary_loss
        assert aux is not None and aux.requires_grad  # the auxiliary term is exercised
    plain = _grads_after(batch, method, task_params=False)
    cheap = _grads_after(batch, method, task_params=True)
    names = [name for name, _ in batch[0].named_parameters()]
    for name, expected, actual in zip(names, plain, cheap, strict=True):
        assert (expected is None) == (actual is None), name
        if expected is not None:
            torch.testing.assert_close(actual, expected, msg=name)


def _count_backward_visits(model: MultiTaskModel) -> list[int]:
    """A counter of gradient arrivals at the encoder output, one per backward pass."""
    visits = [0]

    def on_output(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        del module, inputs
        if output.requires_grad:
            output.register_hook(lambda grad: visits.__setitem__(0, visits[0] + 1))

    model.encoders[0].register_forward_hook(on_output)
    return visits


@pytest.mark.parametrize(("task_params", "passes"), [(False, 2), (True, 1)])
def test_exact_mode_runs_the_shared_network_backward_once(task_params, passes):
    batch = _batch("shared_bottom", dropout=0.0)
    visits = _count_backward_visits(batch[0])
    _grads_after(batch, "mgda", task_params=task_params)
    assert visits[0] == passes  # the batched Jacobian (+ the plain full backward)


def test_exact_mode_with_reused_weights_takes_one_plain_backward():
    batch = _batch("mmoe")
    model = batch[0]
    balancer = BALANCERS.get("upgrad")(3, mode="exact", every=2)
    grads = []
    for step in range(2):
        model.zero_grad(set_to_none=True)
        losses, present, output = _forward(batch, seed=step)
        context = StepContext(
            present=present,
            static_weights=torch.ones(3),
            step=step,
            shared_params=model.shared_parameters(),
            representation=output.representation,
            task_params=model.task_parameters(),
        )
        balancer.backward(losses, context)
        assert ("gradients:parameters" in context._cache) == (step == 0)
        grads.append([p.grad for p in model.parameters()])
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads[1])


def test_task_parameters_are_the_complement_of_the_shared_ones():
    model = _batch("mmoe")[0]
    shared = {id(p) for p in model.shared_parameters()}
    own = model.task_parameters()
    assert own and not any(id(p) in shared for p in own)
    assert len(shared) + len(own) == len(list(model.parameters()))
    assert {id(p) for p in own} == {id(p) for p in model.towers.parameters()}
