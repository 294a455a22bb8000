"""How a finished study is shown: the Pareto set as a table, and what became of every trial."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.table import Table


def pareto_table(summary: dict[str, Any]) -> Table:
    """The Pareto-optimal trials, sorted by the first objective (best first)."""
    objectives = summary["objectives"]
    first = objectives[0]
    front = [t for t in summary["trials"] if t["pareto"]]
    front.sort(key=lambda t: t["values"][first["name"]], reverse=first["direction"] == "maximize")
    table = Table(title=f"Pareto front ({summary['split']} split): {len(front)} trial(s)")
    table.add_column("trial", justify="right")
    for key in summary["space"]:
        table.add_column(key)
    for objective in objectives:
        arrow = "↑" if objective["direction"] == "maximize" else "↓"
        table.add_column(f"{objective['name']} {arrow}", justify="right")
    table.add_column("run")
    for trial in front:
        table.add_row(
            str(trial["number"]),
            *(str(trial["params"].get(key, "-")) for key in summary["space"]),
            *(f"{trial['values'][o['name']]:.4f}" for o in objectives),
            trial["run"] or "-",
        )
    return table


def state_counts(summary: dict[str, Any]) -> str:
    counts = Counter(t["state"].lower() for t in summary["trials"])
    listed = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    failures = [t for t in summary["trials"] if t["state"] == "FAIL" and not t["interrupted"]]
    lines = [f"{len(summary['trials'])} trials: {listed}; study in {summary['study']}"]
    lines += [f"  trial {t['number']} failed: {t['error']}" for t in failures]
    return "\n".join(lines)
