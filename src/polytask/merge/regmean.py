"""RegMean, regression mean (Jin et al., ICLR 2023).

For a linear layer with inputs X_k in run k, the weight closest to every run's outputs,
argmin_W Σ_k ||X_k W - X_k W_k||², is W = (Σ_k G_k)^{-1} Σ_k G_k W_k with G_k = X_k^T X_k:
a closed form from the Gram matrices of each layer's inputs (each member of a fused bank is
its own layer). ``alpha`` < 1 shrinks the Grams' off-diagonal entries towards simple
averaging, G̃ = α G + (1 - α) diag(G). A ridge of 1e-6 of the mean diagonal pulls the
solution towards the average weight in directions no run's inputs reach (a unit that is
always zero), where the least-squares problem leaves W free. Every other tensor (biases,
convolutions, embeddings) takes the plain average.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from polytask.merge.average import average
from polytask.merge.base import MERGERS, Gram, MergeInputs, MergeMethod, RowOptions, StateDict


def shrink(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """α G + (1 - α) diag(G) over the last two axes."""
    diagonal = torch.diag_embed(torch.diagonal(gram, dim1=-2, dim2=-1))
    return alpha * gram + (1.0 - alpha) * diagonal


RIDGE = 1e-6


def regmean_matrix(
    weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], alpha: float = 1.0
) -> torch.Tensor:
    """(Σ_k G̃_k + εI)^{-1} (Σ_k G̃_k W_k + ε W̄) for weights [..., in, out] and Grams
    [..., in, in] (W̄ the mean weight, ε the ridge above)."""
    shrunk = [shrink(gram.double(), alpha) for gram in grams]
    total = torch.stack(shrunk).sum(0)
    mean_weight = sum(w.double() for w in weights) / len(weights)
    scale = torch.diagonal(total, dim1=-2, dim2=-1).mean(-1).clamp(min=1e-12)
    ridge = RIDGE * scale[..., None, None] * torch.eye(total.shape[-1], dtype=total.dtype)
    moment = sum(g @ w.double() for g, w in zip(shrunk, weights, strict=True))
    solved = torch.linalg.solve(total + ridge, moment + ridge @ mean_weight)
    return solved.to(weights[0].dtype)


def regmean(
    base: StateDict,
    tuned: Sequence[StateDict],
    held: Sequence[StateDict],
    grams: Sequence[dict[str, Gram]],
    alpha: float,
) -> StateDict:
    """RegMean for every tensor whose Gram every holder has; the average elsewhere."""
    merged = average(base, tuned, held)
    for key in base:
        holding = [k for k, mask in enumerate(held) if bool(mask[key].any())]
        if len(holding) < 2 or any(key not in grams[k] for k in holding):
            continue
        layout = grams[holding[0]][key].input_last
        weights = [tuned[k][key] for k in holding]
        if layout:  # [out, in]: solve for W^T
            weights = [w.transpose(-1, -2) for w in weights]
        solved = regmean_matrix(weights, [grams[k][key].gram for k in holding], alpha)
        merged[key] = solved.transpose(-1, -2) if layout else solved
    return merged


class RegMeanOptions(RowOptions):
    alpha: float = Field(0.95, gt=0.0, le=1.0, description="scale of the Grams' off-diagonal")


@MERGERS.register("regmean")
class RegMean(MergeMethod):
    """RegMean: each linear layer solved in closed form to match every run's outputs on its
    rows, from the Gram matrices of the layer's inputs."""

    Options = RegMeanOptions
    reads = ("grams",)

    def merge(self, inputs: MergeInputs) -> StateDict:
        o = self.options
        assert isinstance(o, RegMeanOptions)
        grams = inputs.require_statistics("regmean").grams(o)
        return regmean(inputs.base, inputs.tuned, inputs.held, grams, o.alpha)
