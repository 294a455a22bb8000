import copy
import pickle

import pytest
import torch

from polytask.adapters.model import AdapterModel
from polytask.config import parse_spec
from polytask.data.preprocess import Preprocessor
from polytask.errors import ConfigError
from polytask.model import model_for

from ..conftest import base_spec, make_table


def adapter_model(method: str = "lora", arch: str = "mmoe", **options: object):
    """An adapter model (random adapters: as if trained), its plain twin and a batch."""
    frame = make_table(n=48, seed=5)
    adapters = {"method": method, "options": options}
    spec = parse_spec(base_spec("unused.csv", model={"arch": arch, "adapters": adapters}))
    preprocessor = Preprocessor.fit(frame, spec.data, spec.tasks)
    tasks = preprocessor.build_tasks(spec.tasks)
    torch.manual_seed(0)
    model = model_for(spec.model, preprocessor, tasks)
    with torch.no_grad():
        for parameter in model.adapters.parameters():
            parameter.normal_(0, 0.2)
    plain = model_for(spec.model.model_copy(update={"adapters": None}), preprocessor, tasks)
    return model.eval(), plain.eval(), preprocessor.transform(frame)


@pytest.mark.parametrize("method", ["lora", "mtl_lora", "lora_moe"])
def test_mixed_batch_equals_the_backbone_with_each_tasks_update_folded_in(method):
    model, plain, features = adapter_model(method)
    assert isinstance(model, AdapterModel)
    generator = torch.Generator().manual_seed(1)
    wanted = torch.rand(len(features), 4, generator=generator) < 0.5
    out = model(features.asking(wanted)).logits
    for task in range(4):
        plain.load_state_dict(model.folded(task))
        reference = plain(features).logits[task]
        rows = wanted[:, task]
        assert torch.allclose(out[task][rows], reference[rows], atol=1e-5)
        assert torch.count_nonzero(out[task][~rows]) == 0  # not asked: not computed


def test_every_task_by_default_and_a_task_subset_equals_it():
    model, _, features = adapter_model("bottleneck")
    full = model(features).logits
    part = model.tasks_only([1, 3])(features).logits
    assert torch.allclose(part[0], full[1], atol=1e-6) and torch.allclose(
        part[1], full[3], atol=1e-6
    )


def test_rows_asking_for_one_task_run_once():
    model, _, features = adapter_model("lora")
    calls = []
    hook = model.arch.register_forward_hook(
        lambda module, inputs, output: calls.append(inputs[0].shape[0])
    )
    wanted = torch.zeros(len(features), 4, dtype=torch.bool)
    wanted[torch.arange(len(features)), torch.arange(len(features)) % 4] = True
    model(features.asking(wanted))
    hook.remove()
    assert calls == [len(features)]


def test_wanted_of_the_wrong_shape_is_refused():
    model, _, features = adapter_model("lora")
    with pytest.raises(ConfigError, match="expected"):
        model(features.asking(torch.ones(len(features), 3, dtype=torch.bool)))


def test_deep_copies_and_pickles_keep_their_own_adapters():
    model, _, features = adapter_model("hyper")
    before = model(features).logits[0].detach()
    twin = copy.deepcopy(model)
    unpickled = pickle.loads(pickle.dumps(model))
    with torch.no_grad():
        for parameter in model.adapter_shared.parameters():
            parameter.add_(1.0)
    assert not torch.allclose(model(features).logits[0], before)
    assert torch.allclose(twin(features).logits[0], before)
    assert torch.allclose(unpickled(features).logits[0], before)


def test_nonlinear_adapters_do_not_fold():
    model, _, _ = adapter_model("bottleneck")
    with pytest.raises(ConfigError, match="cannot be folded"):
        model.folded(0)
