"""``polytask grow RUN grow.yaml -o RUN2``: add tasks to a finished run.

Everything the user can get wrong is checked before anything is written (task names and
kinds, the new data's columns, a slim run, a strategy that needs old rows none were given
for, the output folder). The grown run is trained in a temporary folder of polytask's own,
then moved into ``<out>.partial`` and swapped into place once complete, under the one
ownership policy (:mod:`polytask.artifacts.ownership`: ``--overwrite`` replaces only a folder
polytask wrote). It is an ordinary run directory (``arch: plan`` with the grown plan), so
predict, evaluate, slim, export and serve work on it, plus ``grow.json``: the history of the
run (which tasks were added when, from which data, with which strategy) and
``grow_state.safetensors``: what the strategy keeps for growing it again.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import torch

from polytask.artifacts import run_dir as rd
from polytask.config import DataSpec, ModelSpec, TaskSpec
from polytask.data.tabular import Splits, load_splits
from polytask.errors import ConfigError, DataError, PolytaskError
from polytask.grow.data import Rows, sample
from polytask.grow.experience import (
    HISTORY,
    Base,
    Experience,
    load_state,
    old_rows,
    publish_run,
    run_output,
    train_experience,
)
from polytask.grow.spec import GrowSpec, load_grow_spec
from polytask.grow.strategies import STRATEGIES
from polytask.inference.predictor import Predictor

SLIM_REPORT = "slim.json"  # written by polytask slim beside a slim run's weights


def grow(
    run: str | Path,
    spec: str | Path | dict[str, Any] | GrowSpec,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Grow ``run`` as ``spec`` says into the run directory ``out``; return the report (also
    the last entry of ``out/grow.json``'s history)."""
    grow_spec = load_grow_spec(spec)
    source = rd.require_complete(Path(run))
    output = run_output(Path(out), overwrite=overwrite, sources=[source])
    base = _load_base(source)
    _check_tasks(base, grow_spec.tasks, source)
    strategy = STRATEGIES.get(grow_spec.strategy.name).from_options(grow_spec.strategy.options)
    if load_state(source, strategy):
        compact = strategy.resume(base.model, base.spec.model)
        if compact is not None:  # the run saved an exported form; grow what it was made of
            model_spec = base.spec.model.model_copy(
                update={"arch": "plan", "options": compact.plan.model_dump(mode="json")}
            )
            model = ModelSpec.model_validate(model_spec.model_dump())
            run_spec = base.spec.model_copy(update={"model": model})
            base = Base(compact.train(), run_spec, base.preprocessor)
    frames = load_splits(grow_spec.data)
    missing = _check_inputs(base, frames)
    base.preprocessor.with_tasks(frames.train, grow_spec.tasks)  # labels checked up front
    history = read_history(source, base)
    old = _old_rows(grow_spec, base, history)
    experience = Experience(grow_spec.tasks, frames, grow_spec.data, old=old)
    with tempfile.TemporaryDirectory(prefix="polytask-grow-") as temp:
        outcome = train_experience(
            strategy,
            base,
            experience,
            base.spec.model,
            grow_spec.train,
            grow_spec.balance,
            Path(temp) / "run",
            index=len(history),
            progress=progress,
        )
        entry = {
            "step": len(history),
            "tasks": [task.name for task in grow_spec.tasks],
            "data": grow_spec.data.model_dump(mode="json"),
            "strategy": strategy.describe(),
            "grown_from": str(source.resolve()),
            "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "old_data": _describe_old(grow_spec),
            "missing_inputs": missing,
            "train_seconds": outcome.seconds,
        }
        history_file = {"history": [*history, entry]}
        target = publish_run(
            outcome.run, output, lambda folder: rd.save_json(folder, HISTORY, history_file)
        )
    final = rd.load_json(target, rd.FINAL_METRICS)
    return {**entry, "run": str(target), "metrics": final}


# ---------------------------------------------------------------------- checks
def _load_base(source: Path) -> Base:
    if (source / SLIM_REPORT).is_file():
        origin = rd.load_json(source, SLIM_REPORT).get("source_run", "the full run")
        raise PolytaskError(
            f"{source} is a slim run (it keeps some tasks' sub-network only); grow the full "
            f"run it was cut from ({origin})"
        )
    spec = rd.load_config(source)
    if spec.model.encoder.name == "custom":
        raise PolytaskError(
            f"{source} was trained with a custom encoder; polytask grow rebuilds runs from "
            "their config and cannot rebuild it"
        )
    predictor = Predictor.load(source)
    return Base(predictor.network().train(), spec, predictor.preprocessor)


def _check_tasks(base: Base, tasks: list[TaskSpec], source: Path) -> None:
    old = {task.name: task for task in base.spec.tasks}
    names = [task.name for task in tasks]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"grow spec: tasks: names must be unique; repeated: {repeated}")
    for task in tasks:
        existing = old.get(task.name)
        if existing is None:
            continue
        if existing.kind != task.kind:
            raise ConfigError(
                f"grow spec: task '{task.name}' is a {existing.kind.value} task of {source}; "
                f"a new {task.kind.value} task needs another name"
            )
        raise ConfigError(
            f"grow spec: task '{task.name}' already exists in {source} (its tasks: "
            f"{', '.join(old)}); a new task needs a new name"
        )


def _check_inputs(base: Base, frames: Splits) -> list[str]:
    """The input columns the new data lacks (read as missing); an error if it has none."""
    inputs = base.preprocessor.input_columns
    missing = base.preprocessor.missing_inputs(frames.train)
    if inputs and len(missing) == len(inputs):
        shown = ", ".join(inputs[:8]) + (" ..." if len(inputs) > 8 else "")
        raise DataError(f"the new data has none of the model's input columns ({shown})")
    return missing


# ---------------------------------------------------------------------- history, old data
def read_history(source: Path, base: Base) -> list[dict[str, Any]]:
    """The run's growth history; a run never grown is its own first entry."""
    if (source / HISTORY).is_file():
        return list(rd.load_json(source, HISTORY)["history"])
    return [
        {
            "step": 0,
            "tasks": [task.name for task in base.spec.tasks],
            "data": base.spec.data.model_dump(mode="json"),
            "strategy": None,
            "run": str(source.resolve()),
        }
    ]


def _old_rows(spec: GrowSpec, base: Base, history: list[dict[str, Any]]) -> dict[str, Rows]:
    """The old tasks' rows per split: each history entry's data labels its own tasks (with
    ``old_data: run``), or the given data labels every old task whose columns it holds; the
    training rows sampled down to ``old_rows``."""
    if spec.old_data is None:
        return {}
    tasks = base.preprocessor.build_tasks(base.spec.tasks)
    if spec.old_data == "run":
        sources = [
            (DataSpec.model_validate(entry["data"]), [t for t in tasks if t.name in entry["tasks"]])
            for entry in history
        ]
    else:
        sources = [(spec.old_data, tasks)]
    per_split: dict[str, list[Rows]] = {}
    for data, labelled in sources:
        frames = load_splits(data)
        found = {"train": frames.train, "valid": frames.valid, "test": frames.test}
        for split, rows in old_rows(base.preprocessor, found, labelled).items():
            per_split.setdefault(split, []).append(rows)
    from polytask.grow.data import concat

    merged = {split: concat(parts) for split, parts in per_split.items()}
    if not any(merged[s].labels for s in merged):
        raise DataError("old_data labels none of the run's tasks (no target column found)")
    generator = torch.Generator().manual_seed(spec.train.seed)
    if "train" in merged:
        merged["train"] = sample(merged["train"], spec.old_rows, generator)
    return merged


def _describe_old(spec: GrowSpec) -> Any:
    if spec.old_data is None or spec.old_data == "run":
        return spec.old_data
    return {"data": spec.old_data.model_dump(mode="json"), "rows": spec.old_rows}
