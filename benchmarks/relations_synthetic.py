"""Ground truth for task grouping: 8 regression tasks in 3 known clusters.

Data: ``polytask.data.datasets.clustered`` (clusters of 3, 3 and 2 tasks; inside a cluster
the weight vectors have cosine ``within^2``; across clusters, by default, the cluster
centres are the vertices of a regular simplex over the same inputs, pairwise cosine -1/2;
with ``--disjoint-inputs`` each cluster reads its own block of the ``--dim`` inputs, so the
clusters compete for the shared bottom's ``--width``; with ``--cluster-sines`` each cluster
has its own sine terms). Per seed (new task functions, rows and initialisation),
``polytask group --groups 3`` (:func:`polytask.relations.study.run_group_study`): the
all-in-one run records relations (every 10 steps, default rows), the groups are chosen from
its mean affinity, trained, and compared with all-in-one and one network per task.
Recovered: the chosen groups equal the true clusters exactly.

    python benchmarks/relations_synthetic.py --seeds 5 --cluster-sines --disjoint-inputs \
        --dim 300 --width 6 --rows 3000 \
        --json docs/results/relations_synthetic.json \
        --figure docs/results/relations_synthetic.png
    python benchmarks/relations_synthetic.py --summarise docs/results/relations_synthetic.json

docs/benchmarks.md lists the other configurations run (``relations_synthetic_*.json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _summary import add_summarise_option, spread, summarised, write_json

from polytask.artifacts import run_dir as rd
from polytask.config import parse_spec
from polytask.data.datasets.clustered import true_groups
from polytask.relations.study import run_group_study

SIZES = (3, 3, 2)
NAMES = [f"y{t}" for t in range(sum(SIZES))]


def spec_for(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data": {
            "dataset": "clustered_tasks",
            "dataset_options": {
                "sizes": list(SIZES),
                "rows": args.rows,
                "valid_rows": 1000,
                "test_rows": 2000,
                "within": args.within,
                "dim": args.dim,
                "cluster_sines": args.cluster_sines,
                "disjoint_inputs": args.disjoint_inputs,
                "seed": seed,
            },
        },
        "tasks": [{"name": n, "kind": "regression", "target": n} for n in NAMES],
        "model": {"arch": "shared_bottom", "hidden": [args.width], "tower_hidden": [8]},
        "train": {
            "epochs": 40,
            "batch_size": 128,
            "lr": 3e-3,
            "seed": seed,
            "threads": 1,
            "early_stopping": {"patience": 8, "monitor": "loss"},
            "relations": {"every": 10},
        },
    }


def plot(affinities: list[np.ndarray], seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(affinities), figsize=(3.1 * len(affinities), 3.0))
    for seed, axis, matrix in zip(seeds, np.atleast_1d(axes), affinities, strict=True):
        off = matrix.copy()
        np.fill_diagonal(off, np.nan)
        limit = np.nanmax(np.abs(off))
        axis.imshow(off, cmap="RdBu", vmin=-limit, vmax=limit)
        axis.set_title(f"seed {seed}: affinity Z[i->j]", fontsize=8)
        axis.set_xticks(range(len(NAMES)), NAMES, fontsize=6)
        axis.set_yticks(range(len(NAMES)), NAMES, fontsize=6)
    figure.suptitle("mean lookahead affinity (diagonal blanked); clusters y0-2, y3-5, y6-7")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def summarise(payload: dict[str, Any]) -> dict[str, Any]:
    """What the docs quote, from the per-seed results: seeds with the true clusters found,
    seeds where grouped beats both all-in-one and one network per task (Delta-m > 0), and
    each of them alone, and Delta-m over seeds."""
    seeds = payload["per_seed"]
    cells = [r["delta_m_test"] for r in seeds]
    return {
        "seeds": len(seeds),
        "recovered": sum(r["recovered"] for r in seeds),
        "grouped_wins": sum(c["grouped"] > max(c["all_in_one"], 0.0) for c in cells),
        "grouped_beats_all_in_one": sum(c["grouped"] > c["all_in_one"] for c in cells),
        "grouped_beats_one_per_task": sum(c["grouped"] > 0.0 for c in cells),
        "delta_m_test": {
            name: spread([r["delta_m_test"][name] for r in seeds])
            for name in ("all_in_one", "grouped")
        },
        "mean_affinity_within": {
            "min": min(r["mean_affinity_within"] for r in seeds),
            "max": max(r["mean_affinity_within"] for r in seeds),
        },
        "mean_affinity_across": {
            "min": min(r["mean_affinity_across"] for r in seeds),
            "max": max(r["mean_affinity_across"] for r in seeds),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds run: first-seed .. first-seed + seeds - 1"
    )
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--within", type=float, default=0.995)
    parser.add_argument("--dim", type=int, default=100, help="number of inputs")
    parser.add_argument("--cluster-sines", action="store_true")
    parser.add_argument(
        "--disjoint-inputs",
        action="store_true",
        help="each cluster reads its own block of the inputs (clusters compete for width)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--figure", type=Path)
    add_summarise_option(parser)
    args = parser.parse_args()
    if summarised(args, summarise):
        return
    started = time.perf_counter()
    truth = sorted(sorted(g) for g in true_groups(SIZES, NAMES))
    results = []
    affinities = []
    scratch = Path(tempfile.mkdtemp())
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        study = run_group_study(parse_spec(spec_for(seed, args)), scratch / f"s{seed}", 3)
        manifest = rd.load_json(study, "group.json")
        found = sorted(sorted(g) for g in manifest["report"]["groups"])
        test = manifest["report"]["splits"]["test"]
        relations = rd.load_json(study / "all_in_one", "relations.json")
        affinity = np.array(manifest["affinity"], dtype=float)
        labels = np.repeat(np.arange(len(SIZES)), SIZES)
        same = labels[:, None] == labels[None, :]
        off = ~np.eye(len(NAMES), dtype=bool)
        results.append(
            {
                "seed": seed,
                "groups": manifest["report"]["groups"],
                "recovered": found == truth,
                "delta_m_test": test["delta_m"],
                "delta_m_valid": manifest["report"]["splits"]["valid"]["delta_m"],
                "mean_affinity_within": float(affinity[same & off].mean()),
                "mean_affinity_across": float(affinity[~same].mean()),
                "affinity": manifest["affinity"],
                "gradient_cosine": relations["mean"]["gradient_cosine"],
                "relations_seconds": relations["seconds"],
                "per_task_test_rmse": {
                    t: {m: cells[m]["rmse"] for m in ("single", "all_in_one", "grouped")}
                    for t, cells in test["per_task"].items()
                },
            }
        )
        affinities.append(affinity)
        print(
            json.dumps(
                {k: results[-1][k] for k in ("seed", "groups", "recovered", "delta_m_test")}
            ),
            flush=True,
        )
        shutil.rmtree(study, ignore_errors=True)
    summary = summarise({"per_seed": results})
    print(
        f"\ntrue clusters recovered exactly in {summary['recovered']} of {summary['seeds']} seeds"
    )
    for name in ("all_in_one", "grouped"):
        cell = summary["delta_m_test"][name]
        print(f"Delta-m vs one per task, {name}: {cell['mean']:+.2f} ± {cell['std']:.2f} %")
    print(
        f"grouped beats both all-in-one and one-per-task in {summary['grouped_wins']} of "
        f"{summary['seeds']} seeds"
    )
    elapsed = time.perf_counter() - started
    if args.figure:
        plot(affinities, seeds, args.figure)
    if args.json:
        from _machine import machine_info

        payload = {
            "command": "python benchmarks/relations_synthetic.py "
            + " ".join(
                f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
                for k, v in vars(args).items()
                if v not in (None, False) and k not in ("json", "figure", "summarise")
            ),
            "spec": spec_for(0, args),
            "summary": summary,
            "per_seed": results,
            "seconds": elapsed,
            "machine": machine_info(),
        }
        write_json(args.json, payload)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
