"""What a report reads: run directories, studies (their trials' runs and ``study.json``) and
cascade folders, as plain data. Missing optional files (experts, slim, cascade, the epoch log of
a slim run) are simply absent; a path that is none of these is one clear error."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from polytask.artifacts import run_dir as rd
from polytask.errors import PolytaskError
from polytask.slim.build import SLIM_REPORT
from polytask.sweep.study import STORAGE_FILE, STUDY_FILE

CASCADE_REPORT = "cascade.json"


@dataclass
class RunData:
    """One finished run directory."""

    name: str
    path: Path
    spec: dict[str, Any]
    summary: dict[str, Any]
    final: dict[str, Any]
    history: list[dict[str, Any]]
    experts: dict[str, Any] | None = None
    slim: dict[str, Any] | None = None
    cascade: dict[str, Any] | None = None
    tracking: dict[str, Any] | None = None
    study: str | None = None
    trial: dict[str, Any] | None = None

    @property
    def tasks(self) -> list[str]:
        return [task["name"] for task in self.spec["tasks"]]

    def primary_metric(self, task: str) -> str | None:
        for spec in self.spec["tasks"]:
            if spec["name"] == task:
                return (spec.get("metrics") or [None])[0]
        return None


@dataclass
class StudyData:
    """A sweep's study: its summary and the runs of its trials that finished as runs."""

    name: str
    path: Path
    summary: dict[str, Any]
    runs: list[RunData] = field(default_factory=list)


@dataclass
class Collection:
    runs: list[RunData] = field(default_factory=list)
    studies: list[StudyData] = field(default_factory=list)
    cascades: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _optional_json(folder: Path, name: str) -> Any:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


def read_run(path: Path, name: str, study: str | None = None, trial: Any = None) -> RunData:
    path = rd.require_complete(path)
    log = path / rd.EPOCH_LOG
    lines = log.read_text().splitlines() if log.is_file() else []  # a slim run has no epochs
    history = [json.loads(line) for line in lines if line.strip()]
    return RunData(
        name=name,
        path=path,
        spec=yaml.safe_load((path / rd.CONFIG).read_text()),
        summary=rd.load_json(path, rd.SUMMARY),
        final=_optional_json(path, rd.FINAL_METRICS) or {},
        history=history,
        experts=_optional_json(path, rd.EXPERTS),
        slim=_optional_json(path, SLIM_REPORT),
        cascade=_optional_json(path, CASCADE_REPORT),
        tracking=_optional_json(path, rd.TRACKING),
        study=study,
        trial=trial,
    )


def read_study(path: Path) -> StudyData:
    summary = json.loads((path / STUDY_FILE).read_text())
    study = StudyData(name=path.name, path=path, summary=summary)
    for trial in summary["trials"]:
        run = path / trial["run"] if trial.get("run") else None
        if run is not None and rd.is_complete(run):
            labels = "/".join(str(value) for value in trial["params"].values())
            study.runs.append(read_run(run, f"{run.name} {labels}", path.name, trial))
    return study


def collect(paths: list[Path]) -> Collection:
    """Read every path: a study folder, a run directory, or a folder (or file) with a
    cascade report. Runs keep the order given; names are made unique."""
    if not paths:
        raise PolytaskError("give at least one run directory or study folder")
    found = Collection()
    for path in paths:
        path = Path(path)
        if (path / STUDY_FILE).is_file():
            study = read_study(path)
            found.studies.append(study)
            found.runs.extend(study.runs)
        elif rd.is_complete(path):
            found.runs.append(read_run(path, path.name))
        elif path.name == CASCADE_REPORT and path.is_file():
            found.cascades.append((path.parent.name, json.loads(path.read_text())))
        elif (path / CASCADE_REPORT).is_file():
            found.cascades.append((path.name, json.loads((path / CASCADE_REPORT).read_text())))
        elif (path / STORAGE_FILE).is_file():
            raise PolytaskError(
                f"{path}: the study has no {STUDY_FILE} yet (its sweep did not finish); "
                "run the sweep again to finish it"
            )
        else:
            rd.require_complete(path)  # says whether it is unfinished or not a run
    if len(found.studies) > 1:  # trial names repeat across studies
        for run in found.runs:
            if run.study is not None:
                run.name = f"{run.study}/{run.name}"
    _unique_names(found.runs)
    for run in found.runs:
        if run.cascade is not None:
            found.cascades.append((run.name, run.cascade))
    return found


def _unique_names(runs: list[RunData]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.name, 0)
        seen[run.name] = count + 1
        if count:
            run.name = f"{run.name} ({count + 1})"
