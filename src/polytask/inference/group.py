"""A group model: several runs, each serving some tasks, loaded as one predictor.

``polytask group`` trains one run per chosen group of tasks and writes ``group.json`` (the
manifest: which run serves which task) beside them. :class:`GroupPredictor` reads it and
offers the interface of :class:`~polytask.inference.predictor.Predictor` (``predict``,
``evaluate``, ``tasks``, ``preprocessor``, ``serving_model``), so ``polytask predict``,
``evaluate``, ``info`` and ``serve`` take the folder as one model. Every member run was
trained on the same table with the same input columns, so one preprocessing pass feeds them
all; each member computes its outputs once per call and each task takes its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from polytask.artifacts import run_dir as rd
from polytask.data.preprocess import Preprocessor
from polytask.errors import PolytaskError
from polytask.features import Features
from polytask.inference.predictor import Predictor
from polytask.model import ModelOutput

MANIFEST = "group.json"
FORMAT = "polytask-group"
INPUT_STATE = ("categorical", "numeric", "numeric_stats", "vocabularies")


def is_group(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


class RoutedModel(nn.Module):
    """Runs each member once and returns, per task, the logits of the member serving it.

    routes: per task (in order), (member index, that task's output index in the member)."""

    def __init__(self, members: list[nn.Module], routes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.routes = list(routes)

    def forward(self, features: Features) -> ModelOutput:
        needed = sorted({member for member, _ in self.routes})
        outputs = {member: self.members[member](features).logits for member in needed}
        return ModelOutput([outputs[member][index] for member, index in self.routes])


class GroupPredictor(Predictor):
    """The runs of a group study, one model to its users (see the module docstring)."""

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        members: list[Predictor],
        routes: list[tuple[int, int]],
    ) -> None:
        self.run = folder
        self.manifest = manifest
        self.spec = rd.load_config(folder)
        self.members = members
        self.preprocessor = merged_preprocessor(members)
        self.model = RoutedModel([m.model for m in members], routes).eval()
        self.serving_model = RoutedModel([m.serving_model for m in members], routes)
        self.tasks = self.preprocessor.build_tasks(self.spec.tasks)
        self._subsets = {}

    @classmethod
    def load(cls, run: str | Path, encoder_factory: Any = None) -> GroupPredictor:
        if encoder_factory is not None:
            raise PolytaskError("a group model loads without an encoder_factory")
        folder = Path(run).resolve()
        manifest = rd.load_json(folder, MANIFEST)
        if manifest.get("format") != FORMAT:
            raise PolytaskError(f"{folder / MANIFEST} is not a polytask group manifest")
        spec = rd.load_config(folder)
        paths: list[str] = []
        for task in spec.tasks:
            path = manifest["routes"].get(task.name)
            if path is None:
                raise PolytaskError(f"{folder / MANIFEST} names no run for task '{task.name}'")
            if path not in paths:
                paths.append(path)
        members = [Predictor.load(folder / path) for path in paths]
        routes = []
        for task in spec.tasks:
            member = paths.index(manifest["routes"][task.name])
            names = members[member].task_names
            if task.name not in names:
                raise PolytaskError(
                    f"run {paths[member]} does not predict task '{task.name}' "
                    f"(its tasks: {', '.join(names)})"
                )
            routes.append((member, names.index(task.name)))
        return cls(folder, manifest, members, routes)

    def summary(self) -> dict[str, Any]:
        return rd.load_json(self.run, rd.SUMMARY)

    def _subset_models(self, keep: list[int]) -> tuple[nn.Module, nn.Module]:
        """Only the member runs that serve the kept tasks run (each member whole)."""
        assert isinstance(self.model, RoutedModel)
        routes = [self.model.routes[t] for t in keep]
        return (
            RoutedModel([m.model for m in self.members], routes).eval(),
            RoutedModel([m.serving_model for m in self.members], routes),
        )

    def __repr__(self) -> str:
        runs = [str(m.run.relative_to(self.run)) for m in self.members]
        return f"GroupPredictor(run={str(self.run)!r}, members={runs}, tasks={self.task_names})"


def merged_preprocessor(members: list[Predictor]) -> Preprocessor:
    """One preprocessor for all members: their input handling (which must be identical) and
    the fitted facts of every task."""
    first = members[0].preprocessor.state
    tasks: dict[str, Any] = {}
    for member in members:
        state = member.preprocessor.state
        for key in INPUT_STATE:
            if state[key] != first[key]:
                raise PolytaskError(
                    f"runs {members[0].run.name} and {member.run.name} read their inputs "
                    f"differently ({key}); a group model needs the same input columns"
                )
        tasks.update(state["tasks"])
    return Preprocessor({**{key: first[key] for key in INPUT_STATE}, "tasks": tasks})
