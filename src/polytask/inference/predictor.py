"""A finished run, loaded: predict and evaluate on raw rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from safetensors import SafetensorError
from torch import nn

from polytask.artifacts import run_dir as rd
from polytask.artifacts.weights import load_weights
from polytask.config import RunSpec
from polytask.data.preprocess import Preprocessor
from polytask.errors import PolytaskError
from polytask.inference.evaluation import evaluate, overall_score
from polytask.inference.lean import lean_form
from polytask.inference.predict import predict_logits
from polytask.inference.rows import RunRows
from polytask.model import MultiTaskModel, build_model


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
        if not (folder / rd.WEIGHTS).is_file():
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

    def network(self) -> MultiTaskModel:
        """The run's model as a network to cut or trace (slim, export); a group of runs has
        none of its own (its runs each do)."""
        if not isinstance(self.model, MultiTaskModel):
            raise PolytaskError(
                f"{self.run} is a group of runs, not one network; slim or export its runs"
            )
        return self.model

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
        """Per-task metrics on labelled raw rows, plus the overall score."""
        if not allow_unknown_columns:
            self.check_columns(frame)
        features = self.preprocessor.transform(frame)
        labels = self.preprocessor.encode_labels(frame, self.tasks)
        results = evaluate(
            self.model, features, labels, self.tasks, self.spec.train.eval_batch_size
        )
        score = overall_score(results, labels, self.tasks, baseline, baseline_path)
        return {"metrics": results, "score": score}

    def __repr__(self) -> str:
        arch = self.spec.model.arch
        return f"Predictor(run={str(self.run)!r}, arch={arch!r}, tasks={self.task_names})"

