"""``polytask stream stream.yaml -o DIR``: experiences trained one after another with one
strategy, every seen task evaluated after each, and what was kept and forgotten.

The first experience trains the stream's model from scratch; each later one grows the run
the previous one wrote (:func:`polytask.grow.experience.train_experience`), so every step is
an ordinary run directory; the last one is published as ``DIR``, which predicts, serves and
grows again like any run (its ``grow.json`` names every experience). After each experience
every task seen so far is evaluated on its own experience's test rows (valid or training
rows where there are none), giving the accuracy matrix ``R[i][j]``; the new tasks are also
evaluated just before their experience trains, and a randomly initialised model on every
task, for forward transfer. ``DIR/stream.json`` holds the matrix and the metrics of
:func:`polytask.grow.metrics.summarise`; ``DIR/stream.png`` the heat map.

Each experience's optimizer starts anew by default (every experience is a run of its own);
``optimizer_state: kept`` starts it from the state the previous experience's optimizer ended
with, for the parameters that existed then, as Avalanche's strategies do by default (its
``reset_optimizer_state`` is False): with Adam, the moments and step count carry over, which
changes how far the first steps of a new task move the shared weights.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from polytask.artifacts import run_dir as rd
from polytask.artifacts.atomic import write_atomic
from polytask.data.preprocess import Preprocessor
from polytask.data.tabular import load_splits
from polytask.errors import PolytaskError
from polytask.grow.data import Rows, concat
from polytask.grow.experience import (
    HISTORY,
    Base,
    Experience,
    publish_run,
    run_output,
    train_experience,
)
from polytask.grow.metrics import plot_matrix, summarise
from polytask.grow.spec import StreamSpec, load_stream_spec
from polytask.grow.strategies import STRATEGIES
from polytask.inference.predict import predict_logits
from polytask.model import MultiTaskModel, build_model
from polytask.tasks import Task
from polytask.train.optim import ParameterState

RESULT, PLOT, RUNS = "stream.json", "stream.png", "runs"


def metric_on(model: MultiTaskModel, task: Task, rows: Rows, batch: int) -> float | None:
    """``task``'s primary metric on ``rows`` (None where undefined)."""
    logits = predict_logits(model, rows.features, batch)[model.task_names.index(task.name)]
    labels = rows.labels[task.name].numpy()
    value = task.metrics(task.outputs(logits).numpy(), task.decode_labels(labels))
    result = value[task.primary_metric]
    return None if result != result else float(result)  # NaN -> None


def evaluation_rows(rows: dict[str, Rows]) -> tuple[str, Rows]:
    for split in ("test", "valid", "train"):
        if split in rows:
            return split, rows[split]
    raise PolytaskError("an experience has no rows")


def stream(
    spec: str | Path | dict[str, Any] | StreamSpec,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the stream ``spec`` into ``out`` and return what ``stream.json`` holds."""
    stream_spec = load_stream_spec(spec)
    strategy = STRATEGIES.get(stream_spec.strategy.name).from_options(stream_spec.strategy.options)
    output = run_output(Path(out), overwrite=overwrite, extra=frozenset({RESULT, PLOT}))
    frames = [load_splits(experience.data) for experience in stream_spec.experiences]
    for experience, splits in zip(stream_spec.experiences, frames, strict=True):
        Preprocessor.check_labels(splits.train, experience.tasks)  # before training any
    with tempfile.TemporaryDirectory(prefix="polytask-stream-") as temp:
        result = _run(stream_spec, strategy, frames, Path(temp), progress)
        last = Path(temp) / RUNS / str(len(stream_spec.experiences) - 1)
        publish_run(last, output, lambda folder: _write_results(folder, stream_spec, result))
    return result


def _write_results(folder: Path, spec: StreamSpec, result: dict[str, Any]) -> None:
    """stream.json, the heat map, and the last run's history: one entry per experience."""
    rd.save_json(folder, RESULT, result)
    names = [name for names in result["experience_tasks"] for name in names]
    title = f"{result['strategy']['name']}: {result['metric_names']}"
    write_atomic(
        folder / PLOT,
        lambda temp: plot_matrix(result["matrix"], names, result["experiences"], title, temp),
    )
    history = [
        {
            "step": index,
            "tasks": tasks,
            "data": experience.data.model_dump(mode="json"),
            "strategy": result["strategy"] if index else None,
            "stream": result["experiences"][index],
        }
        for index, (experience, tasks) in enumerate(
            zip(spec.experiences, result["experience_tasks"], strict=True)
        )
    ]
    rd.save_json(folder, HISTORY, {"history": history})


def _run(spec: StreamSpec, strategy, frames, staging: Path, progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    base: Base | None = None
    # the optimizer state one experience hands the next (optimizer_state: kept), else None
    carried: ParameterState | None = {} if spec.optimizer_state == "kept" else None
    seen: list[tuple[Task, Rows]] = []  # every task so far, with its evaluation rows
    experience_of: list[int] = []
    before: list[float | None] = []
    matrix: list[list[float | None]] = []
    own_rows: list[dict[str, Rows]] = []
    train_seconds, evaluated_on = 0.0, []
    batch = spec.train.eval_batch_size
    for index, (entry, splits) in enumerate(zip(spec.experiences, frames, strict=True)):
        # earlier experiences' rows: evaluation rows for the run's metrics; training rows only
        # for a strategy that trains on them (the others keep what they need themselves)
        splits_needed = (
            ("train", "valid", "test") if strategy.trains_on_old_rows else ("valid", "test")
        )
        old = {
            split: concat([rows[split] for rows in own_rows if split in rows])
            for split in splits_needed
            if any(split in rows for rows in own_rows)
        }
        experience = Experience(entry.tasks, splits, entry.data, entry.name or "", old)
        new_names = [task.name for task in entry.tasks]

        def evaluate_new(model, prepared, names=new_names) -> None:
            tasks = {task.name: task for task in prepared.tasks}
            for name in names:
                split = prepared.splits.get("test") or prepared.splits.get("valid")
                split = split or prepared.splits["train"]
                rows = Rows(split.features, {name: split.labels[name]})
                labelled = ~torch.isnan(rows.labels[name].reshape(len(rows), -1)).all(1)
                rows = rows.take(labelled.nonzero().flatten())
                before.append(metric_on(model, tasks[name], rows, batch) if len(rows) else None)

        outcome = train_experience(
            strategy,
            base,
            experience,
            spec.model,
            spec.train,
            spec.balance,
            staging / RUNS / str(index),
            index,
            progress=progress,
            before_training=evaluate_new if index > 0 else None,
            optimizer_state=carried,
        )
        if index == 0:
            before.extend([None] * len(new_names))
        train_seconds += outcome.seconds
        own_rows.append(outcome.rows)
        base = outcome.base
        if carried is not None:
            carried = outcome.optimizer_state
        tasks = {task.name: task for task in outcome.context.tasks}
        split, rows = evaluation_rows(outcome.rows)
        evaluated_on.append(split)
        seen += [(tasks[name], rows) for name in new_names]
        experience_of += [index] * len(new_names)
        model = outcome.served
        matrix.append([metric_on(model, task, rows, batch) for task, rows in seen])
    total = len(seen)
    matrix = [row + [None] * (total - len(row)) for row in matrix]
    random = _random_baseline(spec, base, seen, batch) if spec.random_baseline else None
    summary = summarise(matrix, experience_of, before, random)
    return {
        "strategy": strategy.describe(),
        "experiences": [
            e.name or f"{i}: {', '.join(t.name for t in e.tasks)}"
            for i, e in enumerate(spec.experiences)
        ],
        "experience_tasks": [[t.name for t in e.tasks] for e in spec.experiences],
        "tasks": [task.name for task, _ in seen],
        "metric_names": sorted({task.primary_metric for task, _ in seen}),
        "metrics": {task.name: task.primary_metric for task, _ in seen},
        "evaluated_on": evaluated_on,
        "matrix": matrix,
        "before": before,
        "random": random,
        **summary,
        "seconds": {"total": time.perf_counter() - started, "train": train_seconds},
    }


def _random_baseline(
    spec: StreamSpec, base: Base | None, seen: list[tuple[Task, Rows]], batch: int
) -> list[float | None]:
    """Each task's metric under the stream's model, randomly initialised, with every task."""
    assert base is not None
    torch.manual_seed(spec.train.seed + 1)
    tasks = [task for task, _ in seen]
    model = build_model(
        spec.model,
        base.preprocessor.cardinalities,
        base.preprocessor.numeric_width,
        [task.out_dim for task in tasks],
        [task.name for task in tasks],
    )
    return [metric_on(model, task, rows, batch) for task, rows in seen]
