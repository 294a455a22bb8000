"""Sums of per-row squared gradients from layer hooks against a per-row autograd loop."""

from __future__ import annotations

import torch
from torch import nn

from polytask.merge.per_row import RowSquares
from polytask.nn.experts import ExpertBank


class Tiny(nn.Module):
    """Every covered layer kind: a strided, padded convolution, a linear layer used twice on
    [R, M, in] rows, a bank on a shared input and one on per-expert inputs, and an
    embedding (not covered)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1)
        self.tokens = nn.Linear(3, 4)
        self.shared = ExpertBank(2, 4, [5, 3])
        self.separate = ExpertBank(2, 3, [2], activate_last=False)
        self.embedding = nn.Embedding(4, 2)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv(images))  # [R, 3, 3, 3]
        x = x.flatten(2).transpose(1, 2)  # [R, 9, 3]: nine positions per row
        x = torch.tanh(self.tokens(x)).mean(1) + torch.tanh(self.tokens(x[:, :2])).sum(1)
        h = self.shared(x)  # [E, R, 3]
        out = self.separate(h)  # [E, R, 2]
        return out.transpose(0, 1).flatten(1) + self.embedding(ids).repeat(1, 2)  # [R, 4]


def per_row_squares(model: nn.Module, images, ids, cotangent) -> dict[str, torch.Tensor]:
    """Σ_r g_r², g_r from a forward and a backward pass of row r alone."""
    params = dict(model.named_parameters())
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for row in range(len(images)):
        out = model(images[row : row + 1], ids[row : row + 1])
        grads = torch.autograd.grad((out * cotangent[row : row + 1]).sum(), list(params.values()))
        for key, grad in zip(params, grads, strict=True):
            total[key] += grad**2
    return total


def hooked(model: nn.Module, images, ids, cotangents, names=None) -> RowSquares:
    squares = RowSquares(model, names or {k for k, _ in model.named_parameters()})
    with squares.forward(len(images)):
        out = model(images, ids)
    squares.check([out], torch.Generator().manual_seed(1))
    for cotangent in cotangents:
        squares.add([out], [cotangent])
    return squares


def inputs(rows: int = 6):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(rows, 2, 6, 6, generator=generator)
    ids = torch.randint(4, (rows,), generator=generator)
    cotangents = [torch.randn(rows, 4, generator=generator) for _ in range(3)]
    return images, ids, cotangents


def test_hooks_give_each_covered_parameter_the_sum_of_per_row_squared_gradients():
    torch.manual_seed(0)
    model = Tiny().eval()
    images, ids, cotangents = inputs()
    squares = hooked(model, images, ids, cotangents)
    assert squares.uncovered == {"embedding.weight"}
    assert set(squares.totals) == {k for k, _ in model.named_parameters()} - squares.uncovered
    expected = {k: torch.zeros_like(v) for k, v in squares.totals.items()}
    for cotangent in cotangents:
        for key, value in per_row_squares(model, images, ids, cotangent).items():
            if key in expected:
                expected[key] += value
    for key, value in squares.totals.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-7)


def test_a_use_the_hooks_do_not_see_leaves_the_parameter_uncovered():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(3, 3)
            self.second = nn.Linear(3, 2)

        def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            x = images.flatten(1)[:, :3]
            x = torch.tanh(self.first(x))
            x = x @ self.first.weight.T  # a second use of the weight, through no module
            return self.second(x).repeat(1, 2)

    images, ids, cotangents = inputs()
    squares = hooked(Tied().eval(), images, ids, cotangents)
    assert squares.uncovered == {"first.weight"}
    assert "first.bias" in squares.totals and "second.weight" in squares.totals


def test_an_output_changed_in_place_leaves_its_layer_uncovered():
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(72, 4)

        def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return torch.relu_(self.first(images.flatten(1)))

    images, ids, cotangents = inputs()
    squares = hooked(InPlace().eval(), images, ids, cotangents)
    assert squares.uncovered == {"first.weight", "first.bias"} and not squares.totals


def test_a_bank_reached_by_sparse_dispatch_is_not_covered():
    class Segments(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bank = ExpertBank(2, 72, [4])

        def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return self.bank.forward_segments(images.flatten(1), [3, len(images) - 3])

    images, ids, cotangents = inputs()
    model = Segments().eval()
    squares = hooked(model, images, ids, cotangents)
    assert squares.uncovered == {"bank.weights.0", "bank.biases.0"}
    patched = {"linear", "forward_segments"}
    assert not patched & set(vars(model.bank))  # the class's methods are back after use
