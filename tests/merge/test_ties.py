"""TIES on hand-worked vectors: trim, elect sign, disjoint mean."""

from __future__ import annotations

import torch

from polytask.merge.ties import disjoint_merge, elect_sign, ties, trim

TAUS = torch.tensor(
    [
        [4.0, -1.0, 0.5, -3.0],
        [-2.0, 3.0, 0.2, -5.0],
        [1.0, -2.0, -6.0, 0.1],
    ]
)
# keep half of each row: the two largest magnitudes
TRIMMED = torch.tensor(
    [
        [4.0, 0.0, 0.0, -3.0],
        [0.0, 3.0, 0.0, -5.0],
        [0.0, -2.0, -6.0, 0.0],
    ]
)


def test_trim_keeps_each_rows_largest_magnitudes():
    assert torch.equal(trim(TAUS, 0.5), TRIMMED)
    assert torch.equal(trim(TAUS, 1.0), TAUS)
    # a quarter of 4 entries: the single largest of each row
    assert torch.equal(
        trim(TAUS, 0.25),
        torch.tensor([[4.0, 0, 0, 0], [0, 0, 0, -5.0], [0, 0, -6.0, 0]]),
    )


def test_sign_election_follows_the_summed_mass_and_breaks_zero_sums_by_majority():
    # sums: 4, 1, -6, -8
    assert torch.equal(elect_sign(TRIMMED), torch.tensor([1.0, 1.0, -1.0, -1.0]))
    # sums 0, -2, -1: the zero sum takes the majority sign (negative)
    tie = torch.tensor([[2.0, -1.0, -1.0], [-2.0, -1.0, 0.0]])
    assert torch.equal(elect_sign(tie), torch.tensor([-1.0, -1.0, -1.0]))


def test_disjoint_mean_averages_only_the_entries_that_agree():
    sign = torch.tensor([1.0, 1.0, -1.0, -1.0])
    # entry 0: 4 alone agrees; entry 1: 3 (not -2); entry 2: -6; entry 3: mean of -3 and -5
    expected = torch.tensor([4.0, 3.0, -6.0, -4.0])
    assert torch.equal(disjoint_merge(TRIMMED, sign, "mean"), expected)
    assert torch.equal(disjoint_merge(TRIMMED, sign, "sum"), torch.tensor([4.0, 3.0, -6.0, -8.0]))
    assert torch.equal(disjoint_merge(TRIMMED, sign, "max"), torch.tensor([4.0, 3.0, -6.0, -5.0]))


def test_ties_trims_over_every_tensor_at_once_and_scales():
    base = {"a": torch.zeros(2), "b": torch.ones(2)}
    vectors = [{"a": TAUS[k, :2].clone(), "b": TAUS[k, 2:].clone()} for k in range(TAUS.shape[0])]
    merged = ties(base, vectors, keep=0.5, scaling=0.5, aggregate="mean")
    assert torch.equal(merged["a"], 0.5 * torch.tensor([4.0, 3.0]))
    assert torch.equal(merged["b"], 1.0 + 0.5 * torch.tensor([-6.0, -4.0]))
