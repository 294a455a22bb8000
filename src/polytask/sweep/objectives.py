"""A finished trial's objective values, read from its run directory (task metrics on the
sweep's split, the parameter count) or measured on it (prediction latency)."""

from __future__ import annotations

import math
from pathlib import Path

from polytask.artifacts import run_dir as rd
from polytask.errors import PolytaskError
from polytask.sweep.spec import Objective

LATENCY_REPEATS = 30


def latency_ms(run: Path, batch: int) -> float:
    """Median milliseconds of one prediction call on ``batch`` preprocessed rows, as served."""
    from polytask.inference.predictor import Predictor
    from polytask.slim.report import latency_ms as measure
    from polytask.slim.report import synthetic_rows

    predictor = Predictor.load(run)
    rows = synthetic_rows(predictor.preprocessor, batch)
    timings = measure([predictor.serving_model], [predictor.tasks], rows, (batch,), LATENCY_REPEATS)
    return timings[0][f"batch_{batch}"]


def objective_values(run: Path, objectives: list[Objective], split: str) -> list[float]:
    """One finite value per objective; a missing or NaN one is an error (the trial fails)."""
    final = rd.load_json(run, rd.FINAL_METRICS)
    summary = rd.load_json(run, rd.SUMMARY)
    values = []
    for objective in objectives:
        target = objective.task_metric
        if objective.metric == "parameters":
            value = summary.get("parameters")
        elif objective.metric == "latency":
            value = latency_ms(run, objective.batch)
        else:
            assert target is not None
            if split not in final:
                raise PolytaskError(f"objective {objective.name}: the run has no {split} split")
            value = final[split].get(target[0], {}).get(target[1])
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise PolytaskError(
                f"objective {objective.name} is {value} on the {split} split of {run.name}"
            )
        values.append(float(value))
    return values
