"""Training a spec into a run directory and comparing runs, for the trainer's tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from polytask.config import parse_spec
from polytask.train.trainer import fit

# Wall-clock fields of an epoch row: the only ones two identical runs may differ in.
TIMING_KEYS = {"seconds", "rows_per_second"}


def train(spec: dict[str, Any], out: Path, **options: Any) -> Path:
    return fit(parse_spec(spec), out, progress=False, **options)


def epoch_rows(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
