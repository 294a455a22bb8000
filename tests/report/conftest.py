"""Report inputs built once: two runs of the four-task table (one with gradient diagnostics),
a slim run and a cascade of the first, and a small two-objective study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("plotly", reason="reports need the 'report' extra")


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, trained_run) -> dict[str, Any]:
    import polytask
    from polytask.serve.cascade import run_cascade
    from polytask.slim import slim
    from tests.conftest import base_spec

    folder = tmp_path_factory.mktemp("report_inputs")
    paths = trained_run["paths"]
    spec = base_spec(
        paths["train"],
        data={"valid": str(paths["valid"]), "test": str(paths["test"])},
        model={"arch": "shared_bottom"},
        balance={"method": "pcgrad"},
        train={"epochs": 4},
    )
    second = polytask.train(spec, folder / "pcgrad").run
    slim_run = folder / "slim-click"
    slim(trained_run["run"], ["click"], slim_run, latency_repeats=2)
    cascade = folder / "cascade-click"
    run_cascade(slim_run, trained_run["run"], "click", trained_run["frames"]["valid"], cascade)
    study = None
    if _have("optuna"):
        from polytask.sweep import load_sweep, run_sweep

        sweep = {
            "base": spec | {"balance": {"method": "equal"}},
            "space": {"model.arch": ["mmoe", "omoe"]},
            "objectives": ["click.auc", "spend.rmse"],
            "sampler": "grid",
        }
        (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        study = folder / "study"
        run_sweep(load_sweep(folder / "sweep.yaml"), study)
    return {
        "first": Path(trained_run["run"]),
        "second": second,
        "slim": slim_run,
        "cascade": cascade,
        "study": study,
        "folder": folder,
    }


def report_paths(inputs: dict[str, Any]) -> list[Path]:
    """Everything a report can show: two runs, a slim run, a cascade and (with Optuna) a study."""
    paths = [inputs["first"], inputs["second"], inputs["slim"], inputs["cascade"]]
    return [*paths, inputs["study"]] if inputs["study"] is not None else paths


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
