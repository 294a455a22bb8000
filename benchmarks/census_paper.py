"""Census-Income (KDD) under the MMoE paper's protocol: single-task, shared-bottom and MMoE
test AUC over several seeds, beside the paper's table (Ma et al., KDD 2018).

Reads the original UCI files from ``../shared/datasets/census_income_kdd`` (override with
``--data``); every run is a real ``polytask`` training run built from
``examples/census_income.yaml`` with the architecture and seed replaced. The multi-task runs
report Delta-m against the single-task run of the same seed.

    python benchmarks/census_paper.py --seeds 5 --group 1 --json docs/results/census_g1.json

The JSON holds every run and a ``summary`` per method (best, mean and standard deviation of
each task's test AUC over the seeds, the paper's best and mean, the mean Delta-m): what
docs/benchmarks.md quotes. Per run, ``train_seconds`` is the run's own training time (from its
summary) and ``wall_seconds`` the time this invocation spent on it, null for a run reused from
``--runs`` (reading it is not training it). ``--summarise FILE`` recomputes the summary of an
existing JSON from its runs (and marks as reused the runs of older JSONs whose recorded time is
under a second: the time to read a finished run, not to train one).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from polytask.artifacts import run_dir as rd
from polytask.config import parse_spec
from polytask.train.trainer import fit

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {1: ("income", "never_married"), 2: ("college", "never_married")}
# Published AUC (best, mean) per (method, group, task); MMoE paper, census-income table.
PAPER = {
    ("single", 1): {"income": (0.9398, 0.9337), "never_married": (0.9933, 0.9922)},
    ("shared_bottom", 1): {"income": (0.9361, 0.9295), "never_married": (0.9915, 0.9921)},
    ("omoe", 1): {"income": (0.9387, 0.9319), "never_married": (0.9928, 0.9923)},
    ("mmoe", 1): {"income": (0.9410, 0.9359), "never_married": (0.9926, 0.9927)},
    ("single", 2): {"college": (0.8843, 0.8792), "never_married": (0.9933, 0.9922)},
    ("shared_bottom", 2): {"college": (0.8836, 0.8813), "never_married": (0.9927, 0.9917)},
    ("omoe", 2): {"college": (0.8852, 0.8813), "never_married": (0.9915, 0.9912)},
    ("mmoe", 2): {"college": (0.8860, 0.8826), "never_married": (0.9932, 0.9924)},
}


# Every gated architecture gets the paper's expert budget (8 experts x [16] per level).
ARCH_MODEL: dict[str, dict[str, Any]] = {
    "cgc": {"options": {"task_experts": 3, "shared_experts": 2}},
    "ple": {"options": {"task_experts": 3, "shared_experts": 2, "levels": 2}},
    "home": {"options": {"shared_experts": 2, "group_experts": 2, "task_experts": 2}},
    "dselect_k": {"options": {"k": 2}},
    "task_moe": {"options": {"top_k": 2}},
}


def base_spec(data: Path, group: int) -> dict[str, Any]:
    raw = yaml.safe_load((ROOT / "examples" / "census_income.yaml").read_text())
    raw["data"]["dataset_options"]["path"] = str(data.resolve())
    raw["data"]["dataset_options"]["group"] = group
    raw["tasks"] = [{"name": t, "kind": "binary", "target": t} for t in GROUPS[group]]
    return raw


def run_one(
    raw: dict[str, Any], arch: str, seed: int, out: Path, baseline: Path | None, threads: int
) -> dict:
    spec_dict = copy.deepcopy(raw)
    spec_dict["model"]["arch"] = arch
    spec_dict["model"].update(copy.deepcopy(ARCH_MODEL.get(arch, {})))
    spec_dict["train"]["seed"] = seed
    spec_dict["train"]["threads"] = threads
    if baseline is not None:
        spec_dict["train"]["baseline"] = str(baseline)
    started = time.perf_counter()
    reused = rd.is_complete(out)  # kept from an earlier invocation with the same --runs folder
    run = out if reused else fit(parse_spec(spec_dict), out, overwrite=True, progress=False)
    summary = rd.load_json(run, rd.SUMMARY)
    metrics = rd.load_json(run, rd.FINAL_METRICS)["test"]
    return {
        "arch": arch,
        "seed": seed,
        "auc": {task: metrics[task]["auc"] for task in metrics},
        "score": summary["score"]["test"],
        "best_epoch": summary["best_epoch"],
        "reused": reused,
        "train_seconds": summary["train_seconds"],
        "wall_seconds": None if reused else time.perf_counter() - started,
    }


# An older JSON recorded only "seconds", the wall time of this script per run: under this, the
# run was read from --runs, not trained.
REUSED_UNDER_SECONDS = 1.0


def normalised_run(run: dict[str, Any]) -> dict[str, Any]:
    """A run record of an older JSON in today's form (see the module docstring)."""
    if "seconds" not in run:
        return run
    run = dict(run)
    seconds = run.pop("seconds")
    run["reused"] = seconds < REUSED_UNDER_SECONDS
    run.setdefault("train_seconds", None)  # not recorded then
    run["wall_seconds"] = None if run["reused"] else seconds
    return run


def summarise(results: list[dict], group: int) -> dict[str, Any]:
    """Per method: best / mean / std of each task's test AUC, the paper's values, and the
    mean Delta-m over the seeds (the figures docs/benchmarks.md quotes)."""
    methods: dict[str, Any] = {}
    for arch in dict.fromkeys(r["arch"] for r in results):
        rows = [r for r in results if r["arch"] == arch]
        tasks = {}
        for task in GROUPS[group]:
            aucs = np.array([r["auc"][task] for r in rows])
            paper = PAPER.get((arch, group), {}).get(task)
            tasks[task] = {
                "best": float(aucs.max()),
                "mean": float(aucs.mean()),
                "std": float(aucs.std()),
                "paper_best": paper[0] if paper else None,
                "paper_mean": paper[1] if paper else None,
            }
        deltas = [r["score"]["value"] for r in rows if r["score"]["name"] == "delta_m"]
        methods[arch] = {
            "seeds": sorted(r["seed"] for r in rows),
            "auc": tasks,
            "delta_m_mean_percent": float(np.mean(deltas)) if deltas else None,
        }
    return methods


def run_seed(
    raw: dict[str, Any], archs: list[str], seed: int, scratch: Path, threads: int
) -> list[dict]:
    """Every architecture for one seed, single-task first so that it is the Delta-m baseline."""
    results = []
    single_run = scratch / f"single-{seed}"
    for arch in sorted(archs, key=lambda a: a != "single"):
        baseline = single_run if arch != "single" and "single" in archs else None
        result = run_one(raw, arch, seed, scratch / f"{arch}-{seed}", baseline, threads)
        results.append(result)
        aucs = "  ".join(f"{t} {v:.4f}" for t, v in result["auc"].items())
        spent = "reused" if result["reused"] else f"{result['train_seconds']:.0f} s"
        print(f"{arch:>14} seed {seed}: {aucs}  ({spent})", flush=True)
    return results


def table(results: list[dict], archs: list[str], group: int) -> str:
    tasks = GROUPS[group]
    header = (
        "| method | "
        + " | ".join(f"{t} best / mean (paper best / mean)" for t in tasks)
        + " | Delta-m vs single (mean) |"
    )
    lines = [header, "|" + "---|" * (len(tasks) + 2)]
    for arch in archs:
        rows = [r for r in results if r["arch"] == arch]
        cells = []
        for task in tasks:
            aucs = np.array([r["auc"][task] for r in rows])
            paper = PAPER.get((arch, group), {}).get(task)
            published = f"{paper[0]:.4f} / {paper[1]:.4f}" if paper else "-"
            cells.append(f"{aucs.max():.4f} / {aucs.mean():.4f} ({published})")
        deltas = [r["score"]["value"] for r in rows if r["score"]["name"] == "delta_m"]
        delta = f"{np.mean(deltas):+.3f} %" if deltas else "-"
        lines.append(f"| {arch} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/datasets/census_income_kdd"
    )
    parser.add_argument("--group", type=int, choices=(1, 2), default=1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--archs", nargs="+", default=["single", "shared_bottom", "mmoe"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one per seed)")
    parser.add_argument(
        "--runs", type=Path, help="keep run directories here; finished ones are reused"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument(
        "--summarise", type=Path, help="recompute the summary of this JSON from its runs"
    )
    args = parser.parse_args()
    if args.summarise is not None:
        report = json.loads(args.summarise.read_text())
        runs = [normalised_run(run) for run in report["runs"]]
        archs = list(dict.fromkeys(r["arch"] for r in runs))
        print(table(runs, archs, report["group"]))
        report = {"group": report["group"], "runs": runs}
        report["summary"] = summarise(runs, report["group"])
        args.summarise.write_text(json.dumps(report, indent=2) + "\n")
        return
    raw = base_spec(args.data, args.group)
    threads = args.threads or max(1, (torch.get_num_threads()) // args.jobs)
    with tempfile.TemporaryDirectory() as scratch, ProcessPoolExecutor(args.jobs) as pool:
        runs = args.runs / f"group{args.group}" if args.runs else Path(scratch)
        jobs = [
            pool.submit(run_seed, raw, args.archs, seed, runs, threads)
            for seed in range(args.seeds)
        ]
        results = [result for job in jobs for result in job.result()]
    print(
        f"\nCensus-Income group {args.group}, test AUC over {args.seeds} seeds "
        f"({platform.processor() or platform.machine()}):\n"
    )
    print(table(results, args.archs, args.group))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {"group": args.group, "runs": results}
        report["summary"] = summarise(results, args.group)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
