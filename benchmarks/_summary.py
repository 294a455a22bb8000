"""The aggregates a benchmark's JSON carries for docs/benchmarks.md, derived from its raw runs.

A table quotes a mean over seeds, a median, a count of wins; tests/docs/test_benchmark_figures.py
requires each such figure to be stored in the JSON the table names. The scripts compute it
with their ``summarise`` function when they run, and ``--summarise FILE`` recomputes it from
the committed raw results without running anything again.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (numpy's default, ddof 0: the seeds are the whole sample
    reported) and median of some values."""
    array = np.asarray(values, dtype=float)
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "median": float(np.median(array)),
    }


def write_json(path: Path, payload: dict[str, Any], indent: int | None = 2) -> None:
    """Write through a temporary file and rename, so that an interrupted write leaves the
    previous results whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=indent) + "\n")
    os.replace(partial, path)


def resummarise(
    path: Path, summarise: Callable[[dict[str, Any]], dict[str, Any]], indent: int | None = 2
) -> dict[str, Any]:
    """Replace the ``summary`` of a committed results JSON with one derived from its runs."""
    payload = json.loads(path.read_text())
    payload["summary"] = summarise(payload)
    write_json(path, payload, indent)
    return payload["summary"]


def add_summarise_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--summarise",
        type=Path,
        metavar="JSON",
        help="recompute the summary of this results JSON from its raw runs; run nothing",
    )


def summarised(
    args: argparse.Namespace,
    summarise: Callable[[dict[str, Any]], dict[str, Any]],
    indent: int | None = 2,
) -> bool:
    """Refresh ``args.summarise``'s summary and say so, when the option was given."""
    if args.summarise is None:
        return False
    print(json.dumps(resummarise(args.summarise, summarise, indent), indent=2))
    return True
