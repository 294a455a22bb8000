"""The served (lean) and eager forward passes of this source tree against an earlier one, on
the same trained weights: did a refactoring keep prediction as fast, and the same?

For each architecture a small run is trained by the *baseline* tree (its run format), then both
trees load that same run (this tree through its migration of older runs). Each tree times, in a
process of its own with one torch thread, the model as trained ("eager") and what its
Predictor serves ("served": the lean form), at batch 1 and 1024 on rows of the shipped census
sample; the trees alternate over ``--rounds`` rounds, and per round each reports the median of
``--repeats`` interleaved calls. The JSON holds every round's medians, the median over rounds,
this tree's time over the baseline's, and the largest difference between the two trees'
predictions on the same rows.

    git archive 63f3945 src | tar -x -C /tmp/polytask-before
    python benchmarks/lean_trees.py --baseline-src /tmp/polytask-before/src --rounds 5 \
        --json docs/results/lean_trees.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from _machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
THIS_SRC = ROOT / "src"
DEMO = ROOT / "examples" / "census_income_demo.yaml"
ARCHS = ("mmoe", "task_moe", "shared_bottom")
BATCHES = (1, 1024)

TRAIN = """
import json, sys, polytask
spec = json.loads(sys.argv[1])
polytask.train(spec, out=sys.argv[2])
"""

# Run in each tree's own process: loads the run, predicts the rows once (for the comparison of
# the trees), then times the eager model and the served form, interleaved, per batch size.
TIME = """
import json, statistics, sys, time
import pandas as pd
import torch
torch.set_num_threads(1)
import polytask
run, rows, repeats, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
predictor = polytask.load(run)
frame = pd.read_csv(rows)
predictor.predict(frame).to_csv(out, index=False)
timings = {}
for batch in json.loads(sys.argv[5]):
    features = predictor.preprocessor.transform(frame.head(batch))
    models = {"eager": predictor.model.eval(), "served": predictor.serving_model}
    seconds = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(5):
            for model in models.values():
                model(features)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(features)
                seconds[name].append(time.perf_counter() - start)
    for name, values in seconds.items():
        timings[f"{name}_batch_{batch}_ms"] = 1000 * statistics.median(values)
print(json.dumps(timings))
"""


def run_python(src: Path, code: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"{src}: {done.stderr[-3000:]}")
    return done.stdout


def train_runs(baseline: Path, folder: Path, epochs: int) -> dict[str, Path]:
    runs = {}
    for arch in ARCHS:
        spec = yaml.safe_load(DEMO.read_text())
        spec["model"].update(arch=arch, num_experts=8, hidden=[16], tower_hidden=[8])
        spec["model"]["options"] = {"top_k": 2} if arch == "task_moe" else {}
        spec["train"].update(epochs=epochs, early_stopping={"patience": None})
        spec["train"].pop("diagnostics_every", None)
        runs[arch] = folder / arch
        run_python(baseline, TRAIN, json.dumps(spec), str(runs[arch]))
    return runs


def rows_file(folder: Path, count: int) -> Path:
    """``count`` validation rows of the demo's data, as raw CSV."""
    from polytask.config import DataSpec
    from polytask.data.tabular import load_splits

    data = DataSpec(**yaml.safe_load(DEMO.read_text())["data"])
    frame = load_splits(data).valid
    assert frame is not None and len(frame) >= count
    path = folder / "rows.csv"
    frame.head(count).to_csv(path, index=False)
    return path


def largest_difference(left: Path, right: Path) -> float:
    import pandas as pd

    a, b = pd.read_csv(left), pd.read_csv(right)
    if list(a.columns) != list(b.columns):
        raise SystemExit(
            f"the trees predict different columns: {list(a.columns)} {list(b.columns)}"
        )
    return float((a - b).abs().to_numpy().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True, help="the earlier tree's src")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of each run")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if not (args.baseline_src / "polytask").is_dir():
        parser.error(f"--baseline-src {args.baseline_src} holds no polytask package")
    machine = machine_info()
    trees = {"this": THIS_SRC, "baseline": args.baseline_src.resolve()}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="polytask-lean-trees-") as temp:
        folder = Path(temp)
        runs = train_runs(trees["baseline"], folder, args.epochs)
        rows = rows_file(folder, max(BATCHES))
        for arch, run in runs.items():
            rounds: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
            for index in range(args.rounds):
                for tree, src in trees.items():
                    out = folder / f"{arch}-{tree}.csv"
                    line = run_python(
                        src,
                        TIME,
                        str(run),
                        str(rows),
                        str(args.repeats),
                        str(out),
                        json.dumps(list(BATCHES)),
                    )
                    rounds[tree].append(json.loads(line.strip().splitlines()[-1]))
                    print(f"{arch} round {index + 1}/{args.rounds} {tree}: {rounds[tree][-1]}")
            results[arch] = summarise(rounds)
            results[arch]["largest_prediction_difference"] = largest_difference(
                folder / f"{arch}-this.csv", folder / f"{arch}-baseline.csv"
            )
    machine["load_average_1m_end"] = os.getloadavg()[0]
    report = {
        "benchmark": "lean_trees",
        "command": "python " + shlex.join(["benchmarks/lean_trees.py", *sys.argv[1:]]),
        "machine": machine,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "results": results,
    }
    for arch, figures in results.items():
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in figures["this_over_baseline"].items())
        difference = figures["largest_prediction_difference"]
        print(f"{arch}: this / baseline: {ratios}; largest prediction difference {difference:.2e}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def summarise(rounds: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Per tree and measure the median over rounds; this tree's over the baseline's."""
    medians = {
        tree: {key: statistics.median(r[key] for r in values) for key in values[0]}
        for tree, values in rounds.items()
    }
    ratios = {key: medians["this"][key] / medians["baseline"][key] for key in medians["this"]}
    return {"rounds": rounds, "median_ms": medians, "this_over_baseline": ratios}


if __name__ == "__main__":
    main()
