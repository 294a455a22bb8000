"""What a spec will cost, said before training starts: parameters and work per epoch.

With many tasks, per-task parts (towers, task experts, gates) multiply; a user should see
that before waiting for the first epoch. The work is estimated, not measured (measuring
would take a training step, and so change the run): a dense parameter is used once per row
in the forward pass (one multiply-add, 2 FLOPs) and twice in the backward pass, so an epoch
costs about ``6 x dense parameters x rows`` FLOPs. Embedding tables are looked up, not
multiplied, and are left out of the work. Top-k routed experts run on some rows only, so
the estimate is an upper bound for them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Above either, the line is also a warning.
LARGE_PARAMETERS = 50_000_000
SLOW_EPOCH_FLOP = 5e12  # minutes per epoch on a few CPU cores


@dataclass
class Estimate:
    parameters: int
    embedding_parameters: int
    epoch_flop: float

    @property
    def large(self) -> bool:
        return self.parameters > LARGE_PARAMETERS or self.epoch_flop > SLOW_EPOCH_FLOP

    def line(self, tasks: int, rows: int) -> str:
        return (
            f"model: {self.parameters:,} parameters ({self.embedding_parameters:,} in embedding "
            f"tables) for {tasks} task{'s' if tasks != 1 else ''}; about "
            f"{self.epoch_flop / 1e9:,.1f} GFLOP per epoch of {rows:,} rows"
        )


def estimate(model: nn.Module, rows: int) -> Estimate:
    """Parameters (trainable) and the estimated FLOPs of one training epoch."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    embedding = sum(
        module.weight.numel()
        for module in model.modules()
        if isinstance(module, nn.Embedding) and module.weight.requires_grad
    )
    return Estimate(trainable, embedding, 6.0 * (trainable - embedding) * rows)
