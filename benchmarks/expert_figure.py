"""Drawing the expert-utilisation figure of a run with many tasks, before and after.

Why this exists: with 139 tasks, drawing ``experts.png`` took 56 s of a 98 s run (issue 19):
a value written in each of tasks x experts cells and a figure 0.6 inch tall per task. Now
values are written only up to 400 cells and the figure is at most 16 inches a side.

Timed: :func:`polytask.train.insight.plot_utilisation` on a random utilisation matrix (rows
summing to 1) of T tasks x E experts, in a fresh process per version and size (matplotlib
imported and one small figure drawn before timing), fastest of ``--rounds`` alternating
rounds. "Before" is the ``src`` of the tree before the change (``--before-src``).

Run: ``python benchmarks/expert_figure.py --before-src /tmp/polytask-before/src
--json docs/results/expert_figure.json``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(10, 8), (139, 8), (150, 154)]  # (tasks, experts): MMoE-like and PLE-like


def report(tasks: int, experts: int) -> dict[str, Any]:
    import numpy as np

    values = np.random.default_rng(0).random((tasks, experts))
    values /= values.sum(1, keepdims=True)
    names = [f"task_{t}" for t in range(tasks)]
    return {
        "tasks": names,
        "num_experts": experts,
        "utilisation": {n: values[t].tolist() for t, n in enumerate(names)},
    }


def child(tasks: int, experts: int) -> float:
    from polytask.train.insight import plot_utilisation

    with tempfile.TemporaryDirectory() as folder:
        plot_utilisation(report(2, 2), Path(folder) / "warm.png")
        started = time.perf_counter()
        plot_utilisation(report(tasks, experts), Path(folder) / "experts.png")
        return time.perf_counter() - started


def run(src: Path, tasks: int, experts: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, __file__, "--child", str(tasks), str(experts)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-src", type=Path)
    parser.add_argument("--after-src", type=Path, default=ROOT / "src")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=2, type=int)
    args = parser.parse_args()
    if args.child:
        print(child(*args.child))
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import machine_info

    versions = {"after": args.after_src.resolve()}
    if args.before_src is not None:
        versions = {"before": args.before_src.resolve(), **versions}
    results = []
    for tasks, experts in SIZES:
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for version, src in versions.items():
                seconds = run(src, tasks, experts)
                best[version] = min(best.get(version, seconds), seconds)
        for version, seconds in best.items():
            results.append(
                {"tasks": tasks, "experts": experts, "version": version, "seconds": seconds}
            )
            print(f"T={tasks:4d} E={experts:4d} {version:6s} {seconds:7.2f} s", flush=True)
    if args.json:
        payload = {
            "command": "python benchmarks/expert_figure.py " + " ".join(sys.argv[1:]),
            "machine": machine_info("matplotlib"),
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
