"""TSV-M, task singular vectors merging (Gargiulo et al., CVPR 2025).

Per layer (each linear map; each member of a fused bank is its own map), every task vector
τ_k = U_k S_k V_k^T keeps its top ⌊r / K⌋ singular triplets (r = min(rows, columns), K tasks):
its low-rank task components. The K components side by side, U = [U_1 .. U_K] and
V = [V_1 .. V_K], interfere where they overlap; TSV-M replaces each by its nearest matrix
with orthonormal columns (the polar factor P Q^T of its SVD P Σ Q^T) and merges
Δ = U⊥ diag(S) V⊥^T. Tensors that are not linear maps (vectors, convolution kernels, tables)
take the mean task vector. θ = θ_0 + α Δ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from polytask.merge.base import MERGERS, MergeInputs, MergeMethod, MethodOptions, StateDict
from polytask.merge.vectors import matrix_slices, mean_over_holders


def task_components(
    matrices: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Each task's top ⌊r / K⌋ singular triplets, side by side: U [m, K k], S [K k],
    V [n, K k]; None when ⌊r / K⌋ is 0 (the layer is too small to give each task a share)."""
    count = len(matrices)
    rank = min(matrices[0].shape)
    share = rank // count
    if share == 0:
        return None
    left, values, right = [], [], []
    for matrix in matrices:
        u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        left.append(u[:, :share])
        values.append(s[:share])
        right.append(vh[:share].T)
    return torch.cat(left, dim=1), torch.cat(values), torch.cat(right, dim=1)


def orthogonalise(matrix: torch.Tensor) -> torch.Tensor:
    """The matrix with orthonormal columns nearest to ``matrix`` (Frobenius): P Q^T from its
    SVD P Σ Q^T."""
    p, _, qh = torch.linalg.svd(matrix, full_matrices=False)
    return p @ qh


def tsv_merge_matrix(matrices: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """Δ = U⊥ diag(S) V⊥^T for one layer's task vectors (None: too small, see above)."""
    components = task_components(matrices)
    if components is None:
        return None
    u, s, v = components
    merged = orthogonalise(u) @ torch.diag(s) @ orthogonalise(v).T
    return merged.to(matrices[0].dtype)


def tsv_m(
    base: StateDict, vectors: Sequence[StateDict], held: Sequence[StateDict], alpha: float
) -> StateDict:
    """θ_0 + α Δ: the TSV merge of every linear map, the mean task vector elsewhere."""
    merged = mean_over_holders(vectors, held)
    for key in base:
        for index, _ in matrix_slices(base[key]):
            delta = tsv_merge_matrix([vector[key][index] for vector in vectors])
            if delta is not None:
                merged[key][index] = delta
    return {key: base[key] + alpha * merged[key] for key in base}


class TsvOptions(MethodOptions):
    alpha: float = Field(1.0, description="α, the coefficient of the merged task vector")


@MERGERS.register("tsv_m")
class TsvM(MergeMethod):
    """TSV-M: per layer, each task's top singular vectors, decorrelated by orthogonalising
    them jointly, merged into one low-rank update."""

    Options = TsvOptions

    def merge(self, inputs: MergeInputs) -> StateDict:
        assert isinstance(self.options, TsvOptions)
        return tsv_m(inputs.base, inputs.vectors(), inputs.held, self.options.alpha)
