"""Every figure in a table of docs/benchmarks.md is in the committed JSON the table names.

The convention (stated at the top of docs/benchmarks.md): each table of figures is followed
by a line ``Source: docs/results/NAME.json`` (several files: comma-separated), optionally
``; labels: COLUMN, COLUMN`` naming the columns that hold labels rather than figures (the
first column always does). Every number in every other cell must equal, at the precision
shown, a number stored in one of those files (a percentage may be stored as a fraction). A
table without a source line fails, so a table added later is checked too; a figure that is
not in its JSON fails, naming the table, the cell and the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"
SOURCE = re.compile(r"^Source: (?P<files>[^;]+?)(?:; labels: (?P<labels>.+))?$")
# A figure: digits with optional thousands separators, decimals and exponent; an optional
# sign; a percent sign or an "x" (a ratio) after it.
FIGURE = re.compile(
    r"(?<![\w.])(?P<number>[-+−]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+−]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
    r"(?P<unit>\s?%|x)?(?![\w.])"
)


@dataclass
class Table:
    line: int  # 1-based line of the header row
    header: list[str]
    rows: list[list[str]]
    sources: list[str]
    labels: set[str]


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def tables(text: str) -> list[Table]:
    """Every markdown table of the document with the source line that follows it."""
    lines = text.splitlines()
    found, index = [], 0
    while index < len(lines):
        if not lines[index].startswith("|"):
            index += 1
            continue
        start = index
        while index < len(lines) and lines[index].startswith("|"):
            index += 1
        block = [cells(line) for line in lines[start:index]]
        following = next((line for line in lines[index:] if line.strip()), "")
        source = SOURCE.match(following.strip())
        files = [f.strip() for f in source["files"].split(",")] if source else []
        named = (source["labels"] or "") if source else ""
        labels = {label.strip() for label in named.split(",")}
        found.append(Table(start + 1, block[0], block[2:], files, labels - {""}))
    return found


def numbers(value: object) -> list[float]:
    """Every number stored anywhere in a JSON value (booleans are not numbers)."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [n for item in value.values() for n in numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in numbers(item)]
    return []


def load(path: str) -> list[float]:
    file = ROOT / path
    if file.suffix == ".jsonl":
        lines = file.read_text().splitlines()
        return [n for line in lines if line for n in numbers(json.loads(line))]
    return numbers(json.loads(file.read_text()))


def parse_figure(text: str) -> tuple[float, float]:
    """The value of a figure as written, and half a unit of its last digit."""
    text = text.replace(",", "").replace("−", "-")
    mantissa = text.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(text.lower().split("e")[1]) if "e" in text.lower() else 0
    return float(text), 0.5 * 10.0 ** (exponent - decimals)


def stored(figure: str, unit: str | None, values: list[float]) -> bool:
    value, half = parse_figure(figure)
    scales = (1.0, 100.0) if unit and "%" in unit else (1.0,)
    return any(
        abs(candidate * scale - value) <= half * (1 + 1e-9) + 1e-12
        or (
            abs(abs(candidate * scale) - abs(value)) <= half * (1 + 1e-9) + 1e-12
            and unit is None
            and figure.startswith(("+", "-", "−"))
        )
        for candidate in values
        for scale in scales
    )


def checked_figures(table: Table) -> list[tuple[str, str, str | None]]:
    """(column, figure, unit) for every figure in the table's non-label cells."""
    figures = []
    for row in table.rows:
        for column, cell in zip(table.header[1:], row[1:], strict=False):
            if column in table.labels:
                continue
            for match in FIGURE.finditer(cell):
                figures.append((column, match["number"], match["unit"]))
    return figures


DOC_TABLES = tables(DOC.read_text())


def test_the_document_has_tables_with_sources():
    assert len(DOC_TABLES) >= 5
    assert "Source: docs/results/" in DOC.read_text().split("\n## ", 1)[0]  # the convention


@pytest.mark.parametrize("table", DOC_TABLES, ids=[f"line {t.line}" for t in DOC_TABLES])
def test_every_figure_is_in_the_json_the_table_names(table: Table):
    assert table.sources, f"the table at line {table.line} is followed by no 'Source:' line"
    for source in table.sources:
        assert source.startswith("docs/results/"), source
        assert (ROOT / source).is_file(), f"line {table.line}: {source} is not committed"
    unknown = table.labels - set(table.header)
    assert not unknown, f"line {table.line}: label columns {unknown} are not in the header"
    values = [n for source in table.sources for n in load(source)]
    missing = [
        f"{column}: {figure}{unit or ''}"
        for column, figure, unit in checked_figures(table)
        if not stored(figure, unit, values)
    ]
    assert not missing, f"line {table.line}: not in {', '.join(table.sources)}: {missing}"


# ---------------------------------------------------------------------- the checker itself
def test_the_checker_finds_a_figure_that_is_not_stored(tmp_path):
    table = tables(
        "| a | b |\n|---|---|\n| x | 1.37x / 293,571 |\n\nSource: docs/results/throughput.json\n"
    )[0]
    values = load(table.sources[0])
    verdicts = {figure: stored(figure, unit, values) for _, figure, unit in checked_figures(table)}
    assert verdicts == {"1.37": False, "293,571": True}


def test_precision_is_the_precision_shown():
    assert stored("0.9489", None, [0.94886])
    assert not stored("0.9489", None, [0.94896])
    assert stored("71.7", " %", [0.7172])
    assert stored("-0.535", None, [-0.5352])
    assert stored("6e-5", None, [6.4e-5])
    assert not stored("6e-5", None, [6.6e-5])
