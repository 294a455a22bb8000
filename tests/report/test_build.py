"""The report as a file: self-contained, its numbers the runs' own, Delta-m by definition,
every chart twice (SVG and plotly), and one-line errors."""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from polytask.artifacts import run_dir as rd
from polytask.errors import PolytaskError
from polytask.report import write_report
from polytask.tasks import HIGHER_IS_BETTER
from tests.cli_helpers import assert_user_error, invoke
from tests.report.conftest import report_paths


class Cells(HTMLParser):
    """Every <td> with data- attributes, and every element id."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "td" and "data-value" in attributes:
            self.cells.append(attributes)


@pytest.fixture(scope="module")
def report(inputs, tmp_path_factory):
    paths = report_paths(inputs)
    out = tmp_path_factory.mktemp("report") / "report.html"
    write_report(paths, out, baseline=inputs["first"])
    text = out.read_text()
    parser = Cells()
    parser.feed(text)
    return {"text": text, "cells": parser.cells, "ids": parser.ids, "path": out}


def metric_cells(report, run: str) -> dict[tuple[str, str], float]:
    return {
        (c["data-task"], c["data-metric"]): float(c["data-value"])
        for c in report["cells"]
        if c.get("data-run") == run and "data-task" in c
    }


def test_the_page_needs_no_network(report):
    text = report["text"]
    assert "plotly.js v" in text  # the library itself is inline
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=", text, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?https?:", text)


def test_metric_table_holds_each_runs_test_metrics(report, inputs):
    for name, path in (("run", inputs["first"]), ("pcgrad", inputs["second"])):
        final = rd.load_json(path, rd.FINAL_METRICS)["test"]
        expected = {
            (task, metric): value
            for task, metrics in final.items()
            for metric, value in metrics.items()
            if metric != "loss" and value is not None
        }
        assert metric_cells(report, name) == expected


def test_delta_m_against_the_baseline_is_the_definition(report, inputs):
    """Mean over tasks of the mean signed relative gain over the task's metrics, in percent."""
    ours = rd.load_json(inputs["second"], rd.FINAL_METRICS)["test"]
    theirs = rd.load_json(inputs["first"], rd.FINAL_METRICS)["test"]
    config = rd.load_config(inputs["second"])
    per_task = []
    for task in config.tasks:
        gains = [
            (1 if HIGHER_IS_BETTER[m] else -1)
            * (ours[task.name][m] - theirs[task.name][m])
            / abs(theirs[task.name][m])
            for m in task.metrics
        ]
        per_task.append(np.mean(gains))
    expected = 100 * np.mean(per_task)
    deltas = {
        c["data-run"]: float(c["data-value"])
        for c in report["cells"]
        if c.get("data-metric") == "delta_m"
    }
    assert deltas["pcgrad"] == pytest.approx(expected, rel=1e-9)
    assert deltas["run"] == 0.0


def test_every_section_and_chart(report, inputs):
    expected = {"overview", "specs", "metrics", "pareto", "curves", "weights", "conflicts",
                "experts", "slim", "cascade"}  # fmt: skip
    if inputs["study"] is not None:
        expected.add("study-study")
    assert expected <= report["ids"]
    text = report["text"]
    figures = re.findall(r'<figure class="chart" id="([^"]+)">(.*?)</figure>', text, re.DOTALL)
    data = re.findall(r'class="figure-data" data-target="([^"]+)">(.*?)</script>', text, re.DOTALL)
    assert [f[0] for f in figures] == [d[0] for d in data]
    assert all("<svg" in body for _, body in figures)
    for _, payload in data:
        figure = json.loads(payload)
        assert figure["data"] and figure["layout"]["title"]["text"]
    keys = " ".join(f[0] for f in figures)
    for key in ("curve-click", "curve-loss", "weights-click", "conflicts", "pareto-runs",
                "slim", "cascade"):  # fmt: skip
        assert key in keys


def test_study_trials_are_listed(report, inputs):
    if inputs["study"] is None:
        pytest.skip("no Optuna")
    summary = json.loads((inputs["study"] / "study.json").read_text())
    cells = [c for c in report["cells"] if c.get("data-metric") == "click.auc"]
    assert sorted(float(c["data-value"]) for c in cells) == sorted(
        t["values"]["click.auc"] for t in summary["trials"]
    )


def test_cli_report(inputs, tmp_path):
    out = tmp_path / "r.html"
    result = invoke("report", inputs["first"], "--split", "valid", "-o", out)
    assert result.exit_code == 0, result.output
    assert "opens offline" in result.output and out.is_file()
    assert_user_error(invoke("report", tmp_path / "nothing", "-o", out), "no finished run")
    assert_user_error(
        invoke("report", inputs["first"], "--split", "train", "-o", out), "--split must be"
    )


def test_an_unfinished_study_is_named(tmp_path):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.db").write_bytes(b"")
    with pytest.raises(PolytaskError, match=r"has no study\.json yet"):
        write_report([tmp_path / "study"], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_missing_plotly_is_one_line(monkeypatch, inputs, tmp_path):
    monkeypatch.setitem(sys.modules, "plotly", None)
    with pytest.raises(PolytaskError, match=r"pip install 'polytask\[report\]'"):
        write_report([inputs["first"]], tmp_path / "r.html")
