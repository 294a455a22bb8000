"""The report in a real headless Chromium: it renders without console errors or network
requests, every chart becomes an interactive plot, the numbers shown are the runs', it reads
without JavaScript, and a screenshot is saved.

Needs Playwright (the `dev` extra) and a Chromium (`apt-get install chromium`; CI's .ci/run
installs it where it can); skipped, saying which is missing, only when no browser can be had."""

from __future__ import annotations

import os

import pytest

from polytask.artifacts import run_dir as rd
from polytask.report import write_report
from polytask.report.browser import find_chromium, open_report, screenshot
from tests.report.conftest import report_paths

pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the dev extra)")
if find_chromium() is None:
    pytest.skip(
        "no Chromium: apt-get install chromium, or set POLYTASK_CHROMIUM", allow_module_level=True
    )


@pytest.fixture(scope="module")
def page_file(inputs, tmp_path_factory):
    paths = report_paths(inputs)
    out = tmp_path_factory.mktemp("browser") / "report.html"
    return write_report(paths, out, baseline=inputs["first"])


def test_renders_interactive_charts_without_errors_and_shows_the_runs_numbers(page_file, inputs):
    with open_report(page_file) as (page, log):
        charts = page.locator("figure.chart").count()
        assert charts >= 8
        assert page.locator("figure.chart .live.js-plotly-plot").count() == charts
        assert page.locator("figure.chart .static:visible").count() == 0
        assert page.locator("figure.chart .live .main-svg").count() >= charts
        shown = {}
        for cell in page.locator("#metrics-test td[data-task]").all():
            key = (cell.get_attribute("data-run"), cell.get_attribute("data-task"),
                   cell.get_attribute("data-metric"))  # fmt: skip
            shown[key] = cell.inner_text()
    assert log.problems == []
    assert log.requests == []
    for name, path in (("run", inputs["first"]), ("pcgrad", inputs["second"])):
        final = rd.load_json(path, rd.FINAL_METRICS)["test"]
        for task, metrics in final.items():
            for metric, value in metrics.items():
                if metric != "loss" and value is not None:
                    assert shown[(name, task, metric)] == f"{value:.4f}"


def test_readable_without_javascript(page_file, inputs):
    with open_report(page_file, javascript=False) as (page, log):
        charts = page.locator("figure.chart").count()
        assert page.locator("figure.chart .static svg:visible").count() == charts
        assert page.locator("figure.chart .live:visible").count() == 0
        assert page.locator("#metrics-test").is_visible()
        text = page.locator("#metrics-test").inner_text()
    final = rd.load_json(inputs["first"], rd.FINAL_METRICS)["test"]
    assert f"{final['click']['auc']:.4f}" in text
    assert log.requests == []


def test_screenshot(page_file, tmp_path):
    png = tmp_path / "report.png"
    log = screenshot(page_file, png)
    assert log.problems == []
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert width == 1400 and height > 2000  # the full page, not just the first screen
    keep = os.environ.get("POLYTASK_SCREENSHOT_DIR")
    if keep:  # CI can keep the picture as an artifact
        os.makedirs(keep, exist_ok=True)
        png.replace(os.path.join(keep, "report.png"))
