"""Markdown tables for docs/benchmarks.md from the merging benchmarks' JSON files.

python benchmarks/merge_tables.py            # prints the tables quoted in the docs
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from merge_census import summary as census_summary

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
SHORT = {
    "mnist_plain": "M",
    "mnist_rot90": "M-rot",
    "mnist_inverted": "M-inv",
    "mnist_patches": "M-perm",
    "fashion_plain": "F",
    "fashion_rot90": "F-rot",
    "fashion_inverted": "F-inv",
    "fashion_patches": "F-perm",
}


def spread(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "-"
    mean, std = float(np.mean(values)) * scale, float(np.std(values)) * scale
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def seconds(values: list[float]) -> str:
    if not values:
        return "-"
    value = float(np.median(values))
    return f"{value:.3f}" if value < 1 else f"{value:.1f}"


def row(
    tasks: list[str],
    label: str,
    per_seed: list[dict[str, Any]],
    theirs: list[dict[str, Any]],
    ours_s: list[float],
    theirs_s: list[float],
) -> str:
    """One table row: per-task and average accuracy over seeds, FusionBench's, the times."""
    cells = [label]
    for task in tasks:
        cells.append(spread([r["per_task"][task] for r in per_seed]))
    cells.append(spread([r["average"] for r in per_seed]))
    cells.append(spread([r["average"] for r in theirs]) if theirs else "-")
    cells += [seconds(ours_s), seconds(theirs_s)]
    return "| " + " | ".join(cells) + " |"


def images(results: dict[str, Any]) -> str:
    tasks = results["tasks"]
    lines = []
    for name, block in results["configs"].items():
        seeds = list(block["seeds"].values())
        head = [
            "method",
            *[SHORT[t] for t in tasks],
            "avg polytask",
            "avg FusionBench",
            "merge s polytask",
            "merge s FusionBench",
        ]
        lines += [
            f"### {name}: {block['about']}",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]

        lines.append(row(tasks, "pretrained (linear heads)", [results["pretrained"]], [], [], []))
        lines.append(
            row(tasks, "individual fine-tuned", [s["individual"] for s in seeds], [], [], [])
        )
        lines.append(row(tasks, "joint multi-task", [s["joint"] for s in seeds], [], [], []))
        for label in results["methods"]:
            ours = [s["polytask"][label] for s in seeds if label in s.get("polytask", {})]
            theirs = [
                s["fusionbench"]["methods"][label]
                for s in seeds
                if label in s.get("fusionbench", {}).get("methods", {})
                and "average" in s["fusionbench"]["methods"][label]
            ]
            ours_s, theirs_s = [r["seconds"] for r in ours], [r["seconds"] for r in theirs]
            lines.append(row(tasks, label, ours, theirs, ours_s, theirs_s))
        failures = {
            label: record["error"]
            for s in seeds
            for label, record in s.get("fusionbench", {}).get("methods", {}).items()
            if "error" in record
        }
        for label, error in failures.items():
            lines.append(f"\nFusionBench, {label}: failed with `{error}`")
        diffs = [
            record.get("max_abs_difference_to_polytask")
            for s in seeds
            for record in s.get("fusionbench", {}).get("methods", {}).values()
            if record.get("max_abs_difference_to_polytask") is not None
        ]
        if diffs:
            lines.append(
                f"\nLargest weight difference between the two libraries' merges where both "
                f"wrote weights: {max(diffs):.2e}"
            )
        lines.append("")
    return "\n".join(lines)


def census(results: dict[str, Any]) -> str:
    tasks = ["income", "never_married", "college"]
    summary = results.get("summary") or census_summary(results)
    head = ["model", *tasks, "mean", "merge s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = results["base"]
    lines.append(
        "| base (joint, "
        + str(results["budget"]["base_epochs"])
        + " epochs) | "
        + " | ".join(f"{base[t]:.4f}" for t in tasks)
        + f" | {np.mean([base[t] for t in tasks]):.4f} | - |"
    )
    for label, entry in summary.items():
        cells = [label] + [f"{entry['mean'][t]:.4f} ± {entry['std'][t]:.4f}" for t in tasks]
        cells.append(f"{entry['mean']['average']:.4f}")
        cells.append(seconds([entry["seconds"]]) if "seconds" in entry else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    for name, render in (("merge_images.json", images), ("merge_census.json", census)):
        path = RESULTS / name
        if path.is_file():
            print(f"## {name}\n")
            print(render(json.loads(path.read_text())))
            print()


if __name__ == "__main__":
    main()
