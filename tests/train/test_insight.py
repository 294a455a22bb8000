"""Expert utilisation: collapse warnings by design of the architecture, and a figure that
stays readable with many tasks."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from polytask.config import ModelSpec
from polytask.model import build_model
from polytask.train.insight import collapse_warnings, own_experts, plot_utilisation


def test_a_task_leaning_on_its_own_expert_is_not_a_collapse():
    spec = ModelSpec(
        arch="cgc", hidden=[4], tower_hidden=[2], options={"task_experts": 1, "shared_experts": 2}
    )
    model = build_model(spec, [3], 2, [1, 1, 1], ["a", "b", "c"])
    own = own_experts(model)
    assert own == [{0}, {1}, {2}]  # task experts first, then the shared 3 and 4
    utilisation = torch.tensor(
        [
            [0.96, 0.0, 0.0, 0.02, 0.02],  # a: its own expert (by design)
            [0.0, 0.03, 0.0, 0.95, 0.02],  # b: one shared expert (a collapse)
            [0.0, 0.0, 0.4, 0.3, 0.3],
        ]
    )
    found = collapse_warnings(utilisation, ["a", "b", "c"], own)
    assert found == ["task 'b': expert 3 takes 95% of the gate weight"]
    assert len(collapse_warnings(utilisation, ["a", "b", "c"])) == 2  # without the plan


def test_the_figure_of_many_tasks_is_drawn_without_layout_warnings(tmp_path: Path):
    rng = np.random.default_rng(0)
    tasks, experts = 150, 154
    values = rng.random((tasks, experts))
    values /= values.sum(1, keepdims=True)
    names = [f"task_{t}" for t in range(tasks)]
    report = {
        "tasks": names,
        "num_experts": experts,
        "utilisation": {n: values[t].tolist() for t, n in enumerate(names)},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_utilisation(report, tmp_path / "experts.png")
    from PIL import Image

    with Image.open(tmp_path / "experts.png") as image:
        assert max(image.size) <= 16 * 110  # capped, not 0.6 inch per task
