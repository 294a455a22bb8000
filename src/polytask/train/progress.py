"""What the user sees while training: a rich progress bar and a per-task table per epoch."""

from __future__ import annotations

import math
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from polytask.console import make_console


def format_metric(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_table(title: str, results: dict[str, dict[str, float]]) -> Group:
    """The title on a line of its own (a table title would wrap at the table's width), then
    one row per task, one column per metric seen in any task."""
    columns: list[str] = []
    for task_metrics in results.values():
        columns += [m for m in task_metrics if m not in columns]
    table = Table()
    table.add_column("task")
    for column in columns:
        table.add_column(column, justify="right")
    for task, task_metrics in results.items():
        table.add_row(task, *(format_metric(task_metrics.get(c)) for c in columns))
    return Group(Text(title, style="italic"), table)


class TrainingDisplay:
    """A progress bar over the batches of each epoch, and a one-line epoch summary."""

    def __init__(self, enabled: bool, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or make_console(stderr=True)
        self._progress: Progress | None = None
        self._bar: Any = None

    def __enter__(self) -> TrainingDisplay:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.console,
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, error, trace)

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        if self._progress is not None:
            self._bar = self._progress.add_task(f"epoch {epoch}/{epochs}", total=batches, status="")

    def advance(self, count: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._bar, count)

    def end_epoch(self, row: dict[str, Any], primary: dict[str, str]) -> None:
        if self._progress is not None:
            self._progress.remove_task(self._bar)
        if not self.enabled:
            return
        parts = [f"epoch {row['epoch']:>3}", f"train loss {row['train_loss']:.4f}"]
        for task, metric in primary.items():
            value = row.get("valid", {}).get(task, {}).get(metric)
            parts.append(f"{task} {metric} {format_metric(value)}")
        parts.append(f"{row['rows_per_second']:,.0f} rows/s")
        if row.get("best"):
            parts.append("[green]best[/green]")
        self.console.print("  ".join(parts))

    def show(self, renderable: Any) -> None:
        if self.enabled:
            self.console.print(renderable)
