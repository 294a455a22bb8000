import torch

from polytask.adapters.base import LayerShape

from .helpers import build, layer_io, mixed_rows


def adapter_out(adapter, h, task, m):
    hidden = torch.relu(h @ adapter.down[task, m] + adapter.down_bias[task, m, 0])
    return hidden @ adapter.up[task, m] + adapter.up_bias[task, m, 0]


def test_each_row_gets_its_tasks_bottleneck_on_the_output():
    shape = LayerShape(5, 4, members=2)
    adapter = build("bottleneck", shape, size=3)
    rows = mixed_rows()
    x, y = layer_io(shape, rows.rows)
    out = adapter(x, y, rows)
    for p, t in enumerate(rows.tasks.tolist()):
        for m in range(2):
            assert torch.allclose(
                out[m, p, 0], y[m, p, 0] + adapter_out(adapter, y[m, p, 0], t, m), atol=1e-5
            )
    assert adapter.delta(0) is None


def test_fusion_attends_over_every_tasks_adapter():
    shape = LayerShape(5, 4)
    adapter = build("bottleneck", shape, size=3, compose="fusion")
    rows = mixed_rows()
    x, y = layer_io(shape, rows.rows)
    out = adapter(x, y, rows)
    for p, t in enumerate(rows.tasks.tolist()):
        h = y[0, p, 0]
        outputs = torch.stack([adapter_out(adapter, h, j, 0) for j in range(3)])
        scores = (outputs @ adapter.key[t, 0]) @ (h @ adapter.query[t, 0])
        mixed = torch.softmax(scores, 0) @ (outputs @ adapter.value[t, 0])
        assert torch.allclose(out[0, p, 0], h + mixed, atol=1e-4)


def test_fusion_starts_as_the_mean_of_the_adapters_when_scores_tie():
    shape = LayerShape(5, 4)
    adapter = build("bottleneck", shape, size=3, compose="fusion")
    with torch.no_grad():
        adapter.query.zero_()
        adapter.value.copy_(torch.eye(4).expand_as(adapter.value))
    rows = mixed_rows()
    x, y = layer_io(shape, rows.rows)
    out = adapter(x, y, rows)
    h = y[0, 0, 0]
    mean = torch.stack([adapter_out(adapter, h, j, 0) for j in range(3)]).mean(0)
    assert torch.allclose(out[0, 0, 0], h + mean, atol=1e-5)
