"""Markdown tables for docs/benchmarks.md from the merging benchmarks' JSON files.

python benchmarks/merge_tables.py            # prints the tables quoted in the docs
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

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


def cell(stats: dict[str, Any] | None, key: str) -> str:
    """Mean ± standard deviation over seeds (percent), as stored in the summary."""
    if not stats:
        return "-"
    mean, std = stats["mean"][key], stats["std"][key]
    return f"{mean:.1f} ± {std:.1f}" if stats["seeds"] > 1 else f"{mean:.1f}"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.1f}"


def images(results: dict[str, Any]) -> str:
    """One table per configuration from the ``summary`` merge_images.py writes."""
    tasks, summary = results["tasks"], results["summary"]
    lines = []
    for name, block in results["configs"].items():
        head = [
            "method",
            *[SHORT[t] for t in tasks],
            "avg polytask",
            "avg FusionBench",
            "merge s polytask",
            "merge s FusionBench",
            "max abs weight difference",
        ]
        lines += [
            f"### {name}: {block['about']}",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        rows = {"pretrained (linear heads)": {"polytask": summary["pretrained"]}}
        rows.update(summary[name]["rows"])
        errors, again = {}, {}
        for label, row in rows.items():
            ours, theirs = row.get("polytask"), row.get("fusionbench")
            if row.get("rerun_checkpoints"):
                again[label] = row["rerun_checkpoints"]
            mark = " (rerun †)" if label in again else ""
            cells = [label + mark, *[cell(ours, t) for t in tasks], cell(ours, "average")]
            cells.append(
                cell(theirs, "average")
                if theirs
                else "failed"
                if row.get("fusionbench_errors")
                else "-"
            )
            cells.append(seconds(ours.get("median_seconds")) if ours else "-")
            cells.append(seconds(theirs.get("median_seconds")) if theirs else "-")
            difference = row.get("max_abs_weight_difference")
            cells.append(
                "-" if difference is None else "0" if difference == 0 else f"{difference:.1e}"
            )
            lines.append("| " + " | ".join(cells) + " |")
            if row.get("fusionbench_errors"):
                errors[label] = row["fusionbench_errors"]
        lines += ["", "Source: docs/results/merge_images.json", ""]
        for label, messages in errors.items():
            lines.append(f"FusionBench, {label}: failed with `{'; '.join(messages)}`.")
        if again:
            lines += ["", rerun_note(results, again), ""]
        lines.append("")
    return "\n".join(lines)


def rerun_note(results: dict[str, Any], again: dict[str, dict[str, Any]]) -> str:
    """What the rows marked † were merged from: the checkpoints the first ``--only`` run
    trained again (retraining is not bit-identical; later reruns reuse them), with their own
    reference accuracies, and the commands in the order they ran."""
    commands = [
        shell(r["command"], r["rows"])
        for r in results.get("reruns", [])
        if set(r["rows"]) & set(again)
    ]
    references = next(iter(again.values()))
    return (
        "† rerun by "
        + ", then ".join(f"`{c}`" for c in commands)
        + ": merged, both libraries, from checkpoints the first of these trained again (the "
        + "later reused them; training is not bit-identical from run to run): on those, "
        + f"individual fine-tuned {cell(references['individual'], 'average')}, joint "
        + f"multi-task {cell(references['joint'], 'average')} (average accuracy, percent); "
        + "the other rows': the full run's (this section's first command)."
    )


def shell(command: str, rows: list[str]) -> str:
    """A rerun's command with its ``--only`` labels quoted for a shell (the JSON stores
    the arguments joined by spaces)."""
    head, _, _ = command.partition(" --only ")
    return head + " --only " + " ".join(quote(row) for row in rows)


def quote(word: str) -> str:
    """Double quotes where they suffice (a label with an apostrophe reads better so)."""
    return f'"{word}"' if not set(word) & set('"$`\\!') else shlex.quote(word)


def census(results: dict[str, Any]) -> str:
    tasks = ["income", "never_married", "college"]
    summary = results["summary"]  # written by merge_census.py
    head = ["model", *tasks, "mean", "merge s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = results["base"]
    lines.append(
        "| base (joint, "
        + str(results["budget"]["base_epochs"])
        + " epochs) | "
        + " | ".join(f"{base[t]:.4f}" for t in tasks)
        + " | - | - |"
    )
    for label, entry in summary.items():
        cells = [label] + [f"{entry['mean'][t]:.4f} ± {entry['std'][t]:.4f}" for t in tasks]
        cells.append(f"{entry['mean']['average']:.4f}")
        cells.append(seconds(entry.get("seconds")))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Source: docs/results/merge_census.json"]
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
