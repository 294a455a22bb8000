"""The pairwise transfer map (``polytask transfer``) on tasks of known structure, and its cost.

Four regression tasks in two clusters of two (``clustered_tasks``, sizes 2 + 2, within-cluster
weight cosine 0.99, each cluster its own sine terms); shared-bottom [12], towers [8], Adam
3e-3, batch 128, at most 30 epochs (early stopping on validation loss, patience 5), 2,000
training rows. Transfer is expected positive inside a cluster and not across.

    python benchmarks/transfer_synthetic.py --json docs/results/transfer_synthetic.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from polytask.artifacts import run_dir as rd
from polytask.config import parse_spec
from polytask.relations.transfer import TRANSFER, run_transfer_map

NAMES = ["y0", "y1", "y2", "y3"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    spec = parse_spec(
        {
            "data": {
                "dataset": "clustered_tasks",
                "dataset_options": {
                    "sizes": [2, 2],
                    "rows": 2000,
                    "valid_rows": 1000,
                    "test_rows": 2000,
                    "within": 0.995,
                    "cluster_sines": True,
                    "seed": args.seed,
                },
            },
            "tasks": [{"name": n, "kind": "regression", "target": n} for n in NAMES],
            "model": {"arch": "shared_bottom", "hidden": [12], "tower_hidden": [8]},
            "train": {
                "epochs": 30,
                "batch_size": 128,
                "lr": 3e-3,
                "seed": args.seed,
                "threads": 1,
                "early_stopping": {"patience": 5, "monitor": "loss"},
            },
        }
    )
    scratch = Path(tempfile.mkdtemp())
    folder = run_transfer_map(spec, scratch / "map", say=print)
    report = rd.load_json(folder, TRANSFER)
    print("transfer % (row: source, column: target):")
    for name, row in zip(NAMES, report["transfer_percent"], strict=True):
        print(name, ["-" if v is None else f"{v:+.2f}" for v in row])
    print(f"cost: {report['cost']['seconds_per_pair']:.1f} s per pair")
    if args.json:
        from _machine import machine_info

        report.pop("pairs")
        payload = {
            "command": f"python benchmarks/transfer_synthetic.py --seed {args.seed}",
            **report,
            "machine": machine_info(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
