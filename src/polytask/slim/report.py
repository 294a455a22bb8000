"""What slimming bought and cost: size, speed and quality of the full and the slim model.

Both models are measured in the same process on the same preprocessed rows, latency
interleaved (full, slim, full, ...) so that machine noise hits both alike. Quality is each kept
task's metrics on labelled rows (the run's validation rows by default); for an extraction that
is not exact this is the number that says whether the cut was worth it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from rich.table import Table
from torch import nn

from polytask.data.preprocess import Preprocessor
from polytask.features import Features
from polytask.inference.predict import predict_logits
from polytask.tasks import HIGHER_IS_BETTER, Task

LATENCY_BATCHES = (1, 1024)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def synthetic_rows(preprocessor: Preprocessor, count: int, seed: int = 0) -> Features:
    """Random preprocessed rows (valid codes, standard-normal values, random missing flags):
    for timing and export checks when no real rows are at hand."""
    generator = torch.Generator().manual_seed(seed)
    columns = [
        torch.randint(0, cardinality, (count, 1), generator=generator)
        for cardinality in preprocessor.cardinalities
    ]
    categorical = torch.cat(columns, 1) if columns else torch.zeros(count, 0, dtype=torch.int64)
    width = len(preprocessor.numeric)
    values = torch.randn(count, width, generator=generator)
    flags = (torch.rand(count, width, generator=generator) < 0.1).float()
    return Features(categorical, torch.cat([values.masked_fill(flags.bool(), 0.0), flags], 1))


def batch_of(rows: Features, size: int) -> Features:
    """``size`` rows, cycling through ``rows`` when there are fewer."""
    return rows.take(torch.arange(size) % len(rows))


@torch.inference_mode()
def latency_ms(
    models: Sequence[nn.Module],
    tasks: Sequence[Sequence[Task]],
    rows: Features,
    batch_sizes: Sequence[int] = LATENCY_BATCHES,
    repeats: int = 20,
    warmup: int = 3,
) -> list[dict[str, float]]:
    """Median milliseconds of one prediction (forward pass and user-scale outputs) per model
    and batch size, measured interleaved after ``warmup`` untimed calls each."""
    for model in models:
        model.eval()
    results: list[dict[str, float]] = [{} for _ in models]
    for size in batch_sizes:
        batch = batch_of(rows, size)
        timings: list[list[float]] = [[] for _ in models]
        for round_number in range(warmup + repeats):
            for index, (model, model_tasks) in enumerate(zip(models, tasks, strict=True)):
                started = time.perf_counter()
                logits = model(batch).logits
                for task, task_logits in zip(model_tasks, logits, strict=True):
                    task.outputs(task_logits)
                elapsed = time.perf_counter() - started
                if round_number >= warmup:
                    timings[index].append(1000.0 * elapsed)
        for result, timing in zip(results, timings, strict=True):
            result[f"batch_{size}"] = statistics.median(timing)
    return results


def user_outputs(
    model: nn.Module, tasks: Sequence[Task], rows: Features, batch_size: int
) -> dict[str, torch.Tensor]:
    """User-scale outputs (probabilities, regression values) per task name."""
    logits = predict_logits(model, rows, batch_size)
    return {task.name: task.outputs(out) for task, out in zip(tasks, logits, strict=True)}


def task_metrics(
    outputs: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    tasks: Sequence[Task],
    weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Each task's metrics from its outputs and encoded labels; ``weights``: the sample
    weights [N] (``data.weight``) of the tasks that have them, which weight the metrics as
    evaluation does, so that the slim run's quality is judged as the run's was."""
    results = {}
    for task in tasks:
        encoded = labels[task.name].numpy()
        found = (weights or {}).get(task.name)
        results[task.name] = task.metrics(
            outputs[task.name].numpy(),
            task.decode_labels(encoded),
            None if found is None else found.numpy(),
        )
    return results


def max_difference(full: dict[str, torch.Tensor], slim: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between the two models' outputs over the slim tasks."""
    worst = 0.0
    for name, values in slim.items():
        gap = (full[name] - values).abs()
        worst = max(worst, float(gap.max()) if gap.numel() else 0.0)
    return worst


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _change(full: Any, slim: Any, relative: bool) -> str:
    if not isinstance(full, int | float) or not isinstance(slim, int | float):
        return "-"
    if math.isnan(full) or math.isnan(slim):
        return "-"
    if relative:
        return f"{100.0 * (slim - full) / full:+.1f}%" if full else "-"
    return f"{slim - full:+.4f}"


def report_table(report: dict[str, Any]) -> Table:
    """The report as a table: size, speed and each kept task's metric, full vs slim."""
    full, slim = report["full"], report["slim"]
    table = Table(title=f"slim {report['source_run']} -> {report['output']}")
    table.add_column("")
    table.add_column("full", justify="right")
    table.add_column("slim", justify="right")
    table.add_column("change", justify="right")
    for label, key in (("parameters", "parameters"), ("weights (bytes)", "weights_bytes")):
        table.add_row(label, _fmt(full[key]), _fmt(slim[key]), _change(full[key], slim[key], True))
    for field, form in (("latency_ms", "as served"), ("latency_ms_eager", "eager")):
        for key, value in full.get(field, {}).items():
            label = f"latency {key.replace('_', ' ')} (ms, median, {form})"
            other = slim[field][key]
            table.add_row(label, _fmt(value, 3), _fmt(other, 3), _change(value, other, True))
    for task, metric in report["primary_metric"].items():
        before = full["metrics"].get(task, {}).get(metric) if full["metrics"] else None
        after = slim["metrics"].get(task, {}).get(metric) if slim["metrics"] else None
        direction = "higher" if HIGHER_IS_BETTER[metric] else "lower"
        table.add_row(
            f"{task} {metric} ({direction} is better)",
            _fmt(before),
            _fmt(after),
            _change(before, after, False),
        )
    return table


def report_lines(report: dict[str, Any]) -> list[str]:
    """Plain lines under the table: exactness, kept experts, where the rows came from, notes."""
    difference = report.get("max_abs_difference")
    shown = "" if difference is None else f" (max |slim - full| on the rows: {difference:.2e})"
    lines = [f"exact: {'yes' if report['exact'] else 'no'}{shown}"]
    forms = [report[side].get("serving_form") for side in ("full", "slim")]
    if all(forms):
        lines.append(
            f"served as: full {forms[0]}, slim {forms[1]} (lean: the folded form of "
            "polytask.inference.lean; eager: the model as trained)"
        )
    for level in report.get("experts") or []:
        lines.append(
            f"level {level['level']}: kept {len(level['kept'])} of {level['total']} experts "
            f"{level['kept']}"
        )
    rows = report.get("rows") or {}
    if rows.get("source"):
        lines.append(f"measured on {rows['count']} rows: {rows['source']}")
    lines.extend(f"note: {note}" for note in report.get("notes") or [])
    return lines
