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


def task_names(options: list[str]) -> list[str]:
    """``--tasks a,b --tasks c`` -> [a, b, c]."""
    return [name.strip() for item in options for name in item.split(",") if name.strip()]


def labelled_rows(spec: Any, data: Path | None, split: str | None) -> Any:
    """The rows ``--data FILE`` names, or the run's own ``--split valid|test``."""
    from polytask.data import progress
    from polytask.data.tabular import load_run_splits, read_labelled

    if data is not None:
        with progress.reporting():
            return read_labelled(data, spec.data, spec.target_columns)
    if split not in ("valid", "test"):
        raise PolytaskError(f"--split must be 'valid' or 'test' (got '{split}')")
    if spec.data.stream is not None:  # a streamed run's valid and test rows are files
        path = getattr(spec.data, split)
        frame = read_labelled(path, spec.data, spec.target_columns) if path else None
    else:
        frame = getattr(load_run_splits(spec), split)
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
    nproc: Annotated[
        int | None,
        typer.Option(help="Train data-parallel in N processes on this machine (torchrun)."),
    ] = None,
) -> None:
    """Train a multi-task model into a run directory."""
    from polytask.config import check_unused, load_spec, with_overrides
    from polytask.track import fit_tracked

    if nproc is not None:
        _launch_processes(
            nproc,
            config,
            resume,
            out=out_dir,
            overwrite=overwrite,
            baseline=baseline,
            seed=seed,
            strict=strict,
            quiet=quiet,
            mlflow=mlflow,
        )
        return
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
    with warnings.catch_warnings():
        if _other_rank():  # under torchrun, rank 0 alone warns (every rank still refuses)
            warnings.simplefilter("ignore", PolytaskWarning)
        check_unused(spec, strict=strict)
    target = out_dir or Path("runs") / config.stem
    fit_tracked(spec, target, overwrite=overwrite, progress=not quiet, mlflow=mlflow)


def _other_rank() -> bool:
    """A process torchrun started other than rank 0."""
    from polytask.train.distributed import world_from_environment

    return world_from_environment()[0] != 0


def _launch_processes(nproc: int, config: Path | None, resume: Path | None, **options: Any) -> None:
    """``train --nproc N``: check here what the processes would refuse (the spec, the
    output folder, or the run to resume), then run the same command in N processes."""
    from polytask.config import load_spec
    from polytask.train.launch import check_launch, launch

    if (config is None) == (resume is None):
        raise PolytaskError("give a CONFIG file or --resume RUN")
    if options.get("mlflow") is not None:
        raise PolytaskError("--mlflow follows training in one process only; drop --nproc")
    if resume is not None:
        check_launch(None, resume, nproc, resume=True)
        arguments = ["--resume", str(resume)]
    else:
        assert config is not None
        target = options["out"] or Path("runs") / config.stem
        check_launch(load_spec(config), target, nproc, overwrite=options["overwrite"])
        arguments = [str(config)]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            arguments.append(flag)
        elif value not in (None, False):
            arguments += [flag, str(value)]
    launch(arguments, nproc)


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
    beside: Annotated[
        Path | None,
        typer.Option(help="A `polytask baseline` folder to show per task (with --split)."),
    ] = None,
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
    if beside is not None:
        if split is None:
            raise PolytaskError("--beside compares the baseline's split metrics: use --split")
        report["beside"] = beside_report(report["metrics"], beside, split_name)
    if as_json:
        out.print_json(json.dumps(report, default=str))
        return
    out.print(metrics_table(f"{run} on {data or split} ({len(frame)} rows)", report["metrics"]))
    if beside is not None:
        out.print(beside_table(report["beside"], str(run), str(beside)))
    if report["skipped"]:
        out.print(f"not evaluated (no label columns in these rows): {', '.join(report['skipped'])}")
    score = report["score"]
    out.print(f"{score['name']} = {score['value']:.4f} {score['unit']} ({score['meaning']})")


def beside_report(
    metrics: dict[str, dict[str, float]], folder: Path, split: str
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per task and metric: the run's value, the baseline folder's, and run minus baseline."""
    from polytask.artifacts import run_dir as rd

    results = rd.load_json(rd.require_complete(folder), rd.FINAL_METRICS)
    if split not in results:
        raise PolytaskError(f"--beside {folder} holds no '{split}' metrics")
    theirs = results[split]
    report: dict[str, dict[str, dict[str, float | None]]] = {}
    for task, values in metrics.items():
        if task not in theirs:
            raise PolytaskError(f"--beside {folder} has no task '{task}'")
        report[task] = {
            metric: {
                "run": value,
                "baseline": theirs[task].get(metric),
                "difference": None
                if theirs[task].get(metric) is None
                else value - theirs[task][metric],
            }
            for metric, value in values.items()
        }
    return report


def beside_table(report: dict[str, Any], run: str, baseline: str) -> Any:
    from rich.table import Table

    table = Table(title=f"{run} beside {baseline}")
    for column in ("task", "metric", "run", "baseline", "run - baseline"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")

    def shown(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for task, metrics in report.items():
        for metric, values in metrics.items():
            table.add_row(
                task,
                metric,
                shown(values["run"]),
                shown(values["baseline"]),
                shown(values["difference"]),
            )
    return table


@app.command()
@user_errors
def baseline(
    config: Annotated[Path, typer.Argument(help="YAML run specification.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Result folder to create.")],
    library: Annotated[
        str, typer.Option(help="auto (LightGBM where installed), lightgbm or sklearn.")
    ] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
    seed: Annotated[int | None, typer.Option(help="Override train.seed.")] = None,
) -> None:
    """A gradient-boosted model per task on the spec's split, preprocessing and metrics."""
    from polytask.artifacts import run_dir as rd
    from polytask.baselines.gbdt import train_baseline
    from polytask.config import load_spec
    from polytask.train.progress import metrics_table

    if library not in ("auto", "lightgbm", "sklearn"):
        raise PolytaskError(f"--library must be auto, lightgbm or sklearn (got '{library}')")
    spec = load_spec(config)
    if seed is not None:
        spec.train.seed = seed
    folder = train_baseline(spec, out_dir, library=library, overwrite=overwrite)  # type: ignore[arg-type]
    final = rd.load_json(folder, rd.FINAL_METRICS)
    summary = rd.load_json(folder, rd.SUMMARY)
    split = "test" if "test" in final else "valid"
    if split in final:
        out.print(metrics_table(f"{summary['library']} baseline, {split} metrics", final[split]))
    out.print(f"baseline saved to {folder}", highlight=False)


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
    tasks: Annotated[
        list[str] | None,
        typer.Option(help="Predict only these tasks (repeat, or comma-separated)."),
    ] = None,
) -> None:
    """Predict every task (or --tasks) for raw rows (missing values and unseen categories
    allowed); only what the asked tasks use is computed."""
    from polytask.artifacts.atomic import write_atomic
    from polytask.artifacts.ownership import check_output_file
    from polytask.data import progress
    from polytask.data.tabular import PARQUET_SUFFIXES, read_table
    from polytask.inference.array_predictor import open_predictor

    if output is not None:
        check_output_file(output, overwrite=overwrite, inputs=[data])
    if tasks:
        from polytask.api import load

        predictor: Any = load(run).subset(task_names(tasks))
    else:  # torch is not imported where the run has lean arrays
        predictor = open_predictor(run)
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


def options_table(title: str, kind: str, entries: list[tuple[str, str, Any]]) -> Any:
    """A table of named methods, what each is, and its options' defaults and meanings."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column(kind)
    table.add_column("what it is")
    table.add_column("options (default): meaning")
    for name, summary, options_model in entries:
        options = [
            f"{field.alias or key} ({_default_text(field)}): {field.description or ''}".rstrip(": ")
            for key, field in options_model.model_fields.items()
        ]
        table.add_row(name, summary, "\n".join(options) or "-")
    return table


@app.command()
@user_errors
def archs() -> None:
    """List the sharing architectures and the options each takes in model.options."""
    from polytask.adapters.options import ADAPTER_OPTIONS
    from polytask.arch import ARCHS

    listed = [ARCHS.get(name) for name in ARCHS.names()]
    entries = [(c.registry_name, c.summary(), c.Options) for c in listed if c.listed]
    out.print(options_table("architectures (model.arch) and their model.options", "arch", entries))
    adapters = [ADAPTER_OPTIONS.get(name) for name in ADAPTER_OPTIONS.names()]
    title = "adapters on a frozen backbone (model.adapters.method) and their options"
    rows = [(c.registry_name, c.summary(), c) for c in adapters]
    out.print(options_table(title, "method", rows))


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
    names = task_names(tasks or [])
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


def matrix_table(title: str, names: list[str], matrix: list[list[float | None]]) -> Any:
    """A T x T matrix as a table: row i, column j."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("i \\ j")
    for name in names:
        table.add_column(name, justify="right")
    for name, row in zip(names, matrix, strict=True):
        table.add_row(name, *("-" if v is None else f"{v:+.4f}" for v in row))
    return table


@app.command()
@user_errors
def finetune(
    base: Annotated[Path, typer.Argument(help="The finished run to start from.")],
    spec: Annotated[Path, typer.Argument(help="YAML: tasks, data, moves, train.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar or tables.")] = False,
) -> None:
    """Fine-tune a run on some of its tasks, from its weights and preprocessor."""
    from polytask.merge.finetune import describe, finetune, read_record

    run = finetune(base, spec, out_dir, overwrite=overwrite, progress=not quiet)
    out.print(describe(read_record(run)), highlight=False, soft_wrap=True)


@app.command()
@user_errors
def relations(
    run: Annotated[Path, typer.Argument(help="A run that recorded relations, or a group study.")],
    groups: Annotated[
        list[int] | None, typer.Option(help="Group counts to suggest (default 2 to 4).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Print the task affinity and gradient cosine matrices and the groups they suggest."""
    import numpy as np

    from polytask.artifacts import run_dir as rd
    from polytask.inference.group import is_group
    from polytask.relations.grouping import select_groups
    from polytask.relations.recorder import RELATIONS

    folder = run / "all_in_one" if is_group(run) else run
    if not (folder / RELATIONS).is_file():
        raise PolytaskError(
            f"{run} holds no {RELATIONS}; train with `train.relations: {{every: 10}}` "
            "in the spec to record relations"
        )
    report = rd.load_json(folder, RELATIONS)
    names = report["tasks"]
    mean = report["mean"]
    if mean["affinity"] is None:
        raise PolytaskError(f"{folder / RELATIONS} holds no measurement yet")
    affinity = np.array(
        [[np.nan if v is None else v for v in row] for row in mean["affinity"]], dtype=float
    )
    counts = groups or [k for k in (2, 3, 4) if k < len(names)] or [1]
    suggested: list[dict[str, Any]] = []
    for count in counts:
        if count < 1:
            raise PolytaskError(f"--groups must be at least 1 (got {count})")
        selection = select_groups(affinity, count)
        suggested.append(
            {
                "max_groups": count,
                "groups": selection.named(names),
                "predicted_score": selection.score,
                "method": selection.method,
            }
        )
    if as_json:
        out.print_json(json.dumps({"tasks": names, **mean, "suggested": suggested}))
        return
    measured = sum(row["measurements"] for row in report["epochs"])
    out.print(
        f"{measured} measurements over {len(report['epochs'])} epochs "
        f"({report['seconds']:.1f} s spent measuring); {report['update_rule']}",
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        matrix_table("lookahead affinity Z[i -> j] (mean over training)", names, mean["affinity"])
    )
    out.print(
        matrix_table("task-gradient cosine (mean over training)", names, mean["gradient_cosine"])
    )
    for item in suggested:
        shown = shown_groups(item["groups"])
        out.print(
            f"at most {item['max_groups']} groups: {shown}  "
            f"(predicted total affinity {item['predicted_score']:+.4f}; {item['method']})",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
@user_errors
def group(
    config: Annotated[Path, typer.Argument(help="YAML run specification (two tasks or more).")],
    groups: Annotated[int, typer.Option("--groups", help="At most this many groups.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Study folder to create.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing study.")] = False,
    seed: Annotated[int | None, typer.Option(help="Override train.seed.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure task relations, choose at most K groups, train them; per task and Delta-m
    beside all-in-one and one model per task. The study folder predicts as one model."""
    from polytask.artifacts import run_dir as rd
    from polytask.config import load_spec
    from polytask.inference.group import MANIFEST
    from polytask.relations.study import run_group_study

    spec = load_spec(config)
    if seed is not None:
        spec.train.seed = seed
    say = (lambda _: None) if as_json else (lambda text: err.print(text, highlight=False))
    folder = run_group_study(spec, out_dir, groups, overwrite=overwrite, say=say)
    manifest = rd.load_json(folder, MANIFEST)
    if as_json:
        out.print_json(json.dumps(manifest["report"]))
        return
    out.print(group_table(manifest), soft_wrap=True)
    out.print(
        f"group model saved to {folder} (predict / evaluate / serve it as a run)", highlight=False
    )


def shown_groups(groups: list[list[str]]) -> str:
    return "  ".join("{" + ", ".join(group) + "}" for group in groups)


def group_table(manifest: dict[str, Any]) -> Any:
    from rich.table import Table

    report = manifest["report"]
    split = "test" if "test" in report["splits"] else "valid"
    data = report["splits"][split]
    table = Table(title=f"{split} metrics; groups: {shown_groups(report['groups'])}")
    for column in ("task", "metric", "one per task", "all in one", "grouped", "served by"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for task, cells in data["per_task"].items():
        metric = next(iter(cells["single"]))
        table.add_row(
            task,
            metric,
            *(f"{cells[key][metric]:.4f}" for key in ("single", "all_in_one", "grouped")),
            report["serving"][task],
        )
    delta = data["delta_m"]
    table.add_row(
        "Delta-m", "%", "0", f"{delta['all_in_one']:+.3f}", f"{delta['grouped']:+.3f}", ""
    )
    return table


@app.command()
@user_errors
def transfer(
    config: Annotated[Path, typer.Argument(help="YAML run specification (a few tasks).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder to create.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing transfer map.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """TaskWeb-style pairwise transfer: train on a source task, fine-tune on a target,
    against the target alone; T runs alone and T (T - 1) fine-tunes."""
    from polytask.artifacts import run_dir as rd
    from polytask.config import load_spec
    from polytask.relations.transfer import TRANSFER, run_transfer_map

    spec = load_spec(config)
    say = (lambda _: None) if as_json else (lambda text: err.print(text, highlight=False))
    folder = run_transfer_map(spec, out_dir, overwrite=overwrite, say=say)
    report = rd.load_json(folder, TRANSFER)
    if as_json:
        out.print_json(json.dumps(report))
        return
    title = f"transfer source -> target, % change of the target's {report['split']} metric"
    out.print(matrix_table(title, report["tasks"], report["transfer_percent"]))
    cost = report["cost"]
    out.print(
        f"cost: {cost['seconds_per_pair']:.1f} s per pair (fine-tune), "
        f"{cost['seconds_total']:.0f} s in all; map saved to {folder}",
        highlight=False,
    )


@app.command()
@user_errors
def merge(
    runs: Annotated[list[Path], typer.Argument(help="Runs made by `polytask finetune`.")],
    base: Annotated[Path, typer.Option(help="The run they were fine-tuned from.")],
    method: Annotated[str, typer.Option(help="Merging method (`polytask merge-methods`).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")],
    option: Annotated[
        list[str] | None, typer.Option(help="A method option as key=value; repeat for more.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the record as JSON.")] = False,
) -> None:
    """Merge fine-tuned runs of one base into one run that predicts every task."""
    from polytask.merge.runs import merge as merge_runs
    from polytask.merge.runs import parse_options

    record = merge_runs(
        runs, base, method, parse_options(option or []), out_dir, overwrite=overwrite
    )
    if as_json:
        out.print_json(json.dumps(record, default=str))
        return
    _print_run_metrics("merged run", out_dir)
    origins = ", ".join(
        f"{task} <- {Path(source).name}" for task, source in record["tasks_from"].items()
    )
    out.print(
        f"{method}: merged {record['merged_tensors']} tensors in {record['seconds']:.2f} s; "
        f"{origins}; saved to {out_dir}",
        highlight=False,
        soft_wrap=True,
    )


def _print_run_metrics(title: str, out_dir: Path) -> None:
    """The test (else validation) metrics of a run just written, as a table."""
    from polytask.artifacts import run_dir as rd
    from polytask.train.progress import metrics_table

    metrics = rd.load_json(out_dir, rd.FINAL_METRICS)
    split = "test" if "test" in metrics else "valid" if "valid" in metrics else None
    if split is not None:
        out.print(metrics_table(f"{split} metrics of the {title}", metrics[split]))


@app.command("fold-adapters")
@user_errors
def fold_adapters(
    run: Annotated[Path, typer.Argument(help="A finished run with model.adapters.")],
    task: Annotated[str, typer.Option(help="The task whose adapters to fold in.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
) -> None:
    """Fold one task's adapters into the backbone: an ordinary run of that task (then slim,
    export, serve and the torch-free predict take it)."""
    from polytask.merge.adapters import fold

    record = fold(run, task, out_dir, overwrite=overwrite)
    _print_run_metrics("folded run", out_dir)
    out.print(
        f"folded {record['method']} adapters of '{task}' into {len(record['layers'])} layers; "
        f"saved to {out_dir}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("merge-adapters")
@user_errors
def merge_adapters_command(
    run: Annotated[Path, typer.Argument(help="A finished run with model.adapters.")],
    method: Annotated[str, typer.Option(help="Merging method (`polytask merge-methods`).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create.")],
    option: Annotated[
        list[str] | None, typer.Option(help="A method option as key=value; repeat for more.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run directory.")] = False,
) -> None:
    """Merge every task's adapter update into one backbone (task arithmetic, TIES, ...): an
    ordinary run that predicts every task."""
    from polytask.merge.adapters import merge_adapters
    from polytask.merge.runs import parse_options

    record = merge_adapters(run, method, parse_options(option or []), out_dir, overwrite=overwrite)
    _print_run_metrics("merged run", out_dir)
    out.print(
        f"{method}: merged the adapters of {len(record['layers'])} layers in "
        f"{record['seconds']:.3f} s; saved to {out_dir}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("merge-methods")
@user_errors
def merge_methods() -> None:
    """List the merging methods and the options each takes (--option key=value)."""
    from polytask.merge.methods import MERGERS

    entries = [
        (name, MERGERS.get(name).summary(), MERGERS.get(name).Options) for name in MERGERS.names()
    ]
    title = "merging methods (--method) and their options (--option key=value)"
    out.print(options_table(title, "method", entries))


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
    out.print(
        options_table("strategies (strategy.name) and their strategy.options", "strategy", rows)
    )


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
