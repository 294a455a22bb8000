"""Start-up time of the ``polytask`` command: what a newcomer waits for before anything happens.

Each command runs in a fresh process, as a user types it, and is timed from launch to exit
(wall clock): ``polytask --help``, ``polytask info RUN``, ``polytask predict RUN small.csv``
(20 rows of the shipped census sample), and for reference ``python -c "import torch"`` (what
any command that runs the model pays) and ``python -c "import torch, pandas"`` (what predicting
on a table pays before polytask does anything). The commands alternate over ``--rounds``
rounds, so that a busy moment of a shared machine hits all of them alike; per command the JSON
holds every time, the minimum (the command's own cost: noise only adds) and the median. They
run as after an ordinary install, with Python's compiled-bytecode cache on (an environment
that sets PYTHONDONTWRITEBYTECODE would otherwise recompile polytask at every start).

A tiny run (one epoch of ``examples/census_income_demo.yaml``) is trained first, in a
temporary folder.

    python benchmarks/startup.py --rounds 10 --json docs/results/startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "census_income_demo.yaml"
MAX_ROUNDS = 100


def polytask_command() -> list[str]:
    """The console script installed beside this interpreter (as a user runs it)."""
    script = Path(sys.executable).with_name("polytask")
    if script.is_file():
        return [str(script)]
    found = shutil.which("polytask")
    if found is None:
        raise SystemExit("the polytask command is not installed (pip install -e .)")
    return [found]


def prepare(folder: Path) -> tuple[Path, Path]:
    """A tiny run and a 20-row CSV of raw inputs for it."""
    import polytask
    from polytask.data.tabular import load_splits

    spec = yaml.safe_load(DEMO.read_text())
    spec["train"].update(epochs=1, early_stopping={"patience": None})
    spec["train"].pop("diagnostics_every", None)
    predictor = polytask.train(spec, out=folder / "run")
    frame = load_splits(predictor.spec.data).test
    assert frame is not None
    rows = folder / "small.csv"
    frame[predictor.preprocessor.input_columns].head(20).to_csv(rows, index=False)
    return predictor.run, rows


ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds must be 1..{MAX_ROUNDS}")
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="polytask-startup-") as temp:
        run, rows = prepare(Path(temp))
        polytask = polytask_command()
        commands = {
            "polytask --help": [*polytask, "--help"],
            "polytask info RUN": [*polytask, "info", str(run)],
            "polytask predict RUN small.csv": [*polytask, "predict", str(run), str(rows)],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "python -c 'import torch, pandas'": [sys.executable, "-c", "import torch, pandas"],
        }
        for command in commands.values():  # warm the file cache and the .pyc files
            timed(command)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(timed(command))
    results = {
        name: {
            "min_s": min(values),
            "median_s": statistics.median(values),
            "max_s": max(values),
            "seconds": values,
        }
        for name, values in times.items()
    }
    machine["load_average_1m_end"] = os.getloadavg()[0]
    report = {
        "benchmark": "startup",
        "command": "python " + shlex.join(["benchmarks/startup.py", *sys.argv[1:]]),
        "machine": machine,
        "rounds": args.rounds,
        "results": results,
    }
    for name, figures in results.items():
        print(
            f"{name:<34} min {figures['min_s']:.2f} s  median {figures['median_s']:.2f} s  "
            f"max {figures['max_s']:.2f} s"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
