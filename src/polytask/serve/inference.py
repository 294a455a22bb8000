"""The loaded run as the server sees it: JSON rows in, per-task JSON predictions out.

Why a layer between the HTTP app and :class:`~polytask.inference.predictor.Predictor`:

* Requests are checked one by one *before* they join a batch (:meth:`ServedModel.check`), so
  a bad row is reported against the request that sent it, with its own row index, and never
  fails the other requests of its batch.
* A batch is predicted with one preprocessing pass and ONE model call on all of its rows (the
  computation of :meth:`Predictor.predict`, with :class:`RowEncoder` in front of the fitted
  preprocessor for plain JSON cells), then cut back into per-request answers. Should the
  batch still fail on its data (something the checks did not foresee), every request is
  retried alone so that only the culprit gets the error.
* Outputs become JSON-friendly values: floats, class labels as the training table held them.
  A row whose output is not a finite number fails its request (400), never a null answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pandas as pd

from polytask.config import TaskKind
from polytask.data.columns import unknown_column_problems, unknown_columns
from polytask.errors import PolytaskError, did_you_mean
from polytask.inference.predict import predict_logits
from polytask.inference.predictor import Predictor
from polytask.serve.encoding import RowEncoder
from polytask.serve.schemas import Cell, RequestError
from polytask.tasks import Task

Row = dict[str, Cell]
# A bad request names at most this many problems; the first one is the headline.
MAX_REPORTED = 5


def _finite(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


class ServedModel:
    """A :class:`Predictor` restricted to some tasks, answering lists of JSON rows.

    Unknown columns are *rejected* (400, with did-you-mean) unless ``allow_unknown_columns``:
    the rule of ``polytask predict`` (:mod:`polytask.data.columns`). Columns of the training
    table that are not model inputs (task targets, ``data.drop``) are known and ignored, so
    that a client may send whole training rows. A row whose prediction is not a finite number
    is refused (400 naming it), never answered with null.
    """

    def __init__(
        self,
        predictor: Predictor,
        tasks: Sequence[str] | None = None,
        allow_unknown_columns: bool = False,
    ) -> None:
        self.predictor = predictor
        self.allow_unknown_columns = allow_unknown_columns
        available = predictor.task_names
        chosen: list[str] = []
        for name in tasks or available:
            if name not in available:
                raise PolytaskError(
                    f"--tasks names '{name}', which run {predictor.run.name} does not predict"
                    f"{did_you_mean(name, available)}; its tasks: {', '.join(available)}"
                )
            if name not in chosen:
                chosen.append(name)
        self.tasks: list[Task] = [t for t in predictor.tasks if t.name in chosen]
        self._index = {name: i for i, name in enumerate(available)}
        self.encoder = RowEncoder(predictor.preprocessor)
        pre = predictor.preprocessor
        self.categorical: list[str] = list(pre.categorical)
        self.numeric: list[str] = list(pre.numeric)
        self.inputs: list[str] = self.categorical + self.numeric
        self.ignored: list[str] = predictor.ignored_columns
        self.known: frozenset[str] = frozenset(self.inputs) | frozenset(self.ignored)

    @property
    def name(self) -> str:
        return self.predictor.run.name

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    # ------------------------------------------------------------------ checking
    def check(self, rows: list[Row]) -> None:
        """Refuse unknown columns and non-numbers in numeric columns (400), naming each."""
        present: set[str] = set().union(*rows)
        unknown = [] if self.allow_unknown_columns else unknown_columns(present, self.known)
        if unknown:
            problems = unknown_column_problems(unknown, self.inputs)
            headline = _headline(problems, len(unknown), "; GET /v1/tasks lists the inputs")
            raise RequestError(400, headline, problems)
        problems = []
        for column in self.numeric:
            if column in present:
                problems.extend(self._bad_numbers(rows, column))
        if problems:
            raise RequestError(400, _headline(problems, len(problems)), problems[:MAX_REPORTED])

    @staticmethod
    def _bad_numbers(rows: list[Row], column: str) -> list[str]:
        """Cells of a numeric column that do not parse as numbers, parsed as pandas would (the
        preprocessor's rule), so that the check and the prediction never disagree."""
        texts = [(i, row[column]) for i, row in enumerate(rows) if isinstance(row.get(column), str)]
        if not texts:
            return []
        series = pd.Series([value for _, value in texts], dtype=object)
        parsed = pd.to_numeric(series, errors="coerce")
        bad = parsed.isna() & (series.str.strip() != "")
        return [
            f"rows[{texts[k][0]}][{column!r}]: {texts[k][1]!r} is not a number "
            f"(column '{column}' is numeric)"
            for k in np.flatnonzero(bad.to_numpy())
        ]

    # ------------------------------------------------------------------ predicting
    def frame(self, rows: list[Row]) -> pd.DataFrame:
        """Rows -> a table of the input columns (absent ones are all-missing columns).

        A whole float in a categorical column becomes an int, so that code 3 sent as ``3.0``
        (as a JSON writer may print it) maps to the category "3", as it did in training.
        """
        fixed = []
        for row in rows:
            wholes = [
                c
                for c in self.categorical
                if isinstance(value := row.get(c), float) and value.is_integer()
            ]
            if wholes:
                row = {**row, **{c: int(cast(float, row[c])) for c in wholes}}
            fixed.append(row)
        rows = fixed
        return pd.DataFrame.from_records(rows, columns=self.inputs)

    def outputs(self, rows: list[Row]) -> dict[str, np.ndarray]:
        """Per served task, its outputs for ``rows`` as :meth:`Predictor.predict` computes them
        (probabilities, or regression values): one preprocessing pass and ONE model call.

        Plain cells go through the :class:`RowEncoder` (no pandas); a row set it declines goes
        through the fitted preprocessor, which is slower but covers every case."""
        features = self.encoder.encode(rows)
        if features is None:
            features = self.predictor.preprocessor.transform(self.frame(rows))
        logits = predict_logits(
            self.predictor.serving_model, features, self.predictor.spec.train.eval_batch_size
        )
        return {
            task.name: task.outputs(logits[self._index[task.name]]).numpy() for task in self.tasks
        }

    def predict_many(self, requests: list[list[Row]]) -> list[list[dict[str, Any]] | Exception]:
        """One prediction for all requests' rows; per request, its answers or its error."""
        rows = [row for request in requests for row in request]
        try:
            outputs = self.outputs(rows)
        except PolytaskError as error:
            if len(requests) == 1:
                return [RequestError(400, str(error))]
            return [self._predict_one(request) for request in requests]
        answers = self.answers(outputs)
        results: list[list[dict[str, Any]] | Exception] = []
        start = 0
        for request in requests:
            stop = start + len(request)
            part = {name: values[start:stop] for name, values in outputs.items()}
            problem = _not_finite(part)
            results.append(problem or answers[start:stop])
            start = stop
        return results

    def _predict_one(self, rows: list[Row]) -> list[dict[str, Any]] | Exception:
        try:
            outputs = self.outputs(rows)
        except PolytaskError as error:
            return RequestError(400, str(error))
        return _not_finite(outputs) or self.answers(outputs)

    def answers(self, outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """Task outputs -> one ``{task: value or {...}}`` object per row (the values of
        :meth:`Predictor.predict`'s columns, grouped per task)."""
        per_task: dict[str, list[Any]] = {}
        for task in self.tasks:
            values = outputs[task.name]
            if task.kind is TaskKind.multiclass:
                keys = [str(c) for c in task.classes]
                labels = [_plain(task.classes[k]) for k in values.argmax(axis=1).tolist()]
                per_task[task.name] = [
                    {"class": label, "probabilities": dict(zip(keys, _finite(p), strict=True))}
                    for label, p in zip(labels, values, strict=True)
                ]
            elif task.kind is TaskKind.multilabel:
                columns = list(task.spec.columns)
                per_task[task.name] = [dict(zip(columns, _finite(p), strict=True)) for p in values]
            else:
                per_task[task.name] = _finite(values)
        names = list(per_task)
        return [
            dict(zip(names, row, strict=True))
            for row in zip(*(per_task[n] for n in names), strict=True)
        ]

    # ------------------------------------------------------------------ describing
    def schema(self) -> dict[str, Any]:
        """What /v1/tasks answers: tasks with their outputs, and the expected input columns."""
        vocabularies = self.predictor.preprocessor.state["vocabularies"]
        inputs: list[dict[str, Any]] = []
        for column in self.categorical:
            vocabulary = vocabularies[column]
            inputs.append(
                {
                    "name": column,
                    "kind": "categorical",
                    "missing_allowed": True,
                    "unseen_values_allowed": True,
                    "known_values": len(vocabulary),
                    "examples": [_plain(v) for v in vocabulary[:10]],
                }
            )
        for column in self.numeric:
            inputs.append({"name": column, "kind": "numeric", "missing_allowed": True})
        return {
            "model": self.name,
            "arch": self.predictor.spec.model.arch,
            "tasks": [_describe_task(task) for task in self.tasks],
            "inputs": inputs,
            "ignored_columns": self.ignored,
            "unknown_columns": "allowed and ignored (--allow-unknown-columns)"
            if self.allow_unknown_columns
            else "rejected (400): a misspelt column would otherwise be read as missing",
        }


def _not_finite(outputs: dict[str, np.ndarray]) -> RequestError | None:
    """A 400 naming the first row whose prediction is not a finite number, if any."""
    for name, values in outputs.items():
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            return RequestError(
                400,
                f"rows[{row}]: the prediction for task '{name}' is not a finite number; an "
                "input is far outside what the model was trained on",
            )
    return None


def _headline(problems: list[str], total: int, suffix: str = "") -> str:
    """The first problem, and how many more there are: one line for the client."""
    more = f" (and {total - 1} more)" if total > 1 else ""
    return problems[0] + more + suffix


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars for JSON."""
    return value.item() if isinstance(value, np.generic) else value


def _describe_task(task: Task) -> dict[str, Any]:
    kind = task.kind
    if kind is TaskKind.binary:
        outputs: dict[str, Any] = {
            "type": "number",
            "meaning": f"probability that '{task.spec.target}' is 1",
        }
    elif kind is TaskKind.regression:
        outputs = {"type": "number", "meaning": f"predicted '{task.spec.target}'"}
    elif kind is TaskKind.multiclass:
        outputs = {
            "type": "object",
            "fields": {
                "class": "the most likely class",
                "probabilities": "class -> probability (keys are the classes as strings)",
            },
            "classes": [_plain(c) for c in task.classes],
        }
    else:
        outputs = {
            "type": "object",
            "fields": {c: f"probability that '{c}' is 1" for c in task.spec.columns},
        }
    return {"name": task.name, "kind": kind.value, "outputs": outputs}
