"""Census-Income: grow a group-1 MMoE run (income, never married) with group 2's task
(education at least some college) by ``expand``, beside a model trained jointly on all three.

Per seed, in one process: train the group-1 MMoE of examples/census_income.yaml (the MMoE
paper's protocol: 8 experts of [16], towers [8]); grow it with ``college`` by expand (new
experts, gate and tower; every old parameter fixed); train the same MMoE on all three tasks
at once. Reported: the old tasks' test AUC before and after growing (and whether their
predicted probabilities are bit-identical on every test row), the new task's test AUC beside
the joint model's, and each run's training time (the trainer's epoch loops, as its
summary.json records them; the grow and the joint run alternate in one process).

    python benchmarks/census_grow.py --seeds 0 1 2 --json docs/results/census_grow.json

(growth's budget by default: at most 10 epochs, patience 3, batch 2048, lr 0.03 decayed towards 0
by a cosine schedule over the 10 epochs; 8 new experts)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from polytask.artifacts import run_dir as rd
from polytask.config import parse_spec
from polytask.data.datasets.census import load_census_income
from polytask.grow import grow
from polytask.inference.predictor import Predictor
from polytask.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]


def run_spec(data: Path, group: int | None, tasks: list[str], seed: int) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "examples" / "census_income.yaml").read_text())
    raw["data"]["dataset_options"] = {"path": str(data), "group": group}
    raw["tasks"] = [{"name": t, "kind": "binary", "target": t} for t in tasks]
    raw["train"]["seed"] = seed
    raw["train"]["threads"] = 1
    raw["train"]["figures"] = False
    return raw


def fit_base(data: Path, seed: int, folder: Path) -> Path:
    """The group-1 MMoE run (income, never married) that growth starts from."""
    spec = parse_spec(run_spec(data, 1, ["income", "never_married"], seed))
    return fit(spec, folder / f"base-{seed}", progress=False)


def grow_spec(
    data: Path,
    seed: int,
    experts: int,
    epochs: int,
    patience: int,
    batch: int,
    lr: float,
    schedule: str = "none",
) -> dict[str, Any]:
    return {
        "tasks": [{"name": "college", "kind": "binary", "target": "college"}],
        "data": {"dataset": "census_income", "dataset_options": {"path": str(data), "group": 2}},
        "strategy": {"name": "expand", "options": {"experts": experts}},
        "train": {
            "epochs": epochs,
            "batch_size": batch,
            "lr": lr,
            "schedule": {"name": schedule},
            "seed": seed,
            "threads": 1,
            "figures": False,
            "early_stopping": {"patience": patience, "monitor": "metric"},
        },
    }


def test_outputs(run: Path, frame) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Test AUC per task whose labels the frame holds, and every task's probabilities."""
    predictor = Predictor.load(run)
    report = predictor.evaluate(frame)
    features = predictor.preprocessor.transform(frame)
    with torch.no_grad():
        logits = predictor.model.eval()(features).logits
    outputs = {task.name: task.outputs(x) for task, x in zip(predictor.tasks, logits, strict=True)}
    return {name: m["auc"] for name, m in report["metrics"].items()}, outputs


def train_seconds(run: Path) -> float:
    return float(rd.load_json(run, rd.SUMMARY)["train_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/datasets/census_income_kdd"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--experts", type=int, default=8, help="new experts for the new task")
    parser.add_argument("--epochs", type=int, default=10, help="growth's epoch budget")
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2048, help="growth's batch size")
    parser.add_argument("--lr", type=float, default=0.03, help="growth's learning rate")
    parser.add_argument(
        "--schedule",
        choices=["none", "cosine"],
        default="cosine",
        help="growth's learning-rate schedule (cosine: decays towards 0 over --epochs)",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "docs/results/census_grow.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = args.data.resolve()
    _, _, test_g1 = load_census_income(str(data), group=1)
    _, _, test_all = load_census_income(str(data), group=None)
    runs = []
    with tempfile.TemporaryDirectory(prefix="census-grow-") as temp:
        folder = Path(temp)
        for seed in args.seeds:
            base = fit_base(data, seed, folder)
            grown = folder / f"grown-{seed}"
            spec = grow_spec(
                data,
                seed,
                args.experts,
                args.epochs,
                args.patience,
                args.batch,
                args.lr,
                args.schedule,
            )
            grow(base, spec, grown)
            joint = fit(
                parse_spec(run_spec(data, None, ["income", "never_married", "college"], seed)),
                folder / f"joint-{seed}",
                progress=False,
            )
            base_auc, base_out = test_outputs(base, test_g1)
            grown_auc, grown_out = test_outputs(grown, test_all)
            joint_auc, _ = test_outputs(joint, test_all)
            identical = {
                task: bool(torch.equal(base_out[task], grown_out[task]))
                for task in ("income", "never_married")
            }
            entry = {
                "seed": seed,
                "old_tasks": {
                    t: {
                        "before": base_auc[t],
                        "after": grown_auc[t],
                        "predictions_bit_identical": identical[t],
                    }
                    for t in ("income", "never_married")
                },
                "college": {
                    "grown": grown_auc["college"],
                    "joint": joint_auc["college"],
                    "difference": grown_auc["college"] - joint_auc["college"],
                },
                "train_seconds": {
                    "base": train_seconds(base),
                    "grow": train_seconds(grown),
                    "joint": train_seconds(joint),
                },
                "epochs_run": {
                    "grow": rd.load_json(grown, rd.SUMMARY)["epochs_run"],
                    "joint": rd.load_json(joint, rd.SUMMARY)["epochs_run"],
                },
                "parameters": {
                    "base": rd.load_json(base, rd.SUMMARY)["parameters"],
                    "grown": rd.load_json(grown, rd.SUMMARY)["parameters"],
                    "trained_in_growth": rd.load_json(grown, rd.SUMMARY)["trainable_parameters"],
                    "joint": rd.load_json(joint, rd.SUMMARY)["parameters"],
                },
            }
            entry["time_ratio"] = entry["train_seconds"]["grow"] / entry["train_seconds"]["joint"]
            runs.append(entry)
            print(json.dumps(entry), flush=True)
            write_report(args, runs)  # after every seed: an interrupted run keeps what it did


def write_report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    """The runs and their summary (means over seeds) into ``args.json``."""
    ratios = [r["time_ratio"] for r in runs]
    differences = [r["college"]["difference"] for r in runs]
    report = {
        "command": "python benchmarks/census_grow.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k not in ("data", "json")
        ),
        "machine": f"{platform.machine()}, 1 torch thread, 2 cores shared with other jobs, no GPU",
        "protocol": "MMoE paper (Ma et al. 2018): train 199,523 rows, test = half of the 99,762 "
        "test rows; examples/census_income.yaml for the base and joint runs",
        "growth": {
            "strategy": "expand",
            "experts": args.experts,
            "epochs": args.epochs,
            "patience": args.patience,
            "batch_size": args.batch,
            "lr": args.lr,
            "schedule": args.schedule,
        },
        "runs": runs,
        "summary": {
            "seeds": len(runs),
            "old_auc_unchanged": all(
                r["old_tasks"][t]["before"] == r["old_tasks"][t]["after"]
                and r["old_tasks"][t]["predictions_bit_identical"]
                for r in runs
                for t in ("income", "never_married")
            ),
            "college_grown_mean": float(np.mean([r["college"]["grown"] for r in runs])),
            "college_joint_mean": float(np.mean([r["college"]["joint"] for r in runs])),
            "college_difference_mean": float(np.mean(differences)),
            "college_difference_max_abs": float(np.max(np.abs(differences))),
            "time_ratio_mean": float(np.mean(ratios)),
            "time_ratio_max": float(np.max(ratios)),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["summary"]), flush=True)


if __name__ == "__main__":
    main()
