"""The MMoE paper's synthetic study (Ma et al., KDD 2018, section 3.2 and figure 4).

Two regression tasks whose weight vectors have cosine ``p``; shared-bottom, OMoE and MMoE
trained on each ``p`` in (0.5, 0.9, 1.0) over several seeds (the task functions fixed, the
rows, label noise and initialisation drawn anew per seed); test loss (mean squared error
of the standardised labels, averaged over both tasks) against correlation, as a table and a
plot. Expected, as in the paper: MMoE barely moves with correlation; OMoE matches it at 1.0
and degrades at lower correlation; both beat shared-bottom.

    python benchmarks/mmoe_synthetic.py --seeds 5 --plot docs/results/mmoe_synthetic.png
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from polytask.artifacts import run_dir as rd
from polytask.config import parse_spec
from polytask.train.trainer import fit

CORRELATIONS = (0.5, 0.9, 1.0)
# Experts 8 x [16] as in the paper; the shared bottom is widened to about the same parameter
# count (100*113 + 113 vs 8 * (100*16 + 16) weights), as the paper does.
ARCHS: dict[str, dict[str, Any]] = {
    "shared_bottom": {"arch": "shared_bottom", "hidden": [113]},
    "omoe": {"arch": "omoe", "hidden": [16], "num_experts": 8},
    "mmoe": {"arch": "mmoe", "hidden": [16], "num_experts": 8},
}


def spec_for(arch: str, correlation: float, seed: int, epochs: int) -> dict[str, Any]:
    return {
        "data": {
            "dataset": "mmoe_synthetic",
            "dataset_options": {"correlation": correlation, "seed": seed},
        },
        "tasks": [
            {"name": "y1", "kind": "regression", "target": "y1"},
            {"name": "y2", "kind": "regression", "target": "y2"},
        ],
        "model": {**ARCHS[arch], "tower_hidden": [8]},
        "train": {
            "epochs": epochs,
            "batch_size": 256,
            "lr": 3e-3,
            "seed": seed,
            "early_stopping": {"patience": None, "monitor": "loss"},
            "threads": 1,
        },
    }


def run_one(arch: str, correlation: float, seed: int, epochs: int, scratch: Path) -> float:
    out = scratch / f"{arch}-{correlation}-{seed}"
    run = fit(parse_spec(spec_for(arch, correlation, seed, epochs)), out, progress=False)
    test = rd.load_json(run, rd.FINAL_METRICS)["test"]
    last_epoch = (run / rd.EPOCH_LOG).read_text().splitlines()[-1]
    train_loss = float(np.mean(list(json.loads(last_epoch)["train_task_loss"].values())))
    return float(np.mean([test[task]["loss"] for task in ("y1", "y2")])), train_loss


def plot(panels: dict[str, dict[str, dict[float, list[float]]]], path: Path) -> None:
    """One panel per measure (title -> arch -> correlation -> values), mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, (title, results) in zip(axes[0], panels.items(), strict=True):
        for arch, by_corr in results.items():
            xs = sorted(by_corr)
            means = [np.mean(by_corr[c]) for c in xs]
            stds = [np.std(by_corr[c]) for c in xs]
            axis.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=arch)
        axis.set_xlabel("task correlation (cosine of weight vectors)")
        axis.set_ylabel("MSE (standardised labels)")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def summary(measures: dict[str, dict[str, dict[str, list[float]]]]) -> dict[str, Any]:
    """Mean and (population) standard deviation over seeds, per measure, model and
    correlation: the figures of the tables printed above and of docs/benchmarks.md."""
    return {
        measure: {
            arch: {
                corr: {"mean": float(np.mean(values)), "std": float(np.std(values))}
                for corr, values in by_corr.items()
            }
            for arch, by_corr in by_arch.items()
        }
        for measure, by_arch in measures.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (1 thread each)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--summarise", type=Path, help="add the mean / std summary to this results JSON"
    )
    args = parser.parse_args()
    if args.summarise is not None:
        payload = json.loads(args.summarise.read_text())
        payload["summary"] = summary({k: payload[k] for k in ("test_mse", "train_loss")})
        args.summarise.write_text(json.dumps(payload, indent=2) + "\n")
        return
    results: dict[str, dict[float, list[float]]] = {a: {c: [] for c in CORRELATIONS} for a in ARCHS}
    train_results: dict[str, dict[float, list[float]]] = {
        a: {c: [] for c in CORRELATIONS} for a in ARCHS
    }
    started = time.perf_counter()
    cases = [(a, c, s) for s in range(args.seeds) for c in CORRELATIONS for a in ARCHS]
    with tempfile.TemporaryDirectory() as scratch, ProcessPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(run_one, a, c, s, args.epochs, Path(scratch)) for a, c, s in cases]
        for (arch, correlation, seed), job in zip(cases, jobs, strict=True):
            loss, train_loss = job.result()
            results[arch][correlation].append(loss)
            train_results[arch][correlation].append(train_loss)
            print(
                f"{arch:>14} p={correlation} seed {seed}: test MSE {loss:.4f}, "
                f"final training loss {train_loss:.4f}",
                flush=True,
            )
    print(
        f"\nTest MSE, mean ± std over {args.seeds} seeds ({time.perf_counter() - started:.0f} s)\n"
    )
    print("| model | " + " | ".join(f"p = {c}" for c in CORRELATIONS) + " |")
    print("|---|" + "---|" * len(CORRELATIONS))
    for arch, by_corr in results.items():
        cells = [f"{np.mean(by_corr[c]):.4f} ± {np.std(by_corr[c]):.4f}" for c in CORRELATIONS]
        print(f"| {arch} | " + " | ".join(cells) + " |")
    print("\nFinal-epoch training loss (the paper's figure 4 plots training loss), mean ± std\n")
    print("| model | " + " | ".join(f"p = {c}" for c in CORRELATIONS) + " |")
    print("|---|" + "---|" * len(CORRELATIONS))
    for arch, by_corr in train_results.items():
        cells = [f"{np.mean(by_corr[c]):.4f} ± {np.std(by_corr[c]):.4f}" for c in CORRELATIONS]
        print(f"| {arch} | " + " | ".join(cells) + " |")
    if args.plot:
        plot({"test loss": results, "final training loss": train_results}, args.plot)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "test_mse": {a: {str(c): v for c, v in r.items()} for a, r in results.items()},
            "train_loss": {a: {str(c): v for c, v in r.items()} for a, r in train_results.items()},
        }
        payload["summary"] = summary(payload)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
