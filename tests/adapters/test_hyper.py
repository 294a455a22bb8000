import torch
from torch import nn

from polytask.adapters.base import ADAPTERS, LayerShape
from polytask.adapters.options import HyperOptions

from .helpers import TASKS, layer_io, mixed_rows


def make(shared, shape, options):
    return ADAPTERS.get("hyper")(shape, TASKS, options, shared)


def test_layers_of_one_width_share_one_generator_and_the_task_embeddings():
    shared = nn.ModuleDict()
    options = HyperOptions(size=2)
    first, second = make(shared, LayerShape(5, 4), options), make(shared, LayerShape(3, 4), options)
    make(shared, LayerShape(4, 6), options)
    assert sorted(shared) == ["hyper_projector", "hyper_tasks", "hyper_width_4", "hyper_width_6"]
    assert first._key == second._key
    assert not any(name.startswith("_shared") for name, _ in first.named_parameters())


def test_generated_adapter_applied_per_row_and_starting_at_the_backbone():
    shared = nn.ModuleDict()
    shape = LayerShape(5, 4)
    adapter = make(shared, shape, HyperOptions(size=2))
    rows = mixed_rows()
    x, y = layer_io(shape, rows.rows)
    assert torch.equal(adapter(x, y, rows), y)  # the up generator starts at zero
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in shared.parameters():
            parameter.normal_(0, 0.3)
    out = adapter(x, y, rows)
    down, down_bias, up, up_bias = adapter.generated()
    for p, t in enumerate(rows.tasks.tolist()):
        h = y[0, p, 0]
        expected = h + torch.relu(h @ down[t, 0] + down_bias[t, 0, 0]) @ up[t, 0] + up_bias[t, 0, 0]
        assert torch.allclose(out[0, p, 0], expected, atol=1e-5)
    assert not torch.allclose(down[0], down[1])  # tasks get different adapters


def test_two_layers_train_the_shared_task_embedding():
    shared = nn.ModuleDict()
    options = HyperOptions(size=2)
    first, second = make(shared, LayerShape(5, 4), options), make(shared, LayerShape(4, 4), options)
    with torch.no_grad():
        shared["hyper_width_4"].up.weight.normal_()
    rows = mixed_rows()
    x, y = layer_io(LayerShape(5, 4), rows.rows)
    out = second(y, first(x, y, rows), rows)
    out.sum().backward()
    assert shared["hyper_tasks"].weight.grad is not None
    assert first.layer.grad is not None and second.layer.grad is not None
