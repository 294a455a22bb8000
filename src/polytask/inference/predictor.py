"""A finished run, loaded: predict and evaluate on raw rows."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import SafetensorError
from torch import nn

from polytask.adapters.model import AdapterModel
from polytask.artifacts import run_dir as rd
from polytask.artifacts.weights import load_weights, weights_from_adapters
from polytask.config import RunSpec, TaskKind
from polytask.data.preprocess import Preprocessor
from polytask.data.weights import encode_weights, weight_columns
from polytask.errors import DataError, PolytaskError, did_you_mean
from polytask.inference.evaluation import evaluate, overall_score
from polytask.inference.lean import lean_form
from polytask.inference.predict import predict_logits
from polytask.inference.rows import RunRows
from polytask.inference.subset import task_subset
from polytask.model import MultiTaskModel, model_for


class Predictor(RunRows):
    """The model, its fitted preprocessor and its tasks, read from a run directory."""

    def __init__(
        self, run: Path, spec: RunSpec, preprocessor: Preprocessor, model: MultiTaskModel
    ) -> None:
        super().__init__(run, spec, preprocessor)
        self.model: nn.Module = model.eval()
        # What predictions run on: the model's folded form where it has one (the same outputs
        # in fewer operations, see polytask.inference.lean), else the model itself. It is built from
        # the weights at load time: after changing self.model's weights, rebuild it with
        # lean_form(self.model) (or set it to self.model).
        self.serving_model: nn.Module = lean_form(self.model) or self.model
        self._subsets: dict[tuple[str, ...], Predictor] = {}

    @classmethod
    def load(
        cls, run: str | Path, encoder_factory: Callable[[], nn.Module] | None = None
    ) -> Predictor:
        """A finished run directory, or a group study's folder (``polytask group``: several
        runs, one model to its users)."""
        from polytask.inference.group import GroupPredictor, is_group

        if cls is Predictor and is_group(run):
            return GroupPredictor.load(run, encoder_factory=encoder_factory)
        folder = rd.require_complete(Path(run))
        alone = not (folder / rd.WEIGHTS).is_file() and (folder / rd.ADAPTERS).is_file()
        if not (folder / rd.WEIGHTS).is_file() and not alone:
            raise PolytaskError(
                f"{folder} holds metrics but no model ({rd.WEIGHTS}): a baseline's result "
                "folder, not a run"
            )
        spec = rd.load_config(folder)
        if encoder_factory is not None and spec.model.encoder.name != "custom":
            raise PolytaskError(
                f"run {folder} was trained with the {spec.model.encoder.name} encoder, "
                "not a custom one; load it without encoder_factory"
            )
        preprocessor = Preprocessor(rd.load_json(folder, rd.PREPROCESSOR))
        tasks = preprocessor.build_tasks(spec.tasks)
        model = model_for(spec.model, preprocessor, tasks, encoder_factory=encoder_factory)
        raw_model = rd.load_raw_config(folder).get("model", {})
        try:
            if alone:  # the adapters shipped alone: onto the backbone they were trained on
                record = rd.load_json(folder, rd.SUMMARY).get("adapters")
                state = weights_from_adapters(folder, folder / rd.ADAPTERS, record)
            else:
                state = load_weights(folder / rd.WEIGHTS, raw_model)
            model.load_state_dict(state)
        except (OSError, RuntimeError, SafetensorError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise PolytaskError(
                f"run {folder}: {rd.WEIGHTS} could not be loaded into its model ({first})"
            ) from None
        return cls(folder, spec, preprocessor, model)

    def network(self) -> MultiTaskModel:
        """The run's model as a network to cut or trace (slim, export); a group of runs has
        none of its own (its runs each do)."""
        if not isinstance(self.model, MultiTaskModel):
            raise PolytaskError(
                f"{self.run} is a group of runs, not one network; slim or export its runs"
            )
        if isinstance(self.model, AdapterModel):
            raise PolytaskError(
                f"{self.run} holds adapters, which change its layers per task: fold one "
                f"task's into the backbone first (polytask adapters fold {self.run} --task "
                "TASK -o OUT), then slim or export that run"
            )
        return self.model

    def checked_tasks(self, tasks: Sequence[str]) -> list[str]:
        """``tasks`` in the model's order, once each; an unknown name is refused with
        did-you-mean."""
        available = self.task_names
        for name in tasks:
            if name not in available:
                raise PolytaskError(
                    f"tasks: '{name}' is not a task of run {self.run.name}"
                    f"{did_you_mean(name, available)}; its tasks: {', '.join(available)}"
                )
        if not tasks:
            raise PolytaskError("tasks: name at least one task")
        return [name for name in available if name in tasks]

    def subset(self, tasks: Sequence[str]) -> Predictor:
        """This predictor for ``tasks`` only, computing nothing that only other tasks use
        (:mod:`polytask.inference.subset`); its outputs for them equal this one's."""
        names = tuple(self.checked_tasks(tasks))
        if list(names) == self.task_names:
            return self
        if names not in self._subsets:
            keep = [i for i, name in enumerate(self.task_names) if name in names]
            part = copy.copy(self)
            part.spec = self.spec.model_copy(update={"tasks": [self.spec.tasks[i] for i in keep]})
            part.model, part.serving_model = self._subset_models(keep)
            part.tasks = [self.tasks[i] for i in keep]
            part._subsets = {}
            self._subsets[names] = part
        return self._subsets[names]

    def _subset_models(self, keep: list[int]) -> tuple[nn.Module, nn.Module]:
        """The model of the tasks ``keep`` (indices), and its serving form."""
        if isinstance(self.model, AdapterModel):  # the same pass, asked for fewer tasks
            part = self.model.tasks_only(keep)
            return part, part
        model = task_subset(self.network(), keep)
        return model, lean_form(model) or model

    def predict(
        self,
        frame: pd.DataFrame,
        batch_size: int | None = None,
        *,
        allow_unknown_columns: bool = False,
        tasks: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Raw rows -> one or more prediction columns per task, in the order of the rows.

        binary: ``<task>`` probability of 1; multiclass: ``<task>`` the most likely class and
        ``<task>_p_<class>`` per class; regression: ``<task>``; multilabel: ``<task>_<column>``.
        A column the run does not know is refused unless ``allow_unknown_columns``; a row whose
        prediction is not a finite number is refused, naming it (never a NaN answer).
        ``tasks``: predict only these (see :meth:`subset`).
        """
        if tasks is not None:
            part = self.subset(tasks)
            return part.predict(frame, batch_size, allow_unknown_columns=allow_unknown_columns)
        self.check_rows(frame, allow_unknown_columns)
        features = self.preprocessor.transform(frame)
        size = batch_size or self.spec.train.eval_batch_size
        logits = predict_logits(self.serving_model, features, size)
        values = [
            task.outputs(task_logits).numpy()
            for task, task_logits in zip(self.tasks, logits, strict=True)
        ]
        return self.prediction_frame(frame, values)

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
        named = {task.name for task in present}
        weighted = {t: c for t, c in weight_columns(self.spec).items() if t in named}
        weights = encode_weights(frame, weighted, labels)
        results = evaluate(
            self.model, features, labels, self.tasks, self.spec.train.eval_batch_size, weights
        )
        results = {task.name: results[task.name] for task in present}
        score = overall_score(results, labels, present, baseline, baseline_path, weights)
        skipped = [task.name for task in self.tasks if task not in present]
        return {"metrics": results, "score": score, "skipped": skipped}

    def __repr__(self) -> str:
        arch = self.spec.model.arch
        return f"Predictor(run={str(self.run)!r}, arch={arch!r}, tasks={self.task_names})"
