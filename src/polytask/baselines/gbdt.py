"""A gradient-boosted model per task: the baseline that tells whether sharing pays.

Same split, preprocessing and metrics as a polytask run of the spec: the rows come from
:func:`polytask.train.prepare.prepare` (the spec's split and fitted preprocessor), the inputs
are the preprocessor's output (categorical codes, standardised numerics, missing flags) and
the metrics are :meth:`polytask.tasks.Task.metrics` on the same rows. One model per task (per
label column for multilabel), fitted on the rows that carry its label, early-stopped on the
validation rows where the spec has them.

Library: LightGBM where installed (``pip install 'polytask[gbdt]'``), else scikit-learn's
HistGradientBoosting; ``library`` forces one. Categorical codes are declared categorical
where the column has fewer than 255 categories (HistGradientBoosting's limit; kept equal for
LightGBM), else passed as their codes (frequency ranks). The result is an ordinary-looking
folder: ``config.yaml``, ``metrics.json`` (per split, per task, as a run's) and
``summary.json``; it serves as ``--baseline`` for Delta-m and ``evaluate --beside``.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from polytask.artifacts import run_dir as rd
from polytask.artifacts.ownership import OutputFolder
from polytask.config import RunSpec, TaskKind
from polytask.errors import ConfigError, PolytaskError
from polytask.features import Features
from polytask.inference.evaluation import evaluate_outputs
from polytask.tasks import Task
from polytask.train.prepare import Prepared, SplitTensors, prepare

Library = Literal["auto", "lightgbm", "sklearn"]
MAX_CATEGORIES = 255
KIND = "gbdt_baseline"
PARAMS = {"learning_rate": 0.1, "max_iter": 500, "max_leaf_nodes": 31, "n_iter_no_change": 20}


def resolve_library(library: Library) -> str:
    installed = importlib.util.find_spec("lightgbm") is not None
    if library == "lightgbm" and not installed:
        raise PolytaskError("--library lightgbm: LightGBM is not installed (pip install lightgbm)")
    if library == "auto":
        return "lightgbm" if installed else "sklearn"
    return library


def design_matrix(features: Features) -> np.ndarray:
    """[N, C + 2F] float64: categorical codes, then the numeric inputs and missing flags."""
    return torch.cat([features.categorical.double(), features.numeric.double()], dim=1).numpy()


def categorical_mask(cardinalities: list[int], numeric_width: int) -> np.ndarray:
    small = [cardinality <= MAX_CATEGORIES for cardinality in cardinalities]
    return np.array(small + [False] * numeric_width, dtype=bool)


class _Fitted:
    """One fitted model for one label column, predicting on the task's output scale."""

    def __init__(self, library: str, kind: TaskKind, classes: int, mask: np.ndarray, seed: int):
        self.library, self.kind, self.classes, self.mask, self.seed = (
            library,
            kind,
            classes,
            mask,
            seed,
        )
        self.model: Any = None

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray | None,
        y_val: np.ndarray | None,
        weights: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
    ) -> None:
        """``weights``: the sample weights of the training and the validation rows."""
        w, w_val = weights
        regression = self.kind is TaskKind.regression
        if self.library == "lightgbm":
            import lightgbm

            cls = lightgbm.LGBMRegressor if regression else lightgbm.LGBMClassifier
            self.model = cls(
                learning_rate=PARAMS["learning_rate"],
                n_estimators=PARAMS["max_iter"],
                num_leaves=PARAMS["max_leaf_nodes"],
                random_state=self.seed,
                verbose=-1,
                n_jobs=1,
            )
            kwargs: dict[str, Any] = {
                "categorical_feature": list(np.flatnonzero(self.mask)),
                "sample_weight": w,
            }
            if x_val is not None and len(x_val):
                kwargs["eval_set"] = [(x_val, y_val)]
                kwargs["eval_sample_weight"] = None if w_val is None else [w_val]
                kwargs["callbacks"] = [
                    lightgbm.early_stopping(PARAMS["n_iter_no_change"], verbose=False)
                ]
            self.model.fit(x, y, **kwargs)
            return
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        use_val = x_val is not None and len(x_val) > 0
        self.model = cls(
            learning_rate=PARAMS["learning_rate"],
            max_iter=PARAMS["max_iter"],
            max_leaf_nodes=PARAMS["max_leaf_nodes"],
            n_iter_no_change=PARAMS["n_iter_no_change"],
            early_stopping=True,
            categorical_features=self.mask if self.mask.any() else None,
            random_state=self.seed,
        )
        if use_val:
            self.model.fit(x, y, w, X_val=x_val, y_val=y_val, sample_weight_val=w_val)
        else:
            self.model.fit(x, y, w)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Regression: standardised values; otherwise class probabilities [N, classes]."""
        if self.kind is TaskKind.regression:
            return np.asarray(self.model.predict(x), dtype=np.float64)
        probabilities = np.zeros((len(x), self.classes))
        seen = np.asarray(self.model.classes_).astype(int)
        probabilities[:, seen] = self.model.predict_proba(x)
        return probabilities


def _logits(task: Task, columns: list[np.ndarray]) -> torch.Tensor:
    """Per-column predictions -> the task's logits [N, out_dim], so that the run's own
    evaluation (metrics and masked loss) applies unchanged."""
    if task.kind is TaskKind.regression:
        return torch.from_numpy(columns[0]).float().unsqueeze(1)
    if task.kind is TaskKind.multiclass:
        return torch.from_numpy(np.log(np.clip(columns[0], 1e-7, 1.0))).float()
    p = np.clip(np.stack([c[:, 1] for c in columns], axis=1), 1e-7, 1 - 1e-7)
    return torch.from_numpy(np.log(p / (1 - p))).float()


def _sample_weights(split: SplitTensors, task: Task) -> np.ndarray | None:
    found = split.weights.get(task.name)
    return None if found is None else found.numpy().astype(np.float64)


def fit_task(
    task: Task,
    prepared: Prepared,
    library: str,
    mask: np.ndarray,
    seed: int,
    matrices: dict[str, np.ndarray],
) -> dict[str, torch.Tensor]:
    """Fit the task's model(s); its logits on every split."""
    train, valid = prepared.splits["train"], prepared.splits.get("valid")
    labels = train.labels[task.name].numpy()
    val_labels = valid.labels[task.name].numpy() if valid is not None else None
    weights = _sample_weights(train, task)
    val_weights = _sample_weights(valid, task) if valid is not None else None
    width = labels.shape[1] if labels.ndim == 2 else 1
    classes = task.out_dim if task.kind is TaskKind.multiclass else 2
    models = []
    for column in range(width):
        y = labels[:, column] if labels.ndim == 2 else labels
        keep = ~np.isnan(y)
        if not keep.any():
            raise PolytaskError(f"task '{task.name}': no labelled training rows for the baseline")
        x_val = y_val = w_val = None
        if val_labels is not None:
            yv = val_labels[:, column] if val_labels.ndim == 2 else val_labels
            kept = ~np.isnan(yv)
            x_val, y_val = matrices["valid"][kept], yv[kept]
            w_val = None if val_weights is None else val_weights[kept]
            if task.kind is not TaskKind.regression:
                y_val = y_val.astype(int)
        target = y[keep] if task.kind is TaskKind.regression else y[keep].astype(int)
        model = _Fitted(library, task.kind, classes, mask, seed)
        w = None if weights is None else weights[keep]
        model.fit(matrices["train"][keep], target, x_val, y_val, (w, w_val))
        models.append(model)
    return {
        split: _logits(task, [m.predict(matrix) for m in models])
        for split, matrix in matrices.items()
    }


def train_baseline(
    spec: RunSpec, out: str | Path, *, library: Library = "auto", overwrite: bool = False
) -> Path:
    """Fit the baseline of ``spec`` into the folder ``out`` and return its path."""
    out = Path(out).resolve()
    chosen = resolve_library(library)
    files = {rd.CONFIG, rd.FINAL_METRICS, rd.SUMMARY}
    with OutputFolder(out, KIND, files, overwrite=overwrite).building() as partial:
        final, summary = fit_tasks(spec, chosen)
        rd.save_config(partial, spec)
        rd.save_json(partial, rd.FINAL_METRICS, final)
        rd.save_json(partial, rd.SUMMARY, summary)
    return out


def fit_tasks(spec: RunSpec, chosen: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One model per task on the spec's split and preprocessing: the final metrics per split
    and the summary."""
    if spec.data.stream is not None:
        raise ConfigError(
            "data.stream: the baseline fits trees on a table held in memory; remove "
            "data.stream (or point data.train at a sample)"
        )
    prepared = prepare(spec)
    pre = prepared.preprocessor
    mask = categorical_mask(pre.cardinalities, pre.numeric_width)
    matrices = {name: design_matrix(split.features) for name, split in prepared.splits.items()}
    started = time.perf_counter()
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in matrices}
    seconds = {}
    for task in prepared.tasks:
        task_started = time.perf_counter()
        per_split = fit_task(task, prepared, chosen, mask, spec.train.seed, matrices)
        seconds[task.name] = time.perf_counter() - task_started
        for name, values in per_split.items():
            logits[name].append(values)
    final: dict[str, Any] = {
        name: evaluate_outputs(
            logits[name],
            prepared.splits[name].labels,
            prepared.tasks,
            prepared.splits[name].weights,
        )
        for name in ("valid", "test")
        if name in prepared.splits
    }
    summary: dict[str, Any] = {
        "kind": KIND,
        "library": chosen,
        "params": PARAMS,
        "tasks": [task.name for task in prepared.tasks],
        "rows": {name: len(split) for name, split in prepared.splits.items()},
        "categorical_inputs": int(mask.sum()),
        "inputs": int(mask.size),
        "train_seconds": time.perf_counter() - started,
        "task_seconds": seconds,
    }
    return final, summary


def is_baseline(folder: Path) -> bool:
    path = Path(folder) / rd.SUMMARY
    return path.is_file() and rd.load_json(Path(folder), rd.SUMMARY).get("kind") == KIND
