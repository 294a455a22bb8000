"""Streaming a Parquet table larger than memory (``data.stream``) against training in memory.

A synthetic multi-task table (8 categorical columns of 100 values, stored dictionary-encoded;
8 float32 numeric columns; two binary targets and one regression target that depend on the
features) of ``--rows`` rows (50 million by default) is written under ``--folder`` (runs/ is
never committed), one file per million rows in row groups of 131,072 rows, chunk by chunk so
that generating it needs memory for one chunk only. Written once; a later run reuses it.

Each way runs in its own process (so that its peak resident memory, ``ru_maxrss``, is its
own), with the same spec (MMoE, 8 experts x [64], towers [16], embedding 8, equal
weighting, global batch ``--batch``) and the same ``--steps`` training steps
(``polytask.train.step.train_step``, the trainer's step), reading its batches from:

* ``in memory``: an ``--in-memory-rows`` sample (the first files of the same table) read
  whole, preprocessed and held as tensors: the default path;
* ``streamed``: the whole table streamed (``data.stream``): the preprocessor fitted in one
  pass over every row, then batches from a bounded shuffle buffer of ``--buffer-rows`` rows;
* ``streamed (sample)``: the streamed path on the same sample as the in-memory way, to show
  that its peak memory does not grow with the table's rows.

A 50-million-row epoch would take about an hour on this 2-core machine, so every way trains
a fixed number of steps (the streamed ways over their first rows of an epoch's shuffled row
groups) rather than a whole epoch; the fit pass reads every row. Throughput is training rows
over the training loop's wall time (preparation excluded and reported apart); the ways run
one after the other, ``--rounds`` times alternating, and the JSON keeps every round. The
machine is shared, so its load drifts between rounds: the streamed / in-memory ratio is
taken within each round (the two ran a minute apart) and its median reported. The whole
table's one-pass fit runs in the first round (its time and memory are that round's); later
rounds reuse the fitted preprocessor.
Validation (50,000 rows, another seed) stays in memory for both; the AUC of the first task
after the steps is reported so that both ways are seen to learn alike.

    python benchmarks/stream_parquet.py --rows 50000000 --steps 1900 --rounds 5 --threads 1 \
        --json docs/results/stream_parquet.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
CATEGORICAL, NUMERIC, CARDINALITY = 8, 8, 100
FILE_ROWS, ROW_GROUP_ROWS = 1_000_000, 131_072
VALID_ROWS = 50_000


def chunk(rows: int, seed: int) -> pa.Table:
    """``rows`` rows of the synthetic table, drawn from ``seed`` (one file's worth)."""
    rng = np.random.default_rng(seed)
    effect = np.random.default_rng(12345).normal(size=(CATEGORICAL, CARDINALITY))
    codes = rng.integers(0, CARDINALITY, size=(rows, CATEGORICAL), dtype=np.int32)
    numeric = rng.standard_normal(size=(rows, NUMERIC), dtype=np.float32)
    signal = effect[np.arange(CATEGORICAL), codes].sum(axis=1) / 3 + numeric[:, :4].sum(axis=1)
    values = pa.array([f"v{i}" for i in range(CARDINALITY)])
    columns: dict[str, pa.Array] = {
        f"c{i}": pa.DictionaryArray.from_arrays(pa.array(codes[:, i]), values)
        for i in range(CATEGORICAL)
    }
    columns.update({f"x{i}": pa.array(numeric[:, i]) for i in range(NUMERIC)})
    noise = rng.standard_normal(size=(3, rows), dtype=np.float32)
    columns["click"] = pa.array((signal + noise[0] > 0).astype(np.float32))
    columns["buy"] = pa.array((signal - numeric[:, 5] + noise[1] > 1).astype(np.float32))
    columns["spend"] = pa.array((2.0 * signal + numeric[:, 6] + noise[2]).astype(np.float32))
    return pa.table(columns)


def write_table(folder: Path, rows: int) -> dict[str, Any]:
    """The table as files of FILE_ROWS rows (reused when already complete); its size."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"part-{i:05d}.parquet" for i in range(-(-rows // FILE_ROWS))]
    started = time.perf_counter()
    for index, path in enumerate(files):
        size = min(FILE_ROWS, rows - index * FILE_ROWS)
        if path.exists() and pq.ParquetFile(path).metadata.num_rows == size:
            continue
        temp = path.with_suffix(".partial")
        pq.write_table(chunk(size, seed=index), temp, row_group_size=ROW_GROUP_ROWS)
        temp.rename(path)
    return {
        "files": len(files),
        "rows": rows,
        "bytes": sum(path.stat().st_size for path in files),
        "write_seconds": round(time.perf_counter() - started, 1),
    }


def linked(folder: Path, source: Path, files: int) -> Path:
    """A folder holding links to the first ``files`` files of ``source`` (a sample)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("part-*.parquet"))[:files]:
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    return folder


def spec(train: Path, valid: Path, args: argparse.Namespace, stream: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "train": str(train),
        "valid": str(valid),
        "categorical": [f"c{i}" for i in range(CATEGORICAL)],
        "numeric": [f"x{i}" for i in range(NUMERIC)],
    }
    if stream:
        data["stream"] = {"buffer_rows": args.buffer_rows, "batch_rows": args.batch_rows}
    else:
        data["split"] = {"valid": 0.0, "test": 0.0}
    return {
        "data": data,
        "tasks": [
            {"name": "click", "kind": "binary", "target": "click"},
            {"name": "buy", "kind": "binary", "target": "buy"},
            {"name": "spend", "kind": "regression", "target": "spend"},
        ],
        "model": {
            "arch": "mmoe",
            "num_experts": 8,
            "hidden": [64],
            "tower_hidden": [16],
            "embedding_dim": 8,
        },
        "train": {"batch_size": args.batch, "lr": 0.002, "seed": 0, "device": "cpu"},
    }


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    """One way, in this process: prepare, train ``--steps`` steps, print a JSON line."""
    import torch

    from polytask.config import parse_spec
    from polytask.inference.evaluation import evaluate
    from polytask.model import model_for
    from polytask.train.distributed import World
    from polytask.train.optim import build_optimizer
    from polytask.train.prepare import prepare
    from polytask.train.step import train_step
    from polytask.train.trainer import build_balancer, seed_everything

    torch.set_num_threads(args.threads)
    run = parse_spec(spec(Path(args.train), Path(args.valid), args, args.mode == "streamed"))
    seed_everything(0)
    fitted = Path(args.preprocessor) if args.preprocessor else None
    state = json.loads(fitted.read_text()) if fitted and fitted.exists() else None
    started = time.perf_counter()
    prepared = prepare(run, state)
    prepare_seconds = time.perf_counter() - started
    if fitted and state is None:
        fitted.write_text(json.dumps(prepared.preprocessor.state))
    after_prepare = peak_mib()
    rows = prepared.train_rows()
    model = model_for(run.model, prepared.preprocessor, prepared.tasks)
    balancer = build_balancer(run, len(prepared.tasks))
    optimizer = build_optimizer(list(model.parameters()), run.train)
    weights = torch.ones(len(prepared.tasks))
    model.train()
    seen, step = 0, 0
    started = time.perf_counter()
    batches = rows.batches(args.batch, 0, 1, World())
    for batch, counted in batches:
        train_step(model, batch.features, batch.labels, prepared.tasks, balancer, optimizer,
                   weights, step)  # fmt: skip
        seen += counted
        step += 1
        if step == args.steps:
            break
    seconds = time.perf_counter() - started
    valid = prepared.splits["valid"]
    metrics = evaluate(model, valid.features, valid.labels, prepared.tasks, 16384)
    result = {
        "table_rows": len(rows),
        "fitted_here": state is None,
        "prepare_seconds": round(prepare_seconds, 1),
        "peak_rss_mib_after_prepare": round(after_prepare),
        "steps": step,
        "rows_trained": seen,
        "train_seconds": round(seconds, 2),
        "rows_per_second": round(seen / seconds),
        "peak_rss_mib": round(peak_mib()),
        "valid_click_auc": round(metrics["click"]["auc"], 4),
    }
    print(json.dumps(result), flush=True)


def way(
    args: argparse.Namespace, mode: str, train: Path, valid: Path, fitted: Path | None
) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--train", str(train)]
    if fitted is not None:
        command += ["--preprocessor", str(fitted)]
    command += ["--valid", str(valid), "--steps", str(args.steps), "--batch", str(args.batch)]
    command += ["--buffer-rows", str(args.buffer_rows), "--batch-rows", str(args.batch_rows)]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--folder", type=Path, default=ROOT / "runs" / "stream_parquet")
    parser.add_argument("--in-memory-rows", type=int, default=2_000_000)
    parser.add_argument("--steps", type=int, default=1900)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--buffer-rows", type=int, default=262_144)
    parser.add_argument("--batch-rows", type=int, default=65_536)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=["in-memory", "streamed"], help=argparse.SUPPRESS)
    parser.add_argument("--train", help=argparse.SUPPRESS)
    parser.add_argument("--valid", help=argparse.SUPPRESS)
    parser.add_argument("--preprocessor", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return
    info = machine_info("pyarrow")
    table = write_table(args.folder / "table", args.rows)
    print(f"table: {table}", flush=True)
    valid = args.folder / "valid.parquet"
    if not valid.exists():
        pq.write_table(chunk(VALID_ROWS, seed=999_999), valid)
    sample = linked(args.folder / "sample", args.folder / "table", args.in_memory_rows // FILE_ROWS)
    # the whole table's one-pass fit runs in the first round; later rounds reuse its result
    fitted = args.folder / "preprocessor.json"
    fitted.unlink(missing_ok=True)
    ways = {
        "in memory": ("in-memory", sample, None),
        "streamed": ("streamed", args.folder / "table", fitted),
        "streamed (sample)": ("streamed", sample, None),
    }
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in ways}
    for index in range(args.rounds):
        for name, (mode, train, reused) in ways.items():
            result = way(args, mode, train, valid, reused)
            rounds[name].append(result)
            print(f"round {index + 1}: {name}: {result}", flush=True)
    summary = {
        name: {
            "table_rows": results[0]["table_rows"],
            "rows_per_second_median": statistics.median(r["rows_per_second"] for r in results),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in results),
            "prepare_seconds_fit": next(r["prepare_seconds"] for r in results if r["fitted_here"]),
            "rounds": results,
        }
        for name, results in rounds.items()
    }
    # the ways of one round ran within a minute or two, under about the same load
    ratios = [
        streamed["rows_per_second"] / memory["rows_per_second"]
        for streamed, memory in zip(rounds["streamed"], rounds["in memory"], strict=True)
    ]
    result = {
        "command": " ".join(["python", "benchmarks/stream_parquet.py", *sys.argv[1:]]),
        "machine": info,
        "table": table,
        "in_memory_rows": args.in_memory_rows,
        "steps": args.steps,
        "global_batch": args.batch,
        "buffer_rows": args.buffer_rows,
        "batch_rows": args.batch_rows,
        "threads": args.threads,
        "ways": summary,
        "streamed_over_in_memory_per_round": [round(r, 3) for r in ratios],
        "streamed_over_in_memory_median": round(statistics.median(ratios), 3),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
