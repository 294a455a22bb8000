"""Training throughput of polytask's MMoE and PLE against torch-rechub 0.9.0's on Census-Income.

Why this exists: polytask computes the experts, gates and towers of its architectures as fused
batched products (no Python loop over experts), while torch-rechub builds one ``nn.Module`` per
expert, gate and tower and one embedding table per column. This script measures what that buys
in training rows per second, for both libraries in one process, on the same machine, inputs and
batch order, for two architectures (MMoE and PLE) at two sizes each, and then how close the
expert layers of each library come to this machine's float32 matrix-multiply peak.

Data: the full UCI Census-Income (KDD) files, read from ``../shared/datasets/census_income_kdd``
relative to the repository root (``--data`` to point elsewhere), through polytask's own loader
and preprocessor, with the data and task sections of ``examples/census_income.yaml`` (tasks
income and never_married). ``--sample`` uses the small sample shipped with polytask instead, so
the script also runs without ``../shared``. Preprocessing happens once; torch-rechub then gets
the very same encoded tensors: every categorical column as a ``SparseFeature`` (vocabulary =
polytask's cardinality, index 0 = unknown) and every numeric input column (standardised values
and missing flags) as a ``DenseFeature``.

Models (``--archs``, ``--sizes``): MMoE with 8 experts x [16], towers [8] (the MMoE paper's
Census setting) and 16 x [256, 128], towers [64]; PLE with 2 levels of the same number of
experts per level, split into task-specific and shared ones: 2 tasks x 3 + 2 shared = 8 x [16]
and 2 x 6 + 4 = 16 x [256, 128]. torch-rechub's PLE (``models/multi_task/ple.py``) gives every
expert of every level the full ``expert_params["dims"]``; the first level's experts and gates
read the embedded input, a later level's read the previous level's outputs, of width
``dims[-1]``: task t's experts and gate read task t's output, the shared experts and the shared
gate read the shared output; task gates weight their own experts and the shared ones, the
shared gate (every level but the last) all of them. polytask's ``arch: ple`` with
``task_experts``, ``shared_experts`` and ``levels`` computes the same thing; see
:func:`describe_models` for the remaining differences and :class:`ParameterCount` for how the
parameter counts are reconciled.

What is timed, per training step, for both libraries alike: slicing one batch out of tensors
built before timing (polytask: ``Features.take`` and label slicing as in the trainer's epoch
loop; torch-rechub: a dict of column -> tensor, which is the input its models take), forward,
loss, backward and an Adam step (lr 1e-3, no weight decay). No ``DataLoader`` is used by either.
polytask runs its real ``train_step`` (masked BCE-with-logits, equal balancing, or ``--balance
METHOD``); torch-rechub runs the core of its ``MTLTrainer.train_one_epoch``: sigmoid outputs,
``BCELoss`` per task, summed (MTLTrainer averages, at the same cost), ``zero_grad``, backward,
step; its per-step regularisation term (all-zero by default, but it walks the modules) is left out.
Both see the same batches in the same order (a seeded permutation per epoch; incomplete last
batches are skipped because torch-rechub's BatchNorm cannot train on a one-row batch).

Measurement: libraries alternate (polytask, torch-rechub, polytask, ...) for ``--rounds`` rounds
per architecture and size; each round runs ``--warmup`` untimed steps, then steps for
``--seconds / --rounds`` seconds. The table gives the median rows/s over rounds (min-max in
brackets) and the ratio polytask / torch-rechub, and a second ratio from each library's median
step time, which other processes on the machine disturb less. A second table gives each
library's CPU time (user, system) and minor page faults per timed step from ``getrusage``:
with glibc's default malloc settings, the large fused tensors make the heap grow and be trimmed
back every step, and the system time of faulting those pages in again shows there (the
``MALLOC_*`` and ``LD_PRELOAD`` environment is printed with the machine). Threads are torch's
default (``--threads`` to set them); the load average is printed so that a busy machine shows.

Kernel efficiency (after the throughput rounds, same thread count): the float32 matmul peak is
the best GFLOP/s of ``torch.mm`` on square matrices (``--peak-sizes``, ``--kernel-repeats``
each). Then the large size's expert layers alone, forward + backward (input gradient included,
as in training, where the input comes from the embeddings): polytask's ``ExpertBank`` of 16
experts [in, 256, 128] and torch-rechub's 16 separate ``MLP``s of the same dims, on a shared
input [B, in] (MMoE, and PLE's first level) and on one input [B, 128] per expert (a later PLE
level). FLOPs count the Linear products only (forward 2*B*in*out per layer and expert,
backward twice that), not bias, ReLU or BatchNorm; the best of ``--kernel-repeats`` runs is
reported, as GFLOP/s and as a percentage of the peak.

Run: ``python benchmarks/throughput_archs.py`` (needs the ``bench`` extra: torch-rechub, tqdm).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from _machine import machine_info as shared_machine_info
from torch import nn

from polytask.balance import BALANCERS
from polytask.config import ModelSpec, RunSpec, TrainSpec, load_spec
from polytask.model import build_model
from polytask.nn.experts import ExpertBank
from polytask.nn.gates import SoftmaxGates
from polytask.tasks import Task
from polytask.train.optim import build_optimizer
from polytask.train.prepare import SplitTensors, prepare
from polytask.train.runtime import keep_heap_between_steps
from polytask.train.step import train_step

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "census_income_kdd"
TASKS = ["income", "never_married"]
LR = 1e-3
SEED = 0

StepFn = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class Setup:
    """One architecture at one size, given to both libraries.

    MMoE uses ``num_experts``; PLE uses ``task_experts`` (per task and level),
    ``shared_experts`` (per level) and ``levels``. ``hidden`` is every expert's layer widths.
    """

    arch: str
    size: str
    hidden: list[int]
    tower: list[int]
    num_experts: int = 0
    task_experts: int = 0
    shared_experts: int = 0
    levels: int = 1
    embedding_dim: int = 4

    @property
    def name(self) -> str:
        return f"{self.arch} {self.size}"

    @property
    def experts_per_level(self) -> int:
        if self.arch == "mmoe":
            return self.num_experts
        return len(TASKS) * self.task_experts + self.shared_experts

    def describe_experts(self) -> str:
        """E.g. ``8 x [16]`` (MMoE) or ``2 x (2*3+2) x [16]`` (levels x experts per level)."""
        if self.arch == "mmoe":
            return f"{self.num_experts} x {self.hidden}"
        pool = f"{len(TASKS)}*{self.task_experts}+{self.shared_experts}"
        return f"{self.levels} x ({pool}) x {self.hidden}"


ARCHS = ["mmoe", "ple"]
SIZES = ["paper", "large"]
SETUPS = [
    Setup("mmoe", "paper", hidden=[16], tower=[8], num_experts=8),
    Setup("mmoe", "large", hidden=[256, 128], tower=[64], num_experts=16),
    Setup("ple", "paper", hidden=[16], tower=[8], task_experts=3, shared_experts=2, levels=2),
    Setup(
        "ple", "large", hidden=[256, 128], tower=[64], task_experts=6, shared_experts=4, levels=2
    ),
]
LARGE_EXPERTS = 16
LARGE_HIDDEN = [256, 128]


@dataclass
class Inputs:
    """The training split, encoded once, in the two layouts the libraries take."""

    train: SplitTensors
    tasks: list[Task]
    cardinalities: list[int]
    numeric_width: int
    sparse: dict[str, torch.Tensor]  # column -> [N] int64, for torch-rechub
    dense: dict[str, torch.Tensor]  # input column -> [N] float32, for torch-rechub
    targets: torch.Tensor  # [N, T] float32 0/1, for torch-rechub's BCELoss
    embedding_dim: int  # of polytask's encoder (and rechub's SparseFeatures)

    def __len__(self) -> int:
        return len(self.train)

    @property
    def encoded_width(self) -> int:
        """Width of the encoded input both libraries' experts read at the first level."""
        return len(self.sparse) * self.embedding_dim + len(self.dense)


@dataclass
class ParameterCount:
    """A model's parameters, and the part that has no counterpart in the other library.

    polytask's PLE lays every gate over the level's whole expert pool and masks the logits of
    the experts a gate may not weight to -inf: those weights (and biases) exist but get zero
    gradient, so they never train. torch-rechub has a BatchNorm1d (weight and bias) after every
    Linear of its expert, gate and tower MLPs, which polytask does not. ``total - extra`` is
    the count of parameters with a counterpart in the other library; it matches exactly when
    both compute the same architecture.
    """

    total: int
    extra: int
    extra_kind: str

    @property
    def matched(self) -> int:
        return self.total - self.extra

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "without_counterpart": self.extra,
            "without_counterpart_kind": self.extra_kind,
            "matched": self.matched,
        }


@dataclass
class Usage:
    """Process resource usage (all threads) over some steps, from ``getrusage``."""

    user_seconds: float
    system_seconds: float
    minor_faults: int

    @staticmethod
    def now() -> Usage:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return Usage(usage.ru_utime, usage.ru_stime, usage.ru_minflt)

    def since(self, start: Usage) -> Usage:
        return Usage(
            self.user_seconds - start.user_seconds,
            self.system_seconds - start.system_seconds,
            self.minor_faults - start.minor_faults,
        )


@dataclass
class LibraryResult:
    """Per-round throughput and per-round median step time (the latter is contention-robust)."""

    parameters: ParameterCount
    batch_size: int
    rows_per_second: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    median_step_seconds: list[float] = field(default_factory=list)
    usage: list[Usage] = field(default_factory=list)  # per round, over its timed steps

    @property
    def median(self) -> float:
        """Median over rounds of rows / wall time of the round (the headline figure)."""
        return statistics.median(self.rows_per_second)

    @property
    def median_step(self) -> float:
        """batch size / (median over rounds of the round's median step time).

        A stalled step (another process took the core) moves a round's mean but rarely its
        median; taking medians per round first keeps fast rounds, which fit more steps into
        their time budget, from outweighing slow ones.
        """
        return self.batch_size / statistics.median(self.median_step_seconds)

    def per_step(self) -> Usage:
        """Mean resource usage of one timed step, over all rounds."""
        steps = sum(self.steps)
        return Usage(
            sum(u.user_seconds for u in self.usage) / steps,
            sum(u.system_seconds for u in self.usage) / steps,
            round(sum(u.minor_faults for u in self.usage) / steps),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters.summary(),
            "usage_per_step": asdict(self.per_step()),
            "rows_per_second_per_round": self.rows_per_second,
            "steps_per_round": self.steps,
            "median_rows_per_second": self.median,
            "median_step_seconds_per_round": self.median_step_seconds,
            "rows_per_second_at_median_step": self.median_step,
        }


@dataclass
class SetupResult:
    setup: Setup
    polytask: LibraryResult
    rechub: LibraryResult

    @property
    def ratio(self) -> float:
        return self.polytask.median / self.rechub.median

    @property
    def ratio_median_step(self) -> float:
        return self.polytask.median_step / self.rechub.median_step


@dataclass
class MatmulPeak:
    """Best float32 ``torch.mm`` throughput over square sizes."""

    threads: int
    seconds: dict[int, list[float]]  # matrix size -> time of each repetition

    def gflops(self, n: int) -> float:
        return 2 * n**3 / min(self.seconds[n]) / 1e9

    @property
    def best(self) -> float:
        return max(self.gflops(n) for n in self.seconds)

    def summary(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "best_gflops": self.best,
            "gflops_by_size": {str(n): self.gflops(n) for n in self.seconds},
            "seconds_by_size": {str(n): times for n, times in self.seconds.items()},
        }


@dataclass
class ExpertKernel:
    """Forward + backward of one library's 16 large experts on one input layout."""

    library: str
    layout: str  # "shared input [B, in]" or "one input per expert"
    batch_size: int
    in_dim: int
    flops: float  # Linear FLOPs of one forward + backward
    seconds: list[float]

    @property
    def gflops(self) -> float:
        return self.flops / min(self.seconds) / 1e9

    def summary(self, peak: float) -> dict[str, Any]:
        return {
            "library": self.library,
            "layout": self.layout,
            "experts": LARGE_EXPERTS,
            "in_dim": self.in_dim,
            "hidden": LARGE_HIDDEN,
            "batch_size": self.batch_size,
            "linear_gflop_per_forward_backward": self.flops / 1e9,
            "seconds": self.seconds,
            "best_gflops": self.gflops,
            "percent_of_peak": 100 * self.gflops / peak,
        }


# ---------------------------------------------------------------------------------- data
def run_spec(data: Path, sample: bool, setup: Setup) -> RunSpec:
    """The run specification of examples/census_income.yaml, for this data source and setup."""
    source: dict[str, Any] = (
        {"dataset": "census_income_sample"}
        if sample
        else {"dataset": "census_income", "dataset_options": {"path": str(data)}}
    )
    return load_spec(
        {
            "data": source,
            "tasks": [{"name": name, "kind": "binary", "target": name} for name in TASKS],
            "model": model_spec(setup).model_dump(),
            "train": {"batch_size": 1024, "lr": LR, "seed": SEED},
        }
    )


def model_spec(setup: Setup) -> ModelSpec:
    options: dict[str, Any] = (
        {}
        if setup.arch == "mmoe"
        else {
            "task_experts": setup.task_experts,
            "shared_experts": setup.shared_experts,
            "levels": setup.levels,
        }
    )
    return ModelSpec(
        arch=setup.arch,
        num_experts=setup.experts_per_level,  # read by MMoE only
        hidden=setup.hidden,
        tower_hidden=setup.tower,
        embedding_dim=setup.embedding_dim,
        dropout=0.0,
        options=options,
    )


def load_inputs(data: Path, sample: bool) -> Inputs:
    """Load and preprocess the data once with polytask, then lay it out for torch-rechub."""
    setup = SETUPS[0]
    prepared = prepare(run_spec(data, sample, setup))
    train = prepared.splits["train"]
    preprocessor = prepared.preprocessor
    categorical = train.features.categorical
    numeric = train.features.numeric
    dense_names = [*preprocessor.numeric, *(f"{c}__missing" for c in preprocessor.numeric)]
    assert numeric.shape[1] == len(dense_names) == preprocessor.numeric_width
    return Inputs(
        train=train,
        tasks=prepared.tasks,
        cardinalities=preprocessor.cardinalities,
        numeric_width=preprocessor.numeric_width,
        sparse={c: categorical[:, j].contiguous() for j, c in enumerate(preprocessor.categorical)},
        dense={c: numeric[:, j].contiguous() for j, c in enumerate(dense_names)},
        targets=torch.stack([train.labels[name] for name in TASKS], dim=1).contiguous(),
        embedding_dim=setup.embedding_dim,
    )


def on_device(inputs: Inputs, device: torch.device) -> Inputs:
    """The same inputs with every tensor on ``device`` (built once, before any timing)."""
    if device.type == "cpu":
        return inputs
    train = SplitTensors(
        inputs.train.features.to(device),
        {name: values.to(device) for name, values in inputs.train.labels.items()},
    )
    return replace(
        inputs,
        train=train,
        sparse={name: values.to(device) for name, values in inputs.sparse.items()},
        dense={name: values.to(device) for name, values in inputs.dense.items()},
        targets=inputs.targets.to(device),
    )


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


class BatchOrder:
    """Row indices of successive full batches: a seeded permutation per epoch.

    Each library gets its own instance with the same seed, so step k of one library trains on
    exactly the rows of step k of the other.
    """

    def __init__(
        self, num_rows: int, batch_size: int, seed: int, device: torch.device | None = None
    ) -> None:
        self.device = device or torch.device("cpu")
        if num_rows < batch_size:
            raise SystemExit(f"batch size {batch_size} exceeds the {num_rows} training rows")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = num_rows  # forces a new permutation on the first call
        self.order = torch.empty(0, dtype=torch.int64)

    def next(self) -> torch.Tensor:
        if self.position + self.batch_size > self.num_rows:
            self.epoch += 1
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self.order = torch.randperm(self.num_rows, generator=generator)
            self.position = 0
        rows = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return rows.to(self.device)


# ---------------------------------------------------------------------------------- models
def polytask_parameters(model: nn.Module) -> ParameterCount:
    """All parameters; extra = gate weights and biases masked to -inf (never trained)."""
    masked = 0
    for module in model.modules():
        if isinstance(module, SoftmaxGates) and module.blocked is not None:
            masked += int(module.blocked.sum()) * (module.in_dim + 1)
    total = sum(p.numel() for p in model.parameters())
    return ParameterCount(total, masked, "masked gate weights")


def rechub_parameters(model: nn.Module) -> ParameterCount:
    """All parameters; extra = BatchNorm1d weights and biases."""
    batch_norm = sum(
        p.numel()
        for module in model.modules()
        if isinstance(module, nn.BatchNorm1d)
        for p in module.parameters()
    )
    total = sum(p.numel() for p in model.parameters())
    return ParameterCount(total, batch_norm, "BatchNorm affine")


def polytask_model(inputs: Inputs, setup: Setup) -> nn.Module:
    torch.manual_seed(SEED)
    model = build_model(
        model_spec(setup),
        inputs.cardinalities,
        inputs.numeric_width,
        out_dims=[task.out_dim for task in inputs.tasks],
        task_names=[task.name for task in inputs.tasks],
    )
    assert model.encoders[0].out_dim == inputs.encoded_width
    return model


def polytask_step(inputs: Inputs, setup: Setup, method: str = "equal") -> tuple[StepFn, nn.Module]:
    """polytask's model and its real training step, fed like the trainer's epoch loop."""
    device = inputs.targets.device
    model = polytask_model(inputs, setup).to(device)
    model.train()
    optimizer = build_optimizer(list(model.parameters()), TrainSpec(optimizer="adam", lr=LR))
    balancer = BALANCERS.get(method)(len(inputs.tasks))
    static_weights = torch.ones(len(inputs.tasks), device=device)
    train = inputs.train
    counter = [0]

    def step(rows: torch.Tensor) -> None:
        labels = {name: values[rows] for name, values in train.labels.items()}
        train_step(
            model,  # type: ignore[arg-type]
            train.features.take(rows),
            labels,
            inputs.tasks,
            balancer,
            optimizer,
            static_weights,
            counter[0],
        )
        counter[0] += 1

    return step, model


def rechub_model(inputs: Inputs, setup: Setup) -> nn.Module:
    """torch-rechub's MMOE or PLE on the same encoded columns."""
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE, PLE

    # Fresh feature objects per model: a SparseFeature caches its nn.Embedding on itself, so
    # reusing one across models would silently share embedding tables between them.
    features: list[Any] = [
        SparseFeature(name, vocab_size=cardinality, embed_dim=setup.embedding_dim)
        for name, cardinality in zip(inputs.sparse, inputs.cardinalities, strict=True)
    ]
    features += [DenseFeature(name) for name in inputs.dense]
    expert_params = {"dims": setup.hidden, "dropout": 0.0}
    tower_params_list = [{"dims": setup.tower, "dropout": 0.0}] * len(TASKS)
    task_types = ["classification"] * len(TASKS)
    torch.manual_seed(SEED)
    model: nn.Module
    if setup.arch == "mmoe":
        model = MMOE(
            features,
            task_types=task_types,
            n_expert=setup.num_experts,
            expert_params=expert_params,
            tower_params_list=tower_params_list,
        )
    else:
        model = PLE(
            features,
            task_types=task_types,
            n_level=setup.levels,
            n_expert_specific=setup.task_experts,
            n_expert_shared=setup.shared_experts,
            expert_params=expert_params,
            tower_params_list=tower_params_list,
        )
    assert model.input_dims == inputs.encoded_width, (model.input_dims, inputs.encoded_width)
    return model


def rechub_step(inputs: Inputs, setup: Setup) -> tuple[StepFn, nn.Module]:
    """torch-rechub's model trained the way MTLTrainer does."""
    model = rechub_model(inputs, setup).to(inputs.targets.device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.BCELoss()
    columns = {**inputs.sparse, **inputs.dense}
    targets = inputs.targets

    def step(rows: torch.Tensor) -> None:
        x = {name: values[rows] for name, values in columns.items()}
        y = targets[rows]
        predictions = model(x)  # [B, T] probabilities
        loss = sum(loss_fn(predictions[:, t], y[:, t]) for t in range(y.shape[1]))
        model.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()

    return step, model


# ---------------------------------------------------------------------------------- timing
def timed_round(
    step: StepFn, order: BatchOrder, warmup: int, seconds: float
) -> tuple[list[float], Usage]:
    """Untimed warm-up steps, then steps until ``seconds`` have passed: each step's duration
    and the process's resource usage over the timed steps."""
    synchronise = torch.cuda.synchronize if order.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step(order.next())
    synchronise()
    gc.collect()
    durations = []
    usage = Usage.now()
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        batch = order.next()
        step(batch)
        synchronise()  # a GPU step has finished only when its kernels have
        before, now = now, time.perf_counter()
        durations.append(now - before)
    return durations, Usage.now().since(usage)


def run_setup(inputs: Inputs, setup: Setup, args: argparse.Namespace) -> SetupResult:
    """Alternate the two libraries for ``args.rounds`` rounds on one architecture and size."""
    polytask = polytask_step(inputs, setup, args.balance)
    rechub = rechub_step(inputs, setup)
    runners = {"polytask": polytask, "rechub": rechub}
    device = inputs.targets.device
    orders = {name: BatchOrder(len(inputs), args.batch_size, SEED, device) for name in runners}
    results = {
        "polytask": LibraryResult(polytask_parameters(polytask[1]), args.batch_size),
        "rechub": LibraryResult(rechub_parameters(rechub[1]), args.batch_size),
    }
    per_round = args.seconds / args.rounds
    for round_index in range(args.rounds):
        for name, (step, _) in runners.items():
            durations, usage = timed_round(step, orders[name], args.warmup, per_round)
            rate = args.batch_size * len(durations) / sum(durations)
            result = results[name]
            result.usage.append(usage)
            result.rows_per_second.append(rate)
            result.steps.append(len(durations))
            result.median_step_seconds.append(statistics.median(durations))
            print(
                f"  {setup.name:<10} round {round_index + 1}/{args.rounds} {name:<9}"
                f"{rate:>12,.0f} rows/s ({len(durations)} steps, median step "
                f"{1000 * statistics.median(durations):.2f} ms)",
                flush=True,
            )
    return SetupResult(setup, results["polytask"], results["rechub"])


def repeat_timed(run: Callable[[], None], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``run`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    gc.collect()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure_matmul_peak(sizes: list[int], repeats: int) -> MatmulPeak:
    """Time ``torch.mm`` of square float32 matrices into a preallocated output."""
    generator = torch.Generator().manual_seed(SEED)
    seconds = {}
    for n in sizes:
        a = torch.randn(n, n, generator=generator)
        b = torch.randn(n, n, generator=generator)
        out = torch.empty(n, n)
        seconds[n] = repeat_timed(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), repeats)
        print(f"  matmul {n} x {n}: {2 * n**3 / min(seconds[n]) / 1e9:,.1f} GFLOP/s", flush=True)
    return MatmulPeak(torch.get_num_threads(), seconds)


def linear_flops(batch_size: int, in_dim: int, hidden: list[int], experts: int) -> float:
    """Linear FLOPs of a forward + backward of ``experts`` MLPs ``in_dim -> hidden...``.

    Forward: 2*B*fan_in*fan_out per layer and expert. Backward: the same again for the weight
    gradient and again for the input gradient (the first layer's too: the input requires grad).
    """
    sizes = [in_dim, *hidden]
    forward = sum(2 * batch_size * a * b for a, b in itertools.pairwise(sizes))
    return 3.0 * experts * forward


def measure_experts(in_dim: int, batch_size: int, repeats: int) -> list[ExpertKernel]:
    """Forward + backward of the large experts alone, polytask's bank vs rechub's MLPs."""
    from torch_rechub.basic.layers import MLP

    torch.manual_seed(SEED)
    bank = ExpertBank(LARGE_EXPERTS, in_dim, LARGE_HIDDEN).train()
    level_bank = ExpertBank(LARGE_EXPERTS, LARGE_HIDDEN[-1], LARGE_HIDDEN).train()

    def rechub_mlps(width: int) -> nn.ModuleList:
        mlps = [
            MLP(width, output_layer=False, dims=LARGE_HIDDEN, dropout=0.0)
            for _ in range(LARGE_EXPERTS)
        ]
        return nn.ModuleList(mlps).train()

    mlps, level_mlps = rechub_mlps(in_dim), rechub_mlps(LARGE_HIDDEN[-1])
    shared_x = torch.randn(batch_size, in_dim, requires_grad=True)
    own_x = torch.randn(LARGE_EXPERTS, batch_size, LARGE_HIDDEN[-1], requires_grad=True)
    grad = torch.randn(LARGE_EXPERTS, batch_size, LARGE_HIDDEN[-1])
    grads = list(grad.unbind(0))

    def clear(module: nn.Module, x: torch.Tensor) -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None

    def polytask_shared() -> None:
        clear(bank, shared_x)
        bank(shared_x).backward(grad)

    def rechub_shared() -> None:
        clear(mlps, shared_x)
        torch.autograd.backward([mlp(shared_x) for mlp in mlps], grads)

    def polytask_own() -> None:
        clear(level_bank, own_x)
        level_bank(own_x).backward(grad)

    def rechub_own() -> None:
        clear(level_mlps, own_x)
        outputs = [mlp(x) for mlp, x in zip(level_mlps, own_x.unbind(0), strict=True)]
        torch.autograd.backward(outputs, grads)

    shared = f"shared input [B, {in_dim}]"
    own = f"own input [E, B, {LARGE_HIDDEN[-1]}]"
    cases: list[tuple[str, str, int, Callable[[], None]]] = [
        ("polytask", shared, in_dim, polytask_shared),
        ("rechub", shared, in_dim, rechub_shared),
        ("polytask", own, LARGE_HIDDEN[-1], polytask_own),
        ("rechub", own, LARGE_HIDDEN[-1], rechub_own),
    ]
    kernels = []
    for library, layout, width, run in cases:
        flops = linear_flops(batch_size, width, LARGE_HIDDEN, LARGE_EXPERTS)
        kernel = ExpertKernel(
            library, layout, batch_size, width, flops, repeat_timed(run, repeats, warmup=2)
        )
        print(
            f"  experts {library:<9}{layout:<26}{kernel.gflops:>8,.1f} GFLOP/s "
            f"(best of {repeats}, {1000 * min(kernel.seconds):.1f} ms)",
            flush=True,
        )
        kernels.append(kernel)
    return kernels


# ---------------------------------------------------------------------------------- report
def machine_info() -> dict[str, Any]:
    return {**shared_machine_info("torch-rechub"), "allocator_env": allocator_env()}


def allocator_env() -> dict[str, str]:
    """Environment that changes how freed memory goes back to the OS (glibc malloc tunables,
    a preloaded allocator): it moves the large setups' system time, see print_usage."""
    names = ("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD")
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(names)}


def describe_models() -> list[str]:
    return [
        "polytask: fused expert bank / gates / towers (batched matmuls), one embedding table,",
        "  no BatchNorm, ReLU, dropout 0, logits + masked BCE-with-logits, equal weighting.",
        "torch-rechub: per expert, gate and tower an MLP = [Linear -> BatchNorm1d -> activation",
        "  -> Dropout] per layer (BatchNorm is always on in its MLP); gates are MLP(dims=[E],",
        "  activation=softmax), so Linear -> BatchNorm1d -> Softmax; towers add Linear(., 1),",
        "  then sigmoid + BCELoss. Passed dropout=0 (also its default); other defaults kept:",
        "  ReLU, per-column nn.Embedding with N(0, 1e-4) init.",
        "PLE, both: every expert of every level has the full expert dims; level 1 reads the",
        "  encoded input, later levels' task experts and gates read their task's output of the",
        "  level before, the shared experts and gate the shared output (width hidden[-1]); task",
        "  gates weight own + shared experts, the shared gate (not on the last level) all.",
        "  polytask lays each gate over the whole pool with the other tasks' experts masked to",
        "  -inf (those gate weights never train); rechub's gates cover only their own experts.",
    ]


def fmt_rate(result: LibraryResult) -> str:
    rates = result.rows_per_second
    return f"{result.median:>9,.0f} [{min(rates):,.0f}-{max(rates):,.0f}]"


def print_header(machine: dict[str, Any], data: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(
        f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs "
        f"({machine['usable_cpus']} usable, {machine['torch_cpu_capability']}), torch "
        f"{machine['torch']} with threads={machine['torch_threads']}, python {machine['python']}"
    )
    print(
        f"versions: polytask {machine['polytask']}, torch-rechub {machine['torch_rechub']}; "
        f"load average (1 min) {machine['load_average_1m_start']:.2f} at start, "
        f"{machine['load_average_1m_end']:.2f} at end"
    )
    usable = machine["usable_cpus"] or machine["logical_cpus"] or 1
    if max(machine["load_average_1m_start"], machine["load_average_1m_end"]) > usable:
        print(
            f"WARNING: the machine was busy (load average above its {usable} CPUs): other "
            "processes shared the cores, so these numbers are noisy; with more than one torch "
            "thread a step can stall for seconds. Rerun on a quiet machine or with --threads 1."
        )
    allocator = ", ".join(f"{k}={v}" for k, v in machine["allocator_env"].items())
    print(f"allocator environment: {allocator or 'none (glibc malloc defaults)'}")
    print(
        f"data: {data['source']}; {data['train_rows']:,} training rows, "
        f"{data['categorical']} categorical columns, {data['numeric_inputs']} numeric inputs "
        f"(encoded width {data['encoded_width']})"
    )
    print(
        f"batch size {args.batch_size}, Adam lr {LR}, {args.rounds} alternating rounds of "
        f"{args.seconds / args.rounds:.1f} s per library, architecture and size, "
        f"{args.warmup} warm-up steps per round; rows/s = median [min-max] over rounds"
    )
    for line in describe_models():
        print(line)


def print_throughput(results: list[SetupResult]) -> None:
    print()
    header = (
        f"{'arch':<4} {'size':<5} {'experts x hidden':<26} {'tower':<5} "
        f"{'polytask rows/s':>26}  {'rechub rows/s':>26}  {'ratio p/r':>9}  {'step ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        setup = result.setup
        print(
            f"{setup.arch:<4} {setup.size:<5} {setup.describe_experts():<26} "
            f"{setup.tower!s:<5} {fmt_rate(result.polytask):>26}  "
            f"{fmt_rate(result.rechub):>26}  {result.ratio:>8.2f}x  "
            f"{result.ratio_median_step:>9.2f}x"
        )
    print(
        "ratio p/r = median rows/s of polytask / of torch-rechub; step ratio = the same from "
        "each library's median step time\n(median over rounds of each round's median step), "
        "which other processes on the machine disturb less"
    )


def print_usage(results: list[SetupResult]) -> None:
    print()
    header = (
        f"{'':<10} {'polytask per step':^28}  {'rechub per step':^28}\n"
        f"{'arch size':<10} {'user ms':>8} {'sys ms':>8} {'faults':>10}  "
        f"{'user ms':>8} {'sys ms':>8} {'faults':>10}"
    )
    print(header)
    print("-" * len(header.splitlines()[-1]))
    for result in results:
        cells = []
        for library in (result.polytask, result.rechub):
            usage = library.per_step()
            cells.append(
                f"{1000 * usage.user_seconds:>8.1f} {1000 * usage.system_seconds:>8.1f} "
                f"{usage.minor_faults:>10,}"
            )
        print(f"{result.setup.name:<10} {cells[0]}  {cells[1]}")
    print(
        "CPU time (all threads) and minor page faults of the process per timed step "
        "(getrusage); high sys time with many\nfaults is glibc malloc giving freed heap "
        "back to the OS (heap trim) and the next step faulting it in again"
    )


def print_parameters(results: list[SetupResult]) -> None:
    print()
    header = (
        f"{'arch':<4} {'size':<5} {'polytask':>10} {'- masked gates':>14} "
        f"{'rechub':>10} {'- BatchNorm':>11} {'matched p / r':>23}  {'p/r total':>9}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        p, r = result.polytask.parameters, result.rechub.parameters
        matched = f"{p.matched:,} / {r.matched:,}"
        print(
            f"{result.setup.arch:<4} {result.setup.size:<5} {p.total:>10,} {p.extra:>14,} "
            f"{r.total:>10,} {r.extra:>11,} {matched:>23}  "
            f"{100 * (p.total / r.total - 1):>+8.1f}%"
        )
    print(
        "parameters: '- masked gates' are polytask PLE gate weights and biases for experts a "
        "gate may not weight (logits\nmasked to -inf, never trained); '- BatchNorm' are "
        "rechub's BatchNorm1d weights and biases; 'matched' is the rest"
    )


def print_kernels(peak: MatmulPeak, kernels: list[ExpertKernel]) -> None:
    print()
    sizes = ", ".join(f"{n}: {peak.gflops(n):,.1f}" for n in peak.seconds)
    print(
        f"float32 matmul peak (torch.mm, threads={peak.threads}, best GFLOP/s by size: "
        f"{sizes}): {peak.best:,.1f} GFLOP/s"
    )
    header = (
        f"{LARGE_EXPERTS} experts x {LARGE_HIDDEN}, forward + backward  {'library':<9} "
        f"{'GFLOP':>6} {'best ms':>8} {'GFLOP/s':>8} {'of peak':>8}"
    )
    print(header)
    print("-" * len(header))
    for kernel in kernels:
        print(
            f"{kernel.layout:<37}  {kernel.library:<9} {kernel.flops / 1e9:>6.2f} "
            f"{1000 * min(kernel.seconds):>8.1f} {kernel.gflops:>8,.1f} "
            f"{100 * kernel.gflops / peak.best:>7.1f}%"
        )
    print(
        f"batch {kernels[0].batch_size}; the input requires grad; GFLOP counts the Linear "
        "products only (forward + weight and\ninput gradients), not bias, ReLU or BatchNorm "
        "(rechub's BatchNorm time is in its ms); best of the repetitions"
    )


def to_json(
    results: list[SetupResult],
    peak: MatmulPeak | None,
    kernels: list[ExpertKernel],
    machine: dict[str, Any],
    data: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    return {
        "benchmark": "architecture_training_throughput",
        "machine": machine,
        "data": data,
        "settings": {
            "batch_size": args.batch_size,
            "lr": LR,
            "seconds_per_library_architecture_and_size": args.seconds,
            "rounds": args.rounds,
            "warmup_steps_per_round": args.warmup,
            "threads": torch.get_num_threads(),
            "tasks": TASKS,
            "archs": args.archs,
            "sizes": args.sizes,
            "peak_sizes": args.peak_sizes,
            "kernel_repeats": args.kernel_repeats,
        },
        "models": describe_models(),
        "results": [
            {
                "arch": r.setup.arch,
                "size": r.setup.size,
                "setup": asdict(r.setup),
                "experts_per_level": r.setup.experts_per_level,
                "polytask": r.polytask.summary(),
                "rechub": r.rechub.summary(),
                "ratio_polytask_over_rechub": r.ratio,
                "ratio_at_median_step": r.ratio_median_step,
            }
            for r in results
        ],
        "matmul_peak": peak.summary() if peak is not None else None,
        "expert_efficiency": [k.summary(peak.best) for k in kernels] if peak is not None else [],
    }


# ---------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help="folder with census-income.data.gz and census-income.test.gz (default: %(default)s)",
    )
    parser.add_argument(
        "--sample", action="store_true", help="use the sample shipped with polytask instead"
    )
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="timed seconds per library, architecture and size",
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternations per setup")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before each round")
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=ARCHS)
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=SIZES)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own default for this machine)",
    )
    parser.add_argument(
        "--peak-sizes",
        type=int,
        nargs="*",
        default=[2048, 4096],
        help="square matmul sizes for the float32 peak; none skips the kernel measurements",
    )
    parser.add_argument(
        "--kernel-repeats",
        type=int,
        default=5,
        help="timed repetitions per matmul size and per expert-layer case (best is reported)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--balance",
        default="equal",
        help="polytask's balancing method (default options): its step cost beside torch-rechub's "
        "plain summed loss",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="torch device for both libraries (cuda: the inputs live on the GPU, every step "
        "is synchronised before it is timed; the CPU kernel measurements are skipped)",
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc malloc as it is (polytask's trainer keeps the heap between steps)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 2 or args.rounds < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("need --batch-size >= 2, --rounds >= 1, --seconds > 0, --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.kernel_repeats < 1 or any(n < 1 for n in args.peak_sizes):
        parser.error("need --kernel-repeats >= 1 and positive --peak-sizes")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not args.default_malloc:
        # as polytask's trainer does; process-wide, so torch-rechub runs with it too
        keep_heap_between_steps()
    machine = machine_info()
    source = "polytask's shipped sample" if args.sample else str(args.data.resolve())
    print(f"loading and preprocessing {source} ...", flush=True)
    started = time.perf_counter()
    inputs = on_device(load_inputs(args.data, args.sample), torch.device(args.device))
    machine["device"] = describe_device(torch.device(args.device))
    data = {
        "source": source,
        "train_rows": len(inputs),
        "categorical": len(inputs.sparse),
        "numeric_inputs": len(inputs.dense),
        "encoded_width": inputs.encoded_width,
        "preprocess_seconds": time.perf_counter() - started,
    }
    print(f"  done in {data['preprocess_seconds']:.1f} s", flush=True)
    setups = [s for s in SETUPS if s.arch in args.archs and s.size in args.sizes]
    results = [run_setup(inputs, setup, args) for setup in setups]
    peak: MatmulPeak | None = None
    kernels: list[ExpertKernel] = []
    if args.peak_sizes and args.device == "cpu":
        peak = measure_matmul_peak(args.peak_sizes, args.kernel_repeats)
        kernels = measure_experts(inputs.encoded_width, args.batch_size, args.kernel_repeats)
    machine["load_average_1m_end"] = os.getloadavg()[0]
    print_header(machine, data, args)
    print_throughput(results)
    print_usage(results)
    print_parameters(results)
    if peak is not None:
        print_kernels(peak, kernels)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = to_json(results, peak, kernels, machine, data, args)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
