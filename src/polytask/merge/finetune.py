"""``polytask finetune``: a base run fine-tuned on some of its tasks, recording its base.

The fine-tuned run is the base's sub-network for those tasks (every expert their gates may
weight, their towers; :func:`polytask.slim.extract.task_subnetwork`), so it predicts those
tasks only, starts as exactly the base's predictions for them, and holds nothing that the
other tasks' owners care about. It trains with the ordinary trainer from the base's weights
(``train.init``) and fitted preprocessor, keeping fixed what ``moves`` says:

* ``all``: every parameter moves;
* ``shared``: the encoder and the plan's experts and gates move, the towers (and cross-task
  heads) stay: task arithmetic's setting, where a task vector lives in the shared part;
* ``towers``: only the towers move (a linear probe when towers are one layer).

The run is an ordinary run directory plus ``finetune.json`` (the base's path and a content
hash of its weights, the tasks, what moved) and ``init.safetensors`` (the weights it started
from, beside the base's preprocessor, so its ``config.yaml`` trains again as it is). It is
trained in a scratch folder, then written like every polytask folder
(:class:`~polytask.artifacts.ownership.OutputFolder`: claimed before any work, built in
``<out>.partial``, swapped into place; ``--overwrite`` replaces only a folder polytask wrote).
"""

from __future__ import annotations

import fnmatch
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polytask.artifacts import run_dir as rd
from polytask.artifacts.ownership import OutputFolder
from polytask.artifacts.weights import save_weights
from polytask.config import (
    BalanceSpec,
    DataSpec,
    format_validation_error,
    parse_spec,
    read_yaml,
)
from polytask.errors import ConfigError, PolytaskError, did_you_mean
from polytask.inference.predictor import Predictor
from polytask.merge.layout import weights_hash
from polytask.slim.extract import task_subnetwork
from polytask.train.trainer import fit

RECORD = "finetune.json"
INIT = "init.safetensors"
# Every file a fine-tuned run may hold: a run's, its record and its starting weights.
FILES = rd.RUN_FILES | {RECORD, INIT}
MOVES: dict[str, list[str]] = {
    "all": [],
    "shared": ["towers.*", "heads.*"],
    "towers": ["encoders.*", "arch.*", "heads.*"],
}
RESERVED_TRAIN_KEYS = {"init": "the base is the start", "freeze": "use moves and freeze"}


class FinetuneSpec(BaseModel):
    """ft.yaml: which tasks, on which data, what moves, and the training budget."""

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(min_length=1, description="the base's tasks to fine-tune")
    data: DataSpec
    moves: Literal["all", "shared", "towers"] = "all"
    freeze: list[str] = Field(default_factory=list, description="more patterns kept fixed")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="train.* keys over the base's (epochs, lr, batch_size, ...)",
    )
    balance: BalanceSpec = Field(default_factory=BalanceSpec)


def read_spec(
    source: str | Path | dict[str, Any],
) -> tuple[FinetuneSpec, dict[str, Any], Path | None]:
    """The validated spec, its raw mapping and the folder relative paths resolve against."""
    base_dir = None
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        raw = read_yaml(path, "fine-tuning spec")
        base_dir = path.resolve().parent
    if not isinstance(raw, dict):
        raise ConfigError("fine-tuning spec: expected a mapping with tasks, data, moves, train")
    try:
        spec = FinetuneSpec.model_validate(raw)
    except ValidationError as error:
        message = format_validation_error(error, FinetuneSpec)
        raise ConfigError(f"fine-tuning spec: {message}") from None
    for key, why in RESERVED_TRAIN_KEYS.items():
        if key in spec.train:
            raise ConfigError(f"fine-tuning spec: train.{key} is not allowed here ({why})")
    return spec, raw, base_dir


def resolve_tasks(requested: list[str], names: list[str]) -> list[int]:
    """Task names -> indices in the base's order (each once)."""
    for name in requested:
        if name not in names:
            raise ConfigError(
                f"fine-tuning spec: tasks: '{name}' is not a task of the base"
                f"{did_you_mean(name, names)}; its tasks: {', '.join(names)}"
            )
    if len(set(requested)) != len(requested):
        raise ConfigError("fine-tuning spec: tasks: each task once")
    return sorted(names.index(name) for name in requested)


def frozen_patterns(moves: str, extra: list[str], names: list[str]) -> list[str]:
    """``moves``' patterns that match a parameter of the model (a model without cross-task
    heads has no heads.*), then the user's own (which must match: train.freeze checks)."""
    preset = [p for p in MOVES[moves] if any(fnmatch.fnmatchcase(n, p) for n in names)]
    return [*preset, *extra]


def read_record(run: Path) -> dict[str, Any]:
    """A fine-tuned run's ``finetune.json``."""
    file = Path(run) / RECORD
    if not file.is_file():
        raise PolytaskError(
            f"{run} is not a fine-tuned run (no {RECORD}); make one with `polytask finetune`"
        )
    return rd.load_json(Path(run), RECORD)


def finetune(
    base: str | Path,
    spec: str | Path | dict[str, Any],
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Fine-tune ``base`` as ``spec`` says into the run directory ``out``; return its path."""
    ft, raw, base_dir = read_spec(spec)
    target = Path(out).absolute()
    predictor = Predictor.load(base)
    output = OutputFolder(
        target, "finetuned_run", FILES, overwrite=overwrite, sources=[predictor.run]
    )
    output.claim()
    keep = resolve_tasks(ft.tasks, predictor.task_names)
    start, plan = task_subnetwork(predictor.network(), keep)
    names = [name for name, _ in start.named_parameters()]
    frozen = frozen_patterns(ft.moves, ft.freeze, names)
    base_raw = predictor.spec.to_yaml_dict()
    train = {**base_raw["train"], "baseline": None, **ft.train, "freeze": frozen}
    record = {
        "base": str(predictor.run.resolve()),
        "base_weights_sha256": weights_hash(predictor.model.state_dict()),
        "base_tasks": predictor.task_names,
        "tasks": [predictor.task_names[t] for t in keep],
        "moves": ft.moves,
        "freeze": frozen,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(
        tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".finetune", dir=target.parent)
    )
    try:
        init = scratch / INIT
        save_weights(init, start.state_dict())
        # train.init's preprocessor is the one beside its weights: the base's
        shutil.copyfile(predictor.run / rd.PREPROCESSOR, scratch / rd.PREPROCESSOR)
        run_raw = {
            "data": raw["data"],
            "tasks": [base_raw["tasks"][t] for t in keep],
            "model": {**base_raw["model"], "arch": "plan", "options": plan.model_dump(mode="json")},
            "balance": ft.balance.model_dump(mode="json"),
            "train": {**train, "init": str(init)},
        }
        run_spec = parse_spec(run_raw, base_dir)
        built = fit(run_spec, scratch / "run", progress=progress)
        folder = output.create()
        for file in built.iterdir():
            if file.name in FILES:
                file.rename(folder / file.name)
        init.rename(folder / INIT)
        final = run_spec.model_copy(deep=True)
        final.train.init = target / INIT
        rd.save_config(folder, final)
        rd.save_json(folder, RECORD, record)
        summary = rd.load_json(folder, rd.SUMMARY)
        summary["finetune"] = record
        summary["init"] = str(target / INIT)
        rd.save_json(folder, rd.SUMMARY, summary)
        output.publish()
    except BaseException:
        output.discard()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def describe(record: dict[str, Any]) -> str:
    """One line for the command line."""
    return (
        f"fine-tuned {', '.join(record['tasks'])} from {record['base']} "
        f"(moves: {record['moves']}; base weights {record['base_weights_sha256'][:12]})"
    )
