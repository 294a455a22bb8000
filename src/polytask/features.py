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
    numeric: [N, 2F] float32 (F standardised values then F missing flags)."""

    categorical: torch.Tensor
    numeric: torch.Tensor

    def __len__(self) -> int:
        return self.categorical.shape[0]

    def take(self, rows: torch.Tensor) -> Features:
        return Features(self.categorical[rows], self.numeric[rows])

    def to(self, device: torch.device, non_blocking: bool = False) -> Features:
        """The same rows on ``device`` (no copy when they are there already)."""
        return Features(
            self.categorical.to(device, non_blocking=non_blocking),
            self.numeric.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Features:
        """A page-locked copy, which a CUDA device reads asynchronously."""
        return Features(self.categorical.pin_memory(), self.numeric.pin_memory())
