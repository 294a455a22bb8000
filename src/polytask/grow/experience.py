"""One experience: new tasks with their data, trained into a run directory through the one
training loop, with a strategy's hooks.

Shared by ``polytask grow`` (one experience on a finished run) and ``polytask stream`` (a
sequence, the first from scratch). Steps: fit the new tasks' label encodings on the new
rows (inputs keep the base's encodings), let the strategy grow the plan, build the grown
model holding the old weights, encode each source's rows for its own tasks, and hand the
trainer the prepared rows, the grown model (at its initial weights) and the strategy's hooks.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from polytask.artifacts import run_dir as rd
from polytask.artifacts.atomic import write_atomic
from polytask.artifacts.ownership import MANIFEST, OutputFolder
from polytask.artifacts.weights import save_weights
from polytask.config import BalanceSpec, DataSpec, ModelSpec, RunSpec, TaskSpec, TrainSpec
from polytask.data.preprocess import Preprocessor
from polytask.data.tabular import Splits
from polytask.grow.data import Rows, encode, merge
from polytask.grow.model import add_tasks_to_model, origins
from polytask.grow.strategies.base import ExperienceContext, Strategy
from polytask.inference.evaluation import evaluate
from polytask.model import MultiTaskModel, build_model, encoder_from_spec
from polytask.train.hooks import HookChain, StepHooks
from polytask.train.optim import ParameterState
from polytask.train.prepare import Prepared
from polytask.train.trainer import Trainer

STATE = "grow_state.safetensors"
HISTORY = "grow.json"  # which tasks were added when, from which data, with which strategy
SPLITS = ("train", "valid", "test")


@dataclass
class Base:
    """A trained model, the specification it was trained with and its preprocessor."""

    model: MultiTaskModel
    spec: RunSpec
    preprocessor: Preprocessor


@dataclass
class Experience:
    """New tasks and their rows (frames per split), and where those came from."""

    tasks: list[TaskSpec]
    frames: Splits
    data: DataSpec
    name: str = ""
    old: dict[str, Rows] = field(default_factory=dict)  # old tasks' rows per split


@dataclass
class Outcome:
    """A trained experience: its run directory and, in memory, what the next one grows."""

    run: Path
    base: Base  # the trained model (selected weights), its spec and preprocessor
    served: MultiTaskModel  # what the run saved and serves (the trained model, or its export)
    context: ExperienceContext
    rows: dict[str, Rows]  # the experience's own rows per split, labelling its tasks
    missing_inputs: list[str]
    seconds: float
    # the optimizer's per-parameter state at the end, by parameter name (when asked to keep it)
    optimizer_state: ParameterState = field(default_factory=dict)


class _Finish(StepHooks):
    """At the end of training: the strategy keeps what the next experience needs, and its
    state is written into the run."""

    def __init__(self, strategy: Strategy, context: ExperienceContext) -> None:
        self.strategy, self.context = strategy, context

    def finish(self, model, folder: Path) -> None:
        self.strategy.end(model, self.context)
        save_state(folder, self.strategy)


class _SkipUntouched(StepHooks):
    """With a kept optimizer state: a parameter whose gradient is exactly zero this step (the
    tower of a task the batch has no rows of) gets none, so the optimizer skips it, as
    PyTorch's optimizers skip a parameter no loss reached; with Adam it would otherwise keep
    moving on the momentum it brought from the previous experience."""

    def before_update(self, model: torch.nn.Module) -> None:
        stepped = [p for p in model.parameters() if p.grad is not None]
        if not stepped:
            return
        # one fused L2 norm per parameter and one read back, rather than a sync per parameter
        # (the fused max-|entry| is ten times slower on the CPU); a zero norm can also be an
        # underflow (entries near 1e-30), so those few are checked entry by entry
        grads = [p.grad for p in stepped]
        norms = torch.stack(torch._foreach_norm(grads))  # type: ignore[arg-type]
        for parameter, zero in zip(stepped, (norms == 0).tolist(), strict=True):
            if zero and parameter.grad is not None and not bool(parameter.grad.any()):
                parameter.grad = None


def run_output(
    target: Path,
    *,
    overwrite: bool,
    sources: Sequence[Path] = (),
    extra: frozenset[str] = frozenset(),
) -> OutputFolder:
    """The folder a grown run (or a stream's last run, with ``extra`` files) is published
    into, claimed now: refused in one line before any work where the policy forbids it."""
    output = rd.run_folder(
        target, overwrite=overwrite, sources=sources, files=rd.RUN_FILES | {STATE, HISTORY} | extra
    )
    output.claim()
    return output


def publish_run(run: Path, output: OutputFolder, write: Callable[[Path], None]) -> Path:
    """Move the finished run ``run`` (in a temporary folder of polytask's) into ``output``'s
    ``.partial`` folder, let ``write`` add its own files there, and swap it into place."""
    partial = output.create()
    try:
        for path in sorted(run.iterdir()):
            if path.name != MANIFEST:  # the output's own manifest lists what it holds
                shutil.move(path, partial / path.name)
        write(partial)
        return rd.publish(output)
    except BaseException:
        output.discard()
        raise


def save_state(folder: Path, strategy: Strategy) -> None:
    """The strategy's state beside the run (its text in the file's metadata)."""
    state = {k: v.contiguous() for k, v in strategy.state().items()}
    metadata = {"strategy": strategy.registry_name}
    metadata.update({f"meta.{key}": value for key, value in strategy.meta().items()})
    write_atomic(folder / STATE, lambda temp: save_file(state, str(temp), metadata=metadata))


def load_state(folder: Path, strategy: Strategy) -> bool:
    """Restore the strategy's state from a run grown with the same strategy; False when the
    run keeps none (or another strategy's)."""
    file = folder / STATE
    if not file.is_file():
        return False
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("strategy") != strategy.registry_name:
        return False
    meta = {k[len("meta.") :]: v for k, v in metadata.items() if k.startswith("meta.")}
    strategy.load_state(load_file(str(file)), meta)
    return True


def _rewrite(run: Path, spec: RunSpec, model: MultiTaskModel, prepared: Prepared) -> None:
    """Save ``model`` (a strategy's exported form of the trained one) as the run's model:
    weights, the model section of its config, its metrics and summary."""
    model_spec = spec.model.model_copy(
        update={"arch": "plan", "options": model.plan.model_dump(mode="json")}, deep=True
    )
    rd.save_config(
        run, spec.model_copy(update={"model": ModelSpec.model_validate(model_spec.model_dump())})
    )
    save_weights(run / rd.WEIGHTS, model.state_dict())
    final = {
        split: evaluate(
            model, tensors.features, tensors.labels, prepared.tasks, spec.train.eval_batch_size
        )
        for split, tensors in prepared.splits.items()
        if split in ("valid", "test")
    }
    rd.save_json(run, rd.FINAL_METRICS, final)
    summary = rd.load_json(run, rd.SUMMARY)
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    rd.save_json(run, rd.SUMMARY, summary)
    for name in (rd.EXPERTS, rd.EXPERTS_PLOT):  # they described the trained form
        (run / name).unlink(missing_ok=True)


def grow_model(
    strategy: Strategy, base: Base, new: list[TaskSpec], out_dims: list[int]
) -> tuple[MultiTaskModel, ModelSpec, dict[str, str]]:
    """The base model with the new tasks, as the strategy grows it; its model section; and
    the origins of its parameters (:func:`polytask.grow.model.origins`)."""
    spec = base.spec.model
    plan = strategy.grow_plan(base.model.plan, len(new))
    make = encoder_from_spec(spec, base.preprocessor.cardinalities, base.preprocessor.numeric_width)
    names = [task.name for task in new]

    def grow(model: MultiTaskModel) -> MultiTaskModel:
        return add_tasks_to_model(model, spec, plan, out_dims, names, make)

    found = origins(base.model, grow)
    model = grow(base.model)
    strategy.initialise(model, base.model)
    grown_spec = spec.model_copy(
        update={"arch": "plan", "options": plan.model_dump(mode="json")}, deep=True
    )
    return model, ModelSpec.model_validate(grown_spec.model_dump()), found


def train_experience(
    strategy: Strategy,
    base: Base | None,
    experience: Experience,
    model_spec: ModelSpec,
    train: TrainSpec,
    balance: BalanceSpec,
    out: Path,
    index: int,
    *,
    progress: bool = False,
    before_training: Callable[[MultiTaskModel, Prepared], None] | None = None,
    optimizer_state: ParameterState | None = None,
) -> Outcome:
    """Train one experience into the run directory ``out`` (see the module docstring).

    ``before_training`` sees the model at its initial weights and the prepared rows (a
    stream evaluates the new tasks there, for forward transfer). ``optimizer_state``: the
    previous experience's optimizer state by the base model's parameter names; given (even
    empty), the optimizer starts from it for every parameter that holds a base parameter
    whole, a parameter without gradient in a step takes no step (:class:`_SkipUntouched`),
    and the outcome keeps the state this experience's optimizer ends with."""
    frames = experience.frames
    if base is None:
        preprocessor = Preprocessor.fit(frames.train, experience.data, experience.tasks)
        specs = list(experience.tasks)
    else:
        preprocessor = base.preprocessor.with_tasks(frames.train, experience.tasks)
        specs = [*base.spec.tasks, *experience.tasks]
    tasks = preprocessor.build_tasks(specs)
    names = [task.name for task in experience.tasks]
    new_tasks = [task for task in tasks if task.name in names]
    if base is None:
        torch.manual_seed(train.seed)
        model = build_model(
            model_spec,
            preprocessor.cardinalities,
            preprocessor.numeric_width,
            [t.out_dim for t in tasks],
            [t.name for t in tasks],
        )
        found: dict[str, str] = {}
        run_model_spec = model_spec
    else:
        torch.manual_seed(train.seed)
        model, run_model_spec, found = grow_model(
            strategy, base, experience.tasks, [t.out_dim for t in new_tasks]
        )
    rows = {
        split: encode(preprocessor, frame, new_tasks)
        for split, frame in zip(SPLITS, (frames.train, frames.valid, frames.test), strict=True)
        if frame is not None and len(frame)
    }
    context = ExperienceContext(
        model=model,
        tasks=tasks,
        new=names,
        rows=rows["train"],
        old=experience.old.get("train"),
        origins=found,
        train=train,
        index=index,
        generator=torch.Generator().manual_seed(train.seed * 7919 + index),
    )
    hooks = strategy.begin(context)
    frozen = strategy.frozen(context)
    splits = {"train": merge(strategy.training_rows(context), tasks)}
    for split in ("valid", "test"):
        parts = [part for part in (rows.get(split), experience.old.get(split)) if part is not None]
        if parts:
            splits[split] = merge(parts, tasks)
    prepared = Prepared(preprocessor, tasks, splits)
    data = experience.data
    if base is not None:  # the old data's dropped columns stay known (not "unknown") to the run
        drop = list(dict.fromkeys([*base.spec.data.drop, *data.drop]))
        data = data.model_copy(update={"drop": drop})
    spec = RunSpec(
        data=data,
        tasks=specs,
        model=run_model_spec,
        balance=balance,
        train=train.model_copy(update={"freeze": compact_patterns(model, frozen), "init": None}),
    )
    if before_training is not None:
        before_training(model, prepared)
    skip = _SkipUntouched() if optimizer_state is not None else None
    chain = HookChain([h for h in (hooks, skip, _Finish(strategy, context)) if h is not None])
    started = time.perf_counter()
    trainer = Trainer(
        spec,
        out,
        overwrite=True,
        progress=progress,
        prepared=prepared,
        model=model,
        hooks=chain,
        optimizer_state=_renamed_state(optimizer_state, found),
        keep_optimizer_state=optimizer_state is not None,
    )
    run = trainer.fit()
    assert trainer.model is not None
    served = strategy.export(trainer.model, context)
    if served is not None:
        _rewrite(run, trainer.spec, served, prepared)
    trained = Base(trainer.model, trainer.spec, preprocessor)
    missing = preprocessor.missing_inputs(frames.train)
    seconds = time.perf_counter() - started
    return Outcome(
        run,
        trained,
        served or trainer.model,
        context,
        rows,
        missing,
        seconds,
        trainer.final_optimizer_state,
    )


def _renamed_state(state: ParameterState | None, found: dict[str, str]) -> ParameterState | None:
    """``state`` (by the base model's parameter names) under the grown model's names, through
    the origins ``found``; parameters new with growth are absent (a fresh state)."""
    if not state:
        return None
    return {new: state[old] for new, old in found.items() if old in state}


def compact_patterns(model: torch.nn.Module, names: list[str]) -> list[str]:
    """``train.freeze`` patterns naming exactly ``names``: a module whose parameters are all
    named becomes ``module.*``, others stay as they are."""
    chosen = set(names)
    patterns: list[str] = []
    covered: set[str] = set()
    for prefix, module in model.named_modules():
        if not prefix or any(prefix.startswith(p + ".") or prefix == p for p in covered):
            continue
        inside = [f"{prefix}.{n}" for n, _ in module.named_parameters()]
        if inside and all(name in chosen for name in inside):
            patterns.append(f"{prefix}.*")
            covered.add(prefix)
    loose = [n for n in names if not any(n.startswith(p + ".") for p in covered)]
    return patterns + sorted(loose)


def old_rows(
    preprocessor: Preprocessor, frames: dict[str, pd.DataFrame | None], tasks: list[Any]
) -> dict[str, Rows]:
    """Old data, per split, as rows labelling the old tasks whose columns it holds."""
    return {
        split: encode(preprocessor, frame, tasks)
        for split, frame in frames.items()
        if frame is not None and len(frame)
    }
