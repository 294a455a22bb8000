"""The aggregates docs/benchmarks.md quotes are the ones the benchmark derives from its raw runs.

A script with a ``summarise(payload)`` function stores its result under ``summary`` in its
JSON (``--summarise FILE`` refreshes it). Recomputing it from the committed raw results must
give the committed summary: a raw result edited, added or dropped without re-summarising
fails here, before a table quotes a stale mean.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
# (script, results file): a script run in several configurations keeps one file for each
# (relations_synthetic: relations_synthetic_<configuration>.json, every one checked).
SUMMARISED = [
    *(
        ("relations_synthetic", path.name)
        for path in sorted((ROOT / "docs" / "results").glob("relations_synthetic*.json"))
    ),
    ("relations_cost", "relations_cost.json"),
    ("qm9_relations", "qm9_relations.json"),
    ("mmoe_synthetic_stream", "mmoe_synthetic_stream.json"),
]


def script(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their _helpers
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same(a: object, b: object) -> bool:
    """Equal as JSON, floats to 1e-12 relative (a JSON round trip is exact, but be safe)."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize(("name", "file"), SUMMARISED)
def test_the_committed_summary_is_derived_from_the_committed_runs(name, file, monkeypatch):
    payload = json.loads((ROOT / "docs" / "results" / file).read_text())
    assert "summary" in payload, f"run: python benchmarks/{name}.py --summarise {file}"
    derived = json.loads(json.dumps(script(name, monkeypatch).summarise(payload)))
    assert same(derived, payload["summary"]), f"{file}: re-run {name}.py --summarise"


def test_a_changed_run_changes_the_summary(monkeypatch):
    payload = json.loads((ROOT / "docs" / "results" / "relations_synthetic.json").read_text())
    summarise = script("relations_synthetic", monkeypatch).summarise
    payload["per_seed"][0]["delta_m_test"]["grouped"] += 5.0
    assert summarise(payload)["delta_m_test"]["grouped"]["mean"] == pytest.approx(
        payload["summary"]["delta_m_test"]["grouped"]["mean"] + 1.0
    )


def test_the_stream_study_wins_agree_with_its_per_model_losses():
    """The win counts come from the curves; the per-model losses (in seed order) are an
    independent record of the same runs' final held-out MSE."""
    payload = json.loads((ROOT / "docs" / "results" / "mmoe_synthetic_stream.json").read_text())
    losses = payload["held_out_mse"]
    for pair, by_correlation in payload["summary"]["wins"].items():
        first, second = pair.split(" < ")
        for correlation, wins in by_correlation.items():
            a, b = losses[first][correlation]["values"], losses[second][correlation]["values"]
            assert wins == sum(x < y for x, y in zip(a, b, strict=True)), (pair, correlation)
    assert payload["summary"]["seeds"] == len(payload["protocol"]["reported_seeds"])


def test_the_relations_cost_medians_agree_with_the_run_s_own():
    """The run stored its median extra time when it ran; the summary derives it again."""
    payload = json.loads((ROOT / "docs" / "results" / "relations_cost.json").read_text())
    for arch, by_variant in payload["results"].items():
        for variant, cell in by_variant.items():
            if "extra_percent" in cell:
                summary = payload["summary"][arch][variant]
                assert summary["extra_percent"] == pytest.approx(cell["extra_percent"])
                assert summary["median_seconds"] == pytest.approx(cell["median_seconds"])
