"""A LeNet-style image encoder, as in the MultiMNIST experiments of MGDA (Sener & Koltun, 2018).

Images arrive as numeric table columns, one column per pixel: the encoder reads the first
C*H*W standardised numeric values as a [C, H, W] image. The preprocessor's missing-value flags
(the second half of ``numeric``) and the categorical columns are ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from polytask.errors import ConfigError


def _pooled_side(side: int) -> int:
    """Side length after a valid 5x5 convolution then a 2x2 max-pool."""
    return (side - 4) // 2


class CNNEncoder(nn.Module):
    """conv 5x5 -> max-pool 2 -> relu -> conv 5x5 -> max-pool 2 -> relu -> linear -> relu.

    Shapes: categorical [B, C] (unused), numeric [B, N] with N >= 2 * C*H*W -> [B, out_dim].
    """

    def __init__(
        self, image_shape: list[int], channels: list[int], out_dim: int, numeric_width: int
    ) -> None:
        super().__init__()
        in_channels, height, width = image_shape
        self.image_shape = (in_channels, height, width)
        self.pixels = in_channels * height * width
        features = numeric_width // 2  # values, then as many missing flags
        if self.pixels > features:
            raise ConfigError(
                f"model.encoder.image_shape {list(image_shape)} needs {self.pixels} numeric "
                f"feature columns (one per pixel); the table has {features}"
            )
        self.out_dim = out_dim
        first, second = channels
        flat = second * _pooled_side(_pooled_side(height)) * _pooled_side(_pooled_side(width))
        self.conv1 = nn.Conv2d(in_channels, first, kernel_size=5)
        self.conv2 = nn.Conv2d(first, second, kernel_size=5)
        self.pool = nn.MaxPool2d(2)
        self.linear = nn.Linear(flat, out_dim)

    def forward(self, categorical: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        del categorical  # an image encoder reads pixels only
        images = numeric[:, : self.pixels].reshape(-1, *self.image_shape)  # [B, C, H, W]
        x = torch.relu(self.pool(self.conv1(images)))
        x = torch.relu(self.pool(self.conv2(x)))
        return torch.relu(self.linear(x.flatten(1)))

    def extra_repr(self) -> str:
        return f"image_shape={list(self.image_shape)}, out_dim={self.out_dim}"
