"""``polytask transfer``: a TaskWeb-style pairwise transfer map (Kim et al., "TaskWeb:
Selecting Better Source Tasks for Multi-task NLP", EMNLP 2023), for a few tasks.

For every task t, a run on t alone (``alone_<t>``). For every ordered pair (s, t), the
shared part of the run on s (its encoder and sharing architecture) initialises a run on t,
which is then trained (fine-tuned) with the same spec and budget as t alone; its tower
starts fresh. The transfer from s to t is the relative change of t's primary metric on the
test rows (validation rows where there is no test split), signed so that positive is
better:

    transfer[s][t] = 100 * sign * (m(s -> t) - m(t alone)) / |m(t alone)|.

Cost: T runs alone and T (T - 1) fine-tunes; ``transfer.json`` states the seconds of each
fine-tune, their mean (the cost per pair) and the total.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from polytask.artifacts import run_dir as rd
from polytask.artifacts.atomic import write_atomic
from polytask.artifacts.ownership import OutputFolder
from polytask.config import RunSpec
from polytask.errors import PolytaskError
from polytask.relations.study import subset_spec
from polytask.tasks import HIGHER_IS_BETTER
from polytask.train.trainer import fit

Say = Callable[[str], None]

TRANSFER = "transfer.json"
TRANSFER_PLOT = "transfer.png"
SHARED_PREFIXES = ("encoders.", "arch.")


def shared_weights(run: Path) -> dict[str, Any]:
    """A run's encoder and sharing-architecture tensors (not its towers)."""
    weights = load_file(str(run / rd.WEIGHTS))
    return {k: v for k, v in weights.items() if k.startswith(SHARED_PREFIXES)}


def run_transfer_map(
    spec: RunSpec,
    out: str | Path,
    *,
    overwrite: bool = False,
    say: Callable[[str], None] = lambda _: None,
) -> Path:
    """Build the map of the module docstring into ``out``; its path."""
    names = [task.name for task in spec.tasks]
    if len(names) < 2:
        raise PolytaskError("a transfer map needs at least two tasks")
    say(f"{len(names)} runs alone and {len(names) * (len(names) - 1)} fine-tunes")
    out = Path(out).resolve()
    files = {TRANSFER, TRANSFER_PLOT, rd.CONFIG}
    output = OutputFolder(out, "transfer_map", files, overwrite=overwrite, holds_folders=True)
    with output.building() as partial:
        _train_pairs(spec, partial, names, say)
    return out


def _train_pairs(spec: RunSpec, partial: Path, names: list[str], say: Say) -> None:
    """Each task alone, then each fine-tuned from every other's shared part; the report."""
    started = time.perf_counter()
    alone: dict[str, Path] = {}
    for name in names:
        say(f"training {name} alone")
        alone[name] = fit(subset_spec(spec, [name]), partial / f"alone_{name}", progress=False)
    pairs: dict[str, dict[str, Any]] = {source: {} for source in names}
    for source in names:
        start = shared_weights(alone[source])
        for target in names:
            if target == source:
                continue
            say(f"fine-tuning {source} -> {target}")
            run = fit(
                subset_spec(spec, [target]),
                partial / f"{source}_to_{target}",
                progress=False,
                initial_weights=start,
            )
            pairs[source][target] = {"run": run}
    report = build_report(spec, partial, alone, pairs, time.perf_counter() - started)
    rd.save_config(partial, spec)
    rd.save_json(partial, TRANSFER, report)
    write_atomic(partial / TRANSFER_PLOT, lambda temp: plot_transfer(report, temp))


def build_report(
    spec: RunSpec,
    folder: Path,
    alone: dict[str, Path],
    pairs: dict[str, dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    names = [task.name for task in spec.tasks]
    first = next(iter(alone.values()))
    split = "test" if "test" in rd.load_json(first, rd.FINAL_METRICS) else "valid"
    metric = {task.name: (task.metrics or ["loss"])[0] for task in spec.tasks}
    baseline = {
        name: rd.load_json(alone[name], rd.FINAL_METRICS)[split][name][metric[name]]
        for name in names
    }
    matrix: list[list[float | None]] = []
    costs = []
    for source in names:
        row: list[float | None] = []
        for target in names:
            if target == source:
                row.append(None)
                continue
            run = pairs[source][target]["run"]
            value = rd.load_json(run, rd.FINAL_METRICS)[split][target][metric[target]]
            sign = 1.0 if HIGHER_IS_BETTER[metric[target]] else -1.0
            reference = baseline[target]
            gain = 100.0 * sign * (value - reference) / abs(reference) if reference else None
            cost = rd.load_json(run, rd.SUMMARY)["train_seconds"]
            costs.append(cost)
            pairs[source][target] = {
                "run": str(run.relative_to(folder)),
                "metric": value,
                "transfer_percent": gain,
                "seconds": cost,
            }
            row.append(gain)
        matrix.append(row)
    return {
        "tasks": names,
        "split": split,
        "metric": metric,
        "alone": baseline,
        "transfer_percent": matrix,
        "pairs": pairs,
        "cost": {
            "fine_tunes": len(costs),
            "seconds_per_pair": sum(costs) / len(costs),
            "seconds_alone": {
                name: rd.load_json(alone[name], rd.SUMMARY)["train_seconds"] for name in names
            },
            "seconds_total": seconds,
        },
        "definition": "100 * sign * (m(source -> target) - m(target alone)) / |m(target alone)|",
    }


def plot_transfer(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = report["tasks"]
    matrix = np.array(
        [[np.nan if v is None else v for v in row] for row in report["transfer_percent"]]
    )
    limit = np.nanmax(np.abs(matrix)) if np.isfinite(matrix).any() else 1.0
    size = max(3.0, 0.4 * len(names) + 1.5)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="RdBu", vmin=-limit, vmax=limit)
    axis.set_xticks(range(len(names)), names, rotation=90)
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("target")
    axis.set_ylabel("source")
    axis.set_title(f"transfer, % change of the target's {report['split']} metric")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
