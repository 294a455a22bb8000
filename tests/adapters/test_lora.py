import torch

from polytask.adapters.base import LayerShape

from .helpers import build, layer_io, mixed_rows


def test_each_row_gets_its_own_tasks_low_rank_update():
    shape = LayerShape(5, 4, members=2)
    adapter = build("lora", shape, rank=3, alpha=6.0)
    rows = mixed_rows()
    x, y = layer_io(shape, rows.rows, tokens=2)
    out = adapter(x, y, rows)
    for p, t in enumerate(rows.tasks.tolist()):
        for m in range(2):
            expected = y[m, p] + 2.0 * x[0, p] @ adapter.down[t, m] @ adapter.up[t, m]
            assert torch.allclose(out[m, p], expected, atol=1e-5)


def test_starts_as_the_backbone():
    from polytask.adapters.base import ADAPTERS
    from polytask.adapters.options import LoRAOptions

    shape = LayerShape(5, 4)
    adapter = ADAPTERS.get("lora")(shape, 3, LoRAOptions(), torch.nn.ModuleDict())
    rows = mixed_rows()
    x, y = layer_io(shape, rows.rows)
    assert torch.equal(adapter(x, y, rows), y)


def test_delta_is_the_update_a_row_receives():
    shape = LayerShape(5, 4)
    adapter = build("lora", shape, rank=2, alpha=2.0)
    rows = mixed_rows()
    x, y = layer_io(shape, rows.rows)
    out = adapter(x, y, rows)
    for p, t in enumerate(rows.tasks.tolist()):
        assert torch.allclose(
            out[0, p, 0], y[0, p, 0] + x[0, p, 0] @ adapter.delta(t)[0], atol=1e-5
        )
