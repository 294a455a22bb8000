"""The tensors a model reads: what the fitted preprocessor makes of table rows.

A neutral module: data preparation produces it; models, training, inference and serving
consume it; it depends on none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Features:
    """Model inputs for N rows. categorical: [N, C] int64 (0 = unknown/missing);
    numeric: [N, 2F] float32 (F standardised values then F missing flags).

    wanted: [N, T] bool, which tasks' outputs each row is asked for (None: every task). A
    model whose work differs per task (adapters on a frozen backbone) runs only the asked
    (row, task) pairs; other models compute every task and ignore it. Training sets it from
    the labels present, so a row labelled for one task of eight costs one pass, not eight.
    """

    categorical: torch.Tensor
    numeric: torch.Tensor
    wanted: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.categorical.shape[0]

    def take(self, rows: torch.Tensor) -> Features:
        wanted = self.wanted[rows] if self.wanted is not None else None
        return Features(self.categorical[rows], self.numeric[rows], wanted)

    def asking(self, wanted: torch.Tensor | None) -> Features:
        """The same rows asked for the tasks ``wanted`` [N, T] marks."""
        return Features(self.categorical, self.numeric, wanted)

    def to(self, device: torch.device, non_blocking: bool = False) -> Features:
        """The same rows on ``device`` (no copy when they are there already)."""
        wanted = (
            self.wanted.to(device, non_blocking=non_blocking) if self.wanted is not None else None
        )
        return Features(
            self.categorical.to(device, non_blocking=non_blocking),
            self.numeric.to(device, non_blocking=non_blocking),
            wanted,
        )

    def pin_memory(self) -> Features:
        """A page-locked copy, which a CUDA device reads asynchronously."""
        wanted = self.wanted.pin_memory() if self.wanted is not None else None
        return Features(self.categorical.pin_memory(), self.numeric.pin_memory(), wanted)
