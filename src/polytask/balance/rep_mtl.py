"""Rep-MTL: Wang, Li and Xu, "Rep-MTL: Unleashing the Power of Representation-level Task
Saliency for Multi-Task Learning", ICCV 2025 (arXiv:2507.21049).

Two regularisers on the task saliencies at the shared representation Z, added to the
(equally weighted) task losses:

    S_t = dL_t / dZ                                         task saliency (sec. 3.1, eq. 3)

- Task-specific saliency regulation (TSR, eqs. 4-6): average S_t over the channels at each
  position i, turn the magnitudes into a distribution over tasks,
  ``P_it = |S^_it| / sum_k |S^_ik|``, and penalise its entropy averaged over positions,
  ``L_tsr = mean_i ( -sum_t P_it log P_it )``: positions keep a task that owns them.
- Cross-task saliency alignment (CSA, eqs. 7-9): per sample b, the channel affinity of
  each task's saliency ``M_tb = S_tb S_tb^T`` and an anchor ``A^_b = A_b A_b^T`` from the
  saliency averaged over positions; after L2-normalising both (``z_tb``, ``z_ab``),
  ``L_csa = mean_{b,t} -log( exp(sim(z_ab, z_tb)/tau) / sum_{k != b} exp(sim(z_ab, z_ak)/tau) )``
  with cosine similarity sim: the same sample's task affinities are pulled toward its anchor,
  away from other samples' anchors.

    objective = sum_t w_t L_t + lambda_tsr L_tsr + lambda_csa L_csa            (eq. 10)

S_t is computed with its graph (``create_graph``), so the regularisers' gradients reach the
shared and task parameters through it, as in the paper (a second-order term).

Reading the paper's image-shaped Z [B, C, H, W] onto polytask's representations
[..., B, C] (``StepContext.representation``: the encoder or shared-bottom output [B, C], the
expert outputs [E, B, C]): the leading axes are the positions (the paper's H x W; none for a
[B, C] representation, where each sample is one position), the last axis the channels. The
anchor A_b is the saliency summed over the present tasks and averaged over positions (the
paper's eq. 8 averages over positions; its "shared dynamics across tasks" is read as the sum
over tasks, the scale of which the L2 normalisation removes). The closed forms used for the
similarities (no C x C matrix is formed): ``<A^_b, M_tb> = |S_tb^T A_b|^2``,
``|A^_b| = |A_b|^2``, ``|M_tb| = |S_tb^T S_tb|`` (Frobenius).

Not given by the paper: tau; the default here is 0.5. lambda_tsr = lambda_csa = 0.9 as in the
paper's sensitivity study (it found [0.7, 1.5] safe). The paper also log-transforms the
losses in its benchmarks; that is not part of the method and is not done here.
"""

from __future__ import annotations

from typing import Any

import torch

from polytask.balance.base import BALANCERS, Balancer, Need, StepContext
from polytask.balance.options import RepMTLOptions
from polytask.errors import PolytaskError

EPS = 1e-12


def task_saliencies(losses: torch.Tensor, representation: torch.Tensor) -> torch.Tensor:
    """[K, P, B, C]: ``dL_k / dZ`` for each of the K ``losses``, with the graph kept, the
    representation [..., B, C] viewed as P positions of B samples and C channels."""
    grads = []
    for loss in losses:
        (grad,) = torch.autograd.grad(
            loss, representation, retain_graph=True, create_graph=True, allow_unused=True
        )
        grads.append(torch.zeros_like(representation) if grad is None else grad)
    stacked = torch.stack(grads)
    batch, channels = representation.shape[-2], representation.shape[-1]
    return stacked.reshape(len(grads), -1, batch, channels)


def tsr_loss(saliency: torch.Tensor) -> torch.Tensor:
    """Mean entropy over positions of the task distribution of channel-mean saliency.

    saliency [K, P, B, C]; positions with no saliency from any task are left out."""
    magnitude = saliency.mean(dim=-1).abs()  # [K, P, B]
    total = magnitude.sum(dim=0)  # [P, B]
    live = total > 0
    if not bool(live.any()):
        return saliency.sum() * 0.0
    share = magnitude / total.clamp(min=EPS)
    entropy = -(share * share.clamp(min=EPS).log()).sum(dim=0)  # [P, B]
    return entropy[live].mean()


def csa_loss(saliency: torch.Tensor, temperature: float) -> torch.Tensor:
    """The contrastive alignment of each sample's task affinities with its anchor.

    saliency [K, P, B, C]; pairs (task, sample) with zero saliency (an unlabelled row) and
    samples with a zero anchor are left out; 0 with fewer than two samples."""
    per_sample = saliency.permute(0, 2, 3, 1)  # [K, B, C, P]: S_tb is C x P
    anchor = per_sample.mean(dim=-1).sum(dim=0)  # [B, C]
    anchor_norm2 = anchor.pow(2).sum(dim=-1)  # |A_b|^2 = |A^_b|_F
    projected = torch.einsum("kbcp,bc->kbp", per_sample, anchor)  # S_tb^T A_b
    gram = per_sample.transpose(-1, -2) @ per_sample  # [K, B, P, P] = S_tb^T S_tb
    affinity_norm = gram.flatten(-2).norm(dim=-1)  # |M_tb|_F
    valid = (affinity_norm > 0) & (anchor_norm2 > 0).unsqueeze(0)
    batch = saliency.shape[2]
    if batch < 2 or not bool(valid.any()):
        return saliency.sum() * 0.0
    positive = projected.pow(2).sum(dim=-1) / (
        anchor_norm2.clamp(min=EPS) * affinity_norm.clamp(min=EPS)
    )  # [K, B]
    unit = anchor / anchor_norm2.clamp(min=EPS).sqrt().unsqueeze(-1)
    anchors = (unit @ unit.T).pow(2)  # [B, B]: cos^2 = sim of the normalised A^_b
    others = ~torch.eye(batch, dtype=torch.bool, device=saliency.device)
    logits = (anchors / temperature).masked_fill(~others, float("-inf"))
    denominator = torch.logsumexp(logits, dim=-1)  # [B]
    terms = -positive / temperature + denominator.unsqueeze(0)  # [K, B]
    return terms[valid].mean()


@BALANCERS.register("rep_mtl")
class RepMTL(Balancer):
    """Options (:class:`~polytask.balance.options.RepMTLOptions`): ``tsr`` (lambda_tsr),
    ``csa`` (lambda_csa), ``temperature`` (tau).

    Returns the task weights (the static weights of the present tasks: equal weighting);
    the regularisers are extra terms, not task weights.
    """

    needs = frozenset({Need.REPRESENTATION_GRADS})
    Options = RepMTLOptions
    options: RepMTLOptions

    def __init__(self, num_tasks: int, **options: Any) -> None:
        super().__init__(num_tasks, **options)
        self.tsr = self.options.tsr
        self.csa = self.options.csa
        self.temperature = self.options.temperature
        self.last_terms: dict[str, float] = {}

    def backward(self, losses: torch.Tensor, context: StepContext) -> torch.Tensor:
        weights = context.static_weights.to(losses.dtype) * context.present
        objective = context.objective(weights, losses)
        index = context.present.bool().nonzero().flatten()
        if index.numel() and (self.tsr or self.csa):
            saliency = task_saliencies(losses[index], self._representation(context))
            tsr, csa = tsr_loss(saliency), csa_loss(saliency, self.temperature)
            objective = objective + self.tsr * tsr + self.csa * csa
            self.last_terms = {"tsr": float(tsr.detach()), "csa": float(csa.detach())}
        objective.backward()
        return weights.detach()

    @staticmethod
    def _representation(context: StepContext) -> torch.Tensor:
        representation = context.representation
        if representation is None or not representation.requires_grad:
            raise PolytaskError(
                "rep_mtl regularises the saliency at the shared representation, and this "
                "model has none that depends on trained parameters; choose another "
                "balance.method"
            )
        return representation

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.registry_name,
            "tsr": self.tsr,
            "csa": self.csa,
            "temperature": self.temperature,
            "gradients": "representation (second order)",
        }
