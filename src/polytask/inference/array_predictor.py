"""Predicting on raw rows from a run's lean arrays, without torch (see
:mod:`polytask.inference.arrays`): what ``polytask predict`` runs when the run has them.

:func:`open_predictor` answers an :class:`ArrayPredictor` where the run's ``lean.safetensors``
matches its weights, and the torch :class:`~polytask.inference.predictor.Predictor` otherwise
(runs whose model has no folded form, runs written before the arrays were saved). Both
answer ``predict`` with the same table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from polytask.artifacts import run_dir as rd
from polytask.config import RunSpec
from polytask.data.preprocess import Preprocessor
from polytask.inference.arrays import LeanArrays, read_lean
from polytask.inference.rows import RunRows

if TYPE_CHECKING:
    from polytask.inference.predictor import Predictor


class ArrayPredictor(RunRows):
    """A run's preprocessor, tasks and lean arrays: ``predict`` as the Predictor's, in numpy."""

    def __init__(
        self, run: Path, spec: RunSpec, preprocessor: Preprocessor, arrays: LeanArrays
    ) -> None:
        super().__init__(run, spec, preprocessor)
        self.arrays = arrays

    def predict(
        self,
        frame: pd.DataFrame,
        batch_size: int | None = None,
        *,
        allow_unknown_columns: bool = False,
    ) -> pd.DataFrame:
        """As :meth:`Predictor.predict <polytask.inference.predictor.Predictor.predict>`."""
        self.check_rows(frame, allow_unknown_columns)
        codes, numeric = self.preprocessor.transform_arrays(frame)
        size = batch_size or self.spec.train.eval_batch_size
        chunks = [
            self.arrays.forward(codes[start : start + size], numeric[start : start + size])
            for start in range(0, len(codes), size)
        ]
        values = [
            task.outputs_array(np.concatenate([chunk[index] for chunk in chunks]))
            for index, task in enumerate(self.tasks)
        ]
        return self.prediction_frame(frame, values)


def open_predictor(run: str | Path) -> ArrayPredictor | Predictor:
    """The run, ready to predict raw rows: from its lean arrays where it has matching ones
    (no torch import), else with its model."""
    path = Path(run)
    arrays = read_lean(path) if path.is_dir() else None
    if arrays is None:  # no arrays: a group of runs, an older run, a model without a folded form
        from polytask.inference.predictor import Predictor

        return Predictor.load(path)
    folder = rd.require_complete(path)
    spec = rd.load_config(folder)
    preprocessor = Preprocessor(rd.load_json(folder, rd.PREPROCESSOR))
    return ArrayPredictor(folder, spec, preprocessor, arrays)
