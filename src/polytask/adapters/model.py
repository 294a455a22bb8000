"""The adapter model: a frozen backbone whose target layers carry per-task adapters.

It is the backbone's :class:`~polytask.model.MultiTaskModel` (same parameter names, so a
trained run's weights load as they are) plus ``adapters`` (one module per target layer) and
``adapter_shared`` (what a method shares across layers). A forward pass turns the batch into
the (row, task) pairs it asks for (:attr:`Features.wanted`; every task when unset), ordered
task by task, and runs the backbone once over all pairs with the routing set
(:mod:`polytask.adapters.routing`); task t's logits are its pairs' outputs of tower t, put back
at their rows (zeros at rows that did not ask for t, whose labels are missing).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from polytask.adapters.base import ADAPTERS, Adapter
from polytask.adapters.layers import Site, targeted
from polytask.adapters.options import ADAPTER_OPTIONS
from polytask.adapters.routing import RowTasks, routed
from polytask.config import AdaptersSpec
from polytask.errors import ConfigError
from polytask.features import Features
from polytask.model import ModelOutput, MultiTaskModel


class AdapterModel(MultiTaskModel):
    """A :class:`MultiTaskModel` with ``spec``'s adapters on its target layers."""

    routes_rows: ClassVar[bool] = True

    def __init__(self, model: MultiTaskModel, spec: AdaptersSpec) -> None:
        super().__init__(model.encoders, model.arch, model.towers, model.task_names, model.heads)
        self.adapter_spec = spec
        method = ADAPTERS.get(spec.method)
        options = ADAPTER_OPTIONS.get(spec.method).model_validate(spec.options)
        self.adapter_shared = nn.ModuleDict()
        self.adapters = nn.ModuleDict()
        self.sites: list[Site] = targeted(self, spec.targets)
        for site in self.sites:
            adapter = method(site.shape, len(self.task_names), options, self.adapter_shared)
            self.adapters[site.key] = adapter
            site.attach(adapter)

    def backbone_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters of the model the adapters sit on (not theirs)."""
        return [
            (name, parameter)
            for name, parameter in self.named_parameters()
            if not name.startswith(("adapters.", "adapter_shared."))
        ]

    def shared_parameters(self) -> list[nn.Parameter]:
        return [
            *super().shared_parameters(),
            *self.adapters.parameters(),
            *self.adapter_shared.parameters(),
        ]

    def forward(self, features: Features) -> ModelOutput:
        num_rows, num_tasks = len(features), len(self.task_names)
        wanted = features.wanted
        if wanted is None:
            wanted = torch.ones(
                num_rows, num_tasks, dtype=torch.bool, device=features.numeric.device
            )
        elif wanted.shape != (num_rows, num_tasks):
            raise ConfigError(
                f"features.wanted has shape {tuple(wanted.shape)}; expected "
                f"[{num_rows}, {num_tasks}] (rows, tasks)"
            )
        tasks, rows = wanted.T.nonzero(as_tuple=True)  # task-major: each task's rows together
        layout = RowTasks.of(tasks, num_tasks)
        with routed(layout):
            inner = super().forward(Features(features.categorical[rows], features.numeric[rows]))
        spans, start = {}, 0
        for task, count in zip(layout.present.tolist(), layout.counts, strict=True):
            spans[task] = (start, count)
            start += count
        logits = []
        for task, computed in enumerate(inner.logits):
            start, count = spans.get(task, (0, 0))
            mine = computed[start : start + count]
            if count != num_rows:  # some rows did not ask for this task
                mine = computed.new_zeros(num_rows, computed.shape[1]).index_copy(
                    0, rows[start : start + count], mine
                )
            logits.append(mine)
        auxiliary = inner.auxiliary_loss
        for extra in layout.auxiliary:
            auxiliary = extra if auxiliary is None else auxiliary + extra
        return ModelOutput(logits=logits, auxiliary_loss=auxiliary)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What training changed: every tensor that is not the backbone's fixed part (the
        adapters, and the towers and gates that train). With the backbone, it is the model."""
        return {
            name: parameter.detach()
            for name, parameter in self.named_parameters()
            if parameter.requires_grad
        }

    def deltas(self, task: int) -> dict[str, torch.Tensor]:
        """Task ``task``'s update of each adapted weight, in that weight's own layout
        (state-dict key -> tensor); refused for a method whose update depends on the input."""
        out: dict[str, torch.Tensor] = {}
        for site in self.sites:
            adapter = self.adapters[site.key]
            assert isinstance(adapter, Adapter)
            delta = adapter.delta(task)
            if delta is None:
                raise ConfigError(
                    f"adapters '{self.adapter_spec.method}' with these options change a "
                    "layer's output by more than a fixed matrix per task, so they cannot be "
                    "folded into the weights; lora, mtl_lora and lora_moe with router: task can"
                )
            out[site.weight] = delta[0].T if site.input_last else delta
        return out

    def folded(self, task: int) -> dict[str, torch.Tensor]:
        """The backbone's state with task ``task``'s adapters folded into its weights: a plain
        :class:`MultiTaskModel`'s state that computes task ``task`` as this model does."""
        with torch.no_grad():
            state = {
                name: value.detach().clone()
                for name, value in self.state_dict().items()
                if not name.startswith(("adapters.", "adapter_shared."))
            }
            for key, delta in self.deltas(task).items():
                state[key] = state[key] + delta
        return state

    def tasks_only(self, keep: list[int]) -> TaskSubset:
        """This model computing the tasks ``keep`` (indices) only: each row runs as those
        tasks, so the others cost nothing."""
        return TaskSubset(self, keep).eval()


class TaskSubset(nn.Module):
    """An adapter model asked for some of its tasks; logits of those tasks, in that order."""

    def __init__(self, model: AdapterModel, keep: list[int]) -> None:
        super().__init__()
        self.model = model
        self.keep = list(keep)
        self.task_names = [model.task_names[t] for t in keep]

    def forward(self, features: Features) -> ModelOutput:
        wanted = torch.zeros(
            len(features),
            len(self.model.task_names),
            dtype=torch.bool,
            device=features.numeric.device,
        )
        wanted[:, self.keep] = True
        output = self.model(features.asking(wanted))
        return ModelOutput(logits=[output.logits[t] for t in self.keep])
