"""``polytask group``: measure relations, choose groups, train them, compare.

1. ``all_in_one``: the spec as given, recording relations (``train.relations``; every
   10 steps unless the spec says otherwise);
2. ``single``: one network per task (``model.arch: single``), the Delta-m reference;
3. groups chosen from the mean lookahead affinity of run 1
   (:func:`polytask.relations.grouping.select_groups`, at most K);
4. ``group_<k>``: one run per chosen group (a group of all tasks reuses run 1), on the
   same table and split, the other tasks' label columns dropped from the inputs;
5. each task is served by the group whose run scores best on it on the validation rows
   (the group the affinity predicted where there are none); ``group.json`` (manifest and
   report) makes the folder one model for ``predict``, ``evaluate`` and ``serve``.

The study is built in ``<out>.partial/`` and renamed when complete.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from polytask.artifacts import run_dir as rd
from polytask.artifacts.ownership import OutputFolder
from polytask.config import RelationsSpec, RunSpec
from polytask.data.preprocess import Preprocessor
from polytask.errors import PolytaskError
from polytask.inference.evaluation import delta_m
from polytask.inference.group import FORMAT, MANIFEST
from polytask.relations.grouping import Selection, select_groups
from polytask.relations.recorder import RELATIONS
from polytask.tasks import HIGHER_IS_BETTER, Task
from polytask.train.trainer import fit

Say = Callable[[str], None]


def subset_spec(spec: RunSpec, names: list[str]) -> RunSpec:
    """``spec`` for some of its tasks: the others' label columns are dropped from the inputs
    (they are not features of the full run either), relations are not recorded."""
    subset = spec.model_copy(deep=True)
    subset.tasks = [task for task in subset.tasks if task.name in names]
    dropped = [column for task in spec.tasks if task.name not in names for column in task.columns]
    subset.data.drop = list(dict.fromkeys([*subset.data.drop, *dropped]))
    subset.train.relations = None
    subset.train.baseline = None
    return subset


def single_task_spec(spec: RunSpec) -> RunSpec:
    single = spec.model_copy(deep=True)
    single.model.arch = "single"
    single.model.options = {}
    single.train.relations = None
    single.train.baseline = None
    return single


def mean_affinity(run: Path) -> np.ndarray:
    report = rd.load_json(run, RELATIONS)
    matrix = report["mean"]["affinity"]
    if matrix is None:
        raise PolytaskError(f"run {run} recorded no relations")
    return np.array([[math.nan if v is None else v for v in row] for row in matrix], dtype=float)


def run_group_study(
    spec: RunSpec,
    out: str | Path,
    max_groups: int,
    *,
    overwrite: bool = False,
    say: Say = lambda _: None,
) -> Path:
    """Run the study of the module docstring into ``out``; its path."""
    if max_groups < 1:
        raise PolytaskError(f"--groups must be at least 1 (got {max_groups})")
    if len(spec.tasks) < 2:
        raise PolytaskError("a group study needs at least two tasks")
    out = Path(out).resolve()
    files = {MANIFEST, rd.CONFIG, rd.SUMMARY}
    output = OutputFolder(out, "group_study", files, overwrite=overwrite, holds_folders=True)
    with output.building() as partial:
        _train_groups(spec, partial, max_groups, say)
    return out


def _train_groups(spec: RunSpec, partial: Path, max_groups: int, say: Say) -> None:
    """All-in-one (recording relations), one per task, the chosen groups, and the manifest."""
    names = [task.name for task in spec.tasks]

    measured = spec.model_copy(deep=True)
    measured.train.relations = spec.train.relations or RelationsSpec()
    measured.train.baseline = None
    say("training all tasks in one model (recording relations)")
    fit(measured, partial / "all_in_one", progress=False)
    say("training one model per task")
    fit(single_task_spec(spec), partial / "single", progress=False)

    affinity = mean_affinity(partial / "all_in_one")
    selection = select_groups(affinity, max_groups)
    group_runs = []
    for k, group in enumerate(selection.named(names), start=1):
        if len(group) == len(names):
            group_runs.append("all_in_one")
            continue
        say(f"training group {k}: {', '.join(group)}")
        fit(subset_spec(spec, group), partial / f"group_{k}", progress=False)
        group_runs.append(f"group_{k}")

    fitted = Preprocessor(rd.load_json(partial / "all_in_one", rd.PREPROCESSOR))
    tasks = fitted.build_tasks(spec.tasks)
    manifest = build_manifest(partial, spec, tasks, affinity, selection, group_runs, max_groups)
    rd.save_config(partial, spec)
    rd.save_json(partial, MANIFEST, manifest)
    rd.save_json(partial, rd.SUMMARY, {"kind": "group_study", **manifest["report"]})


def build_manifest(
    folder: Path,
    spec: RunSpec,
    tasks: list[Task],
    affinity: np.ndarray,
    selection: Selection,
    group_runs: list[str],
    max_groups: int,
) -> dict[str, Any]:
    names = [task.name for task in tasks]
    metrics = {
        path: rd.load_json(folder / path, rd.FINAL_METRICS)
        for path in {*group_runs, "all_in_one", "single"}
    }
    named_groups = selection.named(names)
    routes = {}
    for t, task in enumerate(tasks):
        candidates = [k for k, group in enumerate(named_groups) if task.name in group]
        routes[task.name] = group_runs[
            best_group(task, candidates, selection.serving[t], group_runs, metrics)
        ]
    splits: dict[str, Any] = {}
    report: dict[str, Any] = {"splits": splits, "groups": named_groups, "serving": routes}
    for split in ("valid", "test"):
        if split not in metrics["single"]:
            continue
        single = metrics["single"][split]
        grouped = {name: metrics[routes[name]][split][name] for name in names}
        all_in_one = metrics["all_in_one"][split]
        splits[split] = {
            "per_task": {
                name: {
                    "single": single[name],
                    "all_in_one": all_in_one[name],
                    "grouped": grouped[name],
                }
                for name in names
            },
            "delta_m": {
                "all_in_one": delta_m(all_in_one, single, tasks),
                "grouped": delta_m(grouped, single, tasks),
            },
        }
    return {
        "format": FORMAT,
        "version": 1,
        "tasks": names,
        "routes": routes,
        "groups": [
            {"run": run, "tasks": group}
            for run, group in zip(group_runs, named_groups, strict=True)
        ],
        "selection": {
            "max_groups": max_groups,
            "method": selection.method,
            "predicted_score": selection.score,
            "affinity": "mean lookahead affinity of all_in_one (relations.json)",
            "serving": "best validation primary metric among the groups holding the task",
        },
        "affinity": affinity.tolist(),
        "report": report,
    }


def best_group(
    task: Task,
    candidates: list[int],
    predicted: int,
    group_runs: list[str],
    metrics: dict[str, Any],
) -> int:
    """The candidate group whose run scores best on the task's validation primary metric
    (the affinity's choice without validation rows, or on ties)."""
    metric = task.primary_metric
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0

    def value(k: int) -> float:
        score = metrics[group_runs[k]].get("valid", {}).get(task.name, {}).get(metric)
        return -math.inf if score is None or math.isnan(score) else sign * score

    best = max(candidates, key=lambda k: (value(k), k == predicted))
    return best if value(best) > -math.inf else predicted
