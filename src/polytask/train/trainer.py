"""The epoch loop: batches -> train_step -> validation -> early stopping -> checkpoints.

The run is built in ``<out>.partial/`` and renamed to ``<out>`` only once finished. After every
epoch a checkpoint holds everything needed to continue exactly (weights, optimizer, schedule,
balancer state, random generators, early-stopping state and the epoch log), so ``resume``
after a kill gives the same result as an uninterrupted run.

A run that fails leaves nothing that cannot be used: before its first checkpoint the
``.partial`` folder is removed; after it, the folder stays for ``--resume`` (or, when training
diverged, for inspection: the checkpoint is the last one whose losses were all finite).
Training diverges when a task's loss, or a weight, stops being a finite number; it then stops
at once with :class:`TrainingDiverged` rather than finishing with a meaningless "best epoch".
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polytask import __version__
from polytask.artifacts import run_dir as rd
from polytask.artifacts.atomic import write_atomic
from polytask.balance import BALANCERS, Balancer
from polytask.config import EncoderSpec, RunSpec
from polytask.data import progress
from polytask.errors import ConfigError, PolytaskError, warn
from polytask.inference.evaluation import evaluate, overall_score
from polytask.inference.lean import save_model
from polytask.model import MultiTaskModel, model_for
from polytask.train.device import Placement, placement
from polytask.train.diagnostics import BalanceDiagnostics, plot_balance
from polytask.train.distributed import (
    World,
    current_world,
    unlabelled,
    world_from_environment,
)
from polytask.train.estimate import estimate
from polytask.train.hooks import StepHooks
from polytask.train.insight import expert_utilisation, plot_utilisation
from polytask.train.optim import (
    ParameterState,
    build_optimizer,
    build_scheduler,
    load_parameter_state,
    parameter_state,
)
from polytask.train.prepare import Prepared, SplitTensors, TrainRows, prepare
from polytask.train.progress import TrainingDisplay, metrics_table
from polytask.train.runtime import keep_heap_between_steps
from polytask.train.start import (
    backbone_run,
    freeze,
    initial_preprocessor,
    load_backbone,
    load_initial,
    load_matching,
    save_adapters,
    with_backbone_model,
)
from polytask.train.step import train_step
from polytask.train.support import check_balancer

# Called after every epoch (checkpoint and metrics.jsonl already written) with that epoch's
# metrics.jsonl row. Returning True ends training there: the run finishes normally with its best
# epoch, as after early stopping (a sweep prunes a poor trial this way).
EpochCallback = Callable[[dict[str, Any]], bool | None]


@dataclass
class LoopState:
    """Early-stopping and selection state; saved in every checkpoint."""

    epoch: int = 0
    step: int = 0
    best_epoch: int = 0
    best_value: float = -math.inf
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_weights: dict[str, torch.Tensor] | None = None
    train_seconds: float = 0.0
    rows_seen: int = 0


class TrainingDiverged(PolytaskError):
    """A loss or a weight became NaN or infinite: training stopped."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_balancer(spec: RunSpec, num_tasks: int) -> Balancer:
    """The spec's balancing method; a bad option is an OptionError (a ConfigError)."""
    return BALANCERS.get(spec.balance.method)(num_tasks, **spec.balance.options)


def load_baseline(path: Path | None) -> dict[str, dict[str, dict[str, float]]] | None:
    """A finished run's final metrics (per split), for Delta-m."""
    if path is None:
        return None
    run = rd.require_complete(Path(path))
    return rd.load_json(run, rd.FINAL_METRICS)


class Trainer:
    """Trains one run specification into a run directory.

    Growing a run (:mod:`polytask.grow`) trains through this same loop and passes what a
    specification cannot say: ``prepared`` data (rows of several sources, each labelled
    for its own tasks), the grown ``model`` itself (built for the specification's plan and
    holding its initial weights; the strategy's hooks refer to its parameters), and the
    ``hooks``. Such a run keeps no checkpoint and cannot be resumed.
    """

    def __init__(
        self,
        spec: RunSpec | None,
        out: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        callbacks: Iterable[EpochCallback] = (),
        encoder_factory: Callable[[], torch.nn.Module] | None = None,
        initial_weights: dict[str, torch.Tensor] | None = None,
        prepared: Prepared | None = None,
        model: MultiTaskModel | None = None,
        hooks: StepHooks | None = None,
        optimizer_state: ParameterState | None = None,
        keep_optimizer_state: bool = False,
    ) -> None:
        if resume and (prepared is not None or model is not None or hooks is not None):
            raise PolytaskError("a run trained with prepared data or hooks cannot be resumed")
        self.prepared = prepared
        self.given_model = model
        self.hooks = hooks
        # a run whose data, start or hooks the spec cannot rebuild keeps no checkpoint
        self.resumable = prepared is None and model is None and hooks is None
        self.model: MultiTaskModel | None = None  # the trained model, once fit returns
        # absolute, not resolved: a symbolic link given as --out stays a link (and is refused)
        self.out = rd.final_path(Path(os.path.abspath(out)))
        # weights to start from (e.g. another run's shared part, for transfer): loaded by name
        # into a new run's model before training; ignored on resume (the checkpoint holds all)
        self.initial_weights = initial_weights
        # an earlier optimizer's per-parameter state by parameter name (a stream whose
        # experiences keep it): loaded before the first step. With keep_optimizer_state, the
        # state this run's optimizer ends with is in ``final_optimizer_state`` once fit returns
        self.optimizer_state = optimizer_state
        self.keep_optimizer_state = keep_optimizer_state
        self.final_optimizer_state: ParameterState = {}
        self.partial = rd.partial_path(self.out)
        self.resume = resume
        self.overwrite = overwrite
        # under torchrun only rank 0 touches the run folder and shows progress
        self.rank, self.world_size = world_from_environment()
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        self.callbacks = list(callbacks)
        self.encoder_factory = encoder_factory
        baseline = spec.train.baseline if spec is not None else None
        self.output = rd.run_folder(
            self.out,
            overwrite=overwrite,
            sources=[baseline] if baseline is not None else [],
            resume=resume,
        )
        self.spec = self._claim_folder(spec)
        if encoder_factory is not None and not resume:
            self.spec = _with_custom_encoder(self.spec)
        if not resume:
            self.spec = with_backbone_model(self.spec)

    # ------------------------------------------------------------------ set-up
    def _claim_folder(self, spec: RunSpec | None) -> RunSpec:
        if self.resume:
            if not rd.has_checkpoint(self.partial):
                if rd.is_complete(self.out):
                    raise PolytaskError(f"run {self.out} already finished; nothing to resume")
                if self.partial.is_dir():
                    raise PolytaskError(
                        f"{self.partial} stopped before its first checkpoint: nothing to "
                        "resume; train it again"
                    )
                raise PolytaskError(f"no checkpoint to resume at {self.partial}")
            return rd.load_config(self.partial)
        if spec is None:
            raise PolytaskError("a new run needs a run specification")
        if self.is_main:
            self.output.claim()
        return spec

    def _setup(self) -> tuple[Prepared, MultiTaskModel]:
        train_spec = self.spec.train
        # fused expert temporaries would otherwise be handed back to the kernel and faulted in
        # again every step (see train/runtime.py; POLYTASK_KEEP_HEAP=0 opts out)
        keep_heap_between_steps()
        if train_spec.threads:
            torch.set_num_threads(train_spec.threads)
        local_rank = int(os.environ.get("LOCAL_RANK", "0")) if self.world_size > 1 else None
        self.place: Placement = placement(train_spec, local_rank)
        self.world: World = current_world(self.place.device.type)
        self._check_distributable()
        seed_everything(train_spec.seed)
        if self.resume:
            state = rd.load_json(self.partial, rd.PREPROCESSOR)
        else:  # a run started from trained weights keeps the inputs those were trained on
            state = initial_preprocessor(train_spec.init or backbone_run(self.spec))
        prepared = self.prepared or prepare(self.spec, state, self.world)
        self.baseline = load_baseline(train_spec.baseline)
        try:
            model = self.given_model or model_for(
                self.spec.model,
                prepared.preprocessor,
                prepared.tasks,
                encoder_factory=self.encoder_factory,
            )
        except MemoryError:
            raise _too_large(self.spec) from None
        except RuntimeError as error:
            if "alloc" not in str(error):
                raise
            raise _too_large(self.spec) from None
        if train_spec.init is not None and not self.resume:  # a resume reads its checkpoint
            load_initial(model, train_spec.init)
        if self.spec.model.adapters is not None and not self.resume:
            # what the backbone gave stays fixed; recorded in the spec, so a resume (which
            # reads the checkpoint, not the backbone) keeps the same parameters fixed
            fixed = load_backbone(model, self.spec)
            patterns = list(dict.fromkeys([*train_spec.freeze, *fixed]))
            train_spec = train_spec.model_copy(update={"freeze": patterns})
            self.spec = self.spec.model_copy(update={"train": train_spec})
        self.frozen = freeze(model, train_spec.freeze)
        model.to(self.place.device)
        self.world.broadcast_parameters(model)
        return prepared, model

    def _check_distributable(self) -> None:
        """What several processes do not support, refused before any work."""
        if not self.world.distributed:
            return
        if self.spec.train.relations is not None:
            raise ConfigError(
                "train.relations: task relations are recorded in one process only; remove "
                "it or train without torchrun"
            )
        if self.callbacks:
            raise PolytaskError("epoch callbacks (sweeps) run in one process only")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        try:
            return self._fit()
        except BaseException as error:
            self._after_failure(error)
            raise

    def _after_failure(self, error: BaseException) -> None:
        """Keep a ``.partial`` folder only when it holds a checkpoint (something to resume
        or inspect); say what was kept."""
        if not rd.has_checkpoint(self.partial):
            if not self.resume and self.is_main:
                self.output.discard()
            if isinstance(error, KeyboardInterrupt):
                error.args = ("stopped before the first checkpoint; nothing was kept",)
        elif isinstance(error, KeyboardInterrupt):
            error.args = (f"continue with `polytask train --resume {self.out}`",)

    def _fit(self) -> Path:
        with progress.reporting(self.progress):
            prepared, model = self._setup()
            if self.initial_weights is not None and not self.resume:
                load_matching(model, self.initial_weights)
        tasks = prepared.tasks
        train = prepared.train_rows()
        valid = prepared.splits.get("valid")
        balancer = self.balancer = build_balancer(self.spec, len(tasks))
        check_balancer(balancer, self.world.size, self.place.precision)
        for parameter in balancer.parameters():  # its own parameters live with the model's
            parameter.data = parameter.data.to(self.place.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(trainable, self.spec.train)
        if balancer.parameters():  # a method's own learnable parameters (e.g. log-variances)
            optimizer.add_param_group({"params": balancer.parameters(), "weight_decay": 0.0})
        if self.optimizer_state and not self.resume:
            load_parameter_state(optimizer, model, self.optimizer_state)
        scheduler = build_scheduler(optimizer, self.spec.train)
        static_weights = torch.tensor(
            [task.spec.weight for task in tasks], device=self.place.device
        )
        self.scaler = self.place.scaler()
        self.diagnostics = BalanceDiagnostics(len(tasks))
        loop = LoopState()
        if self.resume:
            loop = self._restore(model, optimizer, scheduler, balancer)
        elif self.is_main:
            self.output.create()
            rd.save_config(self.partial, self.spec)
            rd.save_json(self.partial, rd.PREPROCESSOR, prepared.preprocessor.state)

        self.relations = self._relation_recorder(tasks, loop.epoch)
        primary = {task.name: task.primary_metric for task in tasks}
        with TrainingDisplay(self.progress) as display:
            cost = estimate(model, len(train))
            if cost.large:
                warn(f"{cost.line(len(tasks), len(train))}: a large or slow run")
            else:
                display.show(cost.line(len(tasks), len(train)))
            stop_requested = False
            while (
                loop.epoch < self.spec.train.epochs
                and not self._patience_spent(loop)
                and not stop_requested
            ):
                epoch = loop.epoch + 1
                started = time.perf_counter()
                train_loss = self._train_epoch(
                    model,
                    train,
                    prepared,
                    balancer,
                    optimizer,
                    static_weights,
                    loop,
                    display,
                    epoch,
                )
                balancer.end_epoch()
                if self.relations is not None:
                    self.relations.end_epoch(epoch)
                if self.hooks is not None and self.hooks.end_epoch(model, epoch):
                    loop.best_value = -math.inf  # earlier weights are no longer candidates
                elapsed = time.perf_counter() - started
                loop.train_seconds += elapsed
                loop.rows_seen += len(train)
                row = self._end_epoch(
                    model, valid, prepared, loop, epoch, train_loss, elapsed, optimizer
                )
                if scheduler is not None:
                    scheduler.step()
                loop.epoch = epoch
                self._check_weights(model, epoch)
                if self.is_main:
                    if self.resumable:
                        self._checkpoint(model, optimizer, scheduler, balancer, loop)
                    rd.write_epoch_log(self.partial, loop.history)
                display.end_epoch(row, primary)
                for callback in self.callbacks:
                    stop_requested = bool(callback(row)) or stop_requested
            self.model = model
            if self.keep_optimizer_state:
                self.final_optimizer_state = parameter_state(optimizer, model)
            if not self.is_main:
                self.world.barrier()  # return once rank 0 has published the run
                return self.out
            out = self._finish(model, prepared, loop, display)
            self.world.barrier()
            return out

    def _relation_recorder(self, tasks: list, epochs_done: int) -> Any:
        """The recorder ``train.relations`` asks for (None when off), resumed where a
        checkpoint left it."""
        if self.spec.train.relations is None:
            return None
        from polytask.relations.recorder import RelationRecorder

        recorder = RelationRecorder(
            self.spec.train.relations, [task.name for task in tasks], self.partial
        )
        if self.resume:
            recorder.resume(epochs_done)
        return recorder

    def _train_epoch(
        self,
        model: MultiTaskModel,
        train: TrainRows,
        prepared: Prepared,
        balancer: Balancer,
        optimizer: torch.optim.Optimizer,
        static_weights: torch.Tensor,
        loop: LoopState,
        display: TrainingDisplay,
        epoch: int,
    ) -> dict[str, float]:
        model.train()
        batch_size, seed = self.spec.train.batch_size, self.spec.train.seed
        num_batches = train.num_batches(batch_size, seed, epoch, self.world)
        display.start_epoch(epoch, self.spec.train.epochs, num_batches)
        loss_sum = torch.zeros(len(prepared.tasks))
        present_count = torch.zeros(len(prepared.tasks))
        every = self.spec.train.diagnostics_every
        for batch, counted in train.batches(batch_size, seed, epoch, self.world):
            labels = batch.labels if counted else unlabelled(batch.labels)
            features, labels = self.place.batch(batch.features, labels)
            device = features.numeric.device
            weights = {name: values.to(device) for name, values in batch.weights.items()}
            if self.relations is not None and self.relations.due(loop.step):
                self.relations.record(model, features, labels, prepared.tasks, optimizer, weights)
            result = train_step(
                model,
                features,
                labels,
                prepared.tasks,
                balancer,
                optimizer,
                static_weights,
                loop.step,
                measure_gradients=every is not None and loop.step % every == 0,
                place=self.place,
                scaler=self.scaler,
                world=self.world,
                rows=counted,
                sample_weights=weights,
                hooks=self.hooks,
            )
            self._check_losses(result.losses, result.present, prepared, epoch, loop.step)
            present = result.present.cpu()
            loss_sum += result.losses.cpu() * present
            present_count += present
            self.diagnostics.add(result.weights.cpu(), present, _cpu(result.gramian))
            loop.step += 1
            display.advance()
        per_task = (loss_sum / present_count.clamp(min=1)).tolist()
        return {task.name: value for task, value in zip(prepared.tasks, per_task, strict=True)}

    def _check_losses(
        self,
        losses: torch.Tensor,
        present: torch.Tensor,
        prepared: Prepared,
        epoch: int,
        step: int,
    ) -> None:
        bad = ~torch.isfinite(losses) & present
        if bool(bad.any()):
            index = int(bad.nonzero()[0, 0])
            task = prepared.tasks[index].name
            value = float(losses[index])
            self._diverged(f"task '{task}' loss is {value} at epoch {epoch}, step {step + 1}")

    def _check_weights(self, model: MultiTaskModel, epoch: int) -> None:
        for name, parameter in model.named_parameters():
            if not bool(torch.isfinite(parameter).all()):
                self._diverged(f"weight '{name}' is not finite after epoch {epoch}")

    def _diverged(self, what: str) -> None:
        if rd.has_checkpoint(self.partial):
            kept = (
                f"the checkpoint of the last epoch with finite losses is kept in {self.partial} "
                "for inspection (`--resume` would repeat the same steps); lower train.lr, then "
                "train again with --overwrite"
            )
        else:
            kept = "nothing was kept; lower train.lr and train again"
        raise TrainingDiverged(
            f"training diverged: {what} (train.lr is {self.spec.train.lr:g}); {kept}"
        )

    def _end_epoch(
        self,
        model: MultiTaskModel,
        valid: SplitTensors | None,
        prepared: Prepared,
        loop: LoopState,
        epoch: int,
        train_loss: dict[str, float],
        elapsed: float,
        optimizer: torch.optim.Optimizer,
    ) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(np.mean(list(train_loss.values()))),
            "train_task_loss": train_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": elapsed,
            "rows_per_second": len(prepared.train_rows()) / max(elapsed, 1e-9),
            **self.diagnostics.end_epoch([task.name for task in prepared.tasks]),
        }
        if valid is not None:
            value = math.nan
            if self.is_main:  # the whole validation set, once; the decision is shared
                results = self._evaluate(model, valid, prepared)
                row["valid"] = results
                value = self._monitored(results, valid, prepared)
                row["monitor"] = value
            value = self.world.from_main([value])[0]
        else:
            value = float(epoch)  # no validation rows: the last epoch is the best
        if value > loop.best_value:
            loop.best_value, loop.best_epoch, loop.bad_epochs = value, epoch, 0
            loop.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            row["best"] = True
        else:
            loop.bad_epochs += 1
            row["best"] = False
        loop.history.append(row)
        return row

    def _evaluate(
        self, model: MultiTaskModel, split: SplitTensors, prepared: Prepared
    ) -> dict[str, dict[str, float]]:
        return evaluate(
            model,
            split.features,
            split.labels,
            prepared.tasks,
            self.spec.train.eval_batch_size,
            split.weights,
        )

    def _monitored(
        self, results: dict[str, dict[str, float]], valid: SplitTensors, prepared: Prepared
    ) -> float:
        """Higher is better: the mean normalised metric, or minus the weighted validation loss."""
        if self.spec.train.early_stopping.monitor == "loss":
            return -sum(results[t.name]["loss"] * t.spec.weight for t in prepared.tasks)
        overall = overall_score(results, valid.labels, prepared.tasks, None, weights=valid.weights)
        score = overall["value"]
        return score if not math.isnan(score) else -math.inf

    def _patience_spent(self, loop: LoopState) -> bool:
        patience = self.spec.train.early_stopping.patience
        return patience is not None and loop.bad_epochs >= patience

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(
        self,
        model: MultiTaskModel,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        balancer: Balancer,
        loop: LoopState,
    ) -> None:
        payload = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "balancer": balancer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "loop": loop.__dict__,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }
        write_atomic(self.partial / rd.CHECKPOINT, lambda temp: torch.save(payload, temp))

    def _restore(
        self,
        model: MultiTaskModel,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        balancer: Balancer,
    ) -> LoopState:
        try:
            payload = torch.load(
                self.partial / rd.CHECKPOINT, map_location=self.place.device, weights_only=False
            )
        except Exception as error:  # a truncated or foreign file: unpickling raises anything
            raise PolytaskError(
                f"the checkpoint {self.partial / rd.CHECKPOINT} could not be read "
                f"({type(error).__name__}); start the run again with --overwrite"
            ) from None
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None and payload["scheduler"] is not None:
            scheduler.load_state_dict(payload["scheduler"])
        balancer.load_state_dict(payload["balancer"])
        if self.scaler is not None and payload.get("scaler") is not None:
            self.scaler.load_state_dict(payload["scaler"])
        torch.set_rng_state(payload["rng"]["torch"].cpu())
        np.random.set_state(payload["rng"]["numpy"])
        random.setstate(payload["rng"]["python"])
        return LoopState(**payload["loop"])

    # ------------------------------------------------------------------ the artifact
    def _save_insight(
        self, model: MultiTaskModel, prepared: Prepared, display: TrainingDisplay
    ) -> None:
        """Expert utilisation on validation rows (training rows if there are none)."""
        split = prepared.splits.get("valid") or prepared.splits.get("train")
        if split is None:  # streamed training rows: the first of them
            split = prepared.train_rows().head(self.spec.train.eval_batch_size)
        report = expert_utilisation(model, split.features, self.spec.train.eval_batch_size)
        if report is None:
            return
        rd.save_json(self.partial, rd.EXPERTS, report)
        write_atomic(self.partial / rd.EXPERTS_PLOT, lambda temp: plot_utilisation(report, temp))
        for warning in report["warnings"]:
            display.show(f"[yellow]warning:[/yellow] {warning}")

    def _finish(
        self, model: MultiTaskModel, prepared: Prepared, loop: LoopState, display: TrainingDisplay
    ) -> Path:
        if loop.best_weights is not None:
            model.load_state_dict(loop.best_weights)
        final: dict[str, Any] = {}
        scores: dict[str, Any] = {}
        for split in ("valid", "test"):
            tensors = prepared.splits.get(split)
            if tensors is None:
                continue
            results = self._evaluate(model, tensors, prepared)
            final[split] = results
            baseline = self.baseline.get(split) if self.baseline else None
            scores[split] = overall_score(
                results,
                tensors.labels,
                prepared.tasks,
                baseline,
                str(self.spec.train.baseline) if baseline else None,
                tensors.weights,
            )
        if self.spec.train.figures:
            self._save_insight(model, prepared, display)
        if self.relations is not None:
            self.relations.finish()
        if self.hooks is not None:
            self.hooks.finish(model, self.partial)
        if loop.history and self.spec.train.figures:
            names = [task.name for task in prepared.tasks]
            write_atomic(
                self.partial / rd.BALANCE_PLOT,
                lambda temp: plot_balance(loop.history, names, temp),
            )
        save_model(self.partial, model)
        adapters = save_adapters(self.partial, model, self.spec)
        rd.save_json(self.partial, rd.FINAL_METRICS, final)
        summary = {
            "polytask_version": __version__,
            "arch": self.spec.model.arch,
            "encoder": self.spec.model.encoder.name,
            "balance": self.balancer.describe(),
            "tasks": [task.name for task in prepared.tasks],
            "rows": {
                "train": len(prepared.train_rows()),
                **{name: len(split) for name, split in prepared.splits.items()},
            },
            "streamed": prepared.streamed is not None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "init": str(self.spec.train.init) if self.spec.train.init else None,
            "epochs_run": loop.epoch,
            "best_epoch": loop.best_epoch,
            "stopped_early": loop.epoch < self.spec.train.epochs,
            "selection": (
                f"best validation {self.spec.train.early_stopping.monitor}"
                if "valid" in prepared.splits
                else "last epoch (no validation rows)"
            ),
            **self.place.describe(),
            "world_size": self.world.size,
            "global_batch": self.spec.train.batch_size,
            "train_seconds": loop.train_seconds,
            "train_rows_per_second": loop.rows_seen / max(loop.train_seconds, 1e-9),
            "score": scores,
        }
        if adapters is not None:
            summary["adapters"] = adapters
        rd.save_json(self.partial, rd.SUMMARY, summary)
        rd.publish(self.output)
        shown = final.get("test") or final.get("valid")
        if shown is not None:
            split = "test" if "test" in final else "valid"
            display.show(metrics_table(f"{split} metrics (best epoch {loop.best_epoch})", shown))
            score = scores[split]
            display.show(
                f"{score['name']} = {score['value']:.4f} {score['unit']} ({score['meaning']})"
            )
        display.show(f"run saved to {self.out}")
        return self.out


def fit(
    spec: RunSpec | None,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Iterable[EpochCallback] = (),
    encoder_factory: Callable[[], torch.nn.Module] | None = None,
    initial_weights: dict[str, torch.Tensor] | None = None,
    prepared: Prepared | None = None,
    model: MultiTaskModel | None = None,
    hooks: StepHooks | None = None,
) -> Path:
    """Train ``spec`` into the run directory ``out`` and return its path (see
    :class:`Trainer` for ``prepared``, ``model`` and ``hooks``)."""
    return Trainer(
        spec,
        out,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        callbacks=callbacks,
        encoder_factory=encoder_factory,
        initial_weights=initial_weights,
        prepared=prepared,
        model=model,
        hooks=hooks,
    ).fit()


def _too_large(spec: RunSpec) -> PolytaskError:
    model = spec.model
    return ConfigError(
        f"config: the model does not fit in memory (model.hidden {model.hidden}, "
        f"num_experts {model.num_experts}, embedding_dim {model.embedding_dim}, "
        f"tower_hidden {model.tower_hidden}); make it smaller"
    )


def _with_custom_encoder(spec: RunSpec) -> RunSpec:
    """A copy of ``spec`` that records a user's encoder, so that the saved config says so and
    loading or resuming without the factory fails with a clear message."""
    spec = spec.model_copy(deep=True)
    spec.model.encoder = EncoderSpec(name="custom")
    return spec


def _cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return tensor.cpu() if tensor is not None else None
