"""Training throughput of polytask's MMoE against torch-rechub 0.9.0's MMOE on Census-Income.

Why this exists: polytask computes MMoE's experts, gates and towers as fused batched products
(no Python loop over experts), while torch-rechub builds one ``nn.Module`` per expert, gate and
tower and one embedding table per column. This script measures what that buys in training rows
per second, for both libraries in one process, on the same machine, inputs and batch order.

Data: the full UCI Census-Income (KDD) files, read from ``../shared/datasets/census_income_kdd``
relative to the repository root (``--data`` to point elsewhere), through polytask's own loader
and preprocessor, with the data and task sections of ``examples/census_income.yaml`` (tasks
income and never_married). ``--sample`` uses the small sample shipped with polytask instead, so
the script also runs without ``../shared``. Preprocessing happens once; torch-rechub then gets
the very same encoded tensors: every categorical column as a ``SparseFeature`` (vocabulary =
polytask's cardinality, index 0 = unknown) and every numeric input column (standardised values
and missing flags) as a ``DenseFeature``.

What is timed, per training step, for both libraries alike: slicing one batch out of tensors
built before timing (polytask: ``Features.take`` and label slicing as in the trainer's epoch
loop; torch-rechub: a dict of column -> tensor, which is the input its models take), forward,
loss, backward and an Adam step (lr 1e-3, no weight decay). No ``DataLoader`` is used by either.
polytask runs its real ``train_step`` (masked BCE-with-logits, equal balancing); torch-rechub
runs the core of its ``MTLTrainer.train_one_epoch``: sigmoid outputs, ``BCELoss`` per task,
summed (MTLTrainer averages, at the same cost), ``zero_grad``, backward, step; its per-step
regularisation term (all-zero by default, but it walks the modules) is left out. Both see the
same batches in the same order (a seeded permutation per epoch; incomplete last batches are
skipped because torch-rechub's BatchNorm cannot train on a one-row batch).

Measurement: libraries alternate (polytask, torch-rechub, polytask, ...) for ``--rounds`` rounds
per model size; each round runs ``--warmup`` untimed steps, then steps for
``--seconds / --rounds`` seconds. The table gives the median rows/s over rounds (min-max in
brackets) and the ratio polytask / torch-rechub, and a second ratio from each library's median
step time, which other processes on the machine disturb less. Threads are torch's default
(``--threads`` to set them); the load average is printed so that a busy machine shows.

Run: ``python benchmarks/throughput_mmoe.py`` (needs the ``bench`` extra: torch-rechub, tqdm).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from polytask.balance import BALANCERS
from polytask.config import ModelSpec, RunSpec, TrainSpec, load_spec
from polytask.model import build_model
from polytask.tasks import Task
from polytask.train.optim import build_optimizer
from polytask.train.prepare import SplitTensors, prepare
from polytask.train.step import train_step

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "census_income_kdd"
TASKS = ["income", "never_married"]
LR = 1e-3
SEED = 0

StepFn = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class Size:
    """One model size, given to both libraries."""

    name: str
    num_experts: int
    hidden: list[int]
    tower: list[int]
    embedding_dim: int = 4


SIZES = [
    Size("paper", num_experts=8, hidden=[16], tower=[8]),
    Size("large", num_experts=16, hidden=[256, 128], tower=[64]),
]


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

    def __len__(self) -> int:
        return len(self.train)


@dataclass
class LibraryResult:
    """Per-round throughput and per-round median step time (the latter is contention-robust)."""

    rows_per_second: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    median_step_seconds: list[float] = field(default_factory=list)
    batch_size: int = 0
    parameters: int = 0

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

    def summary(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters,
            "rows_per_second_per_round": self.rows_per_second,
            "steps_per_round": self.steps,
            "median_rows_per_second": self.median,
            "median_step_seconds_per_round": self.median_step_seconds,
            "rows_per_second_at_median_step": self.median_step,
        }


@dataclass
class SizeResult:
    size: Size
    polytask: LibraryResult
    rechub: LibraryResult

    @property
    def ratio(self) -> float:
        return self.polytask.median / self.rechub.median

    @property
    def ratio_median_step(self) -> float:
        return self.polytask.median_step / self.rechub.median_step


# ---------------------------------------------------------------------------------- data
def run_spec(data: Path, sample: bool, size: Size) -> RunSpec:
    """The run specification of examples/census_income.yaml, for this data source and size."""
    source: dict[str, Any] = (
        {"dataset": "census_income_sample"}
        if sample
        else {"dataset": "census_income", "dataset_options": {"path": str(data)}}
    )
    return load_spec(
        {
            "data": source,
            "tasks": [{"name": name, "kind": "binary", "target": name} for name in TASKS],
            "model": model_spec(size).model_dump(),
            "train": {"batch_size": 1024, "lr": LR, "seed": SEED},
        }
    )


def model_spec(size: Size) -> ModelSpec:
    return ModelSpec(
        arch="mmoe",
        num_experts=size.num_experts,
        hidden=size.hidden,
        tower_hidden=size.tower,
        embedding_dim=size.embedding_dim,
        dropout=0.0,
    )


def load_inputs(data: Path, sample: bool) -> Inputs:
    """Load and preprocess the data once with polytask, then lay it out for torch-rechub."""
    prepared = prepare(run_spec(data, sample, SIZES[0]))
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
    )


class BatchOrder:
    """Row indices of successive full batches: a seeded permutation per epoch.

    Each library gets its own instance with the same seed, so step k of one library trains on
    exactly the rows of step k of the other.
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int) -> None:
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
        return rows


# ---------------------------------------------------------------------------------- models
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def polytask_step(inputs: Inputs, size: Size) -> tuple[StepFn, nn.Module]:
    """polytask's model and its real training step, fed like the trainer's epoch loop."""
    torch.manual_seed(SEED)
    model = build_model(
        model_spec(size),
        inputs.cardinalities,
        inputs.numeric_width,
        out_dims=[task.out_dim for task in inputs.tasks],
        task_names=[task.name for task in inputs.tasks],
    )
    model.train()
    optimizer = build_optimizer(list(model.parameters()), TrainSpec(optimizer="adam", lr=LR))
    balancer = BALANCERS.get("equal")(len(inputs.tasks))
    static_weights = torch.ones(len(inputs.tasks))
    train = inputs.train
    counter = [0]

    def step(rows: torch.Tensor) -> None:
        labels = {name: values[rows] for name, values in train.labels.items()}
        train_step(
            model,
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


def rechub_step(inputs: Inputs, size: Size) -> tuple[StepFn, nn.Module]:
    """torch-rechub's MMOE on the same encoded columns, trained the way MTLTrainer does."""
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.multi_task import MMOE

    # Fresh feature objects per model: a SparseFeature caches its nn.Embedding on itself, so
    # reusing one across models would silently share embedding tables between them.
    features: list[Any] = [
        SparseFeature(name, vocab_size=cardinality, embed_dim=size.embedding_dim)
        for name, cardinality in zip(inputs.sparse, inputs.cardinalities, strict=True)
    ]
    features += [DenseFeature(name) for name in inputs.dense]
    torch.manual_seed(SEED)
    model = MMOE(
        features,
        task_types=["classification"] * len(TASKS),
        n_expert=size.num_experts,
        expert_params={"dims": size.hidden, "dropout": 0.0},
        tower_params_list=[{"dims": size.tower, "dropout": 0.0}] * len(TASKS),
    )
    expected = len(inputs.sparse) * size.embedding_dim + len(inputs.dense)
    assert model.input_dims == expected, (model.input_dims, expected)
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
def timed_round(step: StepFn, order: BatchOrder, warmup: int, seconds: float) -> list[float]:
    """Untimed warm-up steps, then steps until ``seconds`` have passed; each step's duration."""
    for _ in range(warmup):
        step(order.next())
    gc.collect()
    durations = []
    start = time.perf_counter()
    deadline = start + seconds
    now = start
    while now < deadline:
        batch = order.next()
        step(batch)
        before, now = now, time.perf_counter()
        durations.append(now - before)
    return durations


def run_size(inputs: Inputs, size: Size, args: argparse.Namespace) -> SizeResult:
    """Alternate the two libraries for ``args.rounds`` rounds on one model size."""
    runners = {"polytask": polytask_step(inputs, size), "rechub": rechub_step(inputs, size)}
    orders = {name: BatchOrder(len(inputs), args.batch_size, SEED) for name in runners}
    results = {
        name: LibraryResult(batch_size=args.batch_size, parameters=count_parameters(model))
        for name, (_, model) in runners.items()
    }
    per_round = args.seconds / args.rounds
    for round_index in range(args.rounds):
        for name, (step, _) in runners.items():
            durations = timed_round(step, orders[name], args.warmup, per_round)
            rate = args.batch_size * len(durations) / sum(durations)
            result = results[name]
            result.rows_per_second.append(rate)
            result.steps.append(len(durations))
            result.median_step_seconds.append(statistics.median(durations))
            print(
                f"  {size.name:<6} round {round_index + 1}/{args.rounds} {name:<9}"
                f"{rate:>12,.0f} rows/s ({len(durations)} steps, median step "
                f"{1000 * statistics.median(durations):.2f} ms)",
                flush=True,
            )
    return SizeResult(size, results["polytask"], results["rechub"])


# ---------------------------------------------------------------------------------- report
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "polytask": metadata.version("polytask"),
        "torch_rechub": metadata.version("torch-rechub"),
        "load_average_1m_start": os.getloadavg()[0],
    }


def describe_models() -> list[str]:
    return [
        "polytask: fused expert bank / gates / towers (batched matmuls), one embedding table,",
        "  no BatchNorm, ReLU, dropout 0, logits + masked BCE-with-logits, equal weighting.",
        "torch-rechub: per expert, gate and tower an MLP = [Linear -> BatchNorm1d -> activation",
        "  -> Dropout] per layer (BatchNorm is always on in its MLP); gates are MLP(dims=[E],",
        "  activation=softmax), so Linear -> BatchNorm1d -> Softmax; towers add Linear(., 1),",
        "  then sigmoid + BCELoss. Passed dropout=0 (also its default); other defaults kept:",
        "  ReLU, per-column nn.Embedding with N(0, 1e-4) init.",
    ]


def fmt_rate(result: LibraryResult) -> str:
    rates = result.rows_per_second
    return f"{result.median:>9,.0f} [{min(rates):,.0f}-{max(rates):,.0f}]"


def print_report(
    results: list[SizeResult],
    machine: dict[str, Any],
    data: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    print()
    print(
        f"machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs "
        f"({machine['usable_cpus']} usable), torch {machine['torch']} with "
        f"threads={machine['torch_threads']}, python {machine['python']}"
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
    print(
        f"data: {data['source']}; {data['train_rows']:,} training rows, "
        f"{data['categorical']} categorical columns, {data['numeric_inputs']} numeric inputs"
    )
    print(
        f"batch size {args.batch_size}, Adam lr {LR}, {args.rounds} alternating rounds of "
        f"{args.seconds / args.rounds:.1f} s per library and size, {args.warmup} warm-up steps "
        "per round; rows/s = median [min-max] over rounds"
    )
    for line in describe_models():
        print(line)
    print()
    header = (
        f"{'size':<6} {'experts x hidden':<17} {'tower':<5} {'params p / r':>19}  "
        f"{'polytask rows/s':>26}  {'rechub rows/s':>26}  {'ratio p/r':>9}  {'step ratio':>10}"
    )
    print(header)
    print("-" * len(header))
    for result in results:
        size = result.size
        params = f"{result.polytask.parameters:,} / {result.rechub.parameters:,}"
        print(
            f"{size.name:<6} {f'{size.num_experts} x {size.hidden}':<17} {size.tower!s:<5} "
            f"{params:>19}  {fmt_rate(result.polytask):>26}  {fmt_rate(result.rechub):>26}  "
            f"{result.ratio:>8.2f}x  {result.ratio_median_step:>9.2f}x"
        )
    print(
        "ratio p/r = median rows/s of polytask / of torch-rechub; step ratio = the same from "
        "each library's median step time\n(median over rounds of each round's median step), "
        "which other processes on the machine disturb less"
    )


def to_json(
    results: list[SizeResult],
    machine: dict[str, Any],
    data: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    return {
        "benchmark": "mmoe_training_throughput",
        "machine": machine,
        "data": data,
        "settings": {
            "batch_size": args.batch_size,
            "lr": LR,
            "seconds_per_library_and_size": args.seconds,
            "rounds": args.rounds,
            "warmup_steps_per_round": args.warmup,
            "threads": torch.get_num_threads(),
            "tasks": TASKS,
        },
        "models": describe_models(),
        "results": [
            {
                "size": asdict(r.size),
                "polytask": r.polytask.summary(),
                "rechub": r.rechub.summary(),
                "ratio_polytask_over_rechub": r.ratio,
                "ratio_at_median_step": r.ratio_median_step,
            }
            for r in results
        ],
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
        "--seconds", type=float, default=10.0, help="timed seconds per library and size"
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternations per size")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before each round")
    parser.add_argument(
        "--sizes", nargs="+", choices=[s.name for s in SIZES], default=[s.name for s in SIZES]
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own default for this machine)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    if args.batch_size < 2 or args.rounds < 1 or args.seconds <= 0 or args.warmup < 0:
        parser.error("need --batch-size >= 2, --rounds >= 1, --seconds > 0, --warmup >= 0")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    source = "polytask's shipped sample" if args.sample else str(args.data.resolve())
    print(f"loading and preprocessing {source} ...", flush=True)
    started = time.perf_counter()
    inputs = load_inputs(args.data, args.sample)
    data = {
        "source": source,
        "train_rows": len(inputs),
        "categorical": len(inputs.sparse),
        "numeric_inputs": len(inputs.dense),
        "preprocess_seconds": time.perf_counter() - started,
    }
    print(f"  done in {data['preprocess_seconds']:.1f} s", flush=True)
    results = [run_size(inputs, size, args) for size in SIZES if size.name in args.sizes]
    machine["load_average_1m_end"] = os.getloadavg()[0]
    print_report(results, machine, data, args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(results, machine, data, args), indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
