"""Where one training epoch's time goes: growing the Census-Income group-1 MMoE by ``expand``
beside training the same MMoE on all three tasks (benchmarks/census_grow.py's two runs).

Trains a one-epoch group-1 base (how fast an epoch is does not depend on how well the base
was trained), then profiles (torch.profiler, CPU) the epochs of a growth with the given
budget and the joint run of examples/census_income.yaml, ``--epochs`` epochs each (the
growth's early stopping cannot end it sooner). Reported per run: each epoch's seconds, their
median, steps, rows per second and the operators taking the most self CPU time per epoch.

    python benchmarks/census_grow_profile.py --json docs/results/census_grow_profile.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from polytask.config import parse_spec
from polytask.grow import grow
from polytask.train.trainer import Trainer, fit

ROOT = Path(__file__).resolve().parents[1]
TOP = 10  # operators listed per run


def profiled_epochs(run: Callable[[], Any]) -> dict[str, Any]:
    """Call ``run`` with every training epoch of the trainer profiled: each epoch's seconds
    and the operators' self CPU time summed over the epochs."""
    original = Trainer._train_epoch
    seconds: list[float] = []
    operators: dict[str, list[float]] = {}  # name -> [self CPU microseconds, calls]
    shape: dict[str, int] = {}

    def wrapped(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            result = original(self, *args, **kwargs)
            seconds.append(time.perf_counter() - started)
        for event in prof.key_averages():
            entry = operators.setdefault(event.key, [0.0, 0])
            entry[0] += event.self_cpu_time_total
            entry[1] += event.count
        shape["rows"], shape["batch"] = len(args[1]), self.spec.train.batch_size
        return result

    Trainer._train_epoch = wrapped  # type: ignore[method-assign]
    try:
        run()
    finally:
        Trainer._train_epoch = original  # type: ignore[method-assign]
    total = sum(value for value, _ in operators.values())
    ranked = sorted(operators.items(), key=lambda item: item[1][0], reverse=True)
    median = float(np.median(seconds))
    return {
        "epoch_seconds": seconds,
        "median_epoch_seconds": median,
        "steps_per_epoch": -(-shape["rows"] // shape["batch"]),
        "batch_size": shape["batch"],
        "rows_per_second": shape["rows"] / median,
        "self_cpu_ms_per_epoch": total / 1000 / len(seconds),
        "top_operators": [
            {
                "name": name,
                "self_cpu_ms_per_epoch": value / 1000 / len(seconds),
                "share": value / total,
                "calls_per_epoch": calls / len(seconds),
            }
            for name, (value, calls) in ranked[:TOP]
        ],
    }


def main() -> None:
    from census_grow import grow_spec, run_spec  # the benchmark's own specs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared/datasets/census_income_kdd"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3, help="epochs profiled per run")
    parser.add_argument("--experts", type=int, default=8, help="new experts for the new task")
    parser.add_argument("--batch", type=int, default=2048, help="growth's batch size")
    parser.add_argument("--lr", type=float, default=0.03, help="growth's learning rate")
    parser.add_argument("--json", type=Path, default=ROOT / "docs/results/census_grow_profile.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = args.data.resolve()
    with tempfile.TemporaryDirectory(prefix="census-grow-profile-") as temp:
        folder = Path(temp)
        raw = run_spec(data, 1, ["income", "never_married"], args.seed)
        raw["train"]["epochs"] = 1
        base = fit(parse_spec(raw), folder / "base", progress=False)
        spec = grow_spec(
            data, args.seed, args.experts, args.epochs, args.epochs, args.batch, args.lr
        )
        grown = profiled_epochs(lambda: grow(base, spec, folder / "grown"))
        raw = run_spec(data, None, ["income", "never_married", "college"], args.seed)
        raw["train"]["epochs"] = args.epochs
        joint = profiled_epochs(lambda: fit(parse_spec(raw), folder / "joint", progress=False))
    report = {
        "command": f"python benchmarks/census_grow_profile.py --seed {args.seed} "
        f"--experts {args.experts} --batch {args.batch} --lr {args.lr} --epochs {args.epochs}",
        "machine": f"{platform.machine()}, 1 torch thread, 2 cores shared with other jobs, no GPU",
        "grow": grown,
        "joint": joint,
        "median_epoch_seconds_ratio": grown["median_epoch_seconds"] / joint["median_epoch_seconds"],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1), flush=True)


if __name__ == "__main__":
    main()
