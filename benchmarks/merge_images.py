"""Eight-task image merging benchmark, small enough for this machine, built like the ViT-B/32
benchmark of the task-arithmetic papers: one pretrained model, one fine-tuned copy per task,
merged back into one model by every method; polytask's methods beside FusionBench 0.2.33's on
the same checkpoints.

The eight tasks (10 classes each) are made from MNIST and Fashion-MNIST
(``../shared/datasets/``): each source plain, rotated by 90 degrees, inverted (1 - x), and
with its 4 x 4 grid of 7 x 7 patches permuted (one fixed permutation per source). Every task
draws its own training and validation rows from the source's training images 20,000-59,999
and its test rows from the source's test images.

1. Pretrain: a LeNet-style CNN (conv 5x5 x10, conv 5x5 x20, linear 64) and a shared bottom
   (128 units) on 20-way classification of plain MNIST and Fashion-MNIST training images
   0-19,999 (none of the tasks' images, none transformed).
2. Base: the pretrained network frozen, one linear head per task fitted on it (what CLIP's
   zero-shot heads are in the ViT benchmark): the "pretrained" row.
3. Individual: ``polytask finetune`` per task, ``moves: shared`` (the heads stay fixed), from
   ``--seeds`` training seeds, in two configurations: ``full`` (the encoder and the bottom
   move: the task-arithmetic papers' setting) and ``frozen_backbone`` (the CNN encoder stays
   fixed too, so every task vector lies in the plan's bottom, the level a routed merge routes).
4. Joint: all eight tasks trained together from the base (the same parts move, the heads too).
5. Merged: every polytask method; FusionBench's implementation of the same method with the
   same options on the same checkpoints (``benchmarks/fusionbench_merge.py``, run with the
   FusionBench venv of ``make fusionbench``), timed in its own process.

    nice -n 10 python benchmarks/merge_images.py --seeds 0 1 2

Writes docs/results/merge_images.json (after every stage, so a partial run is kept), with the
``summary`` that docs/benchmarks.md quotes (``--summarise`` rewrites only that).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, shared_datasets

import polytask
from polytask.artifacts import run_dir as rd
from polytask.artifacts.weights import save_weights
from polytask.config import load_spec
from polytask.data.datasets.multimnist import _find, read_idx
from polytask.data.preprocess import Preprocessor
from polytask.merge.runs import merge
from polytask.model import model_for
from polytask.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_datasets(ROOT)
RESULTS = ROOT / "docs" / "results" / "merge_images.json"
SOURCES = {"mnist": "mnist", "fashion": "fashion_mnist"}
TRANSFORMS = ("plain", "rot90", "inverted", "patches")
TASKS = [f"{source}_{kind}" for source in SOURCES for kind in TRANSFORMS]
PIXELS = [f"p{i}" for i in range(784)]
BUDGET = {
    "pretrain_rows_per_source": 10_000,
    "pretrain_epochs": 4,
    "train_rows_per_task": 3_000,
    "valid_rows_per_task": 500,
    "test_rows_per_task": 1_000,
    "probe_epochs": 3,
    "finetune_epochs": 4,
    "joint_epochs": 4,
    "batch_size": 128,
    "threads": 1,
}
MODEL = {
    "arch": "shared_bottom",
    "hidden": [128],
    "tower_hidden": [],
    "encoder": {"name": "cnn", "image_shape": [1, 28, 28], "channels": [10, 20], "out_dim": 64},
}
ROWS = {"split": "valid", "samples": 500}
SEEDED = ("dare_task_arithmetic", "dare_ties", "adamerging", "routed_moe")
CONFIGS: dict[str, dict[str, Any]] = {
    "full": {
        "freeze": [],
        "about": "fine-tuning moves the encoder and the shared bottom (the heads stay fixed)",
    },
    "frozen_backbone": {
        "freeze": ["encoders.*"],
        "about": "fine-tuning moves the shared bottom only (the CNN encoder and the heads stay "
        "fixed): every task vector lies in the plan's level, which the routed merge routes",
    },
}
STEPS = 500
# (label, polytask method, polytask options, FusionBench algorithm and options or None)
METHODS: list[tuple[str, str, dict[str, Any], dict[str, Any] | None]] = [
    ("simple averaging", "average", {}, {"algorithm": "simple_average"}),
    (
        "task arithmetic (λ 0.3)",
        "task_arithmetic",
        {"scaling": 0.3},
        {"algorithm": "task_arithmetic", "scaling_factor": 0.3},
    ),
    (
        "TIES (top 20 %, disjoint mean, λ 1)",
        "ties",
        {"keep": 0.2, "aggregate": "mean", "scaling": 1.0},
        {"algorithm": "ties", "threshold": 20, "merge_func": "mean", "scaling_factor": 1.0},
    ),
    (
        "TIES (top 20 %, disjoint sum, λ 0.3)",
        "ties",
        {"keep": 0.2, "aggregate": "sum", "scaling": 0.3},
        {"algorithm": "ties", "threshold": 20, "merge_func": "sum", "scaling_factor": 0.3},
    ),
    (
        "DARE + task arithmetic (p 0.5, λ 0.3)",
        "dare_task_arithmetic",
        {"rate": 0.5, "scaling": 0.3},
        {"algorithm": "dare_task_arithmetic", "sparsity_ratio": 0.5, "scaling_factor": 0.3},
    ),
    (
        "DARE + TIES (p 0.5, top 20 %, sum, λ 0.5)",
        "dare_ties",
        {"rate": 0.5, "keep": 0.2, "aggregate": "sum", "scaling": 0.5},
        {
            "algorithm": "dare_ties",
            "sparsity_ratio": 0.5,
            "threshold": 20,
            "merge_func": "sum",
            "scaling_factor": 0.5,
        },
    ),
    (
        "Model Breadcrumbs (keep 10 %, outliers 1 %, λ 0.3)",
        "breadcrumbs",
        {"keep": 0.1, "remove_top": 0.01, "scaling": 0.3},
        None,
    ),
    ("TSV-M (α 1)", "tsv_m", {"alpha": 1.0}, {"algorithm": "tsv_m", "alpha": 1.0}),
    ("LiNeS (sum, β 0.5)", "lines", {"beta": 0.5}, None),
    ("PCB (ratio 0.1, λ 1)", "pcb", {"ratio": 0.1, "scaling": 1.0}, None),
    (
        "Fisher merging (256 rows, normalised)",
        "fisher",
        {"split": "train", "samples": 256, "normalise": True},
        {"algorithm": "fisher", "samples": 256, "normalise": True},
    ),
    (
        "Fisher merging (256 rows, one sampled label per row, normalised)",
        "fisher",
        {"split": "train", "samples": 256, "normalise": True, "estimate": "sampled"},
        None,
    ),
    (  # FusionBench's Fisher is this estimate: the same method, the same definition
        "Fisher merging (256 rows, FusionBench's batch estimate: 32 rows per squared gradient, "
        "normalised)",
        "fisher",
        {"split": "train", "samples": 256, "normalise": True, "estimate": "batch"},
        {"algorithm": "fisher", "samples": 256, "normalise": True},
    ),
    (
        "RegMean (256 rows, α 0.95)",
        "regmean",
        {"split": "train", "samples": 256, "alpha": 0.95},
        {"algorithm": "regmean", "samples": 256, "alpha": 0.95},
    ),
    (
        "AdaMerging, task-wise",
        "adamerging",
        {**ROWS, "granularity": "task", "steps": STEPS, "lr": 1e-3, "init": 0.3},
        {"algorithm": "adamerging_task", "steps": STEPS, "lr": 1e-3, "init": 0.3},
    ),
    (
        "AdaMerging, layer-wise",
        "adamerging",
        {**ROWS, "granularity": "layer", "steps": STEPS, "lr": 1e-3, "init": 0.3},
        {"algorithm": "adamerging_layer", "steps": STEPS, "lr": 1e-3, "init": 0.3},
    ),
    (
        "routed MoE, router trained on each row's source run",
        "routed_moe",
        {**ROWS, "objective": "source", "steps": STEPS, "lr": 1e-2, "scaling": 0.3},
        None,
    ),
    (
        "routed MoE (WEMoE-style; FusionBench: WEMoE)",
        "routed_moe",
        {**ROWS, "steps": STEPS, "lr": 1e-2, "scaling": 0.3},
        {"algorithm": "wemoe", "steps": STEPS, "lr": 1e-4, "init": 0.3},
    ),
]


# ---------------------------------------------------------------------- data
def load_source(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = SHARED / SOURCES[name]
    out = {}
    for split in ("train", "test"):
        images, labels = _find(folder, split, "images"), _find(folder, split, "labels")
        if images is None or labels is None:
            raise SystemExit(f"{folder} lacks the {split} idx files (see ../shared/datasets)")
        out[split] = (read_idx(images).astype(np.float32) / 255.0, read_idx(labels).astype(int))
    return out


def transform(images: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """[N, 28, 28] in [0, 1] -> the task's view of them."""
    if kind == "rot90":
        return np.rot90(images, k=1, axes=(1, 2)).copy()
    if kind == "inverted":
        return 1.0 - images
    if kind == "patches":
        order = np.random.default_rng(seed).permutation(16)
        patches = images.reshape(-1, 4, 7, 4, 7).transpose(0, 1, 3, 2, 4).reshape(-1, 16, 7, 7)
        patches = patches[:, order]
        return patches.reshape(-1, 4, 4, 7, 7).transpose(0, 1, 3, 2, 4).reshape(-1, 28, 28)
    return images


def frame(images: np.ndarray, labels: dict[str, np.ndarray]) -> pd.DataFrame:
    table = pd.DataFrame(images.reshape(len(images), -1), columns=PIXELS)
    for column, values in labels.items():
        table[column] = values
    return table


def build_tables(work: Path) -> dict[str, Any]:
    """Parquet tables: pretraining, each task's own splits, and all tasks joined (labels of
    other tasks missing). Returns their paths."""
    data = work / "data"
    marker = data / "done.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    data.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"tasks": {}}
    pretrain_parts = []
    joint: dict[str, list[pd.DataFrame]] = {"train": [], "valid": [], "test": []}
    for offset, source in enumerate(SOURCES):
        images = load_source(source)
        train_x, train_y = images["train"]
        rows = BUDGET["pretrain_rows_per_source"]
        pretrain_parts.append(frame(train_x[:rows], {"y_pretrain": train_y[:rows] + 10 * offset}))
        for index, kind in enumerate(TRANSFORMS):
            task = f"{source}_{kind}"
            rng = np.random.default_rng(100 + 10 * offset + index)
            pool = rng.permutation(np.arange(20_000, 60_000))
            n_train, n_valid = BUDGET["train_rows_per_task"], BUDGET["valid_rows_per_task"]
            picks = {
                "train": (train_x, train_y, pool[:n_train]),
                "valid": (train_x, train_y, pool[n_train : n_train + n_valid]),
            }
            test_x, test_y = images["test"]
            picks["test"] = (
                test_x,
                test_y,
                rng.permutation(len(test_x))[: BUDGET["test_rows_per_task"]],
            )
            paths["tasks"][task] = {}
            for split, (x, y, chosen) in picks.items():
                views = transform(x[chosen], kind, seed=offset)
                own = frame(views, {f"y_{task}": y[chosen]})
                path = data / f"{task}_{split}.parquet"
                own.to_parquet(path, index=False)
                paths["tasks"][task][split] = str(path)
                joint[split].append(own)
    pretrain = pd.concat(pretrain_parts, ignore_index=True)
    order = np.random.default_rng(0).permutation(len(pretrain))
    cut = len(pretrain) // 10
    for split, rows in (("valid", order[:cut]), ("train", order[cut:])):
        path = data / f"pretrain_{split}.parquet"
        pretrain.iloc[rows].to_parquet(path, index=False)
        paths[f"pretrain_{split}"] = str(path)
    for split, parts in joint.items():
        path = data / f"joint_{split}.parquet"
        pd.concat(parts, ignore_index=True).to_parquet(path, index=False)
        paths[f"joint_{split}"] = str(path)
    marker.write_text(json.dumps(paths))
    return paths


# ---------------------------------------------------------------------- runs
def train_spec(epochs: int, lr: float, seed: int, **extra: Any) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "batch_size": BUDGET["batch_size"],
        "lr": lr,
        "seed": seed,
        "threads": BUDGET["threads"],
        "early_stopping": {"patience": None},
        **extra,
    }


def task_specs() -> list[dict[str, Any]]:
    return [
        {"name": t, "kind": "multiclass", "target": f"y_{t}", "metrics": ["accuracy"]}
        for t in TASKS
    ]


def joint_data(paths: dict[str, Any]) -> dict[str, Any]:
    return {
        "train": paths["joint_train"],
        "valid": paths["joint_valid"],
        "test": paths["joint_test"],
        "scaling": "none",
    }


def pretrain(work: Path, paths: dict[str, Any]) -> Path:
    out = work / "pretrain"
    if rd.is_complete(out):
        return out
    spec = {
        "data": {
            "train": paths["pretrain_train"],
            "valid": paths["pretrain_valid"],
            "scaling": "none",
        },
        "tasks": [
            {
                "name": "pretrain",
                "kind": "multiclass",
                "target": "y_pretrain",
                "metrics": ["accuracy"],
            }
        ],
        "model": MODEL,
        "train": train_spec(BUDGET["pretrain_epochs"], 2e-3, 0),
    }
    return fit(load_spec(spec), out, overwrite=True, progress=False)


def make_base(work: Path, paths: dict[str, Any], pretrained: Path) -> Path:
    """The pretrained network with eight linear heads fitted on its frozen features."""
    out = work / "base"
    if rd.is_complete(out):
        return out
    spec = load_spec(
        {
            "data": joint_data(paths),
            "tasks": task_specs(),
            "model": MODEL,
            "train": train_spec(1, 1e-2, 0),
        }
    )
    table = pd.read_parquet(paths["joint_train"])
    preprocessor = Preprocessor.fit(table, spec.data, spec.tasks)
    tasks = preprocessor.build_tasks(spec.tasks)
    model = model_for(spec.model, preprocessor, tasks)
    state = model.state_dict()
    pre = polytask.load(pretrained).model.state_dict()
    for key, value in pre.items():
        if key.startswith(("encoders.", "arch.")):
            state[key] = value
    start = work / "pretrained_with_new_heads.safetensors"
    save_weights(start, state)
    spec_dict = {
        "data": joint_data(paths),
        "tasks": task_specs(),
        "model": MODEL,
        "train": train_spec(
            BUDGET["probe_epochs"], 1e-2, 0, init=str(start), freeze=["encoders.*", "arch.*"]
        ),
    }
    return fit(load_spec(spec_dict), out, overwrite=True, progress=False)


def finetune_all(
    work: Path, paths: dict[str, Any], base: Path, seed: int, config: dict[str, Any]
) -> dict[str, Path]:
    runs = {}
    for task in TASKS:
        out = work / f"seed{seed}" / f"ft_{task}"
        if not rd.is_complete(out):
            own = paths["tasks"][task]
            spec = {
                "tasks": [task],
                "data": {**own, "scaling": "none"},
                "moves": "shared",
                "freeze": config["freeze"],
                "train": train_spec(BUDGET["finetune_epochs"], 1e-3, seed),
            }
            polytask.finetune(base, spec, out, overwrite=True)
        runs[task] = out
    return runs


def joint_run(
    work: Path, paths: dict[str, Any], base: Path, seed: int, config: dict[str, Any]
) -> Path:
    out = work / f"seed{seed}" / "joint"
    if rd.is_complete(out):
        return out
    spec = {
        "data": joint_data(paths),
        "tasks": task_specs(),
        "model": MODEL,
        "train": train_spec(
            BUDGET["joint_epochs"], 1e-3, seed, init=str(base), freeze=config["freeze"]
        ),
    }
    return fit(load_spec(spec), out, overwrite=True, progress=False)


def accuracies(run: Path) -> dict[str, float]:
    """Test accuracy per task from a run's metrics.json."""
    metrics = rd.load_json(run, rd.FINAL_METRICS)["test"]
    return {task: float(values["accuracy"]) for task, values in metrics.items()}


def summarise(per_task: dict[str, float]) -> dict[str, Any]:
    return {"per_task": per_task, "average": float(np.mean([per_task[t] for t in TASKS]))}


@dataclass
class ImageTasks:
    """The eight-task image benchmark's shared pieces (see :func:`prepare`)."""

    pretrained: Path  # run: the CNN and the bottom pretrained on 20-way MNIST + Fashion-MNIST
    base: Path  # run: that network frozen, with one fitted linear head per task
    tables: dict[str, dict[str, str]]  # task -> split -> parquet (p0 ... p783, y_<task>)
    joint: dict[str, str]  # split -> parquet of every task's rows (other tasks' labels empty)
    tasks: list[str]
    model: dict[str, Any]  # the model section of the base's run spec


def prepare(work: Path) -> ImageTasks:
    """The backbone and the eight tasks, built under ``work`` on first use and reused after:
    the tasks' tables from ``../shared/datasets`` (module docstring: how each is made), the
    pretrained network, and the base (the pretrained network with eight linear heads), a
    run that ``polytask finetune`` (or any method that starts from a trained backbone) takes.
    Other benchmarks import it: ``sys.path`` holding ``benchmarks/``, ``from merge_images
    import prepare``."""
    paths = build_tables(work)
    pretrained = pretrain(work, paths)
    base = make_base(work, paths, pretrained)
    joint = {split: paths[f"joint_{split}"] for split in ("train", "valid", "test")}
    return ImageTasks(pretrained, base, paths["tasks"], joint, list(TASKS), MODEL)


# ---------------------------------------------------------------------- FusionBench
def plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The shared part of a run's weights in a plain module's layout: the encoder as it is,
    the shared bottom as ``nn.Linear`` layers ([out, in]) each followed by a ReLU."""
    out = {
        f"encoder.{k.removeprefix('encoders.0.')}": v.clone()
        for k, v in state.items()
        if k.startswith("encoders.0.") and v.is_floating_point()
    }
    layer = 0
    while f"arch.levels.0.experts.weights.{layer}" in state:
        weight = state[f"arch.levels.0.experts.weights.{layer}"][0]
        out[f"bottom.{2 * layer}.weight"] = weight.T.contiguous()
        out[f"bottom.{2 * layer}.bias"] = state[f"arch.levels.0.experts.biases.{layer}"][
            0, 0
        ].clone()
        layer += 1
    return out


def export_for_fusionbench(
    work: Path,
    paths: dict[str, Any],
    base: Path,
    runs: dict[str, Path],
    seed: int,
    only: list[str] | None = None,
) -> Path:
    """Checkpoints in a plain module's layout, the heads, and the rows, for the FusionBench
    process (which imports nothing of polytask); its methods: every one, or those ``only``
    names."""
    folder = work / f"seed{seed}" / "fusionbench_in"
    folder.mkdir(parents=True, exist_ok=True)

    base_state = polytask.load(base).model.state_dict()
    save_file(plain(base_state), str(folder / "pretrained.safetensors"))
    heads = {}
    for task, run in runs.items():
        state = polytask.load(run).model.state_dict()
        save_file(plain(state), str(folder / f"{task}.safetensors"))
        heads[f"{task}.weight"] = state["towers.output.weights.0"][0].T.contiguous()
        heads[f"{task}.bias"] = state["towers.output.biases.0"][0, 0].clone()
    save_file(heads, str(folder / "heads.safetensors"))
    rows = {}
    for task in TASKS:
        for split in ("train", "valid", "test"):
            table = pd.read_parquet(paths["tasks"][task][split])
            images = torch.tensor(table[PIXELS].to_numpy(np.float32)).view(-1, 1, 28, 28)
            labels = torch.tensor(table[f"y_{task}"].to_numpy(np.int64))
            if split == "train":  # the rows polytask's Fisher and RegMean sample: each run's
                # own permutation from seed 0, as RunRows.sample draws it (one generator for
                # every task gave the first task its rows and the others different ones)
                picks = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
                images, labels = images[picks], labels[picks]
            rows[f"{task}.{split}.images"] = images.contiguous()
            rows[f"{task}.{split}.labels"] = labels
    save_file(rows, str(folder / "rows.safetensors"))
    job = {
        "tasks": TASKS,
        "folder": str(folder),
        "methods": [
            {"label": label, "seed": seed, **fusion}
            for label, _, _, fusion in METHODS
            if fusion is not None and (only is None or label in only)
        ],
    }
    (folder / "job.json").write_text(json.dumps(job, indent=1))
    return folder / "job.json"


def run_fusionbench(python: Path, job: Path, out: Path) -> dict[str, Any]:
    script = ROOT / "benchmarks" / "fusionbench_merge.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONNOUSERSITE": "1"}
    done = subprocess.run(
        [str(python), str(script), str(job), str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-20:]}
    return json.loads(out.read_text())


# ---------------------------------------------------------------------- main
def save(results: dict[str, Any]) -> None:
    results["summary"] = summary(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def spread(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds, in percent, of each task's accuracy and of
    their average."""
    keys = [*TASKS, "average"]
    table = np.array([[r["per_task"][t] for t in TASKS] + [r["average"]] for r in records])
    return {
        "seeds": len(records),
        "mean": dict(zip(keys, (100 * table.mean(0)).tolist(), strict=True)),
        "std": dict(zip(keys, (100 * table.std(0)).tolist(), strict=True)),
    }


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """What docs/benchmarks.md quotes, per configuration: every row's accuracy over the seeds
    (:func:`spread`), FusionBench's beside polytask's, and the median merge time of each."""
    out: dict[str, Any] = {"pretrained": spread([results["pretrained"]])}
    for name, block in results.get("configs", {}).items():
        seeds = [s for s in block.get("seeds", {}).values() if "joint" in s]
        rows: dict[str, Any] = {
            "individual fine-tuned": {"polytask": spread([s["individual"] for s in seeds])},
            "joint multi-task": {"polytask": spread([s["joint"] for s in seeds])},
        }
        for label in results["methods"]:
            ours = [s["polytask"][label] for s in seeds if label in s.get("polytask", {})]
            theirs = [
                s["fusionbench"]["methods"][label]
                for s in seeds
                if "average" in s.get("fusionbench", {}).get("methods", {}).get(label, {})
            ]
            row: dict[str, Any] = {}
            for side, records in (("polytask", ours), ("fusionbench", theirs)):
                if records:
                    row[side] = spread(records)
                    row[side]["median_seconds"] = float(np.median([r["seconds"] for r in records]))
            differences = [
                s["fusionbench"]["methods"][label]["max_abs_difference_to_polytask"]
                for s in seeds
                if "max_abs_difference_to_polytask"
                in s.get("fusionbench", {}).get("methods", {}).get(label, {})
            ]
            if differences:  # the two merges' weights, where both libraries wrote them
                row["max_abs_weight_difference"] = max(differences)
            failed = {
                s["fusionbench"]["methods"][label]["error"]
                for s in seeds
                if "error" in s.get("fusionbench", {}).get("methods", {}).get(label, {})
            }
            if failed:
                row["fusionbench_errors"] = sorted(failed)
            again = [
                s["rerun"] for s in seeds if s.get("polytask", {}).get(label, {}).get("checkpoints")
            ]
            if again:  # merged from checkpoints trained again by a rerun (``reruns``)
                row["rerun_checkpoints"] = {
                    part: spread([r[part] for r in again]) for part in ("individual", "joint")
                }
            rows[label] = row
        out[name] = {"rows": rows}
    return out


def run_seed(
    args: argparse.Namespace,
    work: Path,
    paths: dict[str, Any],
    base: Path,
    seed: int,
    config: dict[str, Any],
    entry: dict[str, Any],
    results: dict[str, Any],
) -> None:
    """One configuration and seed: fine-tune, train jointly, merge with every method here
    and in FusionBench."""
    runs = finetune_all(work, paths, base, seed, config)
    references = {
        "individual": summarise({t: accuracies(r)[t] for t, r in runs.items()}),
        "joint": summarise(accuracies(joint_run(work, paths, base, seed, config))),
    }
    rerun = args.only is not None and "individual" in entry
    if rerun:  # checkpoints trained again need not be bit-identical: the others' stay
        entry["rerun"] = references
    else:
        entry.update(references)
    save(results)
    merged = entry.setdefault("polytask", {})
    outputs = {}
    for number, (label, method, options, _) in enumerate(METHODS):
        if args.only is not None and label not in args.only:
            continue
        out = work / f"seed{seed}" / "merged" / f"{number:02d}-{method}"
        if method in SEEDED:
            options = {**options, "seed": seed}
        record = merge(list(runs.values()), base, method, options, out, overwrite=True)
        merged[label] = {
            **summarise(accuracies(out)),
            "seconds": record["seconds"],
            "reading_seconds": record["reading_seconds"],
            **({"checkpoints": "rerun"} if rerun else {}),
        }
        outputs[label] = out
        print(
            f"{work.name} seed {seed} {label}: {merged[label]['average']:.4f} "
            f"in {record['seconds']:.3f} s",
            flush=True,
        )
        save(results)
    if args.no_fusionbench:
        return
    if not args.fusionbench.is_file():
        entry["fusionbench"] = {"error": [f"{args.fusionbench} not found: make fusionbench"]}
        save(results)
        return
    job = export_for_fusionbench(work, paths, base, runs, seed, args.only)
    fresh = run_fusionbench(args.fusionbench, job, job.parent / "results.json")
    if rerun and "methods" in fresh:  # the other methods' records stay as they were
        for record in fresh["methods"].values():
            record["checkpoints"] = "rerun"
        entry["rerun"]["fusionbench_unmerged_accuracy"] = fresh.get("unmerged_accuracy")
        previous = entry.setdefault("fusionbench", {}).setdefault("methods", {})
        kept = {label: r for label, r in previous.items() if label not in args.only}
        entry["fusionbench"]["methods"] = {**kept, **fresh["methods"]}
    else:
        entry["fusionbench"] = fresh
    for label, record in entry["fusionbench"].get("methods", {}).items():
        if "weights" in record and label in outputs:  # the same merge, element by element?
            ours = plain(polytask.load(outputs[label]).model.state_dict())
            theirs = load_file(record["weights"])
            record["max_abs_difference_to_polytask"] = max(
                float((ours[key] - theirs[key]).abs().max()) for key in theirs
            )
    save(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "merge_images")
    parser.add_argument(
        "--fusionbench",
        type=Path,
        default=ROOT / ".venv-fusionbench" / "bin" / "python",
        help="python of the FusionBench venv (make fusionbench)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="method labels to run")
    parser.add_argument("--configs", nargs="*", default=None, help=f"of {list(CONFIGS)}")
    parser.add_argument("--no-fusionbench", action="store_true", help="polytask's merges only")
    parser.add_argument(
        "--summarise", action="store_true", help="only rewrite the JSON's summary from its runs"
    )
    args = parser.parse_args()
    if args.summarise:
        save(json.loads(RESULTS.read_text()))
        return
    torch.set_num_threads(BUDGET["threads"])
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths = build_tables(args.work)
    base = prepare(args.work).base
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    run = {
        "command": "nice -n 10 python benchmarks/merge_images.py " + shlex.join(sys.argv[1:]),
        "machine": machine_info("fusion-bench"),
    }
    pretrained = summarise(accuracies(base))
    if args.only is not None and "pretrained" in results:
        # a rerun of some rows: the full run's command and references stay on top
        run.update({"rows": args.only, "pretrained": pretrained})
        results.setdefault("reruns", []).append(run)
    else:
        results.update({**run, "pretrained": pretrained})
    results.update(
        {
            "budget": BUDGET,
            "model": MODEL,
            "tasks": TASKS,
            "methods": {
                label: {"polytask_method": method, "options": options, "fusionbench": fusion}
                for label, method, options, fusion in METHODS
            },
        }
    )
    for name, config in CONFIGS.items():
        if args.configs is not None and name not in args.configs:
            continue
        work = args.work / name
        block = results.setdefault("configs", {}).setdefault(name, {})
        block["about"] = config["about"]
        for seed in args.seeds:
            entry = block.setdefault("seeds", {}).setdefault(str(seed), {})
            run_seed(args, work, paths, base, seed, config, entry, results)
    run["wall_seconds"] = time.perf_counter() - started
    run["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    if args.only is None:
        results.update(run)
    save(results)


if __name__ == "__main__":
    main()
