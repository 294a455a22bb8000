"""The report's tables, as HTML. Every number cell carries its exact value in ``data-value``
(the text shows it rounded), so the page can be checked against the runs' files."""

from __future__ import annotations

import html
import math
from typing import Any

from polytask.report.collect import RunData
from polytask.tasks import HIGHER_IS_BETTER
from polytask.track.flatten import flatten_spec


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else esc(value)
    if not math.isfinite(value):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def cell(value: Any, digits: int = 4, css: str = "", **data: Any) -> str:
    attributes = "".join(f' data-{k.replace("_", "-")}="{esc(v)}"' for k, v in data.items())
    if isinstance(value, int | float) and not isinstance(value, bool):
        attributes += f' data-value="{esc(repr(value))}"'
    klass = f' class="{css}"' if css else ""
    return f"<td{klass}{attributes}>{number(value, digits)}</td>"


def table(headers: list[str], rows: list[str], css: str = "", table_id: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    identity = f' id="{esc(table_id)}"' if table_id else ""
    klass = f' class="{css}"' if css else ""
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    return f"<table{identity}{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def overview(runs: list[RunData]) -> str:
    rows = []
    for run in runs:
        summary = run.summary
        balance = summary.get("balance") or {}
        method = balance.get("method") if isinstance(balance, dict) else balance
        state = run.trial["state"].lower() if run.trial else ""
        rows.append(
            f"<th>{esc(run.name)}</th><td>{esc(summary.get('arch', '-'))}</td>"
            f"<td>{esc(method or run.spec.get('balance', {}).get('method', '-'))}</td>"
            f"<td>{esc(', '.join(run.tasks))}</td>"
            + cell(summary.get("epochs_run"))
            + cell(summary.get("best_epoch"))
            + cell(summary.get("parameters"))
            + cell(summary.get("train_seconds"), 1)
            + f"<td>{esc(state)}</td><td><code>{esc(run.path)}</code></td>"
        )
    headers = ["run", "arch", "balance", "tasks", "epochs", "best epoch", "parameters",
               "train s", "trial", "directory"]  # fmt: skip
    return table(headers, rows, "overview", "overview")


def specs(runs: list[RunData]) -> str:
    """Flattened specs side by side: the keys that differ first, all keys folded below."""
    flat = [flatten_spec(run.spec) for run in runs]
    keys: list[str] = []
    for spec in flat:
        keys += [k for k in spec if k not in keys]
    differing = [k for k in keys if len({spec.get(k) for spec in flat}) > 1]

    def rows(selected: list[str]) -> list[str]:
        return [
            f"<th>{esc(key)}</th>" + "".join(f"<td>{esc(spec.get(key, '-'))}</td>" for spec in flat)
            for key in selected
        ]

    headers = ["key", *(run.name for run in runs)]
    parts = []
    if len(runs) > 1:
        shown = (
            table(headers, rows(differing), "specs", "specs-differing")
            if differing
            else ("<p>The specs are identical.</p>")
        )
        parts.append(f"<h3>Keys that differ ({len(differing)})</h3>{shown}")
    parts.append(
        f"<details{' open' if len(runs) == 1 else ''}><summary>All keys ({len(keys)})</summary>"
        f"{table(headers, rows(keys), 'specs', 'specs-all')}</details>"
    )
    return "".join(parts)


def metric_columns(runs: list[RunData], split: str) -> list[tuple[str, str]]:
    columns: list[tuple[str, str]] = []
    for run in runs:
        for task, metrics in (run.final.get(split) or {}).items():
            columns += [(task, m) for m in metrics if m != "loss" and (task, m) not in columns]
    return columns


def metrics(
    runs: list[RunData],
    split: str,
    delta: dict[str, float] | None,
    baseline_name: str | None,
) -> str:
    """Per task and metric, each run's final value on ``split``; the best of each column in
    bold; the run's overall score, and Delta-m against the chosen baseline run."""
    columns = metric_columns(runs, split)
    best: dict[tuple[str, str], float] = {}
    for task, metric in columns:
        values = [(run.final.get(split) or {}).get(task, {}).get(metric) for run in runs]
        finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
        if finite:
            pick = max if HIGHER_IS_BETTER.get(metric, True) else min
            best[(task, metric)] = pick(finite)
    rows = []
    for run in runs:
        results = run.final.get(split) or {}
        row = f"<th>{esc(run.name)}</th>"
        for task, metric in columns:
            value = results.get(task, {}).get(metric)
            css = "best" if value is not None and value == best.get((task, metric)) else ""
            row += cell(value, css=css, run=run.name, task=task, metric=metric)
        score = (run.summary.get("score") or {}).get(split) or {}
        row += cell(score.get("value"), run=run.name, metric=f"score:{score.get('name', '')}")
        row += f"<td>{esc(score.get('name', '-'))}</td>"
        if delta is not None:
            row += cell(delta.get(run.name), 3, run=run.name, metric="delta_m")
        rows.append(row)
    arrows = {m: "↑" if HIGHER_IS_BETTER.get(m, True) else "↓" for _, m in columns}
    headers = ["run", *(f"{t} {m} {arrows[m]}" for t, m in columns), "score", "score is"]
    if delta is not None:
        headers.append(f"Delta-m vs {baseline_name} (%)")
    return table(headers, rows, "metrics", f"metrics-{split}")


def experts(run: RunData) -> str:
    """Mean gate weight per task and expert, shaded; gate entropy; collapse warnings."""
    report = run.experts
    assert report is not None
    top = max((max(v) for v in report["utilisation"].values()), default=1.0) or 1.0
    rows = []
    for task in report["tasks"]:
        row = f"<th>{esc(task)}</th>"
        for value in report["utilisation"][task]:
            alpha = 0.08 + 0.8 * value / top
            style = f' style="background: rgba(31, 119, 180, {alpha:.2f})"'
            row += f'<td{style} data-value="{esc(repr(value))}">{value:.3f}</td>'
        row += cell(report["gate_entropy"][task], 3)
        rows.append(row)
    headers = ["task", *(f"expert {e}" for e in range(report["num_experts"]))]
    headers.append(f"gate entropy (max {report['max_entropy']:.3f})")
    warnings = "".join(f"<li>{esc(w)}</li>" for w in report.get("warnings") or [])
    listed = f"<ul class='warnings'>{warnings}</ul>" if warnings else ""
    return table(headers, rows, "experts") + listed


def cosines(run: RunData) -> str | None:
    """The task-gradient cosine matrix of the run's last epoch that measured one."""
    row = next((r for r in reversed(run.history) if r.get("gradient_cosine")), None)
    if row is None:
        return None
    names = list(row.get("task_weights") or run.tasks)
    body = []
    for i, name in enumerate(names):
        line = f"<th>{esc(name)}</th>"
        for value in row["gradient_cosine"][i]:
            tint = "rgba(214, 39, 40, 0.35)" if value < 0 else "rgba(44, 160, 44, 0.18)"
            line += (
                f'<td style="background: {tint}" data-value="{esc(repr(value))}">{value:+.3f}</td>'
            )
        body.append(line)
    caption = f"<p>epoch {row['epoch']}, conflict rate {number(row.get('conflict_rate'), 3)}</p>"
    return caption + table(["task", *names], body, "cosine")


def study_trials(summary: dict[str, Any]) -> str:
    objectives = summary["objectives"]
    rows = []
    for trial in summary["trials"]:
        values = trial.get("values") or {}
        row = f"<th>{trial['number']}</th><td>{esc(trial['state'].lower())}</td>"
        row += "".join(f"<td>{esc(trial['params'].get(k, '-'))}</td>" for k in summary["space"])
        row += "".join(cell(values.get(o["name"]), metric=o["name"]) for o in objectives)
        row += f"<td>{'✓' if trial['pareto'] else ''}</td><td>{esc(trial.get('run') or '-')}</td>"
        reason = trial.get("error") or (
            f"pruned at epoch {trial['pruned_at_epoch']}" if trial.get("pruned_at_epoch") else ""
        )
        row += f"<td>{esc(reason)}</td>"
        rows.append(row)
    arrows = {o["name"]: "↑" if o["direction"] == "maximize" else "↓" for o in objectives}
    headers = ["trial", "state", *summary["space"], *(f"{n} {a}" for n, a in arrows.items())]
    headers += ["Pareto", "run", "note"]
    return table(headers, rows, "trials")


def pareto_members(
    labels: list[str], points: list[tuple[str, float, float]], front: list[bool]
) -> str:
    rows = [
        f"<th>{esc(name)}</th>" + cell(x) + cell(y) + f"<td>{'✓' if keep else ''}</td>"
        for (name, x, y), keep in zip(points, front, strict=True)
    ]
    return table(["run", *labels, "on the front"], rows, "pareto")


def slim(run: RunData) -> str:
    report = run.slim
    assert report is not None
    full, small = report["full"], report["slim"]
    rows = [
        "<th>parameters</th>" + cell(full["parameters"]) + cell(small["parameters"]),
        "<th>weights (bytes)</th>" + cell(full["weights_bytes"]) + cell(small["weights_bytes"]),
    ]
    for key, value in (full.get("latency_ms") or {}).items():
        label = f"latency {key.replace('_', ' ')} (ms, median)"
        rows.append(f"<th>{esc(label)}</th>" + cell(value, 3) + cell(small["latency_ms"][key], 3))
    for task, metric in report["primary_metric"].items():
        before = (full.get("metrics") or {}).get(task, {}).get(metric)
        after = (small.get("metrics") or {}).get(task, {}).get(metric)
        rows.append(f"<th>{esc(task)} {esc(metric)}</th>" + cell(before) + cell(after))
    caption = (
        f"<p>{esc(report['source_run'])} → {esc(report['output'])}; exact: "
        f"{'yes' if report.get('exact') else 'no'}</p>"
    )
    return caption + table(["", "full", "slim"], rows, "slim")


def cascade(name: str, report: dict[str, Any]) -> str:
    metric = report["metric"]
    match = report.get("cheapest_matching_full")
    rows = [
        "<th>slim only</th>" + cell(report["slim_only"].get(metric)),
        "<th>full only</th>" + cell(report["full_only"].get(metric)),
    ]
    if match:
        rows.append(
            f"<th>deferring {100 * match['deferred_share']:.1f}% (threshold "
            f"{match['threshold']:.3f})</th>" + cell(match.get("metric"))
        )
    return f"<p>{esc(name)}: task {esc(report['task'])}, {esc(metric)}</p>" + table(
        ["", metric], rows, "cascade"
    )
