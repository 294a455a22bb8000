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


def test_tasks_without_rows_take_no_room_in_the_grid():
    rows = RowTasks.of(torch.tensor([1, 3, 3, 3]), 5)
    assert rows.counts == [1, 3] and rows.present.tolist() == [1, 3] and rows.width == 3
    x = torch.arange(4.0).view(1, 4, 1, 1)
    grouped = rows.group(x)
    assert grouped.shape == (2, 1, 3, 1)
    assert grouped[:, 0, :, 0].tolist() == [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]
    table = torch.arange(5.0)
    assert rows.weights(table).tolist() == [1.0, 3.0]
    one = RowTasks.of(torch.tensor([2, 2]), 4)
    assert one.even and one.group(torch.ones(1, 2, 1, 1)).shape == (1, 1, 2, 1)


def test_current_needs_a_pass_and_the_same_rows():
    with pytest.raises(PolytaskError, match="outside its adapter model"):
        current(3)
    with routed(mixed_rows(rows=5)), pytest.raises(PolytaskError, match="saw 3 rows"):
        current(3)
