"""Read the inputs, choose the split, compute Delta-m against a baseline, write the page."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from polytask.artifacts import run_dir as rd
from polytask.artifacts.atomic import write_text
from polytask.data.preprocess import Preprocessor
from polytask.errors import PolytaskError
from polytask.inference.evaluation import delta_m
from polytask.optional import require
from polytask.report.collect import Collection, RunData, collect, read_run
from polytask.report.page import build_page


def choose_split(collection: Collection, split: str | None) -> str:
    """``test`` when every run has it (else ``valid``), or the split asked for."""
    if split is not None:
        if split not in ("valid", "test"):
            raise PolytaskError(f"--split must be 'valid' or 'test' (got '{split}')")
        return split
    runs = collection.runs
    return "test" if runs and all("test" in run.final for run in runs) else "valid"


def delta_against(runs: list[RunData], baseline: RunData, split: str) -> dict[str, float]:
    """Delta-m (polytask.inference.evaluation.delta_m) of every run against the baseline run."""
    reference = baseline.final.get(split)
    if not reference:
        raise PolytaskError(f"the baseline run {baseline.path} has no {split} metrics")
    deltas = {}
    for run in runs:
        results = run.final.get(split)
        if not results:
            continue
        tasks = Preprocessor(rd.load_json(run.path, rd.PREPROCESSOR)).build_tasks(
            rd.load_config(run.path).tasks
        )
        deltas[run.name] = delta_m(results, reference, tasks)
    return deltas


def write_report(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    split: str | None = None,
    baseline: str | Path | None = None,
    title: str | None = None,
) -> Path:
    """Write the report of ``paths`` (runs, studies, cascade folders) to ``out``."""
    require("plotly", "polytask report", "report")
    collection = collect([Path(p) for p in paths])
    chosen = choose_split(collection, split)
    delta = baseline_name = None
    if baseline is not None:
        reference = read_run(Path(baseline), Path(baseline).name)
        delta, baseline_name = delta_against(collection.runs, reference, chosen), reference.name
    names = ", ".join(Path(p).name for p in paths)
    page = build_page(
        collection,
        split=chosen,
        title=title or f"polytask report: {names}",
        delta=delta,
        baseline_name=baseline_name,
    )
    out = Path(out)
    write_text(out, page)
    return out
