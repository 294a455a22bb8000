"""Pivoting a large long-format table: streamed (in parts, Arrow's hash aggregation) beside
in memory.

Why this exists: issue 19 asks that a long table (one row per entity, task and label) be
pivoted "streaming where the table is large". :func:`polytask.data.long_stream.stream_to_wide`
spills the file as it is scanned to parts split by entity and reduces them one by one;
:func:`polytask.data.long.to_wide` reads it whole into pandas first. Both give the same
frame (tests/data/test_long_stream.py); this measures what each costs.

Data: synthetic long Parquet tables written in row groups: ``--entities`` entities, each
with ``--labels`` of ``--tasks`` binary tasks (distinct, drawn at random; one table per
value given, so that the long table grows while the wide one stays), 8 numeric and
4 categorical inputs per entity repeated on each of its rows; the rows of every block of
100,000 entities shuffled. Each way runs in a fresh process (the peak resident memory is that
process's, ``VmHWM``, imports included), ``--rounds`` times alternating, fastest kept; a
bare process that only imports what both import is measured too, as the floor.

Run: ``python benchmarks/long_pivot.py --json docs/results/long_pivot.json``
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
BLOCK = 100_000


def write_table(path: Path, entities: int, tasks: int, labels: int, seed: int = 0) -> int:
    """The long table at ``path`` (one Parquet file, a row group per block); its row count."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    names = np.array([f"t{t}" for t in range(tasks)])
    writer, rows = None, 0
    for start in range(0, entities, BLOCK):
        count = min(BLOCK, entities - start)
        ids = np.arange(start, start + count)
        chosen = np.argsort(rng.random((count, tasks)), axis=1)[:, :labels]  # distinct tasks
        entity = np.repeat(ids, labels)
        order = rng.permutation(len(entity))
        columns: dict[str, Any] = {
            "id": pa.array([f"u{i}" for i in entity[order]]),
            "task": pa.array(names[chosen.ravel()[order]]),
            "y": pa.array(rng.integers(0, 2, size=len(entity)).astype(np.float64)),
        }
        numeric = rng.normal(size=(count, 8))
        for j in range(8):
            columns[f"x{j}"] = pa.array(np.repeat(numeric[:, j], labels)[order])
        categories = rng.integers(0, 50, size=(count, 4))
        for j in range(4):
            values = np.array([f"c{v}" for v in range(50)])[categories[:, j]]
            columns[f"c{j}"] = pa.array(np.repeat(values, labels)[order])
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
        rows += table.num_rows
    assert writer is not None
    writer.close()
    return rows


CHILD = """
import json, sys, time
from pathlib import Path
started = time.perf_counter()
from polytask.config import parse_spec
way, path, tasks = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
targets = [f"t{t}" for t in range(tasks)]
spec = parse_spec({
    "data": {"train": str(path), "format": "long", "entity": "id", "task_column": "task",
             "label_column": "y"},
    "tasks": [{"name": t, "kind": "binary", "target": t} for t in targets],
})
imported = time.perf_counter()
entities = 0
if way == "in_memory":
    from polytask.data.long import to_wide
    from polytask.data.readers import read_table
    entities = len(to_wide(read_table(path), spec.data, targets, str(path)))
elif way == "streamed":
    from polytask.data.long_stream import stream_to_wide
    entities = len(stream_to_wide(path, spec.data, targets, str(path)))
else:
    import pyarrow, pandas  # noqa: F401  (what both ways import)
done = time.perf_counter()
# VmHWM is this program's peak (ru_maxrss would include the parent's, kept across exec)
peak = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
print(json.dumps({"way": way, "seconds": done - imported, "entities": entities,
                  "peak_rss_mib": int(peak.split()[1]) / 1024}))
"""


def run_child(way: str, path: Path, tasks: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, way, str(path), str(tasks)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args: argparse.Namespace, labels: int) -> dict[str, Any]:
    """One table (``labels`` labelled tasks per entity): each way's fastest round."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long.parquet"
        started = time.perf_counter()
        rows = write_table(path, args.entities, args.tasks, labels)
        size = path.stat().st_size / 2**20
        print(
            f"{rows:,} rows ({labels} labels an entity), {size:.0f} MiB on disk, "
            f"written in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        best: dict[str, dict[str, Any]] = {}
        for _ in range(args.rounds):
            for way in ("floor", "in_memory", "streamed"):
                result = run_child(way, path, args.tasks)
                print(result, flush=True)
                kept = best.get(way)
                if kept is None or result["seconds"] < kept["seconds"]:
                    best[way] = result
    return {
        "labels_per_entity": labels,
        "rows": rows,
        "file_mib": size,
        "ways": best,
        "memory_ratio": best["in_memory"]["peak_rss_mib"] / best["streamed"]["peak_rss_mib"],
        "time_ratio": best["in_memory"]["seconds"] / best["streamed"]["seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument(
        "--labels", type=int, nargs="+", default=[3, 12], help="labelled tasks per entity"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import machine_info

    machine = machine_info("pandas", "pyarrow")
    tables = [measure(args, labels) for labels in args.labels]
    machine["load_average_1m_end"] = os.getloadavg()[0]
    payload = {
        "command": "python benchmarks/long_pivot.py " + " ".join(sys.argv[1:]),
        "machine": machine,
        "entities": args.entities,
        "tasks": args.tasks,
        "tables": tables,
    }
    print(json.dumps({k: v for k, v in payload.items() if k != "machine"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
