"""A run directory as an MLflow pyfunc model that predicts raw rows, exactly as
:meth:`polytask.inference.predictor.Predictor.predict` does (it is that method).

The model is saved "from code" (MLflow's recommended form, no pickled objects): MLflow runs
``mlflow_model.py`` when loading, and the model's one artifact is a copy of the files that
:meth:`Predictor.load` reads. The input schema lists the run's input columns, every one optional
(a missing column is a missing value, as for ``polytask predict``); categorical columns accept any
JSON value (codes, names), numeric ones numbers. Serve with
``mlflow models serve -m runs:/<run id>/model --env-manager local``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

from polytask import __version__
from polytask.artifacts import run_dir as rd
from polytask.data.preprocess import Preprocessor
from polytask.inference.predictor import Predictor

MODEL_CODE = Path(__file__).with_name("mlflow_model.py")
RUN_ARTIFACT = "run"
# What Predictor.load reads; the rest of the run directory is logged beside the model.
PREDICTOR_FILES = (rd.CONFIG, rd.PREPROCESSOR, rd.WEIGHTS, rd.SUMMARY)


class PolytaskModel(PythonModel):
    """Raw rows (a DataFrame) in, one or more prediction columns per task out."""

    def load_context(self, context: Any) -> None:
        self.predictor = Predictor.load(context.artifacts[RUN_ARTIFACT])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return self.predictor.predict(model_input)


def input_signature(preprocessor: Preprocessor) -> ModelSignature:
    """Every input column of the run, optional; categorical ones of any type."""
    columns: list[ColSpec | TensorSpec] = [
        ColSpec(AnyType(), name, required=False) for name in preprocessor.categorical
    ]
    columns += [ColSpec("double", name, required=False) for name in preprocessor.numeric]
    return ModelSignature(inputs=Schema(columns))


def requirements() -> list[str]:
    """What the model needs; polytask itself is not on a package index, so serve it with
    ``--env-manager local`` from an environment that has polytask installed."""
    return [
        f"polytask=={__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"pandas=={pd.__version__}",
        f"mlflow-skinny=={mlflow.__version__}",
    ]


def save_pyfunc(run: Path, path: Path) -> None:
    """Write the MLflow model of the finished run ``run`` into the new folder ``path``."""
    preprocessor = Preprocessor(rd.load_json(run, rd.PREPROCESSOR))
    with tempfile.TemporaryDirectory(prefix="polytask-model-") as scratch:
        bundle = Path(scratch) / RUN_ARTIFACT
        bundle.mkdir()
        for name in PREDICTOR_FILES:
            shutil.copy2(run / name, bundle / name)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(MODEL_CODE),
            artifacts={RUN_ARTIFACT: str(bundle)},
            signature=input_signature(preprocessor),
            pip_requirements=requirements(),
        )
