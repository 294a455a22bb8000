"""The Pareto plot of a study: every completed trial on the first two objectives, the Pareto
set highlighted and joined, its points labelled with their parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_pareto(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, second = summary["objectives"][:2]
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    front = sorted((t for t in done if t["pareto"]), key=lambda t: t["values"][first["name"]])
    figure, axes = plt.subplots(figsize=(7.5, 5.2))
    axes.scatter(
        [t["values"][first["name"]] for t in done],
        [t["values"][second["name"]] for t in done],
        color="0.65",
        s=22,
        label="trials",
    )
    xs = [t["values"][first["name"]] for t in front]
    ys = [t["values"][second["name"]] for t in front]
    axes.plot(xs, ys, color="tab:red", marker="o", label="Pareto front")
    for trial, x, y in zip(front, xs, ys, strict=True):
        label = ", ".join(str(v) for v in trial["params"].values())
        axes.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.set_xlabel(f"{first['name']} ({first['direction']})")
    axes.set_ylabel(f"{second['name']} ({second['direction']})")
    axes.set_title(f"{len(done)} completed trials, {len(front)} on the Pareto front")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
