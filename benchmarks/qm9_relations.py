"""QM9: one model per target, all twelve in one model, the TAG-chosen groups, and a
gradient-boosted model per target, over seeds; and the relation matrices.

Data: ``polytask.data.datasets.qm9`` (58 features from each molecule's geometry, 12
targets) from ``../shared/datasets/qm9/``; a random subsample of ``--rows`` molecules per
seed, split 80 / 10 / 10 (the seed draws both). Per seed, ``polytask group --groups K``
(:func:`polytask.relations.study.run_group_study`: all-in-one with relations recorded, one
network per target, the chosen groups) and ``polytask baseline`` (scikit-learn's
HistGradientBoosting; LightGBM is not installed here) on the same spec.

    python benchmarks/qm9_relations.py --seeds 3 --rows 15000 --groups 3 \
        --data ../shared/datasets/qm9/qm9_targets_xyz.csv.gz \
        --json docs/results/qm9_relations.json --figure docs/results/qm9_relations.png
    python benchmarks/qm9_relations.py --summarise docs/results/qm9_relations.json
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
from polytask.baselines.gbdt import train_baseline
from polytask.config import parse_spec
from polytask.data.datasets.qm9 import TARGETS
from polytask.data.preprocess import Preprocessor
from polytask.inference.evaluation import delta_m
from polytask.relations.study import run_group_study

MODELS = ("single", "all_in_one", "grouped", "gbdt")
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "qm9"


def spec_for(path: Path, rows: int, seed: int, epochs: int) -> dict[str, Any]:
    return {
        "data": {
            "dataset": "qm9",
            "dataset_options": {"path": str(path), "rows": rows, "seed": seed},
        },
        "tasks": [{"name": t, "kind": "regression", "target": t} for t in TARGETS],
        "model": {"arch": "mmoe", "hidden": [64], "num_experts": 8, "tower_hidden": [32]},
        "train": {
            "epochs": epochs,
            "batch_size": 256,
            "lr": 1e-3,
            "seed": seed,
            "threads": 1,
            "early_stopping": {"patience": 5, "monitor": "metric"},
            "relations": {"every": 10},
        },
    }


def summarise(payload: dict[str, Any]) -> dict[str, Any]:
    """What the docs quote, from the per-seed results: test RMSE and Delta-m (against one
    network per target) over seeds per model, the model with the lowest mean RMSE per target,
    and the range of the relations' cost against the all-in-one run's training time."""
    seeds = payload["per_seed"]
    rmse = {
        target: {
            model: spread([r["test"][model][target]["rmse"] for r in seeds]) for model in MODELS
        }
        for target in TARGETS
    }
    best = {target: min(MODELS, key=lambda m: rmse[target][m]["mean"]) for target in TARGETS}
    relations = [r["relations_seconds"] for r in seeds]
    all_in_one = [r["train_seconds"]["all_in_one"] for r in seeds]
    return {
        "seeds": len(seeds),
        "test_rmse": rmse,
        "delta_m": {model: spread([r["delta_m"][model] for r in seeds]) for model in MODELS},
        "best_model": best,
        "targets_won": {model: sum(m == model for m in best.values()) for model in MODELS},
        "relations_seconds": {"min": min(relations), "max": max(relations)},
        "all_in_one_train_seconds": {"min": min(all_in_one), "max": max(all_in_one)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "qm9_targets_xyz.csv.gz")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=15_000)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the studies here")
    parser.add_argument("--redraw", type=Path, help="only draw --figure from this JSON")
    add_summarise_option(parser)
    args = parser.parse_args()
    if summarised(args, summarise):
        return
    if args.redraw:
        plot(json.loads(args.redraw.read_text()), args.figure)
        return
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp())
    root = args.keep or scratch
    per_seed = []
    for seed in range(args.seeds):
        spec = parse_spec(spec_for(args.data.resolve(), args.rows, seed, args.epochs))
        study = run_group_study(
            spec, root / f"study-{seed}", args.groups, overwrite=True, say=print
        )
        gbdt = train_baseline(spec, root / f"gbdt-{seed}", library="sklearn", overwrite=True)
        manifest = rd.load_json(study, "group.json")
        tasks = Preprocessor(rd.load_json(study / "all_in_one", rd.PREPROCESSOR)).build_tasks(
            spec.tasks
        )
        test = manifest["report"]["splits"]["test"]
        single = {t: test["per_task"][t]["single"] for t in TARGETS}
        boosted = rd.load_json(gbdt, rd.FINAL_METRICS)["test"]
        rows = {
            "single": single,
            "all_in_one": {t: test["per_task"][t]["all_in_one"] for t in TARGETS},
            "grouped": {t: test["per_task"][t]["grouped"] for t in TARGETS},
            "gbdt": boosted,
        }
        result = {
            "seed": seed,
            "groups": manifest["report"]["groups"],
            "serving": manifest["routes"],
            "test": rows,
            "delta_m": {name: delta_m(values, single, tasks) for name, values in rows.items()},
            "relations": rd.load_json(study / "all_in_one", "relations.json")["mean"],
            "relations_seconds": rd.load_json(study / "all_in_one", "relations.json")["seconds"],
            "train_seconds": {
                name: rd.load_json(study / name, rd.SUMMARY)["train_seconds"]
                for name in ("all_in_one", "single")
            },
            "gbdt_seconds": rd.load_json(gbdt, rd.SUMMARY)["train_seconds"],
        }
        per_seed.append(result)
        print(json.dumps({k: result[k] for k in ("seed", "groups", "delta_m")}), flush=True)
    summary = summarise({"per_seed": per_seed})
    print(f"\nTest RMSE per target, mean ± std over {args.seeds} seeds\n")
    print("| target | " + " | ".join(("one per target", "all in one", "grouped", "GBDT")) + " |")
    print("|---|---|---|---|---|")
    for target in TARGETS:
        cells = summary["test_rmse"][target]
        print(
            f"| {target} | "
            + " | ".join(f"{cells[m]['mean']:.4f} ± {cells[m]['std']:.4f}" for m in MODELS)
            + " |"
        )
    deltas = summary["delta_m"]
    print(
        "| Delta-m vs one per target | "
        + " | ".join(f"{deltas[m]['mean']:+.2f} ± {deltas[m]['std']:.2f} %" for m in MODELS)
        + " |"
    )
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f} s in all")
    if args.json:
        from _machine import machine_info

        payload = {
            "command": f"python benchmarks/qm9_relations.py --seeds {args.seeds} --rows "
            f"{args.rows} --groups {args.groups} --epochs {args.epochs}",
            "spec": spec_for(
                Path("../shared/datasets/qm9/qm9_targets_xyz.csv.gz"), args.rows, 0, args.epochs
            ),
            "summary": summary,
            "per_seed": per_seed,
            "seconds": elapsed,
            "machine": machine_info(),
        }
        write_json(args.json, payload)
        if args.figure:
            plot(payload, args.figure)
    if args.keep is None:
        shutil.rmtree(scratch, ignore_errors=True)


def plot(payload: dict[str, Any], path: Path) -> None:
    """Mean affinity and gradient cosine of each seed's all-in-one run, as heat maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = payload["per_seed"]
    figure, axes = plt.subplots(2, len(seeds), figsize=(4.2 * len(seeds), 8), squeeze=False)
    for col, result in enumerate(seeds):
        for row, (key, title) in enumerate(
            (("affinity", "lookahead affinity Z[i->j]"), ("gradient_cosine", "gradient cosine"))
        ):
            matrix = np.array(result["relations"][key], dtype=float)
            shown = matrix.copy()
            if key == "affinity":
                np.fill_diagonal(shown, np.nan)  # self-affinity dwarfs the pairs
            limit = np.nanmax(np.abs(shown))
            axis = axes[row, col]
            image = axis.imshow(shown, cmap="RdBu", vmin=-limit, vmax=limit)
            axis.set_xticks(range(len(TARGETS)), TARGETS, rotation=90, fontsize=7)
            axis.set_yticks(range(len(TARGETS)), TARGETS, fontsize=7)
            axis.set_title(f"seed {result['seed']}: {title}", fontsize=9)
            figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
