"""Rep-MTL, checked against the paper's equations written out literally (explicit C x C
affinity matrices, loops over samples and tasks) on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from polytask.balance import BALANCERS, StepContext
from polytask.balance.rep_mtl import RepMTL, csa_loss, task_saliencies, tsr_loss
from polytask.errors import PolytaskError
from tests.balance.toy import Toy, assert_absent_task_is_ignored, train_two_epochs


def _tsr_by_the_paper(saliency: torch.Tensor) -> torch.Tensor:
    """Eqs. 4-6: S^ = channel mean; P_it = |S^_it| / sum_k |S^_ik|; mean entropy."""
    tasks, positions, batch, _ = saliency.shape
    total, count = 0.0, 0
    for p in range(positions):
        for b in range(batch):
            magnitudes = torch.stack([saliency[t, p, b].mean().abs() for t in range(tasks)])
            if magnitudes.sum() == 0:
                continue
            shares = magnitudes / magnitudes.sum()
            total = total - sum(s * torch.log(s) for s in shares if s > 0)
            count += 1
    return total / count


def _csa_by_the_paper(saliency: torch.Tensor, tau: float) -> torch.Tensor:
    """Eqs. 7-9 with explicit affinity maps M_tb = S_tb S_tb^T and anchors A_b A_b^T."""
    tasks, _, batch, _ = saliency.shape
    per_sample = saliency.permute(0, 2, 3, 1)  # [K, B, C, P]
    anchors = per_sample.mean(dim=-1).sum(dim=0)  # [B, C]
    z_anchor = [F.normalize(torch.outer(a, a).flatten(), dim=0) for a in anchors]
    terms = []
    for b in range(batch):
        denominator = sum(
            torch.exp(torch.dot(z_anchor[b], z_anchor[k]) / tau) for k in range(batch) if k != b
        )
        for t in range(tasks):
            affinity = per_sample[t, b] @ per_sample[t, b].T  # C x C
            z_task = F.normalize(affinity.flatten(), dim=0)
            numerator = torch.exp(torch.dot(z_anchor[b], z_task) / tau)
            terms.append(-torch.log(numerator / denominator))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("shape", [(3, 1, 5, 4), (2, 3, 4, 6)])
def test_regularisers_match_the_paper(shape):
    saliency = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(tsr_loss(saliency), _tsr_by_the_paper(saliency))
    torch.testing.assert_close(csa_loss(saliency, 0.5), _csa_by_the_paper(saliency, 0.5))
    torch.testing.assert_close(csa_loss(saliency, 0.1), _csa_by_the_paper(saliency, 0.1))


def test_tsr_is_zero_for_one_owner_and_log_t_for_equal_shares():
    one_owner = torch.zeros(3, 1, 4, 2)
    one_owner[1] = 1.0
    assert tsr_loss(one_owner).item() == pytest.approx(0.0, abs=1e-9)
    equal = torch.ones(3, 1, 4, 2)
    assert tsr_loss(equal).item() == pytest.approx(math.log(3))


def test_saliency_is_the_loss_gradient_at_the_representation():
    model = Toy(3)
    losses = model.losses()
    saliency = task_saliencies(losses, model.representation)
    for t in range(3):
        (expected,) = torch.autograd.grad(losses[t], model.representation, retain_graph=True)
        torch.testing.assert_close(saliency[t, 0], expected)
    assert saliency.requires_grad  # second order: the regularisers train the network


def test_backward_is_the_gradient_of_the_regularised_objective():
    balancer = RepMTL(3, tsr=0.7, csa=1.3, temperature=0.2)
    model = Toy(3)
    losses = model.losses()
    context = StepContext(
        torch.tensor([True, True, True]), torch.ones(3), 0, representation=model.representation
    )
    weights = balancer.backward(losses, context)
    assert weights.tolist() == [1.0, 1.0, 1.0]
    actual = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    losses = model.losses()
    per_task = [
        torch.autograd.grad(losses[t], model.representation, create_graph=True)[0] for t in range(3)
    ]
    saliency = torch.stack(per_task).unsqueeze(1)
    objective = (
        losses.sum() + 0.7 * _tsr_by_the_paper(saliency) + 1.3 * _csa_by_the_paper(saliency, 0.2)
    )
    expected = torch.autograd.grad(objective, list(model.parameters()))
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_absent_task_is_ignored():
    assert_absent_task_is_ignored(RepMTL(3))


def test_registered_with_its_declared_options():
    # ranges, types and unknown options: tests/balance/test_options.py, with every method
    assert BALANCERS.get("rep_mtl") is RepMTL
    assert RepMTL(2).options.model_dump() == {"tsr": 0.9, "csa": 0.9, "temperature": 0.5}


def test_needs_a_trained_representation():
    model = Toy(2)
    losses = model.losses()
    context = StepContext(torch.tensor([True, True]), torch.ones(2), 0, representation=None)
    with pytest.raises(PolytaskError, match="shared representation"):
        RepMTL(2).backward(losses, context)


def test_training_run(tmp_path, table_csv):
    run = train_two_epochs(tmp_path, table_csv, "rep_mtl", tsr=0.9, csa=0.9)
    assert (run / "summary.json").is_file()


def test_split_rows_give_the_whole_batch_regularisers():
    """Two 'processes' holding halves of a batch: their shares of TSR and CSA, summed and
    averaged as the data-parallel step does (each share times the number of processes, the
    gradients averaged), give the one-batch values (tests/train/test_distributed.py checks
    the gradients under torchrun)."""
    from polytask.balance.rep_mtl import regularisers_over_processes

    torch.manual_seed(5)
    saliency = torch.randn(3, 2, 6, 4, requires_grad=True)
    saliency.data[1, :, 2] = 0.0  # an unlabelled row of task 1
    halves = [saliency[:, :, :4], saliency[:, :, 4:]]  # uneven: 4 and 2 rows
    from polytask.balance.rep_mtl import csa_pieces, tsr_terms

    counts = sum(
        torch.stack(
            [
                tsr_terms(h)[1],
                csa_pieces(h)[2].sum().float(),
                torch.tensor(float(h.shape[2])),
                torch.ones(()),
            ]
        )
        for h in halves
    )
    units = [csa_pieces(h)[0] for h in halves]
    largest = max(len(u) for u in units)
    real = torch.cat([torch.arange(largest) < len(u) for u in units])
    total_tsr = total_csa = 0.0
    for rank, half in enumerate(halves):

        def gathered(unit, rank=rank):
            # the other rank's anchors as constants; this rank's own rows are its tensor
            parts = [u.detach() for u in units]
            parts[rank] = unit
            rows = [torch.cat([p, p.new_zeros(largest - len(p), p.shape[1])]) for p in parts]
            return torch.cat(rows), real, rank * largest

        context = StepContext(
            present=torch.ones(3, dtype=torch.bool),
            static_weights=torch.ones(3),
            step=0,
            sum_over_processes=lambda _mine: counts,
            gather_rows=gathered,
        )
        tsr, csa = regularisers_over_processes(half, 0.3, context)
        total_tsr, total_csa = total_tsr + tsr / 2, total_csa + csa / 2
    torch.testing.assert_close(total_tsr, tsr_loss(saliency))
    torch.testing.assert_close(total_csa, csa_loss(saliency, 0.3))
