"""The report page: sections of tables and charts around one embedded copy of plotly.js.

Every chart is placed as an inline SVG; when JavaScript runs, plotly draws the interactive
version over it (so without JavaScript, or if plotly failed, the SVG stays)."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from polytask import __version__
from polytask.report import tables
from polytask.report.charts import (
    Chart,
    all_tasks,
    cascade_chart,
    conflicts,
    learning_curves,
    pareto_chart,
    slim_chart,
    task_weights,
)
from polytask.report.collect import Collection, RunData, StudyData
from polytask.report.pareto import non_dominated
from polytask.report.render import Palette, embedded_plotly, plotly_json, svg
from polytask.report.tables import esc
from polytask.tasks import HIGHER_IS_BETTER

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; }
header { background: #1f3b57; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; opacity: 0.85; }
nav { padding: 8px 28px; background: #eef2f6; position: sticky; top: 0; z-index: 5; }
nav a { margin-right: 14px; color: #1f3b57; text-decoration: none; }
main { padding: 8px 28px 40px; }
section { margin-top: 26px; }
h2 { border-bottom: 2px solid #1f3b57; padding-bottom: 3px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; }
thead th { background: #f3f5f7; text-align: center; }
tbody th { text-align: left; font-weight: 600; background: #fafbfc; }
td.best { font-weight: 700; background: #e6f4ea; }
table.specs td { text-align: left; font-family: ui-monospace, monospace; font-size: 12px; }
.scroll { overflow-x: auto; }
figure.chart { margin: 10px 0 22px; max-width: 1100px; }
figure.chart .static svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: 12px; }
ul.warnings { color: #a33; }
code { font-size: 12px; }
.note { color: #555; }
"""

SCRIPT = """
window.polytaskReady = false;
document.addEventListener("DOMContentLoaded", function () {
  if (typeof Plotly !== "undefined") {
    document.querySelectorAll("script.figure-data").forEach(function (node) {
      var figure = JSON.parse(node.textContent);
      var holder = document.getElementById(node.dataset.target);
      var live = holder.querySelector(".live");
      live.hidden = false;  // shown before drawing, so that plotly sizes it to the page
      holder.querySelector(".static").hidden = true;
      Plotly.newPlot(live, figure.data, figure.layout, {responsive: true, displaylogo: false});
    });
  }
  window.polytaskReady = true;
});
"""


class Page:
    """Collects sections and charts, then writes the document."""

    def __init__(self) -> None:
        self.palette = Palette()
        self.sections: list[tuple[str, str, str]] = []
        self.figures: list[tuple[str, str]] = []

    def chart(self, chart: Chart, caption: str = "") -> str:
        if chart.empty:
            return ""
        target = f"chart-{len(self.figures)}-{chart.key}"
        self.figures.append((target, plotly_json(chart, self.palette)))
        note = caption or chart.note
        return (
            f'<figure class="chart" id="{esc(target)}">'
            f'<div class="static">{svg(chart, self.palette)}</div>'
            f'<div class="live" hidden></div>'
            + (f"<figcaption>{esc(note)}</figcaption>" if note else "")
            + "</figure>"
        )

    def section(self, key: str, title: str, body: str) -> None:
        if body:
            self.sections.append((key, title, body))

    def document(self, title: str, subtitle: str) -> str:
        nav = "".join(f'<a href="#{key}">{esc(name)}</a>' for key, name, _ in self.sections)
        body = "".join(
            f'<section id="{key}"><h2>{esc(name)}</h2>{content}</section>'
            for key, name, content in self.sections
        )
        data = "".join(
            f'<script type="application/json" class="figure-data" data-target="{esc(target)}">'
            f"{payload}</script>"
            for target, payload in self.figures
        )
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>"
            f"<nav>{nav}</nav><main>{body}</main>{data}"
            f"<script>{embedded_plotly()}</script><script>{SCRIPT}</script></body></html>\n"
        )


def _scroll(html: str) -> str:
    return f'<div class="scroll">{html}</div>'


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def pareto_axes(collection: Collection) -> list[dict[str, Any]]:
    """Two objectives for the front across runs: a study's first two, else the primary
    metrics of the first two tasks."""
    for study in collection.studies:
        objectives = study.summary["objectives"]
        if len(objectives) >= 2:
            return objectives[:2]
    axes = []
    for task in all_tasks(collection)[:2]:
        metric = next(r.primary_metric(task) for r in collection.runs if task in r.tasks)
        direction = "maximize" if HIGHER_IS_BETTER.get(str(metric), True) else "minimize"
        axes.append(
            {"name": f"{task}.{metric}", "metric": f"{task}.{metric}", "direction": direction}
        )
    return axes if len(axes) == 2 else []


def run_value(run: RunData, objective: dict[str, Any], split: str) -> float | None:
    metric = objective["metric"]
    if metric == "parameters":
        value = run.summary.get("parameters")
    elif metric == "latency":
        value = ((run.trial or {}).get("values") or {}).get(objective["name"])
    else:
        task, _, name = metric.rpartition(".")
        value = (run.final.get(split) or {}).get(task, {}).get(name)
    return float(value) if value is not None and _finite(value) else None


def pareto_section(page: Page, collection: Collection, split: str) -> str:
    axes = pareto_axes(collection)
    if not axes:
        return ""
    points: list[tuple[str, float, float]] = []
    for run in collection.runs:
        first, second = (run_value(run, objective, split) for objective in axes[:2])
        if first is not None and second is not None:
            points.append((run.name, first, second))
    if len(points) < 2:
        return ""
    maximize = tuple(o["direction"] == "maximize" for o in axes)
    front = non_dominated([(p[1], p[2]) for p in points], maximize)
    names = [o["name"] for o in axes]
    chart = pareto_chart(
        "pareto-runs",
        f"Pareto front across runs ({split} split): {sum(front)} of {len(points)}",
        (names[0], names[1]),
        points,
        front,
        (maximize[0], maximize[1]),
    )
    left_out = len(collection.runs) - len(points)
    note = f" ({left_out} run(s) without both values left out)" if left_out else ""
    return page.chart(chart, f"task metrics on the {split} split{note}") + tables.pareto_members(
        names, points, front
    )


def study_section(page: Page, study: StudyData) -> str:
    summary = study.summary
    objectives = summary["objectives"]
    body = f"<p>{len(summary['trials'])} trials ({summary['sampler']} sampler), objectives on "
    body += f"the {summary['split']} split; study folder <code>{esc(study.path)}</code></p>"
    if len(objectives) >= 2:
        done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
        names = (objectives[0]["name"], objectives[1]["name"])
        points = [
            (f"trial {t['number']}", t["values"][names[0]], t["values"][names[1]]) for t in done
        ]
        chart = pareto_chart(
            f"pareto-{study.name}",
            f"{study.name}: Pareto front of the study ({len(summary['pareto'])} trials)",
            names,
            points,
            [t["pareto"] for t in done],
            (objectives[0]["direction"] == "maximize", objectives[1]["direction"] == "maximize"),
        )
        body += page.chart(chart)
    return body + _scroll(tables.study_trials(summary))


def build_page(
    collection: Collection,
    *,
    split: str,
    title: str,
    delta: dict[str, float] | None = None,
    baseline_name: str | None = None,
) -> str:
    page = Page()
    runs = collection.runs
    if runs:
        page.section("overview", "Runs", _scroll(tables.overview(runs)))
        page.section("specs", "Specs side by side", _scroll(tables.specs(runs)))
        caption = f"<p class='note'>Final metrics (best epoch) on the {esc(split)} split; best "
        caption += "of each column in bold. score: each run's own overall score (Delta-m when "
        caption += "it was trained with a baseline, else the mean normalised metric).</p>"
        page.section(
            "metrics",
            f"Metrics per task ({split})",
            caption + _scroll(tables.metrics(runs, split, delta, baseline_name)),
        )
        page.section("pareto", "Pareto front across runs", pareto_section(page, collection, split))
    for study in collection.studies:
        page.section(f"study-{study.name}", f"Study {study.name}", study_section(page, study))
    page.section(
        "curves", "Learning curves", "".join(page.chart(c) for c in learning_curves(collection))
    )
    page.section(
        "weights", "Task weights", "".join(page.chart(c) for c in task_weights(collection))
    )
    cosine_tables = [
        f"<details><summary>{esc(run.name)}</summary>{table}</details>"
        for run in runs
        if (table := tables.cosines(run))
    ]
    page.section(
        "conflicts",
        "Gradient conflicts",
        page.chart(conflicts(collection)) + "".join(cosine_tables),
    )
    gated = [run for run in runs if run.experts]
    page.section(
        "experts",
        "Expert utilisation",
        "".join(
            f"<details{' open' if i < 3 else ''}><summary>{esc(run.name)}</summary>"
            f"{_scroll(tables.experts(run))}</details>"
            for i, run in enumerate(gated)
        ),
    )
    slims = [run for run in runs if run.slim]
    if slims:
        page.section(
            "slim",
            "Slim runs",
            page.chart(slim_chart(collection)) + "".join(tables.slim(run) for run in slims),
        )
    if collection.cascades:
        page.section(
            "cascade",
            "Cascades",
            page.chart(cascade_chart(collection.cascades))
            + "".join(tables.cascade(name, report) for name, report in collection.cascades),
        )
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    subtitle = f"{len(runs)} run(s), {len(collection.studies)} study(ies); polytask {__version__}"
    return page.document(title, f"{subtitle}; written {stamp}")
