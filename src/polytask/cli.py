"""The ``polytask`` command: each subcommand parses its options and calls the Python API.

User mistakes (a bad config, bad data, a missing run) print one line and exit with code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from polytask.errors import PolytaskError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train one model for many tasks; evaluate and predict on raw rows.",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Report PolytaskError as one line with exit code 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PolytaskError as error:
            err.print(f"[bold red]error:[/bold red] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML run specification.")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory to create.")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue a killed run from its last checkpoint.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    baseline: Annotated[Path | None, typer.Option(help="Single-task run for Delta-m.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override train.seed.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar or tables.")] = False,
) -> None:
    """Train a multi-task model into a run directory."""
    from polytask.config import load_spec
    from polytask.train.trainer import fit

    if resume is not None:
        if config is not None:
            raise PolytaskError("--resume continues a run with its saved config; give no CONFIG")
        fit(None, resume, resume=True, progress=not quiet)
        return
    if config is None:
        raise PolytaskError("give a CONFIG file (or --resume RUN)")
    spec = load_spec(config)
    if seed is not None:
        spec.train.seed = seed
    if baseline is not None:
        spec.train.baseline = baseline.resolve()
    target = out_dir or Path("runs") / config.stem
    fit(spec, target, overwrite=overwrite, progress=not quiet)


@app.command()
@user_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    data: Annotated[Path | None, typer.Option(help="Labelled CSV or Parquet rows.")] = None,
    split: Annotated[
        str | None, typer.Option(help="Or: the run's own 'valid' or 'test' split.")
    ] = None,
    baseline: Annotated[Path | None, typer.Option(help="Single-task run for Delta-m.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per-task metrics and the overall score of a run on labelled rows."""
    from polytask.api import load
    from polytask.data.tabular import load_splits, read_table
    from polytask.train.progress import metrics_table
    from polytask.train.trainer import load_baseline

    predictor = load(run)
    if (data is None) == (split is None):
        raise PolytaskError("give exactly one of --data FILE or --split valid|test")
    if data is not None:
        frame = read_table(data)
        split_name = "test"
    else:
        if split not in ("valid", "test"):
            raise PolytaskError(f"--split must be 'valid' or 'test' (got '{split}')")
        frame = getattr(load_splits(predictor.spec.data), split)
        if frame is None:
            raise PolytaskError(f"the run's data has no {split} split")
        split_name = split
    baseline_path = baseline or predictor.spec.train.baseline
    baseline_metrics = load_baseline(baseline_path)
    report = predictor.evaluate(
        frame,
        baseline_metrics.get(split_name) if baseline_metrics else None,
        str(baseline_path) if baseline_metrics else None,
    )
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    out.print(metrics_table(f"{run} on {data or split} ({len(frame)} rows)", report["metrics"]))
    score = report["score"]
    out.print(f"{score['name']} = {score['value']:.4f} {score['unit']} ({score['meaning']})")


@app.command()
@user_errors
def predict(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    data: Annotated[Path, typer.Argument(help="Raw rows: CSV or Parquet.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write CSV or Parquet here.")
    ] = None,
    keep: Annotated[
        list[str] | None, typer.Option(help="Input columns to copy into the output.")
    ] = None,
) -> None:
    """Predict every task for raw rows (missing values and unseen categories allowed)."""
    from polytask.api import load
    from polytask.artifacts.atomic import write_atomic
    from polytask.data.tabular import PARQUET_SUFFIXES, read_table
    from polytask.errors import DataError

    predictor = load(run)
    frame = read_table(data)
    predictions = predictor.predict(frame)
    for column in reversed(keep or []):
        if column not in frame.columns:
            raise DataError(f"--keep names column '{column}', which is not in {data}")
        predictions.insert(0, column, frame[column].to_numpy())
    if output is None:
        predictions.to_csv(sys.stdout, index=False)
        return
    if output.suffix.lower() in PARQUET_SUFFIXES:
        write_atomic(output, lambda temp: predictions.to_parquet(temp, index=False))
    else:
        write_atomic(output, lambda temp: predictions.to_csv(temp, index=False))
    err.print(f"{len(predictions)} rows of predictions written to {output}")


@app.command()
@user_errors
def info(run: Annotated[Path, typer.Argument(help="A finished run directory.")]) -> None:
    """Show a run's tasks, architecture, input columns and summary."""
    from polytask.api import load

    predictor = load(run)
    summary = predictor.summary()
    out.print_json(
        json.dumps(
            {
                "run": str(predictor.run),
                "tasks": {t.name: t.kind.value for t in predictor.tasks},
                "inputs": {
                    "categorical": predictor.preprocessor.categorical,
                    "numeric": predictor.preprocessor.numeric,
                },
                "summary": summary,
            },
            default=str,
        )
    )


@app.command()
@user_errors
def archs() -> None:
    """List the sharing architectures and the options each takes in model.options."""
    from rich.table import Table

    from polytask.arch import ARCHS

    table = Table(title="architectures (model.arch) and their model.options")
    table.add_column("arch")
    table.add_column("what it is")
    table.add_column("options (default): meaning")
    for name in ARCHS.names():
        cls = ARCHS.get(name)
        summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        options = [
            f"{key} ({field.default!r}): {field.description or ''}".rstrip(": ")
            for key, field in cls.Options.model_fields.items()
        ]
        table.add_row(name, summary, "\n".join(options) or "-")
    out.print(table)


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
