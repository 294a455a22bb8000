"""Task-incremental continual learning: polytask's strategies beside Avalanche 0.6's.

Split-MNIST (5 tasks: digits 0/1, 2/3, ...), Permuted-MNIST (10 tasks: the digits under 10
fixed pixel permutations, the first the identity) and Split-Fashion-MNIST (5 tasks of class
pairs), one head per task, from the idx files in ../shared/datasets. Both libraries train the
same MLP (van de Ven et al.'s protocol: fully connected ReLU layers of 400 units, here
two, and one linear output layer per task), with Adam (lr 0.001), batches of 128, the same
epochs per experience and the same seeds, the optimizer's state kept from one experience to
the next on both sides (Avalanche's default; polytask's ``optimizer_state: kept``; the
``<strategy>_fresh`` rows run polytask alone with a fresh optimizer per experience), on the
same rows: polytask reads them through its
``digits`` dataset, and this script hands the very same arrays to Avalanche (in its own
environment, ``make avalanche-venv``) as an .npz. Avalanche runs as a subprocess
(benchmarks/avalanche_stream.py) and writes JSON back; every polytask run is followed by the
Avalanche run of the same strategy and seed, so the two alternate on the shared machine.

The metric matrices of both go through the same function (polytask.grow.metrics.summarise):
average accuracy after the last experience and backward transfer. Wall time is each run's
training plus evaluation after every experience (imports and data loading excluded on both
sides; polytask's includes encoding the rows, building every experience's run directory
and its evaluation, Avalanche's its evaluation stream). ``joint`` trains one model on every
task at once (polytask: one experience of a multi-task table; Avalanche: JointTraining).

    .venv/bin/python benchmarks/continual.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polytask.data.datasets.digits import load_digits
from polytask.grow.metrics import summarise
from polytask.grow.stream import stream

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"
AVALANCHE = ROOT / ".venv-avalanche" / "bin" / "python"
RESULTS = ROOT / "docs" / "results" / "continual.json"
PIXELS = [f"p{i}" for i in range(784)]

# Rows per task are a seeded subset of the original splits (the machine is shared; see
# docs/benchmarks.md for the budget): van de Ven et al. train 2000 iterations of 128 per task.
BENCHMARKS: dict[str, dict[str, Any]] = {
    "split_mnist": {
        "source": "mnist",
        "tasks": [{"classes": [a, a + 1]} for a in range(0, 10, 2)],
        "train_rows": 3000,
        "test_rows": 1000,
        "epochs": 2,
    },
    "permuted_mnist": {
        "source": "mnist",
        "tasks": [{"permutation": None if i == 0 else i} for i in range(10)],
        "train_rows": 2500,
        "test_rows": 1000,
        "epochs": 2,
    },
    "split_fashion": {
        "source": "fashion_mnist",
        "tasks": [{"classes": [a, a + 1]} for a in range(0, 10, 2)],
        "train_rows": 3000,
        "test_rows": 1000,
        "epochs": 2,
    },
}
HIDDEN = [400, 400]
BATCH, LR = 128, 1e-3
# Avalanche 0.6 keeps the optimizer's state from one experience to the next (its
# reset_optimizer_state defaults to False): Adam's moments and step count carry over, and a
# parameter no loss reaches takes no step. polytask's stream does the same with
# optimizer_state: kept, which every row runs but the "<strategy>_fresh" ones: those start
# each experience's optimizer anew (polytask's default), to show what keeping it changes.
KEPT, FRESH = "kept", "fresh"
# Hyperparameters, the same on both sides where the definitions coincide (docs/benchmarks.md):
# EWC: polytask's penalty is (lambda / 2) F d^2, Avalanche's lambda F d^2, and both estimate F
# as the mean squared mini-batch gradient with the training batch size.
EWC_LAMBDA = 1e5  # van de Ven et al.'s value for Split MNIST task-IL
SI_C, SI_XI = 10.0, 0.1  # van de Ven et al.'s c and damping
PER_TASK = 200  # rows kept per task (van de Ven et al.: 100 per class)
STRATEGIES: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    "naive": ({}, {}),
    "ewc": (
        {"lambda": EWC_LAMBDA, "fisher_batch": BATCH, "fisher_rows": None},
        {"ewc_lambda": EWC_LAMBDA / 2, "mode": "online", "decay_factor": 1.0},
    ),
    "si": ({"c": SI_C, "xi": SI_XI}, {"si_lambda": 2 * SI_C, "eps": SI_XI}),
    "lwf": ({"alpha": 1.0, "temperature": 2.0}, {"alpha": 1.0, "temperature": 2.0}),
    "replay": ({"rows_per_task": PER_TASK}, {"rows_per_task": PER_TASK}),
    # the same, the joint batch's objective the mean over its rows (weigh: rows), as
    # Avalanche's replay plugin computes it
    "replay_rows": ({"rows_per_task": PER_TASK, "weigh": "rows"}, None),
    # project: stepped, as Avalanche's plugins write the projected gradient only into the
    # parameters that have one (old heads never move); the *_all rows project over every
    # parameter, as the papers define it
    "agem": (
        {"rows_per_task": PER_TASK, "sample": 256, "project": "stepped"},
        {"patterns_per_exp": PER_TASK, "sample_size": 256},
    ),
    "agem_all": ({"rows_per_task": PER_TASK, "sample": 256, "project": "all"}, None),
    "gem": (
        {"rows_per_task": PER_TASK, "margin": 0.5, "project": "stepped"},
        {"patterns_per_exp": PER_TASK, "memory_strength": 0.5},
    ),
    "gem_all": ({"rows_per_task": PER_TASK, "margin": 0.5, "project": "all"}, None),
    "joint": ({}, {}),
    "expand": ({"experts": 1}, None),
    # the same with each new bottom warm-started from the previous task's (init: copy)
    "expand_copy": ({"experts": 1, "init": "copy"}, None),
    "packnet": ({"prune": 0.5, "retrain_epochs": 1}, None),
}
# Rows of the table that run a registered strategy under another label (other options)
REGISTRY_NAME = {
    "expand_copy": "expand",
    "replay_rows": "replay",
    "agem_all": "agem",
    "gem_all": "gem",
}
# The strategies whose steps move parameters an earlier experience trained, each again with
# a fresh optimizer per experience (polytask only)
for _name in ("naive", "ewc", "si", "lwf", "replay", "agem", "gem", "packnet"):
    STRATEGIES[f"{_name}_{FRESH}"] = (STRATEGIES[_name][0], None)
    REGISTRY_NAME[f"{_name}_{FRESH}"] = _name


def optimizer_state(strategy: str) -> str:
    """How the optimizer's state goes from one experience to the next in a row's runs."""
    return FRESH if strategy.endswith(f"_{FRESH}") else KEPT


# Published task-incremental accuracies (%, mean of 20 runs), quoted into the results so that
# docs/benchmarks.md names them with their source. Their protocol trains far longer than this
# benchmark (full MNIST, 2000 iterations of 128 per Split-MNIST task), so they bound what the
# methods reach rather than match these runs.
PUBLISHED = {
    "source": "G. M. van de Ven and A. S. Tolias, Three scenarios for continual learning, "
    "arXiv:1904.07734 (2019), Task-IL columns of its Split MNIST and Permuted MNIST tables: "
    "the preprint of the study published as van de Ven, Tuytelaars & Tolias, Three types of "
    "incremental learning, Nature Machine Intelligence 4 (2022)",
    "model": "MLP of two hidden ReLU layers (400 units for Split MNIST, 1000 for Permuted "
    "MNIST), one output layer per task (Task-IL), Adam lr 0.001, batch 128",
    "split_mnist": {"naive": 87.19, "ewc": 98.64, "online_ewc": 99.12, "si": 99.09, "lwf": 99.57},
    "permuted_mnist": {
        "naive": 81.79,
        "ewc": 94.74,
        "online_ewc": 95.96,
        "si": 94.75,
        "lwf": 69.84,
    },
}


def task_options(bench: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": str(DATA / bench["source"]),
        "source": bench["source"],
        "train_rows": bench["train_rows"],
        "test_rows": bench["test_rows"],
        **entry,
    }


def stream_spec(name: str, strategy: str, seed: int) -> dict[str, Any]:
    bench = BENCHMARKS[name]
    options, _ = STRATEGIES[strategy]
    train = {
        "epochs": bench["epochs"],
        "batch_size": BATCH,
        "lr": LR,
        "seed": seed,
        "threads": 1,
        "figures": False,
        "early_stopping": {"patience": None},
    }
    model = {
        "arch": "shared_bottom",
        "hidden": HIDDEN,
        "tower_hidden": [],
        "encoder": {"name": "numeric"},
    }
    names = [f"t{i}" for i in range(len(bench["tasks"]))]
    if strategy == "joint":  # every task at once: one experience of a multi-task table
        tasks = [{"name": n, **entry} for n, entry in zip(names, bench["tasks"], strict=True)]
        options_all = task_options(bench, {"tasks": tasks})
        experiences = [
            {
                "name": "all tasks",
                "tasks": [{"name": n, "kind": "multiclass", "target": n} for n in names],
                "data": {"dataset": "digits", "dataset_options": options_all, "scaling": "none"},
            }
        ]
        strategy, options = "naive", {}
    else:
        experiences = [
            {
                "name": n,
                "tasks": [{"name": n, "kind": "multiclass", "target": "label"}],
                "data": {
                    "dataset": "digits",
                    "dataset_options": task_options(bench, entry),
                    "scaling": "none",
                },
            }
            for n, entry in zip(names, bench["tasks"], strict=True)
        ]
    return {
        "model": model,
        "experiences": experiences,
        "strategy": {"name": REGISTRY_NAME.get(strategy, strategy), "options": options},
        "train": train,
        "random_baseline": True,
        "optimizer_state": optimizer_state(strategy),
    }


def write_arrays(name: str, path: Path) -> None:
    """The rows polytask reads, as Avalanche's tensors (classes renumbered 0..C-1 per task)."""
    bench = BENCHMARKS[name]
    arrays = {}
    for index, entry in enumerate(bench["tasks"]):
        train, _, test = load_digits(**task_options(bench, entry))
        for split, frame in (("train", train), ("test", test)):
            labels = frame["label"].to_numpy()
            classes = np.unique(labels)
            arrays[f"x_{split}_{index}"] = frame[PIXELS].to_numpy(np.float32)
            arrays[f"y_{split}_{index}"] = np.searchsorted(classes, labels).astype(np.int64)
    np.savez(path, **arrays)


def run_polytask(name: str, strategy: str, seed: int, folder: Path) -> dict[str, Any]:
    spec = stream_spec(name, strategy, seed)
    result = stream(spec, folder / f"{name}-{strategy}-{seed}", overwrite=True)
    return {
        "matrix": result["matrix"],
        "average": result["average"],
        "bwt": result["bwt"],
        "fwt": result["fwt"],
        "forgetting": result["forgetting"],
        "seconds": result["seconds"]["total"],
        "train_seconds": result["seconds"]["train"],
        "parameters": _parameters(folder / f"{name}-{strategy}-{seed}"),
        "optimizer_state": optimizer_state(strategy),
        "strategy": spec["strategy"],  # the registered strategy and its options, as run
    }


def _parameters(folder: Path) -> int | None:
    """The last run's parameter count (a stream's folder is its last experience's run)."""
    return json.loads((folder / "summary.json").read_text()).get("parameters")


def run_avalanche(name: str, strategy: str, seed: int, arrays: Path, folder: Path):
    _, options = STRATEGIES[strategy]
    if options is None or not AVALANCHE.is_file():
        return None
    out = folder / f"avalanche-{name}-{strategy}-{seed}.json"
    command = [
        str(AVALANCHE),  # at the parent's niceness, as the polytask runs
        str(ROOT / "benchmarks" / "avalanche_stream.py"),
        "--data",
        str(arrays),
        "--strategy",
        strategy,
        "--options",
        json.dumps(options),
        "--seed",
        str(seed),
        "--epochs",
        str(BENCHMARKS[name]["epochs"]),
        "--batch",
        str(BATCH),
        "--lr",
        str(LR),
        "--hidden",
        ",".join(map(str, HIDDEN)),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    raw = json.loads(out.read_text())
    matrix = raw["matrix"]
    if strategy == "joint":
        metrics = {"average": float(np.mean(matrix[-1])), "bwt": None, "forgetting": None}
    else:
        experience_of = list(range(len(matrix)))
        metrics = summarise(matrix, experience_of)
    return {"matrix": matrix, "seconds": raw["seconds"], **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--data", type=Path, default=None, help="folder of mnist/ and fashion_mnist/"
    )
    parser.add_argument(
        "--summarise", action="store_true", help="summarise --out again, print its tables, stop"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=[],
        help="with --summarise: first add the runs of these result files (other invocations, "
        "e.g. one benchmark per process) to --out, replacing runs of the same benchmark, "
        "strategy and seed",
    )
    args = parser.parse_args()
    if args.summarise:  # the summary recomputed from the runs (and saved), as tables
        report = json.loads(args.out.read_text())
        report["runs"] = merge_runs(report, args.merge)
        report["summary"] = summarise_runs(report["runs"])
        report["protocol"]["optimizer_state"] = optimizer_states(report["runs"])
        report["published"] = PUBLISHED
        args.out.write_text(json.dumps(report, indent=1))
        print(markdown(report))
        return
    if args.data is not None:
        global DATA
        DATA = args.data
    torch.set_num_threads(1)
    # a rerun of some benchmarks, strategies or seeds replaces those runs and keeps the others
    runs: list[dict[str, Any]] = []
    if args.out.is_file():
        chosen = set(args.benchmarks), set(args.strategies), set(args.seeds)
        runs = [
            r
            for r in json.loads(args.out.read_text())["runs"]
            if not (
                r["benchmark"] in chosen[0]
                and r["strategy"] in chosen[1]
                and r["seed"] in chosen[2]
            )
        ]
    report = {
        "command": "python benchmarks/continual.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread per "
        "process, 2 cores shared with other jobs, no GPU",
        "torch": {"polytask": torch.__version__, "avalanche": "2.14.1 (CUDA build, on CPU)"},
        "protocol": {
            "model": f"MLP {HIDDEN} ReLU + one linear head per task",
            "optimizer": f"Adam lr {LR}, batch {BATCH}",
            "benchmarks": BENCHMARKS,
            "strategies": {k: {"polytask": v[0], "avalanche": v[1]} for k, v in STRATEGIES.items()},
        },
        "published": PUBLISHED,
        "runs": runs,
    }
    with tempfile.TemporaryDirectory(prefix="continual-") as temp:
        folder = Path(temp)
        stream(stream_spec("split_mnist", "naive", 0), folder / "warm-up", overwrite=True)
        for name in args.benchmarks:
            arrays = folder / f"{name}.npz"
            write_arrays(name, arrays)
            for seed in args.seeds:
                for strategy in args.strategies:
                    started = time.perf_counter()
                    mine = run_polytask(name, strategy, seed, folder)
                    theirs = run_avalanche(name, strategy, seed, arrays, folder)
                    runs.append(
                        {
                            "benchmark": name,
                            "strategy": strategy,
                            "seed": seed,
                            "polytask": mine,
                            "avalanche": theirs,
                        }
                    )
                    report["summary"] = summarise_runs(runs)
                    report["protocol"]["optimizer_state"] = optimizer_states(runs)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(report, indent=1))
                    print(
                        f"{name} {strategy} seed {seed}: polytask {mine['average']:.4f} "
                        f"({mine['seconds']:.1f} s), avalanche "
                        f"{_show(theirs)} [{time.perf_counter() - started:.0f} s]",
                        flush=True,
                    )


def merge_runs(report: dict[str, Any], others: list[Path]) -> list[dict[str, Any]]:
    """The report's runs and those of ``others`` (later files win), each invocation's command
    kept in ``report["commands"]``. A run made without Avalanche (no .venv-avalanche) keeps
    the Avalanche result of the run it replaces, marked as not made back to back with it
    (``paired`` False: its seconds enter no time ratio)."""
    merged = {_key(run): run for run in report["runs"]}
    commands = report.setdefault("commands", [report["command"]])
    for path in others:
        other = json.loads(path.read_text())
        for run in other["runs"]:
            earlier = merged.get(_key(run))
            if run["avalanche"] is None and earlier is not None and earlier["avalanche"]:
                run = {**run, "avalanche": earlier["avalanche"], "paired": False}
            merged[_key(run)] = run
        commands += [c for c in other.get("commands", [other["command"]]) if c not in commands]
    return list(merged.values())


def optimizer_states(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """How each side's optimizer state went from one experience to the next, over ``runs``
    (polytask's runs made before the option existed started each experience anew)."""
    states = {r["polytask"].get("optimizer_state", "fresh") for r in runs}
    return {
        "polytask": sorted(states),
        "avalanche": "kept (reset_optimizer_state False, Avalanche 0.6's default)",
    }


def _key(run: dict[str, Any]) -> tuple[str, str, int]:
    return run["benchmark"], run["strategy"], run["seed"]


def _show(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    if "error" in result:
        return f"error: {result['error']}"
    return f"{result['average']:.4f} ({result['seconds']:.1f} s)"


def summarise_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds per benchmark, strategy and library; the time ratio is the
    geometric mean over seeds of polytask's seconds over Avalanche's in the same seed (the
    two run back to back, so a change in the shared machine's load hits both; runs whose
    Avalanche result was kept from an earlier invocation are left out of it)."""
    out: dict[str, Any] = {}
    keys = sorted({(r["benchmark"], r["strategy"]) for r in runs})
    for bench, strategy in keys:
        group = [r for r in runs if r["benchmark"] == bench and r["strategy"] == strategy]
        entry: dict[str, Any] = {"seeds": len(group)}
        for library in ("polytask", "avalanche"):
            results = [r[library] for r in group if r[library] and "error" not in r[library]]
            if not results:
                continue
            entry[library] = {
                metric: _stats([res[metric] for res in results if res.get(metric) is not None])
                for metric in ("average", "bwt", "seconds")
            }
        pairs = [
            r["polytask"]["seconds"] / r["avalanche"]["seconds"]
            for r in group
            if r["avalanche"] and "error" not in r["avalanche"] and r.get("paired", True)
        ]
        if pairs:  # each polytask run is timed right before its Avalanche run: pair them
            entry["time_ratio"] = float(np.exp(np.mean(np.log(pairs))))
            entry["time_ratio_range"] = [float(min(pairs)), float(max(pairs))]
        out.setdefault(bench, {})[strategy] = entry
    return out


def markdown(report: dict[str, Any]) -> str:
    """One table per benchmark: mean +- std over seeds of average accuracy, BWT and seconds,
    polytask beside Avalanche, and the ratio of their mean times."""

    def cell(entry: dict[str, Any] | None, metric: str, digits: int) -> str:
        if not entry or entry[metric]["mean"] is None:
            return "-"
        return f"{entry[metric]['mean']:.{digits}f} ± {entry[metric]['std']:.{digits}f}"

    lines = []
    for bench, strategies in report["summary"].items():
        lines += [
            f"\n{bench}\n",
            "| strategy | seeds | avg acc polytask | avg acc Avalanche | BWT polytask | "
            "BWT Avalanche | seconds polytask | seconds Avalanche | time ratio (range) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for strategy in STRATEGIES:
            entry = strategies.get(strategy)
            if entry is None:
                continue
            mine, theirs = entry.get("polytask"), entry.get("avalanche")
            ratio = "-"
            if "time_ratio" in entry:
                low, high = entry["time_ratio_range"]
                ratio = f"{entry['time_ratio']:.2f} ({low:.2f}-{high:.2f})"
            lines.append(
                f"| {strategy} | {entry['seeds']} | {cell(mine, 'average', 4)} | "
                f"{cell(theirs, 'average', 4)} | {cell(mine, 'bwt', 4)} | {cell(theirs, 'bwt', 4)}"
                f" | {cell(mine, 'seconds', 1)} | {cell(theirs, 'seconds', 1)} | {ratio} |"
            )
    return "\n".join(lines)


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None}
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
    }


if __name__ == "__main__":
    main()
