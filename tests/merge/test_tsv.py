"""TSV-M: the merged task components are orthonormal; disjoint subspaces merge exactly."""

from __future__ import annotations

import torch

from polytask.merge.tsv import orthogonalise, task_components, tsv_m, tsv_merge_matrix


def random_vectors(count: int, rows: int, columns: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(rows, columns, generator=generator, dtype=torch.float64) for _ in range(count)
    ]


def test_each_task_keeps_its_top_rank_share_of_singular_triplets():
    vectors = random_vectors(3, 12, 10)
    u, s, v = task_components(vectors)
    assert u.shape == (12, 9) and s.shape == (9,) and v.shape == (10, 9)
    for k, vector in enumerate(vectors):
        expected = torch.linalg.svdvals(vector)[:3]
        assert torch.allclose(s[3 * k : 3 * k + 3], expected)
        # the kept triplets reconstruct the task's best rank-3 approximation
        part = (
            u[:, 3 * k : 3 * k + 3] @ torch.diag(s[3 * k : 3 * k + 3]) @ v[:, 3 * k : 3 * k + 3].T
        )
        residual = torch.linalg.matrix_norm(vector - part, ord=2)
        assert torch.isclose(residual, torch.linalg.svdvals(vector)[3])


def test_merged_task_components_are_orthonormal():
    vectors = random_vectors(4, 16, 12, seed=1)
    u, s, v = task_components(vectors)
    u_perp, v_perp = orthogonalise(u), orthogonalise(v)
    eye = torch.eye(u.shape[1], dtype=torch.float64)
    assert torch.allclose(u_perp.T @ u_perp, eye, atol=1e-10)
    assert torch.allclose(v_perp.T @ v_perp, eye, atol=1e-10)
    # raw components of different tasks overlap; the orthogonalised ones do not
    assert float((u.T @ u - eye).abs().max()) > 0.1
    merged = tsv_merge_matrix(vectors)
    assert torch.allclose(merged, u_perp @ torch.diag(s) @ v_perp.T)
    # the polar factor is the nearest orthonormal matrix: closer to U than another one is
    other = torch.linalg.qr(u).Q
    assert torch.linalg.norm(u - u_perp) <= torch.linalg.norm(u - other) + 1e-12


def test_task_vectors_in_orthogonal_subspaces_merge_to_their_sum():
    generator = torch.Generator().manual_seed(2)
    left = torch.linalg.qr(torch.randn(12, 12, generator=generator, dtype=torch.float64)).Q
    right = torch.linalg.qr(torch.randn(9, 9, generator=generator, dtype=torch.float64)).Q
    vectors = []
    for k in range(3):  # rank 3 each (the share of 9 / 3), disjoint singular directions
        columns = slice(3 * k, 3 * k + 3)
        values = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64) * (k + 1))
        vectors.append(left[:, columns] @ values @ right[:, columns].T)
    assert torch.allclose(tsv_merge_matrix(vectors), sum(vectors), atol=1e-10)


def test_layers_too_small_to_share_and_non_matrices_take_the_mean():
    base = {"w": torch.zeros(2, 5), "bank": torch.zeros(2, 6, 4), "b": torch.zeros(4)}
    generator = torch.Generator().manual_seed(3)
    tuned = [
        {k: torch.randn(v.shape, generator=generator) for k, v in base.items()} for _ in range(3)
    ]
    held = [{k: torch.ones_like(v, dtype=torch.bool) for k, v in base.items()} for _ in tuned]
    merged = tsv_m(base, tuned, held, alpha=1.0)
    mean = {k: sum(t[k] for t in tuned) / 3 for k in base}
    assert torch.allclose(merged["w"], mean["w"])  # rank 2 < 3 tasks
    assert torch.allclose(merged["b"], mean["b"])
    for member in range(2):  # each bank member is its own layer (rank 4: one triplet each)
        expected = tsv_merge_matrix([t["bank"][member] for t in tuned])
        assert torch.allclose(merged["bank"][member], expected, atol=1e-6)
