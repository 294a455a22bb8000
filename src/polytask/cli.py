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


def labelled_rows(spec: Any, data: Path | None, split: str | None) -> Any:
    """The rows ``--data FILE`` names, or the run's own ``--split valid|test``."""
    from polytask.data.tabular import load_splits, read_table

    if data is not None:
        return read_table(data)
    if split not in ("valid", "test"):
        raise PolytaskError(f"--split must be 'valid' or 'test' (got '{split}')")
    frame = getattr(load_splits(spec.data), split)
    if frame is None:
        raise PolytaskError(f"the run's data has no {split} split")
    return frame


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
    from polytask.train.progress import metrics_table
    from polytask.train.trainer import load_baseline

    if (data is None) == (split is None):
        raise PolytaskError("give exactly one of --data FILE or --split valid|test")
    predictor = load(run)
    frame = labelled_rows(predictor.spec, data, split)
    split_name = split or "test"
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
    if report["skipped"]:
        out.print(f"not evaluated (no label columns in these rows): {', '.join(report['skipped'])}")
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


def _default_text(field: Any) -> str:
    """An option's default as shown by `polytask archs` ('required' when it has none)."""
    if field.is_required():
        return "required"
    return repr(field.get_default(call_default_factory=True))


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
        if not cls.listed:  # internal: what slimming saves
            continue
        summary = cls.summary()
        options = [
            f"{key} ({_default_text(field)}): {field.description or ''}".rstrip(": ")
            for key, field in cls.Options.model_fields.items()
        ]
        table.add_row(name, summary, "\n".join(options) or "-")
    out.print(table)


@app.command()
@user_errors
def serve(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    tasks: Annotated[
        list[str] | None,
        typer.Option(help="Answer only these tasks (repeat, or comma-separated)."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_rows: Annotated[int, typer.Option(help="Most rows in one request (else 413).")] = 1024,
    batch_window_ms: Annotated[
        float, typer.Option(help="How long a request may wait for others to batch with.")
    ] = 2.0,
    max_batch_rows: Annotated[int, typer.Option(help="Most rows in one model call.")] = 1024,
    max_queue_rows: Annotated[
        int, typer.Option(help="Most rows waiting for the model (else 503).")
    ] = 16384,
    threads: Annotated[
        int, typer.Option(help="torch intra-op threads; 1 suits small micro-batches best.")
    ] = 1,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve a run over HTTP: POST /v1/predict, GET /v1/tasks, GET /healthz."""
    from polytask.serve import run_server

    names = [name.strip() for item in tasks or [] for name in item.split(",") if name.strip()]
    run_server(
        run,
        tasks=names or None,
        host=host,
        port=port,
        max_rows=max_rows,
        batch_window_ms=batch_window_ms,
        max_batch_rows=max_batch_rows,
        max_queue_rows=max_queue_rows,
        threads=threads,
        access_log=access_log,
    )


@app.command()
@user_errors
def cascade(
    slim_run: Annotated[Path, typer.Argument(help="The slim (cheap) run directory.")],
    full_run: Annotated[Path, typer.Argument(help="The full run directory.")],
    task: Annotated[str, typer.Option(help="The binary or multiclass task to cascade.")],
    data: Annotated[Path | None, typer.Option(help="Labelled CSV or Parquet rows.")] = None,
    split: Annotated[
        str | None, typer.Option(help="Or: the full run's own 'valid' or 'test' split.")
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for cascade.json and cascade.png."),
    ] = None,
    low: Annotated[float, typer.Option(help="Lowest confidence threshold.")] = 0.5,
    high: Annotated[float, typer.Option(help="Highest confidence threshold.")] = 1.0,
    steps: Annotated[int, typer.Option(help="Number of thresholds.")] = 21,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Slim run answers, full run takes the rows the slim one is unsure of: metric vs share
    deferred, across confidence thresholds."""
    import numpy as np
    from rich.table import Table

    from polytask.api import load
    from polytask.serve.cascade import run_cascade

    if (data is None) == (split is None):
        raise PolytaskError("give exactly one of --data FILE or --split valid|test")
    if steps < 1 or not low <= high:
        raise PolytaskError("--steps must be at least 1 and --low at most --high")
    full = load(full_run)
    frame = labelled_rows(full.spec, data, split)
    thresholds = [float(t) for t in np.linspace(low, high, steps)]
    report = run_cascade(
        slim_run, full, task, frame, out_dir or Path(f"cascade-{task}"), thresholds
    )
    if as_json:
        out.print_json(json.dumps(report))
        return
    metric = report["metric"]
    table = Table(title=f"cascade: {task}, {report['labelled_rows']} rows")
    for column in ("threshold", "deferred", metric):
        table.add_column(column, justify="right")

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for point in report["points"]:
        table.add_row(
            f"{point['threshold']:.3f}",
            f"{100 * point['deferred_share']:.1f}%",
            shown(point["metric"]),
        )
    out.print(table)
    out.print(
        f"slim only: {metric} {shown(report['slim_only'][metric])}; "
        f"full only: {metric} {shown(report['full_only'][metric])}"
    )
    match = report["cheapest_matching_full"]
    if match is not None:
        out.print(
            f"within {match['tolerance']:g} of the full model deferring "
            f"{100 * match['deferred_share']:.1f}% of rows (threshold {match['threshold']:.3f})"
        )
    out.print(f"written: {report['files']['json']}, {report['files']['plot']}")


@app.command()
@user_errors
def slim(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    tasks: Annotated[
        list[str], typer.Option("--tasks", help="A task to keep; repeat for several.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Slim run directory to create.")],
    threshold: Annotated[
        float,
        typer.Option(help="Gated archs: keep experts whose mean gate weight is above this."),
    ] = 0.01,
    data: Annotated[
        Path | None, typer.Option(help="Labelled rows to measure on (default: validation rows).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing directory.")] = False,
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed predictions per model and batch size.")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Cut a standalone run holding only what the named tasks use, and report the change."""
    from polytask.slim import slim as slim_run
    from polytask.slim.report import report_lines, report_table

    report = slim_run(
        run,
        tasks,
        out_dir,
        threshold=threshold,
        data=data,
        overwrite=overwrite,
        latency_repeats=repeats,
    )
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    out.print(report_table(report))
    for line in report_lines(report):
        out.print(line, highlight=False, soft_wrap=True)
    out.print(f"slim run saved to {out_dir}", highlight=False)


@app.command("export")
@user_errors
def export_command(
    run: Annotated[Path, typer.Argument(help="A finished run directory (full or slim).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ONNX file to write.")],
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
    verify: Annotated[
        bool, typer.Option(help="Check the graph against PyTorch with onnxruntime.")
    ] = True,
) -> None:
    """Export a run as ONNX: preprocessed inputs in, one output per task (with a JSON sidecar)."""
    from polytask.slim.export import export_onnx, sidecar_path

    interface = export_onnx(run, output, opset=opset, verify=verify)
    difference = interface["max_abs_difference"]
    if difference is not None:
        checked = f"matches PyTorch within {difference:.1e}"
    else:
        checked = "not checked" + (" (onnxruntime is not installed)" if verify else "")
    message = f"{output} written ({checked}); interface in {sidecar_path(output)}"
    out.print(message, highlight=False, soft_wrap=True)


@app.command("grow")
@user_errors
def grow_command(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    spec: Annotated[Path, typer.Argument(help="grow.yaml: new tasks, data, strategy, budget.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Grown run directory to create.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing directory.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar or tables.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Add tasks to a finished run with a continual-learning strategy (see `polytask
    strategies`); the result is an ordinary run directory with its growth history."""
    from polytask.grow import grow
    from polytask.train.progress import metrics_table

    report = grow(run, spec, out_dir, overwrite=overwrite, progress=not quiet)
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    for split in ("test", "valid"):
        if report["metrics"].get(split):
            out.print(metrics_table(f"{out_dir} ({split} rows)", report["metrics"][split]))
            break
    if report["missing_inputs"]:
        missing = ", ".join(report["missing_inputs"])
        out.print(f"the new data lacks input columns {missing}: read as missing values")
    strategy = report["strategy"]["name"]
    out.print(f"added {', '.join(report['tasks'])} with {strategy}; grown run saved to {out_dir}")


@app.command("stream")
@user_errors
def stream_command(
    spec: Annotated[Path, typer.Argument(help="stream.yaml: model, experiences, strategy.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar or tables.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train experiences one after another; the accuracy matrix, BWT, FWT and forgetting."""
    from rich.table import Table

    from polytask.grow.stream import stream

    result = stream(spec, out_dir, overwrite=overwrite, progress=not quiet)
    if as_json:
        out.print_json(json.dumps(result, default=str))
        return
    table = Table(title=f"{result['strategy']['name']}: metric on task (column) after experience")
    table.add_column("after")
    for name in result["tasks"]:
        table.add_column(name, justify="right")
    for label, row in zip(result["experiences"], result["matrix"], strict=True):
        table.add_row(label, *("-" if v is None else f"{v:.4f}" for v in row))
    out.print(table)

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:+.4f}"

    out.print(
        f"average {result['average']:.4f}, BWT {shown(result['bwt'])}, "
        f"FWT {shown(result['fwt'])}; written: {out_dir}/stream.json, stream.png"
    )


@app.command()
@user_errors
def strategies() -> None:
    """List the continual-learning strategies (grow.yaml / stream.yaml strategy.name) and
    their options."""
    from rich.table import Table

    from polytask.grow.strategies import STRATEGIES

    table = Table(title="strategies (strategy.name) and their strategy.options")
    table.add_column("strategy")
    table.add_column("what it is")
    table.add_column("options (default): meaning")
    for name in STRATEGIES.names():
        cls = STRATEGIES.get(name)
        options = [
            f"{field.alias or key} ({_default_text(field)}): {field.description or ''}".rstrip(
                ": "
            )
            for key, field in cls.Options.model_fields.items()
        ]
        table.add_row(name, cls.summary, "\n".join(options) or "-")
    out.print(table)


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
