"""Many tasks: epoch time and parameters per architecture at T = 10, 50 and 150 tasks, with
the same rows, before and after the per-task parts were made linear in T.

Why this exists: with 139 tasks PLE took 35-40 s per epoch (issue 19), because softmax gates
were laid over a level's whole expert pool (T gates x (T task experts + shared ones), almost
all masked), mixing broadcast a [G, B, E, D] intermediate, and each task's loss was its own
small pass. "After" is this checkout (paired gates, :mod:`polytask.nn.paired_gates`; mixing
by batched product for many gates; one loss pass per kind of task); "before" is another
source tree given by ``--before-src`` (the ``src`` folder of the commit before the change,
e.g. ``git archive a2de446 src | tar -x -C /tmp/polytask-before``); ``--after-src`` likewise
(default: this checkout's ``src``).

Data: synthetic related tasks, the same for every T and version: 4,096 rows of 8 numeric and
3 categorical inputs; task t's binary label is ``x @ (u + 0.5 v_t) + noise > 0`` with one
shared direction u and a task-specific v_t, so the tasks share most of their signal.
Models: hidden [16], towers [8], embeddings 8; MMoE 8 experts; CGC one expert per task and
4 shared; PLE 2 levels of the same; single one network per task; shared_bottom.

What is timed: one epoch of ``polytask.train.step.train_step`` (equal balancing, Adam, batch
512: 8 steps), after 2 untimed steps, in a fresh process per (version, arch, T), the
versions alternating for ``--rounds`` rounds; the table keeps the fastest epoch. Parameters
are the model's trainable parameters. The machine is shared (2 cores, no GPU): compare the
ratios, measured back to back, rather than the absolute seconds.

Run: ``python benchmarks/many_tasks.py --before-src /tmp/polytask-before/src
--after-src /tmp/polytask-after/src --json docs/results/many_tasks.json``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARCHS: dict[str, dict[str, Any]] = {
    "shared_bottom": {},
    "mmoe": {},
    "cgc": {"task_experts": 1, "shared_experts": 4},
    "ple": {"levels": 2, "task_experts": 1, "shared_experts": 4},
    "single": {},
}
ROWS, BATCH, WARMUP = 4096, 512, 2


def make_table(tasks: int, seed: int = 0, labels_per_row: int | None = None) -> Any:
    """The synthetic table; ``labels_per_row``: keep that many tasks' labels per row (drawn
    at random, the rest missing), as in data where each entity is measured on a few tasks."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 8))
    shared = rng.normal(size=8)
    frame = pd.DataFrame(x, columns=[f"x{j}" for j in range(8)])
    for j in range(3):
        frame[f"c{j}"] = rng.choice(["a", "b", "c", "d", "e"], size=ROWS)
    for t in range(tasks):
        direction = shared + 0.5 * rng.normal(size=8)
        frame[f"y{t}"] = (x @ direction + rng.normal(size=ROWS) > 0).astype(float)
    if labels_per_row is not None and labels_per_row < tasks:
        keys = rng.random((ROWS, tasks)).argsort(axis=1)[:, :labels_per_row]
        kept = np.zeros((ROWS, tasks), dtype=bool)
        np.put_along_axis(kept, keys, True, axis=1)
        for t in range(tasks):
            frame.loc[~kept[:, t], f"y{t}"] = np.nan
    return frame


def measure(arch: str, tasks: int, labels_per_row: int | None = None) -> dict[str, Any]:
    """One (arch, T) in this process: parameters and one timed epoch."""
    import torch

    from polytask.balance import BALANCERS
    from polytask.config import parse_spec
    from polytask.data.preprocess import Preprocessor
    from polytask.model import build_model
    from polytask.train.optim import build_optimizer
    from polytask.train.step import train_step

    torch.set_num_threads(1)
    torch.manual_seed(0)
    frame = make_table(tasks, labels_per_row=labels_per_row)
    spec = parse_spec(
        {
            "data": {"train": "unused.csv"},
            "tasks": [{"name": f"t{t}", "kind": "binary", "target": f"y{t}"} for t in range(tasks)],
            "model": {
                "arch": arch,
                "hidden": [16],
                "tower_hidden": [8],
                "embedding_dim": 8,
                **({"num_experts": 8} if arch == "mmoe" else {}),
                "options": ARCHS[arch],
            },
            "train": {"batch_size": BATCH, "lr": 1e-3},
        }
    )
    pre = Preprocessor.fit(frame, spec.data, spec.tasks)
    task_list = pre.build_tasks(spec.tasks)
    features, labels = pre.transform(frame), pre.encode_labels(frame, task_list)
    model = build_model(
        spec.model,
        pre.cardinalities,
        pre.numeric_width,
        [t.out_dim for t in task_list],
        [t.name for t in task_list],
    )
    balancer = BALANCERS.get("equal")(tasks)
    optimizer = build_optimizer(list(model.parameters()), spec.train)
    static = torch.ones(tasks)
    order = torch.randperm(ROWS, generator=torch.Generator().manual_seed(0))
    batches = [order[i : i + BATCH] for i in range(0, ROWS, BATCH)]

    def step(rows: torch.Tensor, number: int) -> None:
        batch_labels = {name: values[rows] for name, values in labels.items()}
        train_step(
            model, features.take(rows), batch_labels, task_list, balancer, optimizer, static, number
        )

    model.train()
    for number in range(WARMUP):
        step(batches[number], number)
    started = time.perf_counter()
    for number, rows in enumerate(batches):
        step(rows, WARMUP + number)
    seconds = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "level_multiply_adds_per_row": level_multiply_adds(model),
        "arch": arch,
        "tasks": tasks,
        "labels_per_row": labels_per_row,
        "epoch_seconds": seconds,
        "parameters": parameters,
    }


def level_multiply_adds(model: Any) -> list[int]:
    """Per level of the plan, the multiply-adds of a dense pass per row: every expert's
    layers, every gate's logits over its allowed experts, and its mixture of their outputs.
    Counted from the layer sizes (why an architecture's epoch must grow with T)."""
    counts = []
    for level in model.arch.level_modules:
        experts = sum(weight.numel() for weight in level.experts.weights)
        pairs = sum(len(members) for members in level.gates.allowed)
        width = level.experts.weights[-1].shape[-1]
        gated = hasattr(level.gates, "weight")  # identity gates compute nothing
        in_dim = level.experts.weights[0].shape[1]
        counts.append(experts + (pairs * (in_dim + width) if gated else 0))
    return counts


def run_child(src: Path, arch: str, tasks: int, labels_per_row: int | None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--child", arch, str(tasks)]
    if labels_per_row is not None:
        command += ["--labels-per-row", str(labels_per_row)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{arch} at T = {tasks} ({src}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-src", type=Path, required=False)
    parser.add_argument("--after-src", type=Path, default=ROOT / "src")
    parser.add_argument("--tasks", type=int, nargs="+", default=[10, 50, 150])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--labels-per-row",
        type=int,
        help="keep this many tasks' labels per row, drawn at random (default: every task's)",
    )
    parser.add_argument("--child", nargs=2, metavar=("ARCH", "T"))
    args = parser.parse_args()
    if args.child:
        found = measure(args.child[0], int(args.child[1]), args.labels_per_row)
        print(json.dumps(found))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import machine_info

    versions = {"after": args.after_src.resolve()}
    if args.before_src is not None:
        versions = {"before": args.before_src.resolve(), **versions}
    results: list[dict[str, Any]] = []
    for arch in args.archs:
        for tasks in args.tasks:
            best: dict[str, dict[str, Any]] = {}
            for _ in range(args.rounds):
                for version, src in versions.items():
                    found = run_child(src, arch, tasks, args.labels_per_row)
                    kept = best.get(version)
                    if kept is None or found["epoch_seconds"] < kept["epoch_seconds"]:
                        best[version] = found
            for version, found in best.items():
                results.append({**found, "version": version})
                print(
                    f"{arch:14s} T={tasks:4d} {version:6s} {found['epoch_seconds']:8.2f} s "
                    f"{found['parameters']:>10,d} parameters",
                    flush=True,
                )
    summary = ratios(results)
    for line in summary:
        print(line)
    if args.json:
        payload = {
            "command": "python benchmarks/many_tasks.py " + " ".join(sys.argv[1:]),
            "machine": machine_info(),
            "rows": ROWS,
            "batch_size": BATCH,
            "labels_per_row": args.labels_per_row,
            "results": results,
            "epoch_ratio_to_smallest_t": {
                f"{r['arch']}/{r['version']}/{r['tasks']}": r["ratio"]
                for r in summary_rows(results)
            },
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


def summary_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each result's epoch time over the same arch and version's at the smallest T."""
    rows = []
    for result in results:
        same = [
            r for r in results if r["arch"] == result["arch"] and r["version"] == result["version"]
        ]
        smallest = min(same, key=lambda r: r["tasks"])
        rows.append({**result, "ratio": result["epoch_seconds"] / smallest["epoch_seconds"]})
    return rows


def ratios(results: list[dict[str, Any]]) -> list[str]:
    return [
        f"{r['arch']:14s} {r['version']:6s} T={r['tasks']:4d}: {r['ratio']:.1f}x the smallest T"
        for r in summary_rows(results)
    ]


if __name__ == "__main__":
    main()
