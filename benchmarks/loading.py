"""Loading Census-Income: from the file to training tensors, beside ``pandas.read_csv``.

Why this exists: reading the Census-Income training file (199,523 rows x 42 fields) and
turning it into training tensors took about 12 s, longer than 10 training epochs (issue 19).
polytask now reads it with pyarrow's multi-threaded CSV reader (coded fields straight to
pandas categories from Arrow dictionaries) and maps categorical columns per category rather
than per row.

Timed, in one process after one untimed round, alternating for ``--rounds`` rounds (fastest
kept), on the full ``census-income.data.gz`` from ``../shared/datasets/census_income_kdd``
(``--data`` to point elsewhere):

- ``pandas_read_csv``: ``pandas.read_csv`` of the file as polytask read it before (every
  field as text, ``?`` missing, the space after each comma skipped): the reference;
- ``polytask_read``: :func:`polytask.data.datasets.census.read_census_file` (reading,
  trimming, categories, numbers and the three label columns);
- ``to_tensors``: the training file from disk to training tensors: reading, fitting the
  preprocessor and encoding the rows and labels (what ``polytask train`` does before its
  first step on this file).

And once, end to end: ``polytask train examples/census_income_demo.yaml`` in a fresh process
(the shipped 12,000-row sample, 10 epochs), wall-clock seconds. The machine is shared (2
cores, no GPU, other jobs running): the ratio to pandas is the figure to compare.

Run: ``python benchmarks/loading.py --json docs/results/loading.json``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "census_income_kdd"


def pandas_read(path: Path) -> Any:
    import pandas as pd

    from polytask.data.datasets.census import RAW_COLUMNS

    return pd.read_csv(
        path,
        header=None,
        names=RAW_COLUMNS,
        skipinitialspace=True,
        dtype=str,
        na_values=["?"],
        keep_default_na=False,
    )


def to_tensors(path: Path) -> int:
    from polytask.config import parse_spec
    from polytask.data.datasets.census import read_census_file
    from polytask.data.preprocess import Preprocessor

    frame = read_census_file(path).drop(columns=["college"])
    spec = parse_spec(
        {
            "data": {"train": "unused.csv"},
            "tasks": [
                {"name": "income", "kind": "binary", "target": "income"},
                {"name": "never_married", "kind": "binary", "target": "never_married"},
            ],
        }
    )
    pre = Preprocessor.fit(frame, spec.data, spec.tasks)
    tasks = pre.build_tasks(spec.tasks)
    features, labels = pre.transform(frame), pre.encode_labels(frame, tasks)
    return len(features) + len(labels)


def demo_train_seconds() -> float:
    with tempfile.TemporaryDirectory() as folder:
        command = [
            str(Path(sys.executable).parent / "polytask"),  # the installed command
            "train",
            str(ROOT / "examples" / "census_income_demo.yaml"),
            "--out",
            str(Path(folder) / "run"),
            "--quiet",
        ]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import machine_info

    from polytask.data.datasets.census import read_census_file

    path = args.data / "census-income.data.gz"
    steps = {
        "pandas_read_csv": lambda: pandas_read(path),
        "polytask_read": lambda: read_census_file(path),
        "to_tensors": lambda: to_tensors(path),
    }
    for step in steps.values():  # untimed: imports and the file in the page cache
        step()
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            seconds = time.perf_counter() - started
            best[name] = min(best.get(name, seconds), seconds)
    demo = demo_train_seconds()
    results = {
        "seconds": best,
        "read_speedup_over_pandas": best["pandas_read_csv"] / best["polytask_read"],
        "demo_train_seconds": demo,
    }
    for name, seconds in best.items():
        print(f"{name:16s} {seconds:6.2f} s")
    print(f"polytask read {results['read_speedup_over_pandas']:.1f}x faster than pandas.read_csv")
    print(f"polytask train examples/census_income_demo.yaml: {demo:.1f} s end to end")
    if args.json:
        payload = {
            "command": "python benchmarks/loading.py " + " ".join(sys.argv[1:]),
            "machine": machine_info("pandas", "pyarrow"),
            "file": str(path.name),
            "rows": 199523,
            **results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
