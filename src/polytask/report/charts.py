"""The report's figures as data: a chart is titled axes with named series. The same chart is
drawn twice, as an interactive plotly figure and as a static SVG (polytask.report.render), so
the page is readable without JavaScript."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from polytask.report.collect import Collection, RunData
from polytask.tasks import HIGHER_IS_BETTER


@dataclass
class Series:
    name: str
    x: list[float]
    y: list[float]
    mode: str = "lines+markers"  # lines | markers | lines+markers
    text: list[str] | None = None  # hover / annotation text per point
    color_key: str | None = None  # series of one run share a colour across charts
    emphasis: bool = False  # drawn larger (the Pareto front)


@dataclass
class Chart:
    key: str
    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)
    note: str = ""

    @property
    def empty(self) -> bool:
        return not any(s.x for s in self.series)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _curve(run: RunData, pick: Any) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in run.history:
        value = pick(row)
        if _finite(value):
            xs.append(row["epoch"])
            ys.append(float(value))
    return xs, ys


def _valid(row: dict[str, Any], task: str, metric: str) -> Any:
    return (row.get("valid") or {}).get(task, {}).get(metric)


def all_tasks(collection: Collection) -> list[str]:
    tasks: list[str] = []
    for run in collection.runs:
        tasks += [t for t in run.tasks if t not in tasks]
    return tasks


def learning_curves(collection: Collection) -> list[Chart]:
    """Per task, its primary validation metric per epoch, one line per run; then train loss."""
    charts = []
    for task in all_tasks(collection):
        metric = next((r.primary_metric(task) for r in collection.runs if task in r.tasks), None)
        if metric is None:
            continue
        chart = Chart(
            f"curve-{task}",
            f"{task}: validation {metric} per epoch",
            "epoch",
            f"{metric} ({'higher' if HIGHER_IS_BETTER[metric] else 'lower'} is better)",
        )
        for run in collection.runs:
            xs, ys = _curve(run, lambda row, t=task, m=metric: _valid(row, t, m))
            if xs:
                chart.series.append(Series(run.name, xs, ys, color_key=run.name))
        charts.append(chart)
    loss = Chart("curve-loss", "mean training loss per epoch", "epoch", "loss")
    for run in collection.runs:
        xs, ys = _curve(run, lambda row: row.get("train_loss"))
        if xs:
            loss.series.append(Series(run.name, xs, ys, color_key=run.name))
    charts.append(loss)
    return [c for c in charts if not c.empty]


def task_weights(collection: Collection) -> list[Chart]:
    """Per task, the mean weight the balancing method gave it in each epoch, one line per run."""
    charts = []
    for task in all_tasks(collection):
        chart = Chart(f"weights-{task}", f"{task}: mean task weight per epoch", "epoch", "weight")
        for run in collection.runs:
            xs, ys = _curve(run, lambda row, t=task: (row.get("task_weights") or {}).get(t))
            if xs:
                chart.series.append(Series(run.name, xs, ys, color_key=run.name))
        charts.append(chart)
    return [c for c in charts if not c.empty]


def conflicts(collection: Collection) -> Chart:
    """Share of task pairs whose gradients conflict (negative cosine), per epoch and run."""
    chart = Chart(
        "conflicts",
        "gradient conflicts: share of task pairs with a negative gradient cosine",
        "epoch",
        "conflict rate",
    )
    for run in collection.runs:
        xs, ys = _curve(run, lambda row: row.get("conflict_rate"))
        if xs:
            chart.series.append(Series(run.name, xs, ys, color_key=run.name))
    return chart


def pareto_chart(
    key: str,
    title: str,
    labels: tuple[str, str],
    points: list[tuple[str, float, float]],
    front: list[bool],
    maximize: tuple[bool, bool],
) -> Chart:
    """Every point, and the front joined in order of the first objective."""
    arrows = ["↑" if up else "↓" for up in maximize]
    chart = Chart(key, title, f"{labels[0]} {arrows[0]}", f"{labels[1]} {arrows[1]}")
    chart.series.append(
        Series(
            "runs",
            [p[1] for p in points],
            [p[2] for p in points],
            mode="markers",
            text=[p[0] for p in points],
        )
    )
    kept = [p for p, keep in zip(points, front, strict=True) if keep]
    on_front = sorted(kept, key=lambda p: p[1])
    chart.series.append(
        Series(
            "Pareto front",
            [p[1] for p in on_front],
            [p[2] for p in on_front],
            text=[p[0] for p in on_front],
            emphasis=True,
        )
    )
    return chart


def cascade_chart(cascades: list[tuple[str, dict[str, Any]]]) -> Chart:
    """Cascade metric against the share of rows deferred to the full model."""
    chart = Chart(
        "cascade", "confidence cascade: metric against the share of rows deferred", "", ""
    )
    metrics = {report["metric"] for _, report in cascades}
    chart.x_label = "share of rows deferred to the full model"
    chart.y_label = " / ".join(sorted(metrics))
    for name, report in cascades:
        points = [p for p in report["points"] if _finite(p.get("metric"))]
        chart.series.append(
            Series(
                f"{name}: {report['task']}",
                [p["deferred_share"] for p in points],
                [p["metric"] for p in points],
                text=[f"threshold {p['threshold']:.3f}" for p in points],
            )
        )
    return chart


def slim_chart(collection: Collection) -> Chart:
    """For each slim run: parameters and primary metric of the full and the slim model."""
    chart = Chart(
        "slim", "slim runs: parameters against each kept task's metric", "parameters", "metric"
    )
    for run in collection.runs:
        report = run.slim
        if report is None:
            continue
        for task, metric in report["primary_metric"].items():
            before = (report["full"].get("metrics") or {}).get(task, {}).get(metric)
            after = (report["slim"].get("metrics") or {}).get(task, {}).get(metric)
            if not (_finite(before) and _finite(after)):
                continue
            chart.series.append(
                Series(
                    f"{run.name}: {task} {metric}",
                    [report["full"]["parameters"], report["slim"]["parameters"]],
                    [before, after],
                    text=["full", "slim"],
                    color_key=run.name,
                )
            )
    return chart
