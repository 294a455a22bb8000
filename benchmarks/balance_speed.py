"""Step time of each task-balancing method as a multiple of EW, against LibMTL and TorchJD.

Why this exists: a gradient-balancing method (MGDA, PCGrad, UPGrad, ...) needs one gradient per
task, so its training step costs a multiple of an equally weighted (EW) step, and that multiple
grows with the number of tasks T. This script measures that multiple for polytask's methods, in
both of their gradient modes, and for the same methods in LibMTL 1.1.5 and TorchJD 0.18, in one
process, on the same machine, network, batch and optimizer; every number is a ratio to
polytask's own EW step at the same T, so that the libraries' model code (fused towers against
one ``nn.Linear`` per task) matters as little as possible and the balancing cost shows.

The network: a shared MLP 128-512-512-256 (ReLU after every layer) on random inputs [B, 128]
(``--batch-size``, default 512), and T linear heads 256 -> 1 with an MSE loss each on random
targets; Adam (lr 1e-3); T in ``--tasks`` (default 2, 11, 40). What is timed is one FULL
training step: zero_grad, forward, the T losses, the method's backward, optimizer.step().

- polytask: its real :func:`polytask.train.step.train_step` on a :class:`MultiTaskModel` with a
  custom encoder and fused :class:`Towers` (no hidden layer, one regression task each; inputs as
  ``Features(categorical=[B, 0] int64, numeric=x)``), Adam from ``build_optimizer`` (plus a
  second parameter group for a method's own parameters, as the trainer does). Where the model
  is built matters for ``mode: fast``, which takes the Gramian at the output's ``representation``,
  and that is the ENCODER output (``MultiTaskModel.forward``). The natural configuration of this
  network, an identity encoder under ``arch: shared_bottom`` with ``hidden: [512, 512, 256]``,
  would therefore take "fast" gradients at the 128-d input, below the whole MLP: not MGDA-UB's
  estimate (which is taken at the last shared layer), and T backward passes through the whole
  MLP (input gradients only: about half of exact mode's products). So the MLP
  is the custom encoder here (an :class:`ExpertBank` of one expert, exactly what shared_bottom
  would compute) and the sharing architecture passes its [B, 256] output to every tower
  (:class:`PassThrough`): the shared representation is the 256-d output, as MGDA-UB means it.
  ``--shared-bottom`` also times every Gramian method's fast mode (and, in the equal row, EW)
  on the shared_bottom configuration, built by ``build_model``, column "fast@enc", to show the
  difference. Its encoder is an identity-like input layer with a learnable scale per input
  (:class:`InputScale`, 128 more parameters): with a parameter-free encoder the representation
  does not require grad and fast mode raises ("One of the differentiated Tensors does not
  require grad").
- LibMTL 1.1.5: its ``HPS`` architecture (encoder = the same MLP as ``nn.Sequential``, decoders =
  one ``nn.Linear`` per task) combined with a weighting class exactly as its ``Trainer`` does
  (``class MTLmodel(HPS, Weighting)``), losses gathered into ``torch.zeros(T)`` as in
  ``Trainer._compute_loss``, then ``optimizer.zero_grad()``, ``model.backward(losses, **weight
  args)`` with LibMTL's default weight args (its ``config.py``), ``optimizer.step()``. LibMTL's
  package ``__init__`` imports its models, which import torchvision (and installing torchvision
  would replace this torch), so the weighting and architecture modules are loaded straight from
  the installed files under stub ``LibMTL`` / ``LibMTL.weighting`` / ``LibMTL.architecture``
  packages (:func:`load_libmtl`). ``epoch`` is set to 2 and ``train_loss_buffer`` to ones, so
  that DWA and GradNorm run their balancing branch instead of the first-epoch EW fallback.
  LibMTL 1.1.5 predates torch 2.0: its parameter-gradient path clears gradients with
  ``zero_grad()`` (None since torch 2.0) and then writes ``param.grad.data``, which raises
  AttributeError; a variant that fails its first step as installed is retried with
  ``zero_grad(set_to_none=False)`` (torch 1.x's behaviour) and its cell carries a note with
  the error as installed (:func:`libmtl_variant`).
  Column "LibMTL" is ``rep_grad=False`` (gradients on the shared parameters, its default),
  "LibMTL rep" is ``rep_grad=True`` (gradients at the encoder output; HPS then backpropagates
  every task's weighted representation gradient separately). Only the modes LibMTL documents
  for a method are run: PCGrad, GradVac and CAGrad have no rep_grad mode, GradDrop has only it.
  LibMTL 1.1.5 has no Nash-MTL, Aligned-MTL, UPGrad, FAMO or DB-MTL.
- TorchJD 0.18: gradient methods as its docs describe for this version: ``mtl_backward(losses,
  features=shared_output)`` (task heads get their gradient, shared parameters a ``.jac``), then
  ``jac_to_grad(shared_params, aggregator)`` and ``optimizer.step()``. Loss weightings with its
  ``torchjd.scalarization`` module (``loss = scalarizer(losses); loss.backward()``; FAMO's
  ``update`` gets the losses recomputed on the batch after the step, as its docs show). TorchJD's
  GradDrop is an aggregator of the parameter Jacobian, not of representation gradients.
  UPGrad needs ``qpsolvers`` and ``quadprog``; CAGrad and Nash-MTL need cvxpy (not installed by
  the ``bench`` target: they show as failures with TorchJD's own message).

Methods: every registered polytask method except ``mgda_ub``, which is ``mgda`` with ``mode:
fast`` (the mgda row's "fast" column). Gramian methods (mgda, pcgrad, gradvac, cagrad, imtl,
nash_mtl, aligned_mtl, upgrad) are timed in ``mode: exact`` (column "polytask") and ``mode:
fast``; the other methods once, as configured by default (column "polytask"; "grads" says what
they differentiate: per-task gradients on the shared parameters, at the representation, or
none). Default options everywhere.

Measurement: per T and method, the variants (polytask EW, polytask exact, polytask fast,
LibMTL, LibMTL rep, TorchJD) alternate for ``--rounds`` rounds; each round runs ``--warmup``
untimed steps (the first round) or one (later rounds), then ``--steps`` timed steps. A variant's
time is the median over all its timed steps; the ratio divides it by the median of polytask's EW
steps timed in the same method's rounds, so that a machine whose load drifts skews ratios less.
The header gives the pooled EW median in milliseconds. A variant that raises is reported with
its exception text and dropped for the rest of that T.

The floor column, ``(1 + 2T) / 3``: with a forward pass through the shared network costing 1
unit and a backward pass 2 (input gradients and weight gradients, each a product the size of
the forward's), an EW step costs about 3 units (heads, losses and Adam are small here). A method
that needs the exact per-task gradients on the shared parameters must, after the one forward,
backpropagate T times (in a loop or vmapped: the same products), 1 + 2T units, so its step
cannot cost less than (1 + 2T) / 3 EW steps. That is a floor in arithmetic, not a law: batched
backward passes can run at a higher rate than EW's single one, so a measured ratio slightly
under it is possible. Setting ``.grad`` from the Jacobian needs no further backward (LibMTL,
TorchJD); polytask's Gramian methods then run one more, weighted backward: (3 + 2T) / 3. Fast
mode needs T backward passes only through the heads, so its floor is about 1; polytask's
vmapped pass through the fused towers materialises a [T, T, B, 256] gradient (only the T
diagonal blocks are non-zero), which grows as T squared. Loss weightings have no floor above 1.

Run: ``python benchmarks/balance_speed.py`` (needs the ``bench`` extra; ``make bench``
installs LibMTL and TorchJD with ``--no-deps``). A quick check: ``--tasks 2 --steps 3``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _machine import machine_info as shared_machine_info
from torch import nn

from polytask.balance import BALANCERS, Balancer
from polytask.balance.base import GramianWeighting
from polytask.config import ModelSpec, TaskSpec, TrainSpec
from polytask.features import Features
from polytask.model import MultiTaskModel, build_model
from polytask.nn.executor import ArchOutput
from polytask.nn.experts import ExpertBank
from polytask.nn.towers import Towers
from polytask.tasks import Task
from polytask.train.optim import build_optimizer
from polytask.train.step import train_step

IN_DIM = 128
HIDDEN = [512, 512, 256]
LR = 1e-3
SEED = 0
DEFAULT_TASKS = [2, 11, 40]

StepFn = Callable[[], None]

# Variants, in table order. "polytask" is mode: exact for Gramian methods, the method as
# configured otherwise; "fast_enc" only runs with --shared-bottom.
VARIANTS = ["polytask", "polytask_fast", "fast_enc", "libmtl", "libmtl_rep", "torchjd"]
HEADINGS = {
    "polytask": "polytask",
    "polytask_fast": "pt fast",
    "fast_enc": "fast@enc",
    "libmtl": "LibMTL",
    "libmtl_rep": "LibMTL rep",
    "torchjd": "TorchJD",
}
EW = "polytask_ew"


@dataclass(frozen=True)
class Method:
    """One polytask balancing method and its counterparts.

    grads: what the polytask method differentiates per task ("params|rep" for a Gramian method:
    shared parameters in mode exact, the representation in mode fast). libmtl: the LibMTL 1.1.5
    weighting (file and class name), its weight args (LibMTL's config.py defaults) and the
    rep_grad values it supports. torchjd: a name in :data:`TORCHJD_FACTORIES`.
    """

    name: str
    grads: str
    libmtl: str | None = None
    libmtl_args: dict[str, Any] = field(default_factory=dict)
    libmtl_rep_grad: tuple[bool, ...] = (False,)
    torchjd: str | None = None

    @property
    def gramian(self) -> bool:
        return issubclass(BALANCERS.get(self.name), GramianWeighting)

    @property
    def has_floor(self) -> bool:
        return self.grads != "none"


METHODS = [
    Method("equal", "none", "EW", torchjd="Mean"),
    Method("mgda", "params|rep", "MGDA", {"mgda_gn": "none"}, (False, True), "MGDA"),
    Method("pcgrad", "params|rep", "PCGrad", torchjd="PCGrad"),
    Method("gradvac", "params|rep", "GradVac", {"beta": 0.5}, torchjd="GradVac"),
    Method("cagrad", "params|rep", "CAGrad", {"calpha": 0.5, "rescale": 1}, torchjd="CAGrad"),
    Method("imtl", "params|rep", "IMTL", {}, (False, True), "IMTLG"),
    Method("nash_mtl", "params|rep", torchjd="NashMTL"),
    Method("aligned_mtl", "params|rep", torchjd="AlignedMTL"),
    Method("upgrad", "params|rep", torchjd="UPGrad"),
    Method("uw", "none", "UW", torchjd="UW"),
    Method("dwa", "none", "DWA", {"T": 2.0}, torchjd="DWA"),
    Method("rlw", "none", "RLW", {"dist": "Normal"}, torchjd="Random"),
    Method("famo", "none", torchjd="FAMO"),
    Method("gradnorm", "rep", "GradNorm", {"alpha": 1.5}, (False, True)),
    Method("graddrop", "rep", "GradDrop", {"leak": 0.0}, (True,), "GradDrop"),
    Method("db_mtl", "params"),
    Method("sam_task", "params"),
]
METHOD_NAMES = [m.name for m in METHODS]


@dataclass
class Problem:
    """One batch for T tasks: inputs [B, 128] and targets [B, T]."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def num_tasks(self) -> int:
        return self.y.shape[1]

    @staticmethod
    def random(batch_size: int, num_tasks: int) -> Problem:
        generator = torch.Generator().manual_seed(SEED + num_tasks)
        x = torch.randn(batch_size, IN_DIM, generator=generator)
        y = torch.randn(batch_size, num_tasks, generator=generator)
        return Problem(x, y)


def task_names(num_tasks: int) -> list[str]:
    return [f"task{t}" for t in range(num_tasks)]


# ---------------------------------------------------------------------------------- polytask
class MLPEncoder(nn.Module):
    """The shared MLP as a polytask custom encoder: ``(categorical, numeric) -> [B, 256]``.

    One-expert :class:`ExpertBank`, the module (and so the kernels) of ``arch: shared_bottom``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bank = ExpertBank(1, IN_DIM, HIDDEN)
        self.out_dim = HIDDEN[-1]

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        del categorical
        return self.bank(numeric)[0]


class InputScale(nn.Module):
    """An identity-like input layer, ``numeric * scale`` (128 scales, starting at 1): the
    encoder of the shared_bottom configuration. A parameter-free encoder would leave the
    representation without ``requires_grad``, and fast mode cannot differentiate it."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(IN_DIM))
        self.out_dim = IN_DIM

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        del categorical
        return numeric * self.scale


class PassThrough(nn.Module):
    """Shares everything below it: the encoder output [B, D] is the common input every tower
    reads and the representation fast mode differentiates at, as shared_bottom's bottom is."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.num_tasks = num_tasks

    def forward(self, x: torch.Tensor) -> ArchOutput:
        return ArchOutput(x.expand(self.num_tasks, -1, -1), x, [], None, x)


def polytask_model(num_tasks: int, shared_bottom: bool = False) -> MultiTaskModel:
    """The benchmark network; ``shared_bottom``: the same network as identity encoder +
    ``arch: shared_bottom`` (representation = the 128-d input)."""
    torch.manual_seed(SEED)
    names = task_names(num_tasks)
    if shared_bottom:
        spec = ModelSpec(arch="shared_bottom", hidden=HIDDEN, tower_hidden=[])
        return build_model(spec, [], IN_DIM, [1] * num_tasks, names, InputScale)
    encoders = nn.ModuleList([MLPEncoder()])
    towers = Towers(HIDDEN[-1], [], [1] * num_tasks)
    return MultiTaskModel(encoders, PassThrough(num_tasks), towers, names)  # type: ignore[arg-type]


def polytask_runner(
    problem: Problem, method: str, mode: str | None, shared_bottom: bool = False
) -> StepFn:
    """A full polytask training step through ``train_step``."""
    num_tasks = problem.num_tasks
    model = polytask_model(num_tasks, shared_bottom)
    model.train()
    options: dict[str, Any] = {} if mode is None else {"mode": mode}
    balancer: Balancer = BALANCERS.get(method)(num_tasks, **options)
    optimizer = build_optimizer(list(model.parameters()), TrainSpec(lr=LR))
    if balancer.parameters():  # as the trainer does
        optimizer.add_param_group({"params": balancer.parameters(), "weight_decay": 0.0})
    names = task_names(num_tasks)
    tasks = [Task(TaskSpec(name=n, kind="regression", target=n), out_dim=1) for n in names]
    features = Features(torch.empty(len(problem.x), 0, dtype=torch.int64), problem.x)
    labels = {n: problem.y[:, t].contiguous() for t, n in enumerate(names)}
    static_weights = torch.ones(num_tasks)
    counter = [0]

    def step() -> None:
        train_step(model, features, labels, tasks, balancer, optimizer, static_weights, counter[0])
        counter[0] += 1

    if method == "dwa":  # two closed epochs, so that the weights come from loss ratios
        for _ in range(2):
            step()
            balancer.end_epoch()
    return step


def polytask_parameter_count(num_tasks: int) -> int:
    return sum(p.numel() for p in polytask_model(num_tasks).parameters())


# ---------------------------------------------------------------------------------- peers
def plain_mlp() -> nn.Sequential:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip([IN_DIM, *HIDDEN[:-1]], HIDDEN, strict=True):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers)


def plain_losses(
    heads: list[torch.Tensor] | dict[str, torch.Tensor], y: torch.Tensor
) -> list[torch.Tensor]:
    outputs = list(heads.values()) if isinstance(heads, dict) else heads
    return [F.mse_loss(out[:, 0], y[:, t]) for t, out in enumerate(outputs)]


@dataclass
class LibMTL:
    """LibMTL's HPS architecture and its weighting classes, loaded without its package init."""

    version: str
    hps: type
    weightings: dict[str, type]
    load_errors: dict[str, str]


def load_libmtl() -> LibMTL:
    """Load ``LibMTL/architecture/HPS.py`` and ``LibMTL/weighting/*.py`` from the installed
    package, under stub parent packages, so that ``LibMTL/__init__.py`` (which imports
    torchvision through ``LibMTL.model``) never runs. Raises ImportError if not installed."""
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("LibMTL is not installed (pip install --no-deps libmtl==1.1.5)")
    root = Path(next(iter(spec.submodule_search_locations)))
    for package, folder in (
        ("LibMTL", root),
        ("LibMTL.weighting", root / "weighting"),
        ("LibMTL.architecture", root / "architecture"),
    ):
        stub = types.ModuleType(package)
        stub.__path__ = [str(folder)]
        sys.modules[package] = stub

    def load(package: str, name: str) -> types.ModuleType:
        dotted = f"{package}.{name}"
        path = root / package.split(".")[1] / f"{name}.py"
        module_spec = importlib.util.spec_from_file_location(dotted, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[dotted] = module
        module_spec.loader.exec_module(module)
        return module

    load("LibMTL.weighting", "abstract_weighting")
    load("LibMTL.architecture", "abstract_arch")
    hps = load("LibMTL.architecture", "HPS").HPS
    weightings: dict[str, type] = {}
    errors: dict[str, str] = {}
    for name in sorted({m.libmtl for m in METHODS if m.libmtl}):
        try:
            weightings[name] = getattr(load("LibMTL.weighting", name), name)
        except Exception as error:
            errors[name] = describe_error(error)
    return LibMTL(metadata.version("LibMTL"), hps, weightings, errors)


def libmtl_runner(
    problem: Problem, libmtl: LibMTL, method: Method, rep_grad: bool, keep_grads: bool = False
) -> StepFn:
    """A LibMTL training step as its Trainer runs one (not multi_input).

    ``keep_grads``: the shim :func:`libmtl_variant` falls back to. LibMTL 1.1.5 clears the
    shared gradients between tasks with ``encoder.zero_grad()``, which sets them to None since
    torch 2.0 (``set_to_none=True``), and then writes the combined gradient through
    ``param.grad.data`` (``AbsWeighting._reset_grad``), which fails on None. With
    ``keep_grads`` they are zeroed in place (torch 1.x's default), as LibMTL was written for.
    """
    assert method.libmtl is not None
    if method.libmtl in libmtl.load_errors:
        raise ImportError(libmtl.load_errors[method.libmtl])
    weighting = libmtl.weightings[method.libmtl]
    num_tasks = problem.num_tasks
    names = task_names(num_tasks)
    hps = libmtl.hps

    class MTLmodel(hps, weighting):  # type: ignore[misc, valid-type]  # as in LibMTL's Trainer
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.init_param()

        def zero_grad_share_params(self) -> None:
            if keep_grads:
                self.encoder.zero_grad(set_to_none=False)
            else:
                super().zero_grad_share_params()

    torch.manual_seed(SEED)
    decoders = nn.ModuleDict({n: nn.Linear(HIDDEN[-1], 1) for n in names})
    model = MTLmodel(
        task_name=names,
        encoder_class=plain_mlp,
        decoders=decoders,
        rep_grad=rep_grad,
        multi_input=False,
        device=torch.device("cpu"),
    )
    model.train()
    model.epoch = 2  # past the EW warm-up epochs of DWA (epoch > 1) and GradNorm (epoch >= 1)
    model.train_loss_buffer = np.ones((num_tasks, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    x, y = problem.x, problem.y

    def step() -> None:
        preds = model(x)
        losses = torch.zeros(num_tasks)
        for t, loss in enumerate(plain_losses(preds, y)):
            losses[t] = loss
        optimizer.zero_grad()
        model.backward(losses, **method.libmtl_args)
        optimizer.step()

    return step


def torchjd_aggregator(name: str, num_tasks: int) -> Any:
    from torchjd import aggregation

    if name == "CAGrad":
        return aggregation.CAGrad(c=0.4)  # polytask's default c (TorchJD has none)
    if name == "NashMTL":
        return aggregation.NashMTL(n_tasks=num_tasks)
    return getattr(aggregation, name)()


def torchjd_scalarizer(name: str, num_tasks: int) -> nn.Module:
    from torchjd import scalarization

    if name in ("UW", "FAMO"):
        return getattr(scalarization, name)(num_tasks)
    return getattr(scalarization, name)()


TORCHJD_SCALARIZERS = {"Mean", "UW", "DWA", "Random", "FAMO"}


def torchjd_runner(problem: Problem, name: str) -> StepFn:
    """A TorchJD training step: ``mtl_backward`` + ``jac_to_grad`` for an aggregator, a
    scalarizer's loss + ``backward`` for a loss weighting."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    num_tasks = problem.num_tasks
    torch.manual_seed(SEED)
    shared = plain_mlp()
    heads = nn.ModuleList(nn.Linear(HIDDEN[-1], 1) for _ in range(num_tasks))
    params = [*shared.parameters(), *heads.parameters()]
    x, y = problem.x, problem.y

    def losses() -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = shared(x)
        return features, plain_losses([head(features) for head in heads], y)

    if name not in TORCHJD_SCALARIZERS:
        aggregator = torchjd_aggregator(name, num_tasks)
        optimizer = torch.optim.Adam(params, lr=LR)

        def jd_step() -> None:
            optimizer.zero_grad()
            features, task_losses = losses()
            mtl_backward(task_losses, features=features)
            jac_to_grad(shared.parameters(), aggregator)
            optimizer.step()

        return jd_step

    scalarizer = torchjd_scalarizer(name, num_tasks)
    optimizer = torch.optim.Adam([*params, *scalarizer.parameters()], lr=LR)

    def scalar_step() -> None:
        optimizer.zero_grad()
        _, task_losses = losses()
        scalarizer(torch.stack(task_losses)).backward()
        optimizer.step()
        if name == "FAMO":  # its documented update: the batch's losses after the step
            with torch.no_grad():
                scalarizer.update(torch.stack(losses()[1]))  # type: ignore[operator]

    if name == "DWA":  # two closed epochs, so that the weights come from loss ratios
        for _ in range(2):
            scalar_step()
            scalarizer.step()  # type: ignore[operator]
    return scalar_step


def peer_parameter_count(num_tasks: int) -> int:
    return sum(p.numel() for p in plain_mlp().parameters()) + num_tasks * (HIDDEN[-1] + 1)


# ---------------------------------------------------------------------------------- timing
@dataclass
class Runner:
    """A variant's training step, and what to say about how it runs (None: as installed)."""

    step: StepFn
    caveat: str | None = None


@dataclass
class Cell:
    """One variant of one method at one T."""

    times: list[float] = field(default_factory=list)  # seconds per timed step
    error: str | None = None
    caveat: str | None = None
    ratio: float | None = None

    @property
    def median_ms(self) -> float | None:
        return 1e3 * statistics.median(self.times) if self.times else None

    def summary(self) -> dict[str, Any]:
        return {
            "median_ms": self.median_ms,
            "ratio_to_polytask_ew": self.ratio,
            "min_ms": 1e3 * min(self.times) if self.times else None,
            "steps": len(self.times),
            "error": self.error,
            "caveat": self.caveat,
        }


class PeerFailure(Exception):
    """A failure already described (e.g. LibMTL's error as installed and with the shim)."""


def describe_error(error: BaseException) -> str:
    if isinstance(error, PeerFailure):
        return str(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def variant_factories(
    method: Method, problem: Problem, libmtl: LibMTL | str, shared_bottom: bool
) -> dict[str, Callable[[], Runner]]:
    """Constructors of the variants that exist for ``method`` (EW first)."""

    def polytask(name: str, mode: str | None, bottom: bool = False) -> Callable[[], Runner]:
        return lambda: Runner(polytask_runner(problem, name, mode, bottom))

    factories: dict[str, Callable[[], Runner]] = {EW: polytask("equal", None)}
    if method.gramian:
        factories["polytask"] = polytask(method.name, "exact")
        factories["polytask_fast"] = polytask(method.name, "fast")
        if shared_bottom:
            factories["fast_enc"] = polytask(method.name, "fast", True)
    elif method.name != "equal":
        factories["polytask"] = polytask(method.name, None)
    elif shared_bottom:  # the same network built the other way: its EW should match
        factories["fast_enc"] = polytask("equal", None, True)
    if method.libmtl is not None:
        for rep_grad in method.libmtl_rep_grad:
            key = "libmtl_rep" if rep_grad else "libmtl"
            factories[key] = _libmtl_factory(problem, libmtl, method, rep_grad)
    if method.torchjd is not None:
        name = method.torchjd
        factories["torchjd"] = lambda: Runner(torchjd_runner(problem, name))
    return factories


def _libmtl_factory(
    problem: Problem, libmtl: LibMTL | str, method: Method, rep_grad: bool
) -> Callable[[], Runner]:
    def build() -> Runner:
        if isinstance(libmtl, str):
            raise ImportError(libmtl)
        return libmtl_variant(problem, libmtl, method, rep_grad)

    return build


def libmtl_variant(problem: Problem, libmtl: LibMTL, method: Method, rep_grad: bool) -> Runner:
    """LibMTL as installed if one step runs; otherwise with ``keep_grads`` (and a caveat
    quoting the error as installed); if that fails too, raise with both errors."""
    step = libmtl_runner(problem, libmtl, method, rep_grad)
    try:
        step()
        return Runner(step)
    except Exception as error:
        native = describe_error(error)
    step = libmtl_runner(problem, libmtl, method, rep_grad, keep_grads=True)
    try:
        step()
    except Exception as error:
        shimmed = describe_error(error)
        if shimmed == native:
            raise PeerFailure(native) from None
        raise PeerFailure(f"{native}; with zero_grad(set_to_none=False): {shimmed}") from None
    return Runner(step, f"as installed: {native}; timed with zero_grad(set_to_none=False)")


def time_method(
    method: Method, problem: Problem, libmtl: LibMTL | str, args: argparse.Namespace
) -> dict[str, Cell]:
    """Alternate the method's variants for ``args.rounds`` rounds; ratios to the block's EW."""
    factories = variant_factories(method, problem, libmtl, args.shared_bottom)
    cells = {key: Cell() for key in factories}
    steps: dict[str, StepFn] = {}
    for key, factory in factories.items():
        try:
            runner = factory()
        except Exception as error:
            cells[key].error = describe_error(error)
            continue
        steps[key] = runner.step
        cells[key].caveat = runner.caveat
    for round_index in range(args.rounds):
        warmup = args.warmup if round_index == 0 else 1
        for key in list(steps):
            step = steps[key]
            try:
                for _ in range(warmup):
                    step()
                for _ in range(args.steps):
                    started = time.perf_counter()
                    step()
                    cells[key].times.append(time.perf_counter() - started)
            except Exception as error:
                cells[key].error = describe_error(error)
                cells[key].times.clear()
                del steps[key]
    ew = cells[EW].median_ms
    for cell in cells.values():
        median = cell.median_ms
        if median is not None and ew is not None:
            cell.ratio = median / ew
    del steps
    gc.collect()
    return cells


def floor(num_tasks: int) -> float:
    return (1 + 2 * num_tasks) / 3


# ---------------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    return {**shared_machine_info("LibMTL", "torchjd"), "numpy": np.__version__}


def print_header(machine: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs "
        f"({machine['usable_cpus']} usable), torch {machine['torch']} "
        f"({machine['torch_cpu_capability']}), threads {machine['torch_threads']}, "
        f"python {machine['python']}, numpy {machine['numpy']}"
    )
    print(
        f"versions: polytask {machine['polytask']}, LibMTL {machine['libmtl']}, "
        f"TorchJD {machine['torchjd']}; load average (1 min) "
        f"{machine['load_average_1m_start']:.2f} at start, "
        f"{machine.get('load_average_1m_end', float('nan')):.2f} at end"
    )
    print(
        f"network: MLP {IN_DIM}-{'-'.join(map(str, HIDDEN))} (ReLU) + T heads "
        f"{HIDDEN[-1]}->1, MSE, Adam lr {LR}; batch {args.batch_size}; "
        f"{args.rounds} rounds x {args.steps} timed steps per variant "
        f"(+{args.warmup} warm-up); ratios = step time / polytask EW step time"
    )


def fmt_cell(cell: Cell | None, notes: list[str], label: str) -> str:
    if cell is None:
        return "-"
    if cell.error is not None:
        notes.append(f"{label}: {cell.error}")
        return f"fail[{len(notes)}]"
    text = f"{cell.ratio:.2f}" if cell.ratio is not None else "?"
    if cell.caveat is not None:
        notes.append(f"{label}: {cell.caveat}")
        text += f"[{len(notes)}]"
    return text


def print_table(num_tasks: int, results: dict[str, dict[str, Cell]], shared_bottom: bool) -> None:
    ew_times = [t for cells in results.values() for t in cells[EW].times]
    ew_ms = 1e3 * statistics.median(ew_times) if ew_times else math.nan
    params = polytask_parameter_count(num_tasks)
    print(
        f"\nT = {num_tasks}: polytask EW step {ew_ms:.1f} ms (median over all blocks); "
        f"floor (1+2T)/3 = {floor(num_tasks):.2f}; parameters polytask {params:,}, "
        f"LibMTL/TorchJD {peer_parameter_count(num_tasks):,}"
    )
    columns = [v for v in VARIANTS if shared_bottom or v != "fast_enc"]
    header = f"{'method':<12} {'grads':<10}" + "".join(f"{HEADINGS[c]:>11}" for c in columns)
    print(header + f"{'floor':>8}")
    print("-" * (len(header) + 8))
    notes: list[str] = []
    for name, cells in results.items():
        method = next(m for m in METHODS if m.name == name)
        row = f"{name:<12} {method.grads:<10}"
        for column in columns:
            cell = cells.get(column)
            if name == "equal" and column == "polytask":
                cell = cells[EW]
            row += f"{fmt_cell(cell, notes, f'{name} {HEADINGS[column]}'):>11}"
        row += f"{floor(num_tasks):>8.2f}" if method.has_floor else f"{'-':>8}"
        print(row)
    for index, note in enumerate(notes, start=1):
        print(f"  [{index}] {note}")


def to_json(
    machine: dict[str, Any],
    args: argparse.Namespace,
    all_results: dict[int, dict[str, dict[str, Cell]]],
    libmtl: LibMTL | str,
) -> dict[str, Any]:
    return {
        "machine": machine,
        "settings": {
            "batch_size": args.batch_size,
            "tasks": args.tasks,
            "steps": args.steps,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
            "network": {"in": IN_DIM, "hidden": HIDDEN, "heads": "linear 256->1, MSE"},
        },
        "libmtl_load_errors": libmtl.load_errors if isinstance(libmtl, LibMTL) else libmtl,
        "results": {
            str(num_tasks): {
                "floor": floor(num_tasks),
                "methods": {
                    name: {key: cell.summary() for key, cell in cells.items()}
                    for name, cells in results.items()
                },
            }
            for num_tasks, results in all_results.items()
        },
    }


# ---------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=DEFAULT_TASKS)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations per method and T")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed steps before a variant's first round"
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--methods", nargs="+", choices=METHOD_NAMES, default=METHOD_NAMES, metavar="METHOD"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own default for this machine)",
    )
    parser.add_argument(
        "--shared-bottom",
        action="store_true",
        help="also time fast mode on identity encoder + arch shared_bottom (column fast@enc)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if min(args.tasks) < 2 or args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("need --tasks >= 2, --steps >= 1, --rounds >= 1, --warmup >= 0")
    if args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--batch-size and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    libmtl: LibMTL | str
    try:
        libmtl = load_libmtl()
    except Exception as error:
        libmtl = describe_error(error)
    methods = [m for m in METHODS if m.name in args.methods]
    all_results: dict[int, dict[str, dict[str, Cell]]] = {}
    for num_tasks in args.tasks:
        problem = Problem.random(args.batch_size, num_tasks)
        results: dict[str, dict[str, Cell]] = {}
        for method in methods:
            print(f"T = {num_tasks}: {method.name} ...", flush=True)
            results[method.name] = time_method(method, problem, libmtl, args)
        all_results[num_tasks] = results
    machine["load_average_1m_end"] = os.getloadavg()[0]
    print()
    print_header(machine, args)
    if isinstance(libmtl, str):
        print(f"LibMTL not loaded: {libmtl}")
    elif libmtl.load_errors:
        print(f"LibMTL weightings not loaded: {libmtl.load_errors}")
    for num_tasks, results in all_results.items():
        print_table(num_tasks, results, args.shared_bottom)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = to_json(machine, args, all_results, libmtl)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
