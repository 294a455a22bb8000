"""Loading Census-Income: from the file to training tensors, beside ``pandas.read_csv``.

Why this exists: reading the Census-Income training file (199,523 rows x 42 fields) and
turning it into training tensors took about 12 s, longer than 10 training epochs (issue 19).
polytask reads it with pyarrow's multi-threaded CSV reader (coded fields straight to pandas
categories from Arrow dictionaries), maps categorical columns per category rather than per
row, and keeps the encoded tensors of a file in a cache keyed by its content
(:mod:`polytask.data.cache`) for the next run on it.

Timed, in one process after one untimed round, alternating for ``--rounds`` rounds (fastest
kept), on the full ``census-income.data.gz`` from ``../shared/datasets/census_income_kdd``
(``--data`` to point elsewhere):

- ``pandas_read_csv``: ``pandas.read_csv`` of the file as polytask read it before (every
  field as text, ``?`` missing, the space after each comma skipped): the reference;
- ``polytask_read``: :func:`polytask.data.datasets.census.read_census_file` (reading,
  trimming, categories, numbers and the three label columns);
- ``to_tensors``: the training file from disk to training tensors: reading, fitting the
  preprocessor and encoding the rows and labels (what ``polytask train`` does before its
  first step on this file), no cache;
- ``prepare_cold`` / ``prepare_warm``: :func:`polytask.train.prepare.prepare` of the
  ``census_income`` dataset (the training file and the test file, split into valid and test;
  all three splits encoded), with the cache off, and again from a cache hit (a cache folder
  of its own, in a temporary directory); ``demo_prepare_cold`` / ``demo_prepare_warm``: the
  same for the demo's ``census_income_sample`` (12,000 + 6,000 rows).

- ``plain_csv_pandas`` / ``plain_csv_polytask``: a user's own CSV, the same rows written as
  a plain comma-separated file (41 columns, 88 MB, in the temporary folder), read by
  ``pandas.read_csv`` and by :func:`polytask.data.readers.read_table` (pyarrow's reader,
  giving the frame pandas gives; checked equal once).

Then in fresh processes (``--rounds`` each, fastest kept): ``fresh_process_to_tensors``, the
seconds from starting Python to the training tensors of the file (imports included, no
cache), and ``polytask train examples/census_income_demo.yaml`` (the shipped 12,000-row
sample) end to end, once with an empty cache folder (``demo_train_cold``, which also writes
the entry) and once with that entry (``demo_train_warm``). The machine is shared: the load
average is recorded at the start and at the end.

Run: ``python benchmarks/loading.py --json docs/results/loading.json``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "census_income_kdd"
TASKS = [
    {"name": "income", "kind": "binary", "target": "income"},
    {"name": "never_married", "kind": "binary", "target": "never_married"},
]
# a fresh process: from starting Python to the training tensors of the file given as argv[1]
FRESH = """
import sys, time
started = time.perf_counter()
sys.path.insert(0, sys.argv[2])
from loading import to_tensors
from pathlib import Path
to_tensors(Path(sys.argv[1]))
print(time.perf_counter() - started)
"""


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
    spec = parse_spec({"data": {"train": "unused.csv"}, "tasks": TASKS})
    pre = Preprocessor.fit(frame, spec.data, spec.tasks)
    tasks = pre.build_tasks(spec.tasks)
    features, labels = pre.transform(frame), pre.encode_labels(frame, tasks)
    return len(features) + len(labels)


def prepare_census(folder: Path | None, cache: str) -> int:
    """All three splits of the census_income dataset in ``folder`` (None: the demo's
    census_income_sample) as tensors, the cache ``on`` or ``off`` (its folder set by the
    caller)."""
    from polytask.config import parse_spec
    from polytask.train.prepare import prepare

    os.environ["POLYTASK_TENSOR_CACHE"] = cache
    data: dict[str, Any] = {"dataset": "census_income_sample"}
    if folder is not None:
        data = {"dataset": "census_income", "dataset_options": {"path": str(folder)}}
    spec = parse_spec({"data": data, "tasks": TASKS})
    return sum(len(split) for split in prepare(spec).splits.values())


def fresh_process_seconds(path: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-c", FRESH, str(path), str(Path(__file__).parent)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "POLYTASK_TENSOR_CACHE": "off"},
    )
    return float(done.stdout.strip().splitlines()[-1])


def demo_train_seconds(cache_root: Path) -> float:
    """``polytask train`` on the Census demo in a fresh process, the cache under ``cache_root``."""
    with tempfile.TemporaryDirectory() as folder:
        command = [
            str(Path(sys.executable).parent / "polytask"),  # the installed command
            "train",
            str(ROOT / "examples" / "census_income_demo.yaml"),
            "--out",
            str(Path(folder) / "run"),
            "--quiet",
        ]
        environment = {**os.environ, "POLYTASK_CACHE": str(cache_root)}
        environment["POLYTASK_TENSOR_CACHE"] = "on"
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=environment)
        return time.perf_counter() - started


def fastest(steps: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """The fastest of ``rounds`` alternating rounds of every step."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            seconds = time.perf_counter() - started
            best[name] = min(best.get(name, seconds), seconds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--demo-rounds", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import pandas as pd
    from _machine import machine_info

    from polytask.data.datasets.census import read_census_file
    from polytask.data.readers import read_table

    machine = machine_info("pandas", "pyarrow")
    path = args.data / "census-income.data.gz"
    with tempfile.TemporaryDirectory() as cache_root:
        os.environ["POLYTASK_CACHE"] = cache_root
        plain = Path(cache_root) / "census.csv"
        read_census_file(path).to_csv(plain, index=False)
        plain_frame = read_table(plain)
        pd.testing.assert_frame_equal(plain_frame, pd.read_csv(plain, low_memory=False))
        steps = {
            "plain_csv_pandas": lambda: pd.read_csv(plain, low_memory=False),
            "plain_csv_polytask": lambda: read_table(plain),
            "pandas_read_csv": lambda: pandas_read(path),
            "polytask_read": lambda: read_census_file(path),
            "to_tensors": lambda: to_tensors(path),
            "prepare_cold": lambda: prepare_census(args.data, "off"),
            "prepare_warm": lambda: prepare_census(args.data, "on"),
            "demo_prepare_cold": lambda: prepare_census(None, "off"),
            "demo_prepare_warm": lambda: prepare_census(None, "on"),
        }
        for step in steps.values():  # untimed: imports, the files in the page cache, the entry
            step()
        best = fastest(steps, args.rounds)
    best["fresh_process_to_tensors"] = min(fresh_process_seconds(path) for _ in range(args.rounds))
    demo_cold, demo_warm = [], []
    for _ in range(args.demo_rounds):
        with tempfile.TemporaryDirectory() as demo_cache:
            demo_cold.append(demo_train_seconds(Path(demo_cache)))  # an empty cache: encodes
            demo_warm.append(demo_train_seconds(Path(demo_cache)))  # the entry just written
    best["demo_train_cold"], best["demo_train_warm"] = min(demo_cold), min(demo_warm)
    machine["load_average_1m_end"] = os.getloadavg()[0]
    results = {
        "seconds": best,
        "read_speedup_over_pandas": best["pandas_read_csv"] / best["polytask_read"],
        "cache_speedup": best["prepare_cold"] / best["prepare_warm"],
        "plain_csv_speedup_over_pandas": best["plain_csv_pandas"] / best["plain_csv_polytask"],
    }
    for name, seconds in best.items():
        print(f"{name:26s} {seconds:7.2f} s")
    print(f"polytask read {results['read_speedup_over_pandas']:.1f}x faster than pandas.read_csv")
    print(f"a cache hit prepares the splits {results['cache_speedup']:.1f}x faster")
    print(
        f"load average: {machine['load_average_1m_start']:.2f} at the start, "
        f"{machine['load_average_1m_end']:.2f} at the end"
    )
    if args.json:
        payload = {
            "command": "python benchmarks/loading.py " + " ".join(sys.argv[1:]),
            "machine": machine,
            "file": str(path.name),
            "rows": 199523,
            "rows_prepared": 199523 + 99762,
            **results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
