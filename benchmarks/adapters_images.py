"""Adapters on the eight-task image benchmark of ``merge_images.py``: full fine-tuning per
task, one LoRA per task (polytask and PEFT 0.21.2 side by side: same rank, same layers, same
budget), every polytask adapter method trained on all eight tasks at once (mixed batches),
and the LoRA adapters merged into one backbone.

The backbone is the merge benchmark's pretrained network (``merge_images.prepare``: a
LeNet-style CNN and a 128-unit shared bottom pretrained on 20-way MNIST + Fashion-MNIST,
frozen, with one fitted linear head per task: the "pretrained" row). Adapters sit on its two
linear layers (the CNN's last layer, 320 -> 64, and the bottom, 64 -> 128); the heads stay as
fitted, as in the merge benchmark's fine-tuning (``moves: shared``). Rows:

* full fine-tuning: ``polytask finetune`` per task (the CNN and the bottom move), as in the
  merge benchmark (4 epochs, lr 1e-3);
* LoRA per task, polytask: one run per task whose rows are that task's only;
* LoRA per task, PEFT: ``get_peft_model`` on the same network in a plain ``nn.Module``, one
  adapter per task trained in turn (``set_adapter``), same rank, layers, epochs, batch, lr;
* LoRA, LoRA-MoE (per-task and per-token routers), MTL-LoRA, hyper, bottleneck and
  AdapterFusion (its second stage on the bottleneck run): one polytask run on all eight
  tasks' rows, mixed in every batch;
* merged: the all-task LoRA run's updates merged into one backbone by task arithmetic and by
  TIES (``polytask merge-adapters``).

Each row: per-task and average test accuracy, the parameters trained for all eight tasks
(full fine-tuning: eight copies of the CNN and bottom; the merged rows train nothing after
the LoRA run), training seconds (the training loops, without evaluation, summed over a row's
runs). Adapter methods: rank 8 (MoE: 4 experts of rank 4),
4 epochs, batch 128, Adam lr 5e-3; ``--seeds`` training seeds.

    nice -n 10 python benchmarks/adapters_images.py --seeds 0 1 2

Reads ../shared/datasets (MNIST, Fashion-MNIST) and needs peft (``make bench``); writes
docs/results/adapters_images.json after every run (a partial run is kept and resumed).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info
from _peft import adapter_parameters, peft_model
from _summary import write_json
from merge_images import CONFIGS, TASKS, accuracies, finetune_all, prepare, train_spec

import polytask
from polytask.artifacts import run_dir as rd
from polytask.config import load_spec
from polytask.merge.adapters import merge_adapters
from polytask.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results" / "adapters_images.json"
TARGETS = ["encoders.0.linear", "arch.levels.0.experts.0"]
PEFT_TARGETS = ["encoder.linear", "bottom.0"]
RANK, ALPHA, EPOCHS, LR, BATCH = 8, 16.0, 4, 5e-3, 128
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "LoRA (rank 8)": ("lora", {"rank": RANK, "alpha": ALPHA}),
    "LoRA-MoE (4 experts of rank 4, per-task router)": (
        "lora_moe",
        {"experts": 4, "rank": 4, "alpha": ALPHA},
    ),
    "LoRA-MoE (4 experts of rank 4, per-token router, top 2)": (
        "lora_moe",
        {"experts": 4, "rank": 4, "alpha": ALPHA, "router": "token", "top_k": 2},
    ),
    "MTL-LoRA (rank 8, 3 up-projections)": ("mtl_lora", {"rank": RANK, "alpha": ALPHA}),
    "hyper (HyperFormer++, bottleneck 8)": ("hyper", {"size": 8}),
    "bottleneck (16)": ("bottleneck", {"size": 16}),
}
FUSION = "AdapterFusion (on the bottleneck run)"
MERGES = {
    "merged LoRA, task arithmetic (λ 0.3)": ("task_arithmetic", {"scaling": 0.3}),
    "merged LoRA, TIES (top 20 %, disjoint mean, λ 1)": (
        "ties",
        {"keep": 0.2, "aggregate": "mean", "scaling": 1.0},
    ),
}


def task_tables(work: Path, joint: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each task's rows of the joint tables (every task's label column present, the other
    tasks' empty): the data of a run of the eight-task base on one task."""
    folder = work / "adapter_tables"
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, str]] = {t: {} for t in TASKS}
    for split, path in joint.items():
        table = None
        for task in TASKS:
            target = folder / f"{task}_{split}.parquet"
            if not target.is_file():
                table = pd.read_parquet(path) if table is None else table
                table[table[f"y_{task}"].notna()].to_parquet(target, index=False)
            out[task][split] = str(target)
    return out


def task_specs() -> list[dict[str, Any]]:
    return [
        {"name": t, "kind": "multiclass", "target": f"y_{t}", "metrics": ["accuracy"]}
        for t in TASKS
    ]


def adapter_run(
    base: Path, data: dict[str, str], method: str, options: dict[str, Any], seed: int, out: Path
) -> Path:
    if rd.is_complete(out):
        return out
    spec = {
        "data": {**data, "scaling": "none"},
        "tasks": task_specs(),
        "model": {
            "adapters": {
                "method": method,
                "backbone": str(base),
                "targets": TARGETS,
                "options": options,
                "heads": "freeze",
            }
        },
        "train": train_spec(EPOCHS, LR, seed),
    }
    return fit(load_spec(spec), out, overwrite=True, progress=False)


def trainable(run: Path) -> int:
    """Parameters the run trained: all but those its spec kept fixed."""
    model = polytask.load(run).model
    fixed = set(rd.load_config(run).train.freeze)
    import fnmatch

    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in fixed)
    )


def record(per_task: dict[str, float], seconds: float, parameters: int) -> dict[str, Any]:
    return {
        "per_task": per_task,
        "average": float(np.mean([per_task[t] for t in TASKS])),
        "train_seconds": seconds,
        "trainable_parameters": parameters,
    }


def run_record(run: Path, tasks: list[str] | None = None) -> dict[str, Any]:
    summary = rd.load_json(run, rd.SUMMARY)
    found = accuracies(run)
    return record(
        {t: found[t] for t in (tasks or TASKS)}, summary.get("train_seconds", 0.0), trainable(run)
    )


# ---------------------------------------------------------------------- PEFT
class Plain(nn.Module):
    """The base's network as a plain module: its CNN encoder then the bottom (Linear+ReLU)."""

    def __init__(self, base: Path) -> None:
        super().__init__()
        model = polytask.load(base).model
        self.encoder = copy.deepcopy(model.encoders[0])
        state = model.state_dict()
        weight = state["arch.levels.0.experts.weights.0"][0]
        self.bottom = nn.Sequential(nn.Linear(*weight.shape), nn.ReLU())
        with torch.no_grad():
            self.bottom[0].weight.copy_(weight.T)
            self.bottom[0].bias.copy_(state["arch.levels.0.experts.biases.0"][0, 0])
        self.heads = [
            (
                state["towers.output.weights.0"][t].clone(),
                state["towers.output.biases.0"][t, 0].clone(),
            )
            for t in range(len(TASKS))
        ]

    def forward(self, numeric: torch.Tensor) -> torch.Tensor:
        empty = numeric.new_zeros(numeric.shape[0], 0, dtype=torch.long)
        return self.bottom(self.encoder(empty, numeric))


def encoded(base: Path, path: str, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A table's inputs as the base encodes them, and its task's class indices."""
    predictor = polytask.load(base)
    frame = pd.read_parquet(path)
    features = predictor.preprocessor.transform(frame)
    tasks = predictor.tasks
    labels = predictor.preprocessor.encode_labels(frame, tasks)[task]
    return features.numeric, labels.long()


def peft_per_task(base: Path, tables: dict[str, dict[str, str]], seed: int) -> dict[str, Any]:
    """One PEFT LoRA adapter per task on the base's network, trained in turn."""
    plain = Plain(base)
    model = peft_model(plain, PEFT_TARGETS, RANK, ALPHA, TASKS, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    per_task, seconds = {}, 0.0
    for t, task in enumerate(TASKS):
        x, y = encoded(base, tables[task]["train"], task)
        weight, bias = plain.heads[t]
        model.set_adapter(task)
        model.train()
        optimizer = torch.optim.Adam(adapter_parameters(model, task), lr=LR)
        started = time.perf_counter()
        for _ in range(EPOCHS):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), BATCH):
                rows = order[start : start + BATCH]
                optimizer.zero_grad(set_to_none=True)
                logits = model(x[rows]) @ weight + bias
                F.cross_entropy(logits, y[rows]).backward()
                optimizer.step()
        seconds += time.perf_counter() - started
        model.eval()
        test_x, test_y = encoded(base, tables[task]["test"], task)
        with torch.no_grad():
            predicted = (model(test_x) @ weight + bias).argmax(1)
        per_task[task] = float((predicted == test_y).float().mean())
    parameters = sum(p.numel() for task in TASKS for p in adapter_parameters(model, task))
    return record(per_task, seconds, parameters)


# ---------------------------------------------------------------------- main
def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Per row: mean and std over seeds (percent) of each task's and the average accuracy,
    the median and the fastest training seconds and the trainable parameters."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for entry in results.get("seeds", {}).values():
        for label, found in entry.items():
            rows.setdefault(label, []).append(found)
    out: dict[str, Any] = {}
    keys = [*TASKS, "average"]
    if "pretrained" in results:  # the base itself, in percent like the rows
        rows = {"pretrained (linear heads)": [results["pretrained"]], **rows}
    for label, records in rows.items():
        table = 100 * np.array(
            [[r["per_task"][t] for t in TASKS] + [r["average"]] for r in records]
        )
        out[label] = {
            "seeds": len(records),
            "mean": dict(zip(keys, table.mean(0).tolist(), strict=True)),
            "std": dict(zip(keys, table.std(0).tolist(), strict=True)),
            "median_train_seconds": float(np.median([r["train_seconds"] for r in records])),
            # the least disturbed of the seeds on a shared machine
            "fastest_train_seconds": float(np.min([r["train_seconds"] for r in records])),
            "trainable_parameters": records[0]["trainable_parameters"],
        }
    return out


def save(results: dict[str, Any]) -> None:
    results["summary"] = summary(results)
    write_json(RESULTS, results, indent=1)


def run_seed(
    work: Path,
    images: Any,
    tables: dict[str, dict[str, str]],
    seed: int,
    entry: dict[str, Any],
    results: dict[str, Any],
) -> None:
    folder = work / f"seed{seed}"
    base = images.base

    def done(label: str, value: dict[str, Any]) -> None:
        entry[label] = value
        print(
            f"seed {seed} {label}: {value['average']:.4f} in {value['train_seconds']:.1f} s",
            flush=True,
        )
        save(results)

    if "full fine-tuning per task" not in entry:
        runs = finetune_all(work, {"tasks": images.tables}, base, seed, CONFIGS["full"])
        per_task = {t: accuracies(r)[t] for t, r in runs.items()}
        seconds = sum(rd.load_json(r, rd.SUMMARY).get("train_seconds", 0.0) for r in runs.values())
        parameters = sum(trainable(r) for r in runs.values())  # eight fine-tuned copies
        done("full fine-tuning per task", record(per_task, seconds, parameters))
    if "LoRA per task, polytask" not in entry:
        per_task, seconds = {}, 0.0
        for task in TASKS:
            run = adapter_run(
                base,
                tables[task],
                "lora",
                METHODS["LoRA (rank 8)"][1],
                seed,
                folder / f"lora_{task}",
            )
            per_task[task] = float(rd.load_json(run, rd.FINAL_METRICS)["test"][task]["accuracy"])
            seconds += rd.load_json(run, rd.SUMMARY).get("train_seconds", 0.0)
        done("LoRA per task, polytask", record(per_task, seconds, trainable(run)))
    if "LoRA per task, PEFT" not in entry:
        done("LoRA per task, PEFT", peft_per_task(base, tables, seed))
    runs: dict[str, Path] = {}
    for label, (method, options) in METHODS.items():
        runs[label] = adapter_run(
            base, images.joint, method, options, seed, folder / f"all_{method}_{len(runs)}"
        )
        if f"{label}, all tasks" not in entry:
            done(f"{label}, all tasks", run_record(runs[label]))
    if f"{FUSION}, all tasks" not in entry:
        stage_one = runs["bottleneck (16)"]
        fusion = adapter_run(
            stage_one,
            images.joint,
            "bottleneck",
            {"size": 16, "compose": "fusion"},
            seed,
            folder / "all_fusion",
        )
        done(f"{FUSION}, all tasks", run_record(fusion))
    for label, (method, options) in MERGES.items():
        if label in entry:
            continue
        out = folder / f"merged_{method}"
        merged = merge_adapters(runs["LoRA (rank 8)"], method, options, out, overwrite=True)
        value = run_record(out)
        value["train_seconds"] = 0.0
        value["merge_seconds"] = merged["seconds"]
        value["trainable_parameters"] = 0
        done(label, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "adapters_images")
    parser.add_argument("--summarise", action="store_true", help="only rewrite the summary")
    args = parser.parse_args()
    if args.summarise:
        save(json.loads(RESULTS.read_text()))
        return
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    images = prepare(args.work)
    tables = task_tables(args.work, images.joint)
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update(
        {
            "command": "nice -n 10 python benchmarks/adapters_images.py " + " ".join(sys.argv[1:]),
            "machine": machine_info("peft"),
            "budget": {"rank": RANK, "alpha": ALPHA, "epochs": EPOCHS, "lr": LR, "batch": BATCH},
            "targets": {"polytask": TARGETS, "peft": PEFT_TARGETS},
            "tasks": TASKS,
            "pretrained": record(accuracies(images.base), 0.0, 0),
            "load_average_1m_start": os.getloadavg()[0],
        }
    )
    started = time.perf_counter()
    for seed in args.seeds:
        entry = results.setdefault("seeds", {}).setdefault(str(seed), {})
        run_seed(args.work, images, tables, seed, entry, results)
    results["wall_seconds"] = time.perf_counter() - started
    results["load_average_1m_end"] = os.getloadavg()[0]
    save(results)


if __name__ == "__main__":
    main()
