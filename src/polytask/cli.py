"""The ``polytask`` command: each subcommand parses its options and calls the Python API.

User mistakes (a bad config, bad data, a missing run) print one line and exit with code 2;
warnings print one line each. Heavy modules (torch, pandas, the model) are imported inside
the commands that need them, so that ``polytask --help`` and ``polytask info`` start fast.
"""

from __future__ import annotations

import functools
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer

from polytask.console import make_console
from polytask.errors import PolytaskError, PolytaskWarning

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Train one model for many tasks; evaluate and predict on raw rows.",
    pretty_exceptions_enable=False,
)
err = make_console(stderr=True)
out = make_console()
F = TypeVar("F", bound=Callable[..., Any])
MIB = 1024 * 1024


_PYTHON_SHOWWARNING = warnings.showwarning


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """polytask's warnings as one line on stderr; any other warning as Python shows it."""
    if issubclass(category, PolytaskWarning):
        err.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)
    else:
        _PYTHON_SHOWWARNING(message, category, *args, **kwargs)


def user_errors(command: F) -> F:
    """Report PolytaskError as one line with exit code 2, never a traceback; print
    PolytaskWarning as one line."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("always", PolytaskWarning)
            warnings.showwarning = _show_warning
            try:
                return command(*args, **kwargs)
            except PolytaskError as error:
                err.print(f"[bold red]error:[/bold red] {error}", highlight=False, soft_wrap=True)
                raise typer.Exit(code=2) from None
            except KeyboardInterrupt as error:
                detail = f": {error}" if str(error) else ""
                err.print(f"interrupted{detail}", highlight=False, soft_wrap=True)
                raise typer.Exit(code=130) from None

    return cast(F, wrapper)


def labelled_rows(spec: Any, data: Path | None, split: str | None) -> Any:
    """The rows ``--data FILE`` names, or the run's own ``--split valid|test``."""
    from polytask.data import progress
    from polytask.data.tabular import load_splits, read_table

    if data is not None:
        with progress.reporting():
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
    overwrite: Annotated[
        bool, typer.Option(help="Replace a run directory that polytask wrote.")
    ] = False,
    baseline: Annotated[Path | None, typer.Option(help="Single-task run for Delta-m.")] = None,
    seed: Annotated[int | None, typer.Option(help="Override train.seed.")] = None,
    strict: Annotated[
        bool, typer.Option(help="Refuse spec keys this run would not use (else: a warning).")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar or tables.")] = False,
    mlflow: Annotated[
        str | None,
        typer.Option(
            "--mlflow",
            help="Track in MLflow: a tracking URI (sqlite:///mlflow.db, http://host:5000).",
        ),
    ] = None,
) -> None:
    """Train a multi-task model into a run directory."""
    from polytask.config import check_unused, load_spec, with_overrides
    from polytask.track import fit_tracked

    if resume is not None:
        if config is not None:
            raise PolytaskError("--resume continues a run with its saved config; give no CONFIG")
        fit_tracked(None, resume, resume=True, progress=not quiet, mlflow=mlflow)
        return
    if config is None:
        raise PolytaskError("give a CONFIG file (or --resume RUN)")
    spec = load_spec(config)
    overrides: dict[str, Any] = {}
    if seed is not None:
        overrides["seed"] = seed
    if baseline is not None:
        overrides["baseline"] = baseline.resolve()
    if overrides:
        spec = with_overrides(spec, train=overrides)
    check_unused(spec, strict=strict)
    target = out_dir or Path("runs") / config.stem
    fit_tracked(spec, target, overwrite=overwrite, progress=not quiet, mlflow=mlflow)


@app.command()
@user_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    data: Annotated[Path | None, typer.Option(help="Labelled CSV or Parquet rows.")] = None,
    split: Annotated[
        str | None, typer.Option(help="Or: the run's own 'valid' or 'test' split.")
    ] = None,
    baseline: Annotated[Path | None, typer.Option(help="Single-task run for Delta-m.")] = None,
    allow_unknown_columns: Annotated[
        bool, typer.Option(help="Ignore columns the run does not know (else: refused).")
    ] = False,
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
        allow_unknown_columns=allow_unknown_columns,
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
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    allow_unknown_columns: Annotated[
        bool, typer.Option(help="Ignore columns the run does not know (else: refused).")
    ] = False,
) -> None:
    """Predict every task for raw rows (missing values and unseen categories allowed)."""
    from polytask.api import load
    from polytask.artifacts.atomic import write_atomic
    from polytask.artifacts.ownership import check_output_file
    from polytask.data import progress
    from polytask.data.tabular import PARQUET_SUFFIXES, read_table

    if output is not None:
        check_output_file(output, overwrite=overwrite, inputs=[data])
    predictor = load(run)
    kept = _kept_columns(keep or [], predictor.output_columns())
    with progress.reporting():
        frame = read_table(data)
        with progress.step(f"predicting {len(frame):,} rows"):
            predictions = predictor.predict(frame, allow_unknown_columns=allow_unknown_columns)
    for column in reversed(kept):
        if column not in frame.columns:
            raise PolytaskError(f"--keep names column '{column}', which is not in {data}")
        predictions.insert(0, column, frame[column].to_numpy())
    if output is None:
        predictions.to_csv(sys.stdout, index=False)
        return
    if output.suffix.lower() in PARQUET_SUFFIXES:
        write_atomic(output, lambda temp: predictions.to_parquet(temp, index=False))
    else:
        write_atomic(output, lambda temp: predictions.to_csv(temp, index=False))
    err.print(f"{len(predictions)} rows of predictions written to {output}")


def _kept_columns(keep: list[str], outputs: dict[str, str]) -> list[str]:
    """``--keep`` columns, once each, none named like an output column (which would then be
    in the table twice, one of them silently shadowing the other)."""
    kept = list(dict.fromkeys(keep))
    for column in kept:
        if column in outputs:
            raise PolytaskError(
                f"--keep column '{column}' has the name of the output column '{column}' "
                f"({outputs[column]}); rename it in the input or leave it out of --keep"
            )
    return kept


@app.command()
@user_errors
def info(run: Annotated[Path, typer.Argument(help="A finished run directory.")]) -> None:
    """Show a run's tasks, architecture, balancing method (options resolved), inputs and summary."""
    from polytask.artifacts.run_dir import describe

    out.print_json(json.dumps(describe(run), default=str))


def _default_text(field: Any) -> str:
    """An option's default as shown by `polytask archs` ('required' when it has none)."""
    if field.is_required():
        return "required"
    return repr(field.get_default(call_default_factory=True))


def _option_lines(options: Any) -> str:
    """A pydantic options model's fields as 'name (default): meaning' lines."""
    lines = [
        f"{field.alias or key} ({_default_text(field)}): {field.description or ''}".rstrip(": ")
        for key, field in options.model_fields.items()
    ]
    return "\n".join(lines) or "-"


def _print_listing(title: str, kind: str, rows: list[tuple[str, str, Any]]) -> None:
    """One table of (name, what it is, options model) rows: `polytask archs`, `strategies`."""
    from rich.table import Table

    table = Table(title=title)
    for column in (kind, "what it is", "options (default): meaning"):
        table.add_column(column)
    for name, summary, options in rows:
        table.add_row(name, summary, _option_lines(options))
    out.print(table)


@app.command()
@user_errors
def archs() -> None:
    """List the sharing architectures and the options each takes in model.options."""
    from polytask.arch import ARCHS

    listed = [(name, ARCHS.get(name)) for name in ARCHS.names()]
    rows = [(name, cls.summary(), cls.Options) for name, cls in listed if cls.listed]
    _print_listing("architectures (model.arch) and their model.options", "arch", rows)


@app.command()
@user_errors
def balancers(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the balancing methods and the options each takes in balance.options."""
    from rich.table import Table

    from polytask.balance.options import OPTIONS, accepted

    listing: dict[str, dict[str, Any]] = {
        name: {
            "summary": OPTIONS.get(name).summary(),
            "options": {
                key: {
                    "default": field.default,
                    "accepts": accepted(field),
                    "description": field.description,
                }
                for key, field in OPTIONS.get(name).model_fields.items()
            },
        }
        for name in OPTIONS.names()
    }
    if as_json:
        out.print_json(json.dumps(listing))
        return
    table = Table(title="balancing methods (balance.method) and their balance.options")
    table.add_column("method")
    table.add_column("what it is")
    table.add_column("options = default (accepts): meaning")
    for name, entry in listing.items():
        options = [
            f"{key} = {option['default']!r} ({option['accepts']}): {option['description']}"
            for key, option in entry["options"].items()
        ]
        table.add_row(name, entry["summary"], "\n".join(options) or "-")
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
    max_body_mib: Annotated[
        float, typer.Option(help="Largest request body in MiB (else 413).")
    ] = 32.0,
    threads: Annotated[
        int, typer.Option(help="torch intra-op threads; 1 suits small micro-batches best.")
    ] = 1,
    allow_unknown_columns: Annotated[
        bool, typer.Option(help="Ignore columns the run does not know (else: 400).")
    ] = False,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = True,
) -> None:
    """Serve a run over HTTP: POST /v1/predict, GET /v1/tasks, GET /healthz."""
    import math

    from polytask.serve import run_server

    if not (math.isfinite(max_body_mib) and max_body_mib > 0):
        raise PolytaskError(f"--max-body-mib must be a positive number (got {max_body_mib:g})")
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
        max_body_bytes=max(1, round(max_body_mib * MIB)),
        threads=threads,
        allow_unknown_columns=allow_unknown_columns,
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
    overwrite: Annotated[
        bool, typer.Option(help="Replace the folder of an earlier cascade.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Slim run answers, full run takes the rows the slim one is unsure of: metric vs share
    deferred, across confidence thresholds."""
    import math

    import numpy as np
    from rich.table import Table

    from polytask.api import load
    from polytask.serve.cascade import run_cascade

    if (data is None) == (split is None):
        raise PolytaskError("give exactly one of --data FILE or --split valid|test")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise PolytaskError("--low and --high must be finite numbers")
    if steps < 1 or steps > 10_000 or not low <= high:
        raise PolytaskError("--steps must be 1..10000 and --low at most --high")
    full = load(full_run)
    frame = labelled_rows(full.spec, data, split)
    thresholds = [float(t) for t in np.linspace(low, high, steps)]
    report = run_cascade(
        slim_run,
        full,
        task,
        frame,
        out_dir or Path(f"cascade-{task}"),
        thresholds,
        overwrite=overwrite,
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
    overwrite: Annotated[
        bool, typer.Option(help="Replace a run directory that polytask wrote.")
    ] = False,
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
    overwrite: Annotated[
        bool, typer.Option(help="Replace an existing graph and its JSON file.")
    ] = False,
) -> None:
    """Export a run as ONNX: preprocessed inputs in, one output per task (with a JSON sidecar)."""
    from polytask.slim.export import export_onnx, sidecar_path

    interface = export_onnx(run, output, opset=opset, verify=verify, overwrite=overwrite)
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
    from polytask.grow.strategies import STRATEGIES

    rows = [(n, STRATEGIES.get(n).summary, STRATEGIES.get(n).Options) for n in STRATEGIES.names()]
    _print_listing("strategies (strategy.name) and their strategy.options", "strategy", rows)


@app.command("sweep")
@user_errors
def sweep_command(
    config: Annotated[Path, typer.Argument(help="Sweep file: base run spec, space, objectives.")],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Study folder (resumed when it exists).")
    ],
    trials: Annotated[int | None, typer.Option(min=1, help="Override the sweep's trials.")] = None,
    parallel: Annotated[
        int | None, typer.Option(min=1, help="Override the sweep's parallel processes.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print study.json.")] = False,
) -> None:
    """Optuna study over run-spec keys: trials as run directories, Pareto front printed,
    plotted and saved; a killed sweep resumes where it stopped."""
    from polytask.sweep import load_sweep, run_sweep
    from polytask.sweep.summary import pareto_table, state_counts

    sweep = load_sweep(config, {"trials": trials, "parallel": parallel})
    summary = run_sweep(sweep, out_dir)
    if as_json:
        out.print_json(json.dumps(summary))
        return
    out.print(pareto_table(summary))
    out.print(state_counts(summary), highlight=False, markup=False, soft_wrap=True)


@app.command("report")
@user_errors
def report_command(
    paths: Annotated[
        list[Path], typer.Argument(help="Run directories, study folders, cascade folders.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")],
    split: Annotated[
        str | None, typer.Option(help="'valid' or 'test' (default: test when all runs have it).")
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option(help="A run to compute every run's Delta-m against.")
    ] = None,
    title: Annotated[str | None, typer.Option(help="The page's title.")] = None,
    screenshot: Annotated[
        Path | None,
        typer.Option(help="Also save a PNG of the rendered page (needs playwright, Chromium)."),
    ] = None,
) -> None:
    """One self-contained HTML page comparing runs and studies: specs, per-task metrics with
    Delta-m, Pareto front, learning curves, task weights, conflicts, experts, slim, cascade."""
    from polytask.report import write_report

    page = write_report(paths, output, split=split, baseline=baseline, title=title)
    size = page.stat().st_size / 1e6
    out.print(f"report written to {page} ({size:.1f} MB, opens offline)", highlight=False)
    if screenshot is not None:
        from polytask.report.browser import screenshot as take

        log = take(page, screenshot)
        for problem in log.problems:
            err.print(f"[yellow]warning:[/yellow] {problem}", highlight=False, markup=True)
        out.print(f"screenshot written to {screenshot}", highlight=False)


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
