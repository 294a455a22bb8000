"""Census-Income: a new task on a frozen group-1 MMoE by LoRA adapters, beside ``grow``'s
``expand``.

Per seed, in one process: train the group-1 MMoE of examples/census_income.yaml (income,
never married; 8 experts of [16], towers [8]); then add group 2's ``college`` task two ways,
each with the same budget (20 epochs at most, patience 4 on the validation AUC, batch 4096,
lr 0.01, one torch thread):

* ``grow`` with ``expand`` (8 new experts, a gate and a tower; every old parameter fixed);
* a run with ``model.adapters`` on the MMoE run: LoRA (rank 4) on its experts' layer for the
  new task, a new gate and tower; every weight of the MMoE fixed. The old tasks keep being
  served by the MMoE run itself, untouched.

Reported per seed: the new task's test AUC both ways, trainable parameters, training seconds
(the trainer's epoch loops).

    python benchmarks/census_adapters.py --seeds 0 1 2

Reads ../shared/datasets/census_income_kdd; writes docs/results/census_adapters.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, shared_datasets
from _summary import write_json
from census_grow import fit_base, grow_spec, test_outputs, train_seconds

from polytask.artifacts import run_dir as rd
from polytask.config import parse_spec
from polytask.data.datasets.census import load_census_income
from polytask.grow import grow
from polytask.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "census_adapters.json"
BUDGET = {"epochs": 20, "patience": 4, "batch": 4096, "lr": 0.01, "experts": 8, "rank": 4}


def adapter_spec(data: Path, base: Path, seed: int) -> dict[str, Any]:
    return {
        "tasks": [{"name": "college", "kind": "binary", "target": "college"}],
        "data": {"dataset": "census_income", "dataset_options": {"path": str(data), "group": 2}},
        "model": {
            "adapters": {
                "method": "lora",
                "backbone": str(base),
                "targets": ["arch.levels.0.experts.0"],
                "options": {"rank": BUDGET["rank"], "alpha": 2.0 * BUDGET["rank"]},
            }
        },
        "train": {
            "epochs": BUDGET["epochs"],
            "batch_size": BUDGET["batch"],
            "lr": BUDGET["lr"],
            "seed": seed,
            "threads": 1,
            "figures": False,
            "early_stopping": {"patience": BUDGET["patience"], "monitor": "metric"},
        },
    }


def trainable(run: Path) -> int:
    summary = rd.load_json(run, rd.SUMMARY)
    return int(summary.get("trainable_parameters", summary["parameters"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=shared_datasets(ROOT) / "census_income_kdd")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--summarise", action="store_true", help="only rewrite the summary")
    args = parser.parse_args()
    if args.summarise:
        done = json.loads(args.json.read_text())
        done["summary"] = summary(done["runs"])
        write_json(args.json, done, indent=1)
        return
    torch.set_num_threads(1)
    data = args.data.resolve()
    _, _, test_all = load_census_income(str(data), group=None)
    runs: list[dict[str, Any]] = []
    report: dict[str, Any] = {
        "command": "python benchmarks/census_adapters.py --seeds " + " ".join(map(str, args.seeds)),
        "machine": machine_info(),
        "budget": BUDGET,
        "load_average_1m_start": os.getloadavg()[0],
        "runs": runs,
    }
    with tempfile.TemporaryDirectory(prefix="census-adapters-") as temp:
        folder = Path(temp)
        for seed in args.seeds:
            base = fit_base(data, seed, folder)
            grown = folder / f"grown-{seed}"
            options = [BUDGET[k] for k in ("experts", "epochs", "patience", "batch", "lr")]
            grow(base, grow_spec(data, seed, *options), grown)
            adapted = fit(
                parse_spec(adapter_spec(data, base, seed)), folder / f"lora-{seed}", progress=False
            )
            grown_auc, _ = test_outputs(grown, test_all)
            lora_auc, _ = test_outputs(adapted, test_all)
            entry = {
                "seed": seed,
                "college_auc": {"expand": grown_auc["college"], "lora": lora_auc["college"]},
                "trainable_parameters": {"expand": trainable(grown), "lora": trainable(adapted)},
                "train_seconds": {"expand": train_seconds(grown), "lora": train_seconds(adapted)},
                "epochs_run": {
                    "expand": rd.load_json(grown, rd.SUMMARY)["epochs_run"],
                    "lora": rd.load_json(adapted, rd.SUMMARY)["epochs_run"],
                },
            }
            runs.append(entry)
            print(json.dumps(entry), flush=True)
            report["summary"] = summary(runs)
            write_json(args.json, report, indent=1)
    report["load_average_1m_end"] = os.getloadavg()[0]
    write_json(args.json, report, indent=1)


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": len(runs)}
    for way in ("expand", "lora"):
        aucs = [r["college_auc"][way] for r in runs]
        out[way] = {
            "college_auc_mean": float(np.mean(aucs)),
            "college_auc_std": float(np.std(aucs)),
            "trainable_parameters": runs[0]["trainable_parameters"][way],
            "train_seconds_median": float(np.median([r["train_seconds"][way] for r in runs])),
            "train_seconds_fastest": float(np.min([r["train_seconds"][way] for r in runs])),
        }
    return out


if __name__ == "__main__":
    main()
