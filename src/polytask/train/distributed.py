"""Data-parallel training on PyTorch's own runtime (``torch.distributed``, started by torchrun).

Every process (rank) holds the same model and trains on its part of each global batch
(``train.batch_size`` rows, split across the ranks), so one process and many train the same
model. Three things make the many-process step equal to the one-process step:

* Task losses are means over labelled entries, and a rank's share of a task's labels varies.
  The ranks all-reduce each task's loss sum and label count (2T numbers), so every rank sees
  the global loss values (what loss-based weightings read) and backpropagates its own rows
  with the factor ``ranks * local count / global count``; averaging the ranks' gradients then
  gives the global batch's gradient exactly.
* Gradients are averaged once per step, after the balancer, in one flat all-reduce. A plain
  ``DistributedDataParallel`` wrapper averages inside ``backward()`` only, and balancers
  also write ``.grad`` outside it (exact-mode Gramian methods) or backpropagate several
  times; averaging afterwards is right for all of them, at the cost of not overlapping the
  communication with the backward pass.
* Gramian methods at the shared representation (``mode: fast``) all-reduce the T x T Gramian:
  the representation's rows are disjoint across ranks, so the global Gramian is the sum of
  the ranks' (T^2 numbers, never T full parameter gradients).

Only rank 0 reads validation metrics, writes the run and decides early stopping; it shares
the decision with the others.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

from polytask.errors import PolytaskError
from polytask.tasks import Task

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` data-parallel processes (1: no distribution)."""

    rank: int = 0
    size: int = 1
    local_rank: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """This rank's part of a global batch's rows (contiguous, sizes differ by at most 1)
        and how many of them count. A rank left without a row (a last batch smaller than the
        world) still takes part in the step's collectives: it runs the batch's first row,
        which counts for nothing (its labels are then to be masked, see :func:`unlabelled`)."""
        if not self.distributed:
            return rows, len(rows)
        mine = rows.tensor_split(self.size)[self.rank]
        return (mine, len(mine)) if len(mine) else (rows[:1], 0)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over ranks (the tensor itself in one process)."""
        if self.distributed:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def from_main(self, values: list[float]) -> list[float]:
        """Rank 0's values, on every rank."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def from_main_object(self, make: Callable[[], T]) -> T:
        """``make()`` run by rank 0 alone, its result (pickled) on every rank: work done
        once rather than by every process (fitting a streamed table's preprocessor)."""
        if not self.distributed:
            return make()
        box = [make() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return cast(T, box[0])

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _collective_device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def global_losses(
        self,
        local: torch.Tensor,
        labels: dict[str, torch.Tensor],
        tasks: list[Task],
        rows: int,
        sample_weights: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """From this rank's per-task mean losses [T] over its ``rows`` rows: the global
        batch's losses [T] (detached), whether each task has a label anywhere in it [T], the
        factor [T] by which this rank's losses are backpropagated, and the factor [] for a
        per-row mean over this rank's rows (an architecture's auxiliary loss). A task's mean
        is over its labelled entries, weighted by its ``sample_weights`` where it has them,
        so the ranks' means combine by those masses."""
        weights = sample_weights or {}
        masses = [task.label_mass(labels[task.name], weights.get(task.name)) for task in tasks]
        counts = torch.stack(masses).to(local.dtype)
        mine = torch.cat([local.detach() * counts, counts, counts.new_tensor([rows])])
        totals = self.sum(mine)
        global_sum, global_count = totals[: len(tasks)], totals[len(tasks) : -1]
        labelled = global_count > 0
        divisor = torch.where(labelled, global_count, torch.ones_like(global_count))
        values = global_sum / divisor
        factor = self.size * counts / divisor
        return values, labelled, factor, self.size * rows / totals[-1].clamp(min=1)

    def gather_rows(self, tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Every rank's rows of ``tensor`` [B_r, ...], in rank order, differentiably: the
        gathered tensor [R * B_max, ...] (each rank's rows padded to the largest rank's),
        which of its rows are real [R * B_max], and where this rank's rows start. The
        gradient of a loss on the gathered rows reaches each rank's own rows (summed over
        the ranks' losses). In one process: the tensor itself, all real, from 0."""
        device = tensor.device
        if not self.distributed:
            return tensor, torch.ones(len(tensor), dtype=torch.bool, device=device), 0
        mine = torch.zeros(self.size, device=device)
        mine[self.rank] = len(tensor)
        sizes = [int(n) for n in self.sum(mine).tolist()]
        largest = max(sizes)
        gathered = cast(torch.Tensor, _GatherRows.apply(tensor, largest, self.rank, self.size))
        real = torch.cat([torch.arange(largest, device=device) < n for n in sizes])
        return gathered, real, self.rank * largest

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Average ``.grad`` over ranks in one flat all-reduce. A parameter that has a
        gradient on some rank gets one on all (zeros where it had none); one that has none
        anywhere keeps None, as in a single process."""
        if not self.distributed or not parameters:
            return
        reference = parameters[0]
        has = torch.tensor(
            [p.grad is not None for p in parameters], dtype=torch.float32, device=reference.device
        )
        has = self.sum(has)
        used = [p for p, flag in zip(parameters, has.tolist(), strict=True) if flag > 0]
        if not used:
            return
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in used])  # type: ignore[union-attr]
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for p in used:
            count = p.numel()
            p.grad.copy_(flat[offset : offset + count].view_as(p))  # type: ignore[union-attr]
            offset += count

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's weights on every rank (they start equal from the seed; this makes sure)."""
        if not self.distributed:
            return
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def current_world(backend_device: str | None = None) -> World:
    """The world torchrun describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``), its process group initialised (gloo, or NCCL for CUDA devices); one
    process when those are not set."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if backend_device == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        try:
            dist.init_process_group(backend=backend)
        except (RuntimeError, ValueError) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise PolytaskError(
                f"could not join the torchrun group as rank {rank} of {size} ({first})"
            ) from None
        atexit.register(_destroy_group)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank)


def _destroy_group() -> None:
    """Destroy the process group polytask started, once the process is done with it.

    Left to interpreter shutdown, gloo's threads can be torn down while still joinable, and
    a process that finished its work aborts ("terminate called without an active
    exception"), failing the whole torchrun job. Not done after each run: a process that
    trains several runs (a sweep under torchrun) keeps its one group."""
    if dist.is_initialized():
        dist.destroy_process_group()


def world_from_environment() -> tuple[int, int]:
    """(rank, size) as torchrun sets them, before any process group exists; (0, 1) for a
    world of one process, whatever ``RANK`` says."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), size) if size > 1 else (0, 1)


def unlabelled(labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same label tensors with every label missing (NaN): rows that weigh nothing."""
    return {name: torch.full_like(values, float("nan")) for name, values in labels.items()}


class _GatherRows(torch.autograd.Function):
    """all_gather of each rank's rows (padded to ``largest``) whose backward sums the
    gathered rows' gradients over the ranks (one all-reduce, which gloo has; its
    reduce-scatter it has not) and hands each rank the part of its own rows."""

    @staticmethod
    def forward(ctx: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        tensor, largest, rank, size = args
        padded = tensor.new_zeros((largest, *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        parts = [torch.empty_like(padded) for _ in range(size)]
        dist.all_gather(parts, padded.contiguous())
        ctx.rows, ctx.start = len(tensor), rank * largest
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Any) -> tuple[torch.Tensor, None, None, None]:
        total = grad_outputs[0].contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.start : ctx.start + ctx.rows], None, None, None
