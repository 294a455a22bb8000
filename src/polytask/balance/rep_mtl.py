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


def tsr_terms(saliency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sum over positions of the entropy of the task distribution of channel-mean
    saliency, and how many positions it sums (those with saliency from some task).

    saliency [K, P, B, C]."""
    magnitude = saliency.mean(dim=-1).abs()  # [K, P, B]
    total = magnitude.sum(dim=0)  # [P, B]
    live = total > 0
    share = magnitude / total.clamp(min=EPS)
    entropy = -(share * share.clamp(min=EPS).log()).sum(dim=0)  # [P, B]
    return entropy[live].sum() + saliency.sum() * 0.0, live.sum().to(saliency.dtype)


def tsr_loss(saliency: torch.Tensor) -> torch.Tensor:
    """Mean entropy over positions of the task distribution of channel-mean saliency.

    saliency [K, P, B, C]; positions with no saliency from any task are left out."""
    total, count = tsr_terms(saliency)
    return total / count if bool(count > 0) else total


def csa_pieces(
    saliency: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample, its unit anchor [B, C]; per (task, sample), the similarity of the task's
    affinity to the sample's anchor [K, B], and whether the pair counts [K, B] (not an
    unlabelled row's zero saliency, not a zero anchor)."""
    per_sample = saliency.permute(0, 2, 3, 1)  # [K, B, C, P]: S_tb is C x P
    anchor = per_sample.mean(dim=-1).sum(dim=0)  # [B, C]
    anchor_norm2 = anchor.pow(2).sum(dim=-1)  # |A_b|^2 = |A^_b|_F
    projected = torch.einsum("kbcp,bc->kbp", per_sample, anchor)  # S_tb^T A_b
    gram = per_sample.transpose(-1, -2) @ per_sample  # [K, B, P, P] = S_tb^T S_tb
    affinity_norm = gram.flatten(-2).norm(dim=-1)  # |M_tb|_F
    valid = (affinity_norm > 0) & (anchor_norm2 > 0).unsqueeze(0)
    positive = projected.pow(2).sum(dim=-1) / (
        anchor_norm2.clamp(min=EPS) * affinity_norm.clamp(min=EPS)
    )  # [K, B]
    unit = anchor / anchor_norm2.clamp(min=EPS).sqrt().unsqueeze(-1)
    return unit, positive, valid


def csa_terms(
    unit: torch.Tensor,
    positive: torch.Tensor,
    valid: torch.Tensor,
    units: torch.Tensor,
    real: torch.Tensor,
    start: int,
    temperature: float,
) -> torch.Tensor:
    """The contrastive terms of the valid (task, sample) pairs, each sample's denominator
    over every other sample of ``units`` [N, C] (the batch's; ``real`` [N] marks padding
    out, this batch's samples start at ``start``)."""
    anchors = (unit @ units.T).pow(2)  # [B, N]: cos^2 = sim of the normalised A^_b
    own = torch.arange(len(unit), device=unit.device) + start
    others = real.unsqueeze(0).repeat(len(unit), 1)
    others[torch.arange(len(unit), device=unit.device), own] = False
    logits = (anchors / temperature).masked_fill(~others, float("-inf"))
    denominator = torch.logsumexp(logits, dim=-1)  # [B]
    terms = -positive / temperature + denominator.unsqueeze(0)  # [K, B]
    return terms[valid]


def csa_loss(saliency: torch.Tensor, temperature: float) -> torch.Tensor:
    """The contrastive alignment of each sample's task affinities with its anchor.

    saliency [K, P, B, C]; pairs (task, sample) with zero saliency (an unlabelled row) and
    samples with a zero anchor are left out; 0 with fewer than two samples."""
    unit, positive, valid = csa_pieces(saliency)
    batch = saliency.shape[2]
    if batch < 2 or not bool(valid.any()):
        return saliency.sum() * 0.0
    real = torch.ones(batch, dtype=torch.bool, device=saliency.device)
    return csa_terms(unit, positive, valid, unit, real, 0, temperature).mean()


def regularisers_over_processes(
    saliency: torch.Tensor, temperature: float, context: StepContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """TSR and CSA over the global batch of a data-parallel step, as this process's share.

    Each process holds its rows' saliencies (``ranks`` times one process's: the loss
    factor, which neither term's normalised quantities see). TSR is a mean over positions:
    this process's sum over the global count, times ``ranks`` (the gradients are averaged
    over the processes). CSA's denominators run over every sample of the global batch: the
    anchors are gathered differentiably, and its mean is taken as TSR's."""
    assert context.sum_over_processes is not None and context.gather_rows is not None
    tsr_sum, tsr_count = tsr_terms(saliency)
    unit, positive, valid = csa_pieces(saliency)
    mine = torch.stack(
        [
            tsr_count.detach(),
            valid.sum().to(tsr_count.dtype),
            torch.tensor(float(saliency.shape[2]), device=saliency.device),
            torch.ones((), device=saliency.device),
        ]
    )
    tsr_total, csa_total, rows, ranks = context.sum_over_processes(mine).tolist()
    tsr = tsr_sum * ranks / tsr_total if tsr_total > 0 else tsr_sum
    csa = saliency.sum() * 0.0
    if rows >= 2 and csa_total > 0:  # the same on every process: all gather, or none
        units, real, start = context.gather_rows(unit)
        terms = csa_terms(unit, positive, valid, units, real, start, temperature)
        csa = terms.sum() * ranks / csa_total
    return tsr, csa


@BALANCERS.register("rep_mtl")
class RepMTL(Balancer):
    """Options (:class:`~polytask.balance.options.RepMTLOptions`): ``tsr`` (lambda_tsr),
    ``csa`` (lambda_csa), ``temperature`` (tau).

    Returns the task weights (the static weights of the present tasks: equal weighting);
    the regularisers are extra terms, not task weights.
    """

    needs = frozenset({Need.REPRESENTATION_GRADS})
    sums_over_rows = True
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
            if context.gather_rows is not None:  # several processes: over the global batch
                tsr, csa = regularisers_over_processes(saliency, self.temperature, context)
            else:
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
