import pytest
import torch

from polytask.adapters.layers import sites, targeted
from polytask.config import parse_spec
from polytask.errors import ConfigError
from polytask.model import build_model

from ..conftest import base_spec


def model_of(arch: str, **model: object):
    spec = parse_spec(base_spec("unused.csv", model={"arch": arch, **model}))
    return build_model(spec.model, [3, 4], 8, [1, 3, 1, 2], ["a", "b", "c", "d"])


def test_expert_banks_and_linear_modules_are_sites():
    cnn = {"encoder": {"name": "cnn", "image_shape": [1, 16, 16], "channels": [2, 3], "out_dim": 5}}
    names = {s.name: s for s in sites(model_of_cnn(cnn))}
    assert "encoders.0.linear" in names and names["encoders.0.linear"].input_last
    mmoe = {s.name: s for s in sites(model_of("mmoe", hidden=[6, 4], num_experts=3))}
    assert list(mmoe) == ["arch.levels.0.experts.0", "arch.levels.0.experts.1"]
    assert mmoe["arch.levels.0.experts.1"].shape.members == 3
    assert mmoe["arch.levels.0.experts.1"].weight == "arch.levels.0.experts.weights.1"


def model_of_cnn(model: dict):
    spec = parse_spec(base_spec("unused.csv", model={"arch": "shared_bottom", **model}))
    return build_model(spec.model, [], 2 * 256, [1, 3, 1, 2], ["a", "b", "c", "d"])


def test_an_unmatched_target_lists_the_layers():
    with pytest.raises(ConfigError, match=r"matches no linear layer.*arch\.levels\.0\.experts\.0"):
        targeted(model_of("mmoe"), ["towers.*"])


def test_sparse_dispatch_refuses_adapters():
    adapters = {"method": "lora", "targets": ["arch.*"]}
    model = model_of("task_moe", adapters=adapters)
    model.train()
    from polytask.features import Features

    features = Features(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 8))
    with pytest.raises(ConfigError, match="sparse dispatch"):
        model(features)
