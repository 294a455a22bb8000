import torch

from polytask.adapters.base import LayerShape

from .helpers import build, layer_io, mixed_rows


def test_update_is_shared_down_task_transform_and_task_mixture_of_ups():
    shape = LayerShape(5, 4, members=2)
    adapter = build("mtl_lora", shape, rank=3, ups=2, temperature=0.5, alpha=3.0)
    rows = mixed_rows()
    x, y = layer_io(shape, rows.rows)
    out = adapter(x, y, rows)
    for p, t in enumerate(rows.tasks.tolist()):
        for m in range(2):
            weights = torch.softmax(adapter.mixing[t, m] / 0.5, -1)
            up = weights[0] * adapter.ups[m, 0] + weights[1] * adapter.ups[m, 1]
            update = x[0, p, 0] @ adapter.down[m] @ adapter.transform[t, m] @ up
            assert torch.allclose(out[m, p, 0], y[m, p, 0] + 1.0 * update, atol=1e-5)
            folded = y[m, p, 0] + x[0, p, 0] @ adapter.delta(t)[m]
            assert torch.allclose(out[m, p, 0], folded, atol=1e-5)


def test_transforms_start_as_the_identity_and_the_update_at_zero():
    from polytask.adapters.base import ADAPTERS
    from polytask.adapters.options import MTLLoRAOptions

    adapter = ADAPTERS.get("mtl_lora")(
        LayerShape(5, 4), 3, MTLLoRAOptions(rank=2), torch.nn.ModuleDict()
    )
    assert torch.equal(adapter.transform[1, 0], torch.eye(2))
    assert torch.count_nonzero(adapter.delta(1)) == 0
