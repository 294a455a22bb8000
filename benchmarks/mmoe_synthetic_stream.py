"""The MMoE paper's synthetic study under the paper's protocol (Ma et al., KDD 2018, sec. 3.2).

Two regression tasks with weight cosine p (``polytask.data.datasets.synthetic.mmoe_family``:
d = 100, c = 1, m = 10 sine terms with alpha_j, beta_j ~ N(0, 1), label noise N(0, 0.01)).
Unlike ``benchmarks/mmoe_synthetic.py`` (a fixed 10k-row table scored by its training loss),
every training step draws a fresh batch from the generator (the paper repeats "until enough
data", so there is no fixed training set), and the loss is measured on held-out rows drawn
once per seed. Each seed draws new task functions, rows and initialisation.

Models as in the paper: 8 experts x [16] for OMoE and MMoE, a [113] bottom for shared-bottom
(about the same parameter count), towers [8]; inputs fed to the experts as they are (an
identity encoder). Training uses polytask's own model and training step (``build_model``,
``train_step`` with equal weighting) and Adam. The learning rate is chosen per model and
correlation from {1e-4, 1e-3, 1e-2} on selection seeds (1000+), by the mean held-out loss at
the end; the reported seeds (0..seeds-1) then run at that rate.

    python benchmarks/mmoe_synthetic_stream.py --seeds 30 --select-seeds 2 --steps 5000 \
        --jobs 1 --cache /tmp/mmoe_stream_runs.jsonl \
        --json docs/results/mmoe_synthetic_stream.json \
        --plot docs/results/mmoe_synthetic_stream.png
    python benchmarks/mmoe_synthetic_stream.py --summarise docs/results/mmoe_synthetic_stream.json
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _summary import add_summarise_option, summarised, write_json
from torch import nn

from polytask.balance import BALANCERS
from polytask.config import ModelSpec, TaskKind, TaskSpec
from polytask.data.datasets.synthetic import mmoe_family
from polytask.features import Features
from polytask.model import build_model
from polytask.tasks import Task
from polytask.train.step import train_step

CORRELATIONS = (0.5, 0.9, 1.0)
LEARNING_RATES = (1e-4, 1e-3, 1e-2)
ARCHS: dict[str, dict[str, Any]] = {
    "shared_bottom": {"arch": "shared_bottom", "hidden": [113]},
    "omoe": {"arch": "omoe", "hidden": [16], "num_experts": 8},
    "mmoe": {"arch": "mmoe", "hidden": [16], "num_experts": 8},
}
DIM = 100
HELD_OUT = 2_000


class Identity(nn.Module):
    """The inputs as they are: the paper feeds x to the experts directly."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.out_dim = width

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        del categorical
        return numeric


def features(x: np.ndarray) -> Features:
    rows = len(x)
    return Features(torch.zeros(rows, 0, dtype=torch.int64), torch.from_numpy(x).float())


def run_one(
    arch: str, correlation: float, seed: int, lr: float, steps: int, batch: int, every: int
) -> dict[str, Any]:
    """Train one model on fresh batches; held-out MSE (mean of the two tasks) along the way."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    family = mmoe_family(correlation, DIM, seed=seed)
    held_rng = np.random.default_rng([seed, 1])
    train_rng = np.random.default_rng([seed, 2])
    x_held, y_held = family.sample(HELD_OUT, held_rng)
    held = features(x_held)
    tasks = [
        Task(TaskSpec(name=f"y{t + 1}", kind=TaskKind.regression, target=f"y{t + 1}"), 1)
        for t in range(2)
    ]
    spec = ModelSpec(**ARCHS[arch], tower_hidden=[8])
    model = build_model(spec, [], DIM, [1, 1], ["y1", "y2"], encoder_factory=lambda: Identity(DIM))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    balancer = BALANCERS.get("equal")(2)
    weights = torch.ones(2)
    curve: list[tuple[int, float]] = []

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            outputs = model(held).logits
        model.train()
        predictions = torch.cat(outputs, dim=1).numpy()
        return float(np.mean((predictions - y_held) ** 2))

    started = time.perf_counter()
    for step in range(steps):
        if step % every == 0:
            curve.append((step, held_out_loss()))
        x, y = family.sample(batch, train_rng)
        labels = {"y1": torch.from_numpy(y[:, 0]).float(), "y2": torch.from_numpy(y[:, 1]).float()}
        train_step(model, features(x), labels, tasks, balancer, optimizer, weights, step)
    curve.append((steps, held_out_loss()))
    return {
        "arch": arch,
        "correlation": correlation,
        "seed": seed,
        "lr": lr,
        "curve": curve,
        "final": curve[-1][1],
        "seconds": time.perf_counter() - started,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def case_key(arch: str, correlation: float, seed: int, lr: float, args: argparse.Namespace):
    return (arch, float(correlation), int(seed), float(lr), args.steps, args.batch, args.every)


def load_cache(path: Path | None, args: argparse.Namespace) -> dict[tuple, dict[str, Any]]:
    """Runs finished earlier (one JSON line each), so that an interrupted study continues."""
    if path is None or not path.is_file():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if (row["steps"], row["batch"], row["every"]) == (args.steps, args.batch, args.every):
            done[case_key(row["arch"], row["correlation"], row["seed"], row["lr"], args)] = row
    return done


def run_all(cases: list[tuple], args: argparse.Namespace) -> list[dict[str, Any]]:
    done = load_cache(args.cache, args)
    todo = [case for case in cases if case_key(*case, args) not in done]
    with ProcessPoolExecutor(args.jobs) as pool:
        jobs = {
            case: pool.submit(run_one, *case, args.steps, args.batch, args.every) for case in todo
        }
        results = []
        for case in cases:
            key = case_key(*case, args)
            if key in done:
                results.append(done[key])
                continue
            result = jobs[case].result()
            if args.cache is not None:
                row = {**result, "steps": args.steps, "batch": args.batch, "every": args.every}
                with args.cache.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
            results.append(result)
            print(
                f"{result['arch']:>14} p={result['correlation']} seed {result['seed']} "
                f"lr {result['lr']:g}: held-out MSE {result['final']:.4f} "
                f"({result['seconds']:.0f} s)",
                flush=True,
            )
    return results


def plot(final: list[dict[str, Any]], path: Path) -> None:
    """Held-out loss against steps per correlation: median over seeds, 25-75 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(CORRELATIONS), figsize=(14, 3.8), sharey=True)
    for axis, correlation in zip(axes, CORRELATIONS, strict=True):
        for arch in ARCHS:
            runs = [r for r in final if r["arch"] == arch and r["correlation"] == correlation]
            steps = [s for s, _ in runs[0]["curve"]]
            losses = np.array([[v for _, v in r["curve"]] for r in runs])
            median = np.median(losses, axis=0)
            low, high = np.percentile(losses, [25, 75], axis=0)
            line = axis.plot(steps, median, label=f"{arch} (lr {runs[0]['lr']:g})")[0]
            axis.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        axis.set_yscale("log")
        axis.set_title(f"correlation {correlation}")
        axis.set_xlabel("training steps (fresh batch each)")
        axis.legend(fontsize=8)
    axes[0].set_ylabel("held-out MSE (median, 25-75 %)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


PAIRS = (("mmoe", "omoe"), ("mmoe", "shared_bottom"), ("omoe", "shared_bottom"))


def summarise(payload: dict[str, Any]) -> dict[str, Any]:
    """What the docs quote beyond the per-model spread: in how many seeds the first model of
    each pair ends with the lower held-out loss than the second (same seed: same task
    functions, batches and held-out rows)."""
    final = {
        (r["arch"], str(float(r["correlation"])), r["seed"]): r["curve"][-1][1]
        for r in payload["curves"]
    }
    seeds = sorted({seed for _, _, seed in final})
    wins = {
        f"{first} < {second}": {
            str(c): sum(final[first, str(c), s] < final[second, str(c), s] for s in seeds)
            for c in CORRELATIONS
        }
        for first, second in PAIRS
    }
    return {"seeds": len(seeds), "wins": wins}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--select-seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--every", type=int, default=200, help="held-out loss every N steps")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--cache", type=Path, help="JSON lines of finished runs (resumable)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="run only seeds from here (fill a cache)"
    )
    parser.add_argument(
        "--cached-only", action="store_true", help="report only the seeds finished in --cache"
    )
    add_summarise_option(parser)
    args = parser.parse_args()
    if summarised(args, summarise, indent=None):
        return
    started = time.perf_counter()
    selection_cases = [
        (a, c, 1000 + s, lr)
        for s in range(args.select_seeds)
        for c in CORRELATIONS
        for a in ARCHS
        for lr in LEARNING_RATES
    ]
    selection = run_all(selection_cases, args)
    chosen: dict[str, dict[float, float]] = {a: {} for a in ARCHS}
    for arch in ARCHS:
        for correlation in CORRELATIONS:
            means = {
                lr: np.mean(
                    [
                        r["final"]
                        for r in selection
                        if r["arch"] == arch and r["correlation"] == correlation and r["lr"] == lr
                    ]
                )
                for lr in LEARNING_RATES
            }
            chosen[arch][correlation] = min(means, key=lambda lr: means[lr])
    print("chosen learning rates:", chosen, flush=True)
    final_cases = [
        (a, c, s, chosen[a][c])
        for s in range(args.first_seed, args.seeds)
        for c in CORRELATIONS
        for a in ARCHS
    ]
    if args.cached_only:  # report the seeds whose every run is in the cache; run nothing
        done = load_cache(args.cache, args)
        complete = {
            s
            for s in range(args.first_seed, args.seeds)
            if all(
                case_key(a, c, s, chosen[a][c], args) in done for c in CORRELATIONS for a in ARCHS
            )
        }
        final_cases = [case for case in final_cases if case[2] in complete]
    final = run_all(final_cases, args)
    seeds = sorted({case[2] for case in final_cases})
    table: dict[str, dict[str, Any]] = {}
    print(f"\nHeld-out MSE at step {args.steps}, {len(seeds)} seeds\n")
    print("| model | " + " | ".join(f"p = {c}" for c in CORRELATIONS) + " |")
    print("|---|" + "---|" * len(CORRELATIONS))
    for arch in ARCHS:
        cells = []
        table[arch] = {}
        for correlation in CORRELATIONS:
            values = [
                r["final"] for r in final if r["arch"] == arch and r["correlation"] == correlation
            ]
            table[arch][str(correlation)] = {
                "lr": chosen[arch][correlation],
                "mean": float(np.mean(values)),
                "std": float(np.std(values)),
                "median": float(np.median(values)),
                "values": values,
            }
            cells.append(
                f"{np.mean(values):.4f} ± {np.std(values):.4f} "
                f"(median {np.median(values):.4f}, lr {chosen[arch][correlation]:g})"
            )
        print(f"| {arch} | " + " | ".join(cells) + " |")
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f} s in all")
    if args.plot:
        plot(final, args.plot)
    if args.json:
        from _machine import machine_info

        payload = {
            "command": "python benchmarks/mmoe_synthetic_stream.py "
            + " ".join(
                f"--{k.replace('_', '-')} {v}"
                for k, v in vars(args).items()
                if v is not None and k != "summarise"
            ),
            "protocol": {
                "dim": DIM,
                "num_sines": 10,
                "alpha_beta": "N(0, 1), drawn once per seed, shared by both tasks",
                "label_noise_std": 0.1,
                "held_out_rows": HELD_OUT,
                "steps": args.steps,
                "batch": args.batch,
                "selection_seeds": args.select_seeds,
                "reported_seeds": seeds,
                "learning_rates": LEARNING_RATES,
            },
            "chosen_lr": {a: {str(c): v for c, v in d.items()} for a, d in chosen.items()},
            "held_out_mse": table,
            "selection": [
                {k: r[k] for k in ("arch", "correlation", "seed", "lr", "final")} for r in selection
            ],
            "curves": [
                {k: r[k] for k in ("arch", "correlation", "seed", "lr", "curve")} for r in final
            ],
            "seconds": elapsed,
            "machine": machine_info(),
        }
        payload["summary"] = summarise(payload)
        write_json(args.json, payload, indent=None)


if __name__ == "__main__":
    main()
