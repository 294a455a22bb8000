"""A run with adapters -> ordinary runs: one task's adapters folded into the backbone, or
every task's adapter updates merged into one backbone by a merging method.

* ``fold``: task t's update of each adapted weight (``delta_t``, :meth:`AdapterModel.deltas`)
  is added to the backbone's weight; the run keeps task t's sub-network only (its gate and
  tower, every expert it may weight: :func:`~polytask.slim.extract.task_subnetwork`), so it
  computes task t exactly as the adapter run does, as a plain plan model that ``slim``,
  ``export``, ``serve`` and the torch-free ``predict`` take as they take any run.
* ``merge``: the backbone's adapted weights are the base ``theta_0`` and ``theta_0 + delta_t``
  the fine-tuned model of task t; a merging method of :data:`~polytask.merge.methods.MERGERS`
  that works on weights alone (task arithmetic, TIES, DARE, ...) combines them into one
  backbone that serves every task with its own tower, as merging per-task fine-tuned runs does.

Only methods whose update is a fixed matrix per task fold or merge (lora, mtl_lora, lora_moe
with ``router: task``); the others are refused with the reason.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from polytask.adapters.model import AdapterModel
from polytask.artifacts.ownership import OutputFolder
from polytask.config import RunSpec
from polytask.errors import PolytaskError, did_you_mean
from polytask.inference.predictor import Predictor
from polytask.merge.base import MergeInputs
from polytask.merge.methods import MERGERS
from polytask.merge.runs import FILES, write_run
from polytask.merge.vectors import layer_depths
from polytask.model import model_for
from polytask.slim.extract import task_subnetwork


def _adapter_run(run: str | Path) -> tuple[Predictor, AdapterModel]:
    predictor = Predictor.load(run)
    if not isinstance(predictor.model, AdapterModel):
        raise PolytaskError(f"{predictor.run} has no adapters (model.adapters is not set)")
    return predictor, predictor.model


def _plain_spec(spec: RunSpec) -> RunSpec:
    """The run's spec as an ordinary run's: no adapters, nothing kept fixed or loaded."""
    model = spec.model.model_copy(update={"adapters": None})
    train = spec.train.model_copy(update={"freeze": [], "init": None})
    return spec.model_copy(update={"model": model, "train": train})


def _record(predictor: Predictor, model: AdapterModel, **extra: Any) -> dict[str, Any]:
    adapters = model.adapter_spec
    return {
        "adapters_run": str(predictor.run.resolve()),
        "method": adapters.method,
        "options": adapters.options,
        "layers": [site.name for site in model.sites],
        **extra,
    }


def fold(run: str | Path, task: str, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write task ``task`` of the adapter run ``run``, its adapters folded into the
    backbone, as the ordinary run ``out``; return the record kept in its summary."""
    predictor, model = _adapter_run(run)
    if task not in predictor.task_names:
        names = predictor.task_names
        raise PolytaskError(
            f"--task: '{task}' is not a task of {predictor.run}{did_you_mean(task, names)}; "
            f"its tasks: {', '.join(names)}"
        )
    output = OutputFolder(
        Path(out).absolute(), "folded_run", FILES, overwrite=overwrite, sources=[predictor.run]
    )
    output.claim()
    index = predictor.task_names.index(task)
    started = time.perf_counter()
    plain = _plain_spec(predictor.spec)
    full = model_for(plain.model, predictor.preprocessor, predictor.tasks)
    full.load_state_dict(model.folded(index))
    network, plan = task_subnetwork(full, [index])
    raw = plain.to_yaml_dict()
    raw["tasks"] = [raw["tasks"][index]]
    raw["model"] = {**raw["model"], "arch": "plan", "options": plan.model_dump(mode="json")}
    spec = RunSpec.model_validate(raw)
    folded = Predictor(predictor.run, spec, predictor.preprocessor, network)
    folded.tasks = [predictor.tasks[index]]
    record = _record(predictor, model, task=task, seconds=time.perf_counter() - started)
    write_run(folded, None, network.state_dict(), {"fold": record}, output, True)
    return record


def merge_adapters(
    run: str | Path,
    method: str,
    options: dict[str, Any] | None,
    out: str | Path,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Merge every task's adapter update of ``run`` into one backbone with ``method`` and
    write the ordinary multi-task run ``out``; return the record kept in its summary."""
    merger = MERGERS.get(method).from_options(options or {})
    if merger.reads or merger.kind != "weights":
        raise PolytaskError(
            f"merge method '{method}' reads rows or routes; adapters merge with the methods "
            "that work on weights alone (average, task_arithmetic, ties, dare_task_arithmetic, "
            "dare_ties, breadcrumbs, tsv_m, lines, pcb)"
        )
    predictor, model = _adapter_run(run)
    output = OutputFolder(
        Path(out).absolute(), "merged_run", FILES, overwrite=overwrite, sources=[predictor.run]
    )
    output.claim()
    started = time.perf_counter()
    state = model.folded(0)  # every non-adapted tensor as trained; the adapted ones reset below
    with torch.no_grad():
        deltas = [model.deltas(t) for t in range(len(predictor.task_names))]
    keys = list(deltas[0])
    base = {key: state[key] - deltas[0][key] for key in keys}
    inputs = MergeInputs(
        base=base,
        tuned=[{key: base[key] + delta[key] for key in keys} for delta in deltas],
        held=[{key: torch.ones_like(base[key], dtype=torch.bool) for key in keys}] * len(deltas),
        depth=layer_depths(keys),
    )
    state.update(merger.merge(inputs))
    plain = _plain_spec(predictor.spec)
    network = model_for(plain.model, predictor.preprocessor, predictor.tasks)
    network.load_state_dict(state)
    merged = Predictor(predictor.run, plain, predictor.preprocessor, network)
    record = _record(
        predictor,
        model,
        merge_method=method,
        merge_options=merger.options.model_dump(mode="json"),
        seconds=time.perf_counter() - started,
        report=merger.report,
    )
    write_run(merged, None, state, {"adapters_merge": record}, output, True)
    return record
