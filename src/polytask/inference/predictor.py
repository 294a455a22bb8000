"""A finished run, loaded: predict and evaluate on raw rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from torch import nn

from polytask.artifacts import run_dir as rd
from polytask.artifacts.weights import load_weights
from polytask.config import RunSpec, TaskKind
from polytask.data.columns import ignored_columns, refuse_unknown
from polytask.data.preprocess import Preprocessor, row_label
from polytask.errors import DataError, PolytaskError
from polytask.inference.evaluation import evaluate, overall_score
from polytask.inference.lean import lean_form
from polytask.inference.predict import predict_logits
from polytask.model import MultiTaskModel, build_model
from polytask.tasks import Task, output_columns


class Predictor:
    """The model, its fitted preprocessor and its tasks, read from a run directory."""

    def __init__(
        self, run: Path, spec: RunSpec, preprocessor: Preprocessor, model: MultiTaskModel
    ) -> None:
        self.run = run
        self.spec = spec
        self.preprocessor = preprocessor
        self.model = model.eval()
        # What predictions run on: the model's folded form where it has one (the same outputs
        # in fewer operations, see polytask.inference.lean), else the model itself. It is built from
        # the weights at load time: after changing self.model's weights, rebuild it with
        # lean_form(self.model) (or set it to self.model).
        self.serving_model: nn.Module = lean_form(self.model) or self.model
        self.tasks: list[Task] = preprocessor.build_tasks(spec.tasks)

    @classmethod
    def load(
        cls, run: str | Path, encoder_factory: Callable[[], nn.Module] | None = None
    ) -> Predictor:
        folder = rd.require_complete(Path(run))
        spec = rd.load_config(folder)
        if encoder_factory is not None and spec.model.encoder.name != "custom":
            raise PolytaskError(
                f"run {folder} was trained with the {spec.model.encoder.name} encoder, "
                "not a custom one; load it without encoder_factory"
            )
        preprocessor = Preprocessor(rd.load_json(folder, rd.PREPROCESSOR))
        tasks = preprocessor.build_tasks(spec.tasks)
        model = build_model(
            spec.model,
            preprocessor.cardinalities,
            preprocessor.numeric_width,
            [task.out_dim for task in tasks],
            [task.name for task in tasks],
            encoder_factory=encoder_factory,
        )
        raw_model = rd.load_raw_config(folder).get("model", {})
        try:
            model.load_state_dict(load_weights(folder / rd.WEIGHTS, raw_model))
        except (OSError, RuntimeError, SafetensorError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise PolytaskError(
                f"run {folder}: {rd.WEIGHTS} could not be loaded into its model ({first})"
            ) from None
        return cls(folder, spec, preprocessor, model)

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    @property
    def ignored_columns(self) -> list[str]:
        """Columns of the training table that the model does not read (targets, data.drop):
        accepted in rows to predict, and ignored. Recorded at fit time; for a run fitted
        before that, the spec's targets and drop list."""
        recorded = self.preprocessor.state.get("ignored_columns")
        if recorded is not None:
            return list(recorded)
        spec = self.spec
        targets = [c for task in spec.tasks for c in task.columns]
        return ignored_columns(self.preprocessor.input_columns, targets, spec.data.drop)

    def check_columns(self, frame: pd.DataFrame) -> None:
        """Refuse columns the run does not know (see :mod:`polytask.data.columns`)."""
        refuse_unknown(frame.columns, self.preprocessor.input_columns, self.ignored_columns)

    def output_columns(self) -> dict[str, str]:
        """The columns :meth:`predict` returns, each with what it holds."""
        return output_columns(self.tasks)

    def summary(self) -> dict[str, Any]:
        return rd.load_json(self.run, rd.SUMMARY)

    def predict(
        self,
        frame: pd.DataFrame,
        batch_size: int | None = None,
        *,
        allow_unknown_columns: bool = False,
    ) -> pd.DataFrame:
        """Raw rows -> one or more prediction columns per task, in the order of the rows.

        binary: ``<task>`` probability of 1; multiclass: ``<task>`` the most likely class and
        ``<task>_p_<class>`` per class; regression: ``<task>``; multilabel: ``<task>_<column>``.
        A column the run does not know is refused unless ``allow_unknown_columns``; a row whose
        prediction is not a finite number is refused, naming it (never a NaN answer).
        """
        if len(frame) == 0:
            raise DataError("no rows to predict")
        if not allow_unknown_columns:
            self.check_columns(frame)
        self.output_columns()  # refuses colliding names before any work
        features = self.preprocessor.transform(frame)
        size = batch_size or self.spec.train.eval_batch_size
        logits = predict_logits(self.serving_model, features, size)
        columns: dict[str, Any] = {}
        for task, task_logits in zip(self.tasks, logits, strict=True):
            values = task.outputs(task_logits).numpy()
            _check_finite(values, task, frame)
            if task.kind is TaskKind.multiclass:
                columns[task.name] = np.asarray(task.classes, dtype=object)[values.argmax(axis=1)]
                for index, label in enumerate(task.classes):
                    columns[f"{task.name}_p_{label}"] = values[:, index]
            elif task.kind is TaskKind.multilabel:
                for index, column in enumerate(task.spec.columns):
                    columns[f"{task.name}_{column}"] = values[:, index]
            else:
                columns[task.name] = values
        return pd.DataFrame(columns, index=frame.index)

    def evaluate(
        self,
        frame: pd.DataFrame,
        baseline: dict[str, dict[str, float]] | None = None,
        baseline_path: str | None = None,
        *,
        allow_unknown_columns: bool = False,
    ) -> dict[str, Any]:
        """Per-task metrics on labelled raw rows, plus the overall score. Tasks whose label
        columns the rows do not hold at all (a grown run's old tasks, on the new data) are
        left out and named under ``skipped``; rows labelling none of the tasks are an error."""
        if not allow_unknown_columns:
            self.check_columns(frame)
        present = [t for t in self.tasks if any(c in frame.columns for c in t.spec.columns)]
        if not present:
            wanted = sorted({c for t in self.tasks for c in t.spec.columns})
            raise DataError(f"the rows hold none of the tasks' label columns ({', '.join(wanted)})")
        features = self.preprocessor.transform(frame)
        labels = self.preprocessor.encode_labels(frame, present)
        for task in self.tasks:
            if task not in present:
                width = len(task.spec.columns) if task.kind is TaskKind.multilabel else None
                shape = (len(frame),) if width is None else (len(frame), width)
                labels[task.name] = torch.full(shape, float("nan"))
        results = evaluate(
            self.model, features, labels, self.tasks, self.spec.train.eval_batch_size
        )
        results = {task.name: results[task.name] for task in present}
        score = overall_score(results, labels, present, baseline, baseline_path)
        skipped = [task.name for task in self.tasks if task not in present]
        return {"metrics": results, "score": score, "skipped": skipped}

    def __repr__(self) -> str:
        arch = self.spec.model.arch
        return f"Predictor(run={str(self.run)!r}, arch={arch!r}, tasks={self.task_names})"


def _check_finite(values: np.ndarray, task: Task, frame: pd.DataFrame) -> None:
    """Refuse, naming the first row, outputs that are not finite numbers."""
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        where = row_label(frame, int(np.flatnonzero(bad)[0]))
        raise DataError(
            f"{where}: the prediction for task '{task.name}' is not a finite number "
            f"({int(bad.sum())} such rows); an input is far outside what the model was trained on"
        )
