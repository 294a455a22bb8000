"""What MLflow tracking costs: the Census demo (examples/census_income_demo.yaml) trained with
and without ``track.mlflow`` in one process, alternating, several rounds.

Every tracked run logs what ``track: {mlflow: true}`` logs: parameters, every epoch's metrics,
the run directory and the pyfunc model, into a local SQLite store. One tracked and one plain run
come first, untimed: the first tracked run of a process also pays for importing MLflow and
creating the store, reported apart; so is what a new process pays before its first tracked
epoch once the store exists (importing MLflow, opening the store). Inside tracked runs the time
spent in the tracker's own calls (epoch logging, the final artifacts and model) is measured
too, and each run's CPU time (one torch thread: the process's own work, which other processes
on a shared machine disturb less than its wall time).

    python benchmarks/mlflow_overhead.py --rounds 12 --json docs/results/mlflow_overhead.json

MLflow's usage telemetry (background threads posting to mlflow.org) is switched off
(``MLFLOW_DISABLE_TELEMETRY``, unless set otherwise): it is MLflow's, not polytask's, and on a
machine without network its failing requests would only add noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from _machine import machine_info

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import polytask
from polytask.track.mlflow_run import MlflowRun

ROOT = Path(__file__).resolve().parents[1]


class TrackerClock:
    """Adds up the seconds spent inside the tracker's calls."""

    def __init__(self) -> None:
        self.seconds = 0.0
        for name in ("connect", "on_epoch", "finish"):
            original = getattr(MlflowRun, name)
            setattr(MlflowRun, name, self._timed(original))

    def _timed(self, method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return wrapper


def train_once(spec: dict, out: Path, uri: str | None, clock: TrackerClock) -> dict[str, float]:
    before = clock.seconds
    started, cpu_started = time.perf_counter(), time.process_time()
    polytask.train(spec, out, overwrite=True, mlflow=uri)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    summary = json.loads((out / "summary.json").read_text())
    return {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "tracker_seconds": clock.seconds - before,
        "epochs": summary["epochs_run"],
    }


PROCESS_START = """
import time
from pathlib import Path
import polytask  # torch and polytask: a plain run pays for them too
from polytask.config import TrackSpec
started = time.perf_counter()
from polytask.track.mlflow_run import MlflowRun
tracker = MlflowRun(TrackSpec(mlflow={uri!r}), Path({out!r}), resume=False)
tracker.connect()
print(time.perf_counter() - started)
"""


def process_start_seconds(uri: str, out: Path, repeats: int = 3) -> list[float]:
    """What a new process pays before its first tracked epoch, with the store already made:
    importing MLflow and opening the store (median of a few fresh interpreters)."""
    code = PROCESS_START.format(uri=uri, out=str(out))
    return [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1])
        for _ in range(repeats)
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = yaml.safe_load((ROOT / "examples" / "census_income_demo.yaml").read_text())
    spec["train"]["threads"] = args.threads
    clock = TrackerClock()
    info = machine_info("mlflow-skinny", "sqlalchemy")
    with tempfile.TemporaryDirectory(prefix="mlflow-overhead-") as scratch:
        folder = Path(scratch)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        first = train_once(spec, folder / "warm-tracked", uri, clock)
        train_once(spec, folder / "warm-plain", None, clock)
        print(f"first tracked run (MLflow import, store creation): {first}", flush=True)
        rounds = []
        for index in range(args.rounds):
            order = ("tracked", "plain") if index % 2 == 0 else ("plain", "tracked")
            result = {}
            for kind in order:
                target = folder / f"{kind}-{index}"
                result[kind] = train_once(spec, target, uri if kind == "tracked" else None, clock)
            result["ratio"] = result["tracked"]["wall_seconds"] / result["plain"]["wall_seconds"]
            result["cpu_ratio"] = result["tracked"]["cpu_seconds"] / result["plain"]["cpu_seconds"]
            rounds.append(result)
            print(f"round {index}: {json.dumps(result)}", flush=True)
        starts = process_start_seconds(uri, folder / "probe")
        print(f"new process, existing store: import + connect {starts} s", flush=True)
    report = {
        "command": f"python benchmarks/mlflow_overhead.py --rounds {args.rounds}",
        "spec": "examples/census_income_demo.yaml",
        "threads": args.threads,
        "machine": info,
        "first_tracked_run": first,
        "new_process_import_and_connect_seconds": starts,
        "rounds": rounds,
        **summarise(rounds),
        "mlflow_telemetry_disabled": os.environ.get("MLFLOW_DISABLE_TELEMETRY"),
    }
    print(
        f"tracked / plain CPU time: median {report['median_cpu_ratio']:.3f}; "
        f"wall time: median {report['median_ratio']:.3f}, "
        f"total {report['total_ratio']:.3f}; time inside the tracker: "
        f"{report['tracker_seconds_per_run']:.2f} s per run, "
        f"{100 * report['tracker_share_of_tracked_wall']:.1f} % of a tracked run"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def summarise(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """The aggregates docs/benchmarks.md quotes, from the rounds."""
    ratios = [r["ratio"] for r in rounds]
    tracked = sum(r["tracked"]["wall_seconds"] for r in rounds)
    plain = sum(r["plain"]["wall_seconds"] for r in rounds)
    per_run = [r["tracked"]["tracker_seconds"] for r in rounds]
    return {
        "median_ratio": statistics.median(ratios),
        "median_cpu_ratio": statistics.median(r["cpu_ratio"] for r in rounds),
        "total_ratio": tracked / plain,
        "tracker_share_of_tracked_wall": sum(per_run) / tracked,
        "tracker_seconds_per_run": sum(per_run) / len(rounds),
        "tracker_seconds_median": statistics.median(per_run),
        "tracker_seconds_over_plain_wall": sum(per_run) / plain,
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--summarise":  # refresh the aggregates only
        path = Path(sys.argv[2])
        saved = json.loads(path.read_text())
        saved.update(summarise(saved["rounds"]))
        path.write_text(json.dumps(saved, indent=2) + "\n")
    else:
        main()
