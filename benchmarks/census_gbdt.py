"""A gradient-boosted model per task on Census-Income (group 1, or 2 with ``--group 2``), the
run's own split and preprocessing: the row docs/benchmarks.md adds to the MMoE-paper tables.

``polytask baseline``'s fit (:func:`polytask.baselines.gbdt.fit_tasks`: scikit-learn
HistGradientBoosting, or LightGBM where installed; learning rate 0.1, at most 500 iterations
of 31 leaves, early-stopped on the validation rows) on ``examples/census_income.yaml`` with
``train.seed`` set to each seed, as ``benchmarks/census_paper.py`` sets it for the networks.
Test metrics per seed, and each task's best and mean test AUC over the seeds.

Run: ``python benchmarks/census_gbdt.py --seeds 3 --data ../shared/datasets/census_income_kdd
--json docs/results/census_gbdt.json`` (``--group 2 --json docs/results/census_gbdt_g2.json``
for group 2: college education and never married, as ``census_paper.py --group 2``)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--group", type=int, choices=(1, 2), default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import machine_info

    from polytask.baselines.gbdt import fit_tasks, resolve_library
    from polytask.config import load_spec, parse_spec, with_overrides
    from polytask.data.datasets.census import GROUPS

    spec = load_spec(ROOT / "examples" / "census_income.yaml")
    options = {**spec.data.dataset_options, "group": args.group}
    if args.data is not None:
        options["path"] = str(args.data.resolve())
    spec = with_overrides(spec, data={"dataset_options": options})
    if args.group == 2:  # the MMoE paper's group 2: college education and never married
        raw = spec.model_dump(mode="json", exclude_unset=True)
        raw["tasks"] = [{"name": t, "kind": "binary", "target": t} for t in GROUPS[2]]
        spec = parse_spec(raw)
    library = resolve_library("auto")
    runs: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        final, summary = fit_tasks(with_overrides(spec, train={"seed": seed}), library)
        runs.append({"seed": seed, "test": final["test"], "seconds": summary["train_seconds"]})
        aucs = {task: metrics["auc"] for task, metrics in final["test"].items()}
        print(f"seed {seed}: {aucs} ({summary['train_seconds']:.0f} s)", flush=True)
        if args.json:  # after every seed: a long run stopped early keeps what it measured
            write(args.json, runs, library, machine_info("scikit-learn", "lightgbm"))


def write(path: Path, runs: list[dict[str, Any]], library: str, machine: dict[str, Any]) -> None:
    tasks = list(runs[0]["test"])
    summary_auc = {
        task: {
            "best": max(run["test"][task]["auc"] for run in runs),
            "mean": statistics.mean(run["test"][task]["auc"] for run in runs),
        }
        for task in tasks
    }
    payload = {
        "command": "python benchmarks/census_gbdt.py " + " ".join(sys.argv[1:]),
        "machine": machine,
        "library": library,
        "seeds_run": len(runs),
        "runs": runs,
        "test_auc": summary_auc,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
