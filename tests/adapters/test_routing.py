import pytest
import torch

from polytask.adapters.routing import RowTasks, current, routed
from polytask.errors import PolytaskError

from .helpers import TASKS, mixed_rows


def test_group_then_ungroup_gives_the_rows_back():
    rows = mixed_rows(rows=13)
    x = torch.randn(2, 13, 3, 5)
    assert torch.equal(rows.ungroup(rows.group(x), tokens=3), x)


def test_grouped_product_is_each_row_times_its_tasks_matrix():
    rows = mixed_rows(rows=9)
    x = torch.randn(1, 9, 1, 4)
    weights = torch.randn(TASKS, 1, 4, 6)
    out = rows.ungroup(rows.group(x) @ weights, tokens=1)
    for p, task in enumerate(rows.tasks.tolist()):
        assert torch.allclose(out[0, p, 0], x[0, p, 0] @ weights[task, 0], atol=1e-6)


def test_layout_of_tasks_without_rows():
    rows = RowTasks.of(torch.tensor([2, 2]), 4)
    assert rows.counts == [0, 0, 2, 0]
    assert rows.width == 2
    grouped = rows.group(torch.ones(1, 2, 1, 1))
    assert grouped.shape == (4, 1, 2, 1)
    assert grouped[2].sum() == 2 and grouped.sum() == 2


def test_current_needs_a_pass_and_the_same_rows():
    with pytest.raises(PolytaskError, match="outside its adapter model"):
        current(3)
    with routed(mixed_rows(rows=5)), pytest.raises(PolytaskError, match="saw 3 rows"):
        current(3)
