"""The PEFT side of the adapter benchmarks (issue 18): one LoRA adapter per task on a frozen
plain ``nn.Module``, trained and served the way PEFT 0.21 users do, so that polytask's
vectorised mixed-task adapters are timed and checked against PEFT's own paths, not a
hand-written imitation of them.

How PEFT serves a mixed batch, read from its source (``peft/peft_model.py``,
``peft/tuners/lora/model.py`` and ``layer.py``): ``PeftModel.forward(x, adapter_names=[...])``
pops the keyword, and ``LoraModel._enable_peft_forward_hooks`` registers on every LoRA layer a
forward pre-hook that puts ``adapter_names`` back into that layer's kwargs; the backbone's own
``forward`` never sees it, so a custom module needs no change. Each LoRA ``Linear`` then runs
the frozen layer on the whole batch and, per distinct adapter, gathers that adapter's rows
(indices found by a Python loop over the names, in every layer) and adds
``scaling * B(A(x_rows))`` into them. The batch must be the first dimension of every targeted
layer's input. In training mode PEFT refuses the keyword ("Cannot pass `adapter_names` when the
model is in training mode."), so mixed-batch training is done here by sub-batches.

Functions that need peft import it themselves: this module imports without it, for scripts
that only print ``--help``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

Loss = Callable[[Tensor, Tensor], Tensor]
"""A loss of (prediction, target) reduced to the mean over its rows, as ``F.mse_loss`` is."""


def peft_model(
    backbone: nn.Module, targets: list[str], rank: int, alpha: float, tasks: list[str], seed: int
) -> PeftModel:
    """``backbone`` with one LoRA adapter per task (named after the task) on the ``nn.Linear``
    modules named in ``targets``, the rest frozen; the first task's adapter is active.

    PEFT injects its layers into ``backbone`` in place (pass a copy to keep the plain one).
    ``seed`` fixes the adapters' initial ``A`` (``B`` starts at zero, so the wrapped model
    first computes what the backbone does).
    """
    from peft import LoraConfig, get_peft_model

    if not tasks:
        raise ValueError("tasks: at least one task is needed for an adapter")

    def config() -> LoraConfig:
        # a config each: PEFT keeps and edits the config object of each adapter
        return LoraConfig(
            target_modules=list(targets),
            r=rank,
            lora_alpha=alpha,  # type: ignore[arg-type]  # annotated int, used as alpha / r
            lora_dropout=0.0,
            bias="none",
        )

    torch.manual_seed(seed)
    model = get_peft_model(backbone, config(), adapter_name=tasks[0])
    for task in tasks[1:]:
        model.add_adapter(task, config())
    return model


def lora_layers(model: PeftModel) -> dict[str, LoraLayer]:
    """The LoRA layers of ``model`` by their name in the backbone (``"0"``, ``"encoder.fc"``),
    the names ``targets`` used, so that a caller can match them to its own layout."""
    from peft.tuners.lora import LoraLayer

    backbone = model.get_base_model()
    return {name: m for name, m in backbone.named_modules() if isinstance(m, LoraLayer)}


def task_pairs(model: PeftModel, task: str) -> dict[str, tuple[nn.Linear, nn.Linear, float]]:
    """Per LoRA layer holding ``task``'s adapter: its ``A`` and ``B`` (``nn.Linear`` for a
    targeted ``nn.Linear``) and its scaling (``alpha / rank``)."""
    pairs = {}
    for name, layer in lora_layers(model).items():
        if task not in layer.lora_A:
            continue
        a, b = layer.lora_A[task], layer.lora_B[task]
        if not (isinstance(a, nn.Linear) and isinstance(b, nn.Linear)):
            raise TypeError(f"targets: {name!r} is not an nn.Linear (its LoRA A is {a!r})")
        pairs[name] = (a, b, float(layer.scaling[task]))
    if not pairs:
        raise ValueError(f"task: no LoRA adapter named {task!r} in the model")
    return pairs


def adapter_parameters(model: PeftModel, task: str) -> list[Tensor]:
    """The ``A`` and ``B`` weights of ``task``'s adapter in every layer: what an optimizer for
    that task updates (``bias='none'``, so nothing else of the backbone)."""
    return [w for a, b, _ in task_pairs(model, task).values() for w in (a.weight, b.weight)]


def lora_weights(model: PeftModel, task: str) -> dict[str, tuple[Tensor, Tensor, float]]:
    """Per target module: ``(A [rank, in], B [out, rank], scaling)`` of ``task``'s adapter, the
    layer computing ``base(x) + scaling * x @ A.T @ B.T``.

    The tensors are detached views of PEFT's weights, not copies: clone them to keep a
    snapshot across training.
    """
    return {
        name: (a.weight.detach(), b.weight.detach(), scaling)
        for name, (a, b, scaling) in task_pairs(model, task).items()
    }


def mixed_forward(model: PeftModel, x: Tensor, task_of_row: Sequence[str]) -> Tensor:
    """PEFT's own mixed-batch inference: row ``i`` of ``x [batch, ...]`` through the adapter of
    ``task_of_row[i]``, all rows in one call of the backbone.

    Switches ``model`` to eval mode (PEFT refuses ``adapter_names`` in training mode) and
    leaves it there, so that a timing loop pays the switch once. The names are passed as
    given: PEFT wants a list of strings, one a row.
    """
    if model.training:
        model.eval()
    with torch.no_grad():
        return model(x, adapter_names=list(task_of_row))


def rows_by_task(task_of_row: Sequence[str]) -> dict[str, Tensor]:
    """The row indices of each task in a mixed batch, in order of first appearance."""
    rows: dict[str, list[int]] = {}
    for index, task in enumerate(task_of_row):
        rows.setdefault(task, []).append(index)
    return {task: torch.tensor(indices) for task, indices in rows.items()}


def _task_loss(
    model: PeftModel, head: nn.Module | None, x: Tensor, y: Tensor, loss: Loss
) -> Tensor:
    """The loss of the active adapter (and ``head``, where given) on one task's rows."""
    out = model(x)
    return loss(out if head is None else head(out), y)


def train_mixed_step(
    model: PeftModel,
    x: Tensor,
    task_of_row: Sequence[str],
    heads: Mapping[str, nn.Module] | None,
    optimizer: torch.optim.Optimizer,
    y: Tensor,
    loss: Loss = F.mse_loss,
) -> float:
    """One training step on a mixed batch the PEFT way; returns the batch loss.

    PEFT cannot run several adapters in one training forward, so the batch is split by task
    and, per task, ``set_adapter`` + forward + loss + backward on its rows; then one optimizer
    step for all of them. Each task's loss (a mean over its rows) is weighted by its share of
    the rows, so the gradients add up to those of the mean loss over the whole batch: the
    objective of one vectorised pass over the same rows. ``set_adapter`` freezes the other
    adapters, so each backward fills only its own task's gradients; a task absent from the
    batch keeps ``grad=None`` and Adam leaves it untouched. ``optimizer`` holds the adapters
    (and heads) of all tasks, e.g. from :func:`adapter_parameters`.
    """
    if not model.training:
        model.train()
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for task, rows in rows_by_task(task_of_row).items():
        model.set_adapter(task)
        head = None if heads is None else heads[task]
        task_loss = _task_loss(model, head, x[rows], y[rows], loss) * (len(rows) / len(x))
        task_loss.backward()
        total += task_loss.item()
    optimizer.step()
    return total


def train_per_task(
    model: PeftModel,
    batches_by_task: Mapping[str, Iterable[tuple[Tensor, Tensor]]],
    lr: float,
    epochs: int,
    heads: Mapping[str, nn.Module] | None = None,
    loss: Loss = F.mse_loss,
) -> float:
    """Train each task's adapter in turn, as PEFT users do; returns the wall seconds.

    Per task: ``set_adapter(task)``, a fresh Adam on that adapter's weights (and the task's
    head, where given), then ``epochs`` passes over the task's ``(x, y)`` batches. The time
    covers the switches and optimizer set-up, which are part of the PEFT way. The batches
    are iterated once per epoch, so pass a list (or anything re-iterable), not a generator.
    """
    if not model.training:
        model.train()
    start = time.perf_counter()
    for task, batches in batches_by_task.items():
        model.set_adapter(task)
        head = None if heads is None else heads[task]
        params = adapter_parameters(model, task) + ([] if head is None else list(head.parameters()))
        optimizer = torch.optim.Adam(params, lr=lr)
        for _ in range(epochs):
            for x, y in batches:
                optimizer.zero_grad(set_to_none=True)
                _task_loss(model, head, x, y, loss).backward()
                optimizer.step()
    return time.perf_counter() - start
