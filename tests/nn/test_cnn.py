"""The LeNet-style image encoder: pixels from numeric columns, the same maths as nn.Sequential."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from polytask.config import parse_spec
from polytask.errors import ConfigError
from polytask.nn.cnn import CNNEncoder
from tests.conftest import base_spec

SHAPE = [2, 16, 20]  # C, H, W
PIXELS = 2 * 16 * 20


def _encoder() -> CNNEncoder:
    torch.manual_seed(0)
    return CNNEncoder(SHAPE, [3, 4], out_dim=5, numeric_width=2 * (PIXELS + 3))


def _inputs(batch: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    # pixels, 3 more numeric features, then the missing flags: only the pixels are read
    return torch.zeros(batch, 2, dtype=torch.int64), torch.randn(batch, 2 * (PIXELS + 3))


def test_shape_and_out_dim():
    encoder = _encoder()
    out = encoder(*_inputs())
    assert out.shape == (6, 5) and encoder.out_dim == 5
    assert (out >= 0).all()


def test_equals_a_hand_built_sequential_with_the_same_weights():
    encoder = _encoder()
    reference = nn.Sequential(
        nn.Conv2d(2, 3, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(3, 4, 5),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 1 * 2, 5),  # H 16 -> 6 -> 1, W 20 -> 8 -> 2
        nn.ReLU(),
    )
    reference[0].load_state_dict(encoder.conv1.state_dict())
    reference[3].load_state_dict(encoder.conv2.state_dict())
    reference[7].load_state_dict(encoder.linear.state_dict())
    categorical, numeric = _inputs()
    images = numeric[:, :PIXELS].reshape(-1, *SHAPE)
    torch.testing.assert_close(encoder(categorical, numeric), reference(images))
    # the flags and the extra features are ignored
    changed = numeric.clone()
    changed[:, PIXELS:] = 7.0
    torch.testing.assert_close(encoder(categorical, changed), reference(images))


def test_too_few_numeric_columns_is_a_config_error():
    with pytest.raises(ConfigError, match=r"needs 640 numeric feature columns .* has 10"):
        CNNEncoder(SHAPE, [3, 4], out_dim=5, numeric_width=20)


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        ({"name": "cnn"}, r"model.encoder: the cnn encoder needs image_shape"),
        ({"name": "cnn", "image_shape": [16, 16]}, r"three positive ints"),
        ({"name": "cnn", "image_shape": [1, 8, 8]}, r"at least 16x16 .* got 8x8"),
        ({"name": "tabular", "image_shape": [1, 16, 16]}, r"image_shape is read only by the cnn"),
        ({"name": "cnn", "image_shape": [1, 16, 16], "chanels": [2, 3]}, r"did you mean"),
        ({"name": "resnet"}, r"model.encoder.name"),
    ],
)
def test_encoder_section_is_validated(encoder, message):
    with pytest.raises(ConfigError, match=message):
        parse_spec(base_spec("unused.csv", model={"encoder": encoder}))
