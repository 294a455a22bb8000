"""``polytask merge``: fine-tuned runs of one base -> one ordinary run directory.

1. Check: every run was fine-tuned from this base (the content hash of its weights), holds
   exactly the base's sub-network for its tasks (the same plan, the same tensors), with the
   base's preprocessor; no task is in two runs; the method and its options are valid.
   Any mismatch is one line and nothing is written.
2. Put every run's weights back into the base's layout (:mod:`polytask.merge.layout`), which
   also says, element by element, which runs hold what.
3. Merge, element by element: held by one run -> that run's value (a task's own expert, gate
   and tower come from the run fine-tuned on it); held by several runs -> the method's merge
   over them (the shared encoder and experts); held by none -> the base's (the towers of
   tasks no run fine-tuned, which the merged run keeps).
4. Write an ordinary run (the base's config and preprocessor; a routed merge saves its plan
   as ``arch: plan``) in ``<out>.partial`` (:class:`~polytask.artifacts.ownership.OutputFolder`,
   claimed before any work: ``--overwrite`` replaces only a folder polytask wrote), load it
   back, evaluate it on the base's validation and test rows when they can be read, and swap
   it into place. ``summary.json`` records the method, its
   options, the runs, where each task came from and the time the merge took (the method
   with its statistics, after the rows it reads are in memory and torch.func is imported;
   that preparation is timed apart).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from polytask import __version__
from polytask.artifacts import run_dir as rd
from polytask.artifacts.ownership import OutputFolder
from polytask.artifacts.weights import load_weights, save_weights
from polytask.config import ModelSpec, RunSpec
from polytask.data.tabular import load_splits
from polytask.errors import PolytaskError
from polytask.inference.evaluation import evaluate, overall_score
from polytask.inference.lean import save_lean_arrays
from polytask.inference.predictor import Predictor
from polytask.merge.base import MergeInputs, MergeMethod, StateDict
from polytask.merge.finetune import read_record
from polytask.merge.layout import check_shapes, expand, floating_keys, run_layout, weights_hash
from polytask.merge.methods import MERGERS
from polytask.merge.routed import (
    RoutedOptions,
    check_routable,
    gate_weights,
    route_plan,
    route_state,
    shared_levels,
    source_loss,
    train_routers,
)
from polytask.merge.statistics import (
    RowBatches,
    RunRows,
    RunStatistics,
    check_entropy,
    load_function_transforms,
)
from polytask.merge.task_arithmetic import task_arithmetic
from polytask.merge.vectors import layer_depths
from polytask.model import MultiTaskModel, model_for
from polytask.plan.schema import Plan

# What a merged run holds: an ordinary run's files (no checkpoint, no epoch log).
FILES = frozenset({rd.CONFIG, rd.PREPROCESSOR, rd.WEIGHTS, rd.LEAN, rd.SUMMARY, rd.FINAL_METRICS})


@dataclass
class TunedRun:
    """One fine-tuned run, put back into its base's layout."""

    path: Path
    tasks: list[int]
    spec: RunSpec
    state: StateDict  # every floating tensor of the base, the run's values where it holds them
    held: StateDict


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings -> a dict, each value read as YAML (numbers, booleans, lists)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise PolytaskError(f"--option expects key=value (got {item!r})")
        try:
            options[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise PolytaskError(f"--option {key}: cannot read {text!r}") from None
    return options


def load_tuned(path: Path, base: Predictor, base_hash: str) -> TunedRun:
    """A fine-tuned run, checked against the base, in the base's layout."""
    run = rd.require_complete(Path(path))
    record = read_record(run)
    if record.get("base_weights_sha256") != base_hash:
        raise PolytaskError(
            f"run {run} was fine-tuned from another base: its base's weights hash is "
            f"{str(record.get('base_weights_sha256'))[:12]}, {base.run}'s is {base_hash[:12]}"
        )
    names = base.task_names
    tasks = record.get("tasks", [])
    if record.get("base_tasks") != names or not set(tasks) <= set(names):
        raise PolytaskError(f"run {run} was fine-tuned from a base with other tasks than {names}")
    keep = sorted(names.index(task) for task in tasks)
    spec = rd.load_config(run)
    layout = run_layout(base.network(), keep)
    same_model = _model_fields(spec.model) == _model_fields(base.spec.model)
    if (
        spec.model.arch != "plan"
        or not same_model
        or Plan.model_validate(spec.model.options).model_dump() != layout.plan.model_dump()
    ):
        raise PolytaskError(
            f"run {run} does not have the base's architecture for its tasks "
            f"({', '.join(tasks)}): its plan or model section differs"
        )
    if rd.load_json(run, rd.PREPROCESSOR) != base.preprocessor.state:
        raise PolytaskError(f"run {run} does not use the base's fitted preprocessor")
    weights = load_weights(run / rd.WEIGHTS, rd.load_raw_config(run).get("model", {}))
    check_shapes(weights, layout, f"run {run}")
    base_state = {k: v for k, v in base.model.state_dict().items() if v.is_floating_point()}
    state, held = expand(base_state, weights, layout)
    return TunedRun(run, keep, spec, state, held)


def _model_fields(spec: ModelSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude={"arch", "options"})


def check_disjoint(runs: Sequence[TunedRun], names: list[str]) -> None:
    owner: dict[int, Path] = {}
    for run in runs:
        for task in run.tasks:
            if task in owner:
                raise PolytaskError(
                    f"task '{names[task]}' is in two runs: {owner[task]} and {run.path}"
                )
            owner[task] = run.path


class Composition:
    """Merged tensors -> the whole model state: single-run elements from their run, untouched
    ones from the base, elements several runs hold from the merge (differentiably)."""

    def __init__(self, base: StateDict, runs: Sequence[TunedRun]) -> None:
        keys = floating_keys(base)
        self.base = base
        self.count = {k: torch.stack([r.held[k] for r in runs]).sum(0) for k in keys}
        self.shared = {k: self.count[k] >= 2 for k in keys}
        self.fixed = {}
        for key in keys:
            value = base[key].clone()
            for run in runs:
                value = torch.where(run.held[key] & (self.count[key] == 1), run.state[key], value)
            self.fixed[key] = value
        self.keys = [k for k in keys if bool(self.shared[k].any())]

    def __call__(self, merged: StateDict) -> StateDict:
        state = {**self.base, **self.fixed}
        for key, value in merged.items():
            state[key] = torch.where(self.shared[key], value, self.fixed[key])
        return state

    def inputs(self, runs: Sequence[TunedRun]) -> MergeInputs:
        """What a method sees: the tensors several runs share, each run's values where it
        shares them (the base's elsewhere), and its masks."""
        keys = self.keys
        return MergeInputs(
            base={k: self.base[k] for k in keys},
            tuned=[
                {k: torch.where(self.shared[k] & r.held[k], r.state[k], self.base[k]) for k in keys}
                for r in runs
            ],
            held=[{k: self.shared[k] & r.held[k] for k in keys} for r in runs],
            depth=layer_depths(keys),
        )


def merge(
    runs: Sequence[str | Path],
    base: str | Path,
    method: str,
    options: dict[str, Any] | None,
    out: str | Path,
    *,
    overwrite: bool = False,
    evaluate_splits: bool = True,
) -> dict[str, Any]:
    """Merge the fine-tuned ``runs`` of ``base`` with ``method`` into the run ``out``; return
    the summary's merge record."""
    merger = MERGERS.get(method).from_options(options or {})
    target = Path(out).absolute()
    if not runs:
        raise PolytaskError("name the fine-tuned runs to merge")
    predictor = Predictor.load(base)
    output = OutputFolder(
        target,
        "merged_run",
        FILES,
        overwrite=overwrite,
        sources=[predictor.run, *(Path(r) for r in runs)],
    )
    output.claim()
    named = [Path(r).resolve() for r in runs]
    twice = sorted({str(path) for path in named if named.count(path) > 1})
    if twice:
        raise PolytaskError(f"run {twice[0]} is named twice; name each run once")
    base_state = predictor.model.state_dict()
    base_hash = weights_hash(base_state)
    tuned = [load_tuned(Path(r), predictor, base_hash) for r in runs]
    check_disjoint(tuned, predictor.task_names)
    composition = Composition(base_state, tuned)
    rows: dict[str, Any] = {}  # the runs' rows, read once per data section
    statistics = RunStatistics(
        predictor.network(),
        predictor.tasks,
        predictor.preprocessor,
        [RunRows(str(r.path), r.tasks, r.spec, shared=rows) for r in tuned],
        [composition({}) | r.state for r in tuned],
        [r.held for r in tuned],
        composition.keys,
        composition,
    )
    reading = time.perf_counter()
    split = getattr(merger.options, "split", None)
    if merger.reads and split is not None:  # the merge time is the method's, not the disk's
        for run_rows in statistics.runs:
            run_rows.features(split, predictor.preprocessor)
    if "fisher" in merger.reads:
        load_function_transforms()
    started = time.perf_counter()
    if merger.kind == "routed":
        plan, state = _route(merger, predictor, composition, tuned, statistics)
    else:
        plan = None
        inputs = composition.inputs(tuned)
        inputs.statistics = statistics
        state = composition(merger.merge(inputs) if composition.keys else {})
    seconds = time.perf_counter() - started
    record = {
        "method": method,
        "options": merger.options.model_dump(mode="json"),
        "base": str(predictor.run.resolve()),
        "base_weights_sha256": base_hash,
        "runs": [
            {"run": str(r.path.resolve()), "tasks": [predictor.task_names[t] for t in r.tasks]}
            for r in tuned
        ],
        "tasks_from": _origins(tuned, predictor.task_names),
        "merged_tensors": len(composition.keys),
        "merged_elements": int(sum(int(m.sum()) for m in composition.shared.values())),
        "seconds": seconds,
        "reading_seconds": started - reading,
        "report": merger.report,
    }
    write_run(predictor, plan, state, record, output, evaluate_splits)
    return record


def _origins(runs: Sequence[TunedRun], names: list[str]) -> dict[str, str]:
    origin = dict.fromkeys(names, "base")
    for run in runs:
        for task in run.tasks:
            origin[names[task]] = str(run.path.resolve())
    return origin


def _route(
    merger: MergeMethod,
    predictor: Predictor,
    composition: Composition,
    runs: Sequence[TunedRun],
    statistics: RunStatistics,
) -> tuple[Plan, StateDict]:
    """The routed merge: the plan with routed levels, its weights, routers trained."""
    options = merger.options
    assert isinstance(options, RoutedOptions)
    plan = predictor.network().plan
    levels = options.levels
    if levels is None:
        levels = shared_levels(plan, composition.count)
        if not levels:
            raise PolytaskError("routed_moe: no level's experts are shared by two runs")
    check_routable(plan, levels)
    inputs = composition.inputs(runs)
    rest = composition(task_arithmetic(inputs.base, inputs.vectors(), options.scaling))
    owners = [
        f"task:{run.tasks[0]}" if len(run.tasks) == 1 else f"group:{index}"
        for index, run in enumerate(runs)
    ]
    routed = route_plan(plan, levels, owners)
    model = _plan_model(predictor, routed)
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    owners_of_gates = {number: _gate_owners(number, runs) for number in levels}
    full_states = [composition({}) | r.state for r in runs]
    state = route_state(rest, full_states, plan, levels, shapes, owners_of_gates, options.own_bias)
    model.load_state_dict(state)
    if options.objective == "entropy":
        check_entropy(statistics.runs, predictor.tasks)
    batches = RowBatches(statistics.runs, options, predictor.preprocessor, options.batch_size)

    def loss(network: torch.nn.Module) -> torch.Tensor:
        rows, slices = batches.draw()
        if options.objective == "source":
            assert isinstance(network, MultiTaskModel)
            losses = [
                source_loss(gate_weights(network, rows, number), slices, len(runs))
                for number in levels
            ]
            return torch.stack(losses).sum()
        return batches.entropy(predictor.tasks, network(rows).logits, slices)

    history = train_routers(model, levels, loss, options.steps, options.lr)
    merger.report = {
        "levels": list(levels),
        "experts": [lv.experts.count for lv in routed.levels],
        "objective": options.objective,
        "loss_first": history[0] if history else None,
        "loss_last": history[-1] if history else None,
    }
    return routed, {k: v.detach() for k, v in model.state_dict().items()}


def _gate_owners(level: int, runs: Sequence[TunedRun]) -> list[int | None]:
    """Per gate of a level, the one run that holds it (a task's own gate), else None."""
    key = f"arch.levels.{level}.gates.weight"
    if key not in runs[0].held:
        return []
    holding = torch.stack([r.held[key].flatten(1).any(1) for r in runs])  # [K, G]
    return [int(column.nonzero()[0]) if int(column.sum()) == 1 else None for column in holding.T]


def _plan_spec(spec: RunSpec, plan: Plan) -> RunSpec:
    raw = spec.to_yaml_dict()
    raw["model"] = {**raw["model"], "arch": "plan", "options": plan.model_dump(mode="json")}
    return RunSpec.model_validate(raw)


def _plan_model(predictor: Predictor, plan: Plan) -> MultiTaskModel:
    spec = _plan_spec(predictor.spec, plan)
    return model_for(spec.model, predictor.preprocessor, predictor.tasks)


def write_run(
    predictor: Predictor,
    plan: Plan | None,
    state: StateDict,
    record: dict[str, Any],
    output: OutputFolder,
    evaluate_splits: bool,
) -> None:
    """Build the merged run in ``output``'s ``.partial`` folder, load it back, evaluate it,
    swap it into place."""
    spec = predictor.spec if plan is None else _plan_spec(predictor.spec, plan)
    folder = output.create()
    try:
        rd.save_config(folder, spec)
        shutil.copyfile(predictor.run / rd.PREPROCESSOR, folder / rd.PREPROCESSOR)
        save_weights(folder / rd.WEIGHTS, state)
        summary: dict[str, Any] = {
            "polytask_version": __version__,
            "arch": spec.model.arch,
            "encoder": spec.model.encoder.name,
            "tasks": predictor.task_names,
            "parameters": sum(v.numel() for v in state.values() if v.is_floating_point()),
            "merge": record,
        }
        rd.save_json(folder, rd.SUMMARY, summary)
        merged = Predictor.load(folder)
        save_lean_arrays(folder, merged.network())  # predict then needs no torch
        metrics, scores, notes = _evaluate(merged) if evaluate_splits else ({}, {}, [])
        summary["score"] = scores
        if notes:
            summary["notes"] = notes
        rd.save_json(folder, rd.FINAL_METRICS, metrics)
        rd.save_json(folder, rd.SUMMARY, summary)
        output.publish()
    except BaseException:
        output.discard()
        raise


def _evaluate(merged: Predictor) -> tuple[dict, dict, list[str]]:
    """Metrics on the base's validation and test rows (none when they cannot be read)."""
    try:
        splits = load_splits(merged.spec.data)
    except (PolytaskError, OSError) as error:
        return {}, {}, [f"not evaluated: the base's data could not be read ({error})"]
    metrics, scores = {}, {}
    for name, frame in (("valid", splits.valid), ("test", splits.test)):
        if frame is None or not len(frame):
            continue
        features = merged.preprocessor.transform(frame)
        labels = merged.preprocessor.encode_labels(frame, merged.tasks)
        results = evaluate(
            merged.model, features, labels, merged.tasks, merged.spec.train.eval_batch_size
        )
        metrics[name] = results
        scores[name] = overall_score(results, labels, merged.tasks, None)
    return metrics, scores, []
