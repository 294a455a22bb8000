"""LwF against its definition: the targets are the old model's outputs on the batch, and the
distillation term is the KL divergence between tempered distributions."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import torch

from polytask.grow.strategies.lwf import LwF, LwFOptions, distillation
from tests.grow.conftest import binary_task, multiclass_task, tiny_model, tiny_rows


def test_targets_are_the_old_models_outputs_and_stay_so_while_training():
    model = tiny_model([3, 1])
    before = copy.deepcopy(model).eval()
    old, new = multiclass_task("t0", 3), binary_task("t1")
    rows = tiny_rows(10, {"t1": torch.ones(10)})
    context = SimpleNamespace(model=model, old_tasks=[old])
    hooks = LwF(LwFOptions(alpha=1.0, temperature=2.0)).begin(context)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # training moves the student, not the teacher
        expected = before(rows.features).logits[0]
    assert torch.equal(hooks.targets(rows.features)[0], expected)
    assert new.name == "t1"


def test_multiclass_distillation_is_the_tempered_kl_divergence():
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.0], [2.0, -1.0, 0.0]])
    value = distillation(multiclass_task("t", 3), student, teacher, 2.0)
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        q = [math.exp(t / 2) for t in t_row]
        p = [math.exp(s / 2) for s in s_row]
        q = [v / sum(q) for v in q]
        p = [v / sum(p) for v in p]
        expected += sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))
    assert abs(float(value) - expected / 2) < 1e-6


def test_binary_distillation_is_the_tempered_bernoulli_kl():
    student, teacher = torch.tensor([[0.3], [-2.0]]), torch.tensor([[1.5], [0.5]])
    value = distillation(binary_task("t"), student, teacher, 2.0)
    expected = 0.0
    for s, t in zip(student.flatten().tolist(), teacher.flatten().tolist(), strict=True):
        q, p = 1 / (1 + math.exp(-t / 2)), 1 / (1 + math.exp(-s / 2))
        expected += q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    assert abs(float(value) - expected / 2) < 1e-6
