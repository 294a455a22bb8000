"""Markdown tables for docs/benchmarks.md from the adapter benchmarks' JSON files.

python benchmarks/adapters_tables.py          # prints the tables quoted in the docs
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from merge_tables import SHORT, cell

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def header(head: list[str]) -> list[str]:
    """A markdown table's header row and rule."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def images(results: dict[str, Any]) -> str:
    tasks = results["tasks"]
    head = [
        "row",
        *[SHORT[t] for t in tasks],
        "average",
        "trained parameters",
        "train s (fastest seed)",
    ]
    lines = header(head)
    for label, row in results["summary"].items():
        seconds = row["fastest_train_seconds"]
        cells = [
            label,
            *[cell(row, t) for t in tasks],
            cell(row, "average"),
            f"{row['trainable_parameters']:,}",
            f"{seconds:.1f}" if seconds else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nSource: docs/results/adapters_images.json"


def throughput(results: dict[str, Any]) -> str:
    head = [
        "backbone",
        "inference rows/s polytask",
        "inference rows/s PEFT",
        "inference speed-up",
        "largest possible",
        "training rows/s polytask",
        "training rows/s PEFT",
        "training speed-up",
        "max abs logit difference",
    ]
    lines = header(head)
    for name, record in results["backbones"].items():
        infer, train = record["inference"], record["training"]
        lines.append(
            f"| {name} | {infer['polytask_rows_per_second']:,.0f} | "
            f"{infer['peft_rows_per_second']:,.0f} | {infer['speedup']:.2f}x | "
            f"{infer['largest_possible_speedup']:.2f}x | "
            f"{train['polytask_rows_per_second']:,.0f} | {train['peft_rows_per_second']:,.0f} | "
            f"{train['speedup']:.2f}x | {record['max_abs_logit_difference']:.1e} |"
        )
    return "\n".join(lines) + "\n\nSource: docs/results/adapters_throughput.json"


def census(results: dict[str, Any]) -> str:
    head = ["new task by", "college test AUC", "trained parameters", "train s (fastest seed)"]
    lines = header(head)
    summary = results["summary"]
    for way, label in (
        ("expand", "grow, expand (8 new experts)"),
        ("lora", "LoRA adapters (rank 4)"),
    ):
        row = summary[way]
        lines.append(
            f"| {label} | {row['college_auc_mean']:.4f} ± {row['college_auc_std']:.4f} | "
            f"{row['trainable_parameters']:,} | {row['train_seconds_fastest']:.1f} |"
        )
    return "\n".join(lines) + "\n\nSource: docs/results/census_adapters.json"


def main() -> None:
    for name, table in (
        ("adapters_images", images),
        ("adapters_throughput", throughput),
        ("census_adapters", census),
    ):
        path = RESULTS / f"{name}.json"
        if path.is_file():
            print(table(json.loads(path.read_text())), end="\n\n")


if __name__ == "__main__":
    main()
