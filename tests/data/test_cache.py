"""The tensor cache: a hit gives exactly the tensors encoding gives, is keyed by content and
settings, is bounded, written atomically, and can be turned off."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from polytask.config import parse_spec
from polytask.data import cache
from polytask.errors import PolytaskWarning
from polytask.train import prepare as prepare_module
from polytask.train.prepare import Prepared, prepare
from tests.conftest import base_spec, make_table


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache on, in a folder of its own."""
    monkeypatch.setenv("POLYTASK_TENSOR_CACHE", "on")
    monkeypatch.setenv("POLYTASK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tensors"


def write_tables(folder: Path) -> dict[str, Any]:
    """Train and valid CSV files with categoricals, numerics, missing values, a weight column
    and, in valid, categories unseen in training; the spec that reads them."""
    folder.mkdir(parents=True, exist_ok=True)
    train = make_table(n=200, seed=1)
    train["weight"] = np.linspace(0.5, 2.0, len(train))
    train.loc[::7, "color"] = None  # missing categories
    train.loc[::5, "x2"] = np.nan  # missing numbers
    valid = make_table(n=60, seed=2)
    valid["weight"] = 1.0
    valid.loc[::3, "city"] = "lima"  # unseen in training
    valid.loc[::4, "color"] = "violet"
    train.to_csv(folder / "train.csv", index=False)
    valid.to_csv(folder / "valid.csv", index=False)
    return base_spec(
        folder / "train.csv",
        data={"valid": str(folder / "valid.csv"), "weight": "weight"},
    )


def assert_same(first: Prepared, second: Prepared) -> None:
    assert first.preprocessor.state == second.preprocessor.state
    assert [t.name for t in first.tasks] == [t.name for t in second.tasks]
    assert list(first.splits) == list(second.splits)
    for name, split in first.splits.items():
        other = second.splits[name]
        assert torch.equal(split.features.categorical, other.features.categorical)
        assert torch.equal(split.features.numeric, other.features.numeric)
        assert split.labels.keys() == other.labels.keys()
        for task, labels in split.labels.items():
            assert torch.equal(labels.isnan(), other.labels[task].isnan())
            assert torch.equal(labels.nan_to_num(-7.0), other.labels[task].nan_to_num(-7.0))
        assert split.weights.keys() == other.weights.keys()
        for task, weights in split.weights.items():
            assert torch.equal(weights, other.weights[task])


def test_a_hit_gives_the_tensors_encoding_gives(folder: Path, tmp_path: Path, monkeypatch):
    spec = parse_spec(write_tables(tmp_path / "data"))
    monkeypatch.setenv("POLYTASK_TENSOR_CACHE", "off")
    encoded = prepare(spec)
    monkeypatch.setenv("POLYTASK_TENSOR_CACHE", "on")
    first = prepare(spec)  # a miss: encodes and writes the entry
    assert len(list(folder.glob("*.safetensors"))) == 1

    def no_reading(*_: Any) -> None:
        raise AssertionError("a cache hit must not read the files")

    monkeypatch.setattr(prepare_module, "load_run_splits", no_reading)
    second = prepare(spec)  # a hit
    assert_same(encoded, first)
    assert_same(encoded, second)
    # unseen and missing categories are bucket 0 in the cached valid rows too
    city = second.preprocessor.categorical.index("city")
    assert (second.splits["valid"].features.categorical[::3, city] == 0).all()
    assert set(second.splits["train"].weights) == {"click", "segment", "spend", "tags"}


def test_another_content_or_setting_is_another_entry(folder: Path, tmp_path: Path):
    raw = write_tables(tmp_path / "data")
    spec = parse_spec(raw)
    key = cache.cache_key(spec.data, spec.tasks, image=False, preprocessor_state=None, version="1")
    assert key is not None
    same = cache.cache_key(spec.data, spec.tasks, image=False, preprocessor_state=None, version="1")
    assert same == key

    def key_of(raw_spec: dict[str, Any], **options: Any) -> str | None:
        parsed = parse_spec(raw_spec)
        arguments = {"image": False, "preprocessor_state": None, "version": "1", **options}
        return cache.cache_key(parsed.data, parsed.tasks, **arguments)

    assert key_of(raw, version="2") != key
    assert key_of(raw, preprocessor_state={"categorical": []}) != key
    assert key_of(raw, image=True) != key
    capped = {**raw, "data": {**raw["data"], "max_categories": 2}}
    assert key_of(capped) != key
    fewer_tasks = {**raw, "tasks": raw["tasks"][:2]}
    assert key_of(fewer_tasks) != key
    # the same bytes elsewhere are the same entry; other bytes are not
    moved = tmp_path / "moved.csv"
    moved.write_bytes(Path(raw["data"]["train"]).read_bytes())
    assert key_of({**raw, "data": {**raw["data"], "train": str(moved)}}) == key
    frame = pd.read_csv(moved)
    frame.loc[0, "x1"] = 123.0
    frame.to_csv(moved, index=False)
    assert key_of({**raw, "data": {**raw["data"], "train": str(moved)}}) != key


def test_a_changed_file_is_encoded_again(folder: Path, tmp_path: Path):
    raw = write_tables(tmp_path / "data")
    before = prepare(parse_spec(raw))
    train = Path(raw["data"]["train"])
    frame = pd.read_csv(train)
    frame["x1"] = frame["x1"] * 10
    frame.to_csv(train, index=False)
    after = prepare(parse_spec(raw))
    assert len(list(folder.glob("*.safetensors"))) == 2
    assert (
        after.preprocessor.state["numeric_stats"]["x1"]
        != before.preprocessor.state["numeric_stats"]["x1"]
    )


@pytest.mark.parametrize("how", ["spec", "environment"])
def test_the_cache_can_be_turned_off(folder: Path, tmp_path: Path, monkeypatch, how: str):
    raw = write_tables(tmp_path / "data")
    if how == "spec":
        raw["data"]["cache"] = False
    else:
        monkeypatch.setenv("POLYTASK_TENSOR_CACHE", "off")
    prepare(parse_spec(raw))
    assert not folder.exists() or not list(folder.iterdir())


def test_a_generated_dataset_is_not_cached(folder: Path):
    spec = parse_spec(
        {
            "data": {"dataset": "mmoe_synthetic", "dataset_options": {"rows": 200}},
            "tasks": [
                {"name": "a", "kind": "regression", "target": "y1"},
                {"name": "b", "kind": "regression", "target": "y2"},
            ],
        }
    )
    assert cache.source_files(spec.data) is None
    assert (
        cache.cache_key(spec.data, spec.tasks, image=False, preprocessor_state=None, version="1")
        is None
    )


def test_an_unreadable_entry_is_deleted_and_encoded_again(folder: Path, tmp_path: Path):
    spec = parse_spec(write_tables(tmp_path / "data"))
    first = prepare(spec)
    (entry,) = folder.glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    second = prepare(spec)
    assert_same(first, second)
    assert len(entry.read_bytes()) > 100  # written again, whole


def test_a_failed_write_leaves_no_entry_and_no_temporary_file(
    folder: Path, tmp_path: Path, monkeypatch
):
    import safetensors.torch

    def half_written(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    prepare(parse_spec(write_tables(tmp_path / "data")))
    assert list(folder.iterdir()) == []


def test_the_least_recently_used_entries_go_first(tmp_path: Path):
    names = {letter: f"{letter * 64}.safetensors" for letter in "abc"}  # named by a key
    for age, letter in enumerate("cba"):  # a is the oldest
        path = tmp_path / names[letter]
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 - age * 10, 1000 - age * 10))
    cache.evict(tmp_path, limit=250)
    assert sorted(p.name for p in tmp_path.iterdir()) == [names["b"], names["c"]]
    cache.evict(tmp_path, limit=10)  # the newest entry stays, even alone over the bound
    assert [p.name for p in tmp_path.iterdir()] == [names["c"]]


def test_a_hit_marks_the_entry_used_and_the_bound_is_applied_on_write(
    folder: Path, tmp_path: Path, monkeypatch
):
    spec = parse_spec(write_tables(tmp_path / "data"))
    prepare(spec)
    (entry,) = folder.glob("*.safetensors")
    os.utime(entry, (1000, 1000))
    prepare(spec)  # a hit
    assert entry.stat().st_mtime > 1000
    monkeypatch.setenv("POLYTASK_TENSOR_CACHE_MB", "0")  # every older entry goes
    other = write_tables(tmp_path / "other")
    other["data"]["max_categories"] = 3
    prepare(parse_spec(other))
    remaining = list(folder.glob("*.safetensors"))
    assert len(remaining) == 1 and remaining[0] != entry


def test_the_bound_deletes_only_entries_the_cache_wrote(folder: Path, tmp_path: Path, monkeypatch):
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / "model.safetensors"  # a user's file that happens to sit there
    mine.write_bytes(b"not ours")
    os.utime(mine, (1000, 1000))
    monkeypatch.setenv("POLYTASK_TENSOR_CACHE_MB", "0")
    prepare(parse_spec(write_tables(tmp_path / "data")))
    assert mine.read_bytes() == b"not ours"


def test_warnings_of_the_first_encoding_are_issued_again_on_a_hit(folder: Path, tmp_path: Path):
    raw = write_tables(tmp_path / "data")
    raw["data"]["max_categories"] = 1  # warns: city has three values
    spec = parse_spec(raw)
    for _ in range(2):  # a miss, then a hit
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prepare(spec)
        messages = [str(w.message) for w in caught if issubclass(w.category, PolytaskWarning)]
        assert any("data.max_categories" in m for m in messages)
    assert len(list(folder.glob("*.safetensors"))) == 1


def test_a_hit_holds_its_tensors_in_memory_not_mapped_from_the_file(folder: Path, tmp_path: Path):
    spec = parse_spec(write_tables(tmp_path / "data"))
    first = prepare(spec)
    second = prepare(spec)  # a hit
    (entry,) = folder.glob("*.safetensors")
    with entry.open("r+b") as handle:  # a mapped tensor would now fault (SIGBUS) when read
        handle.truncate(16)
    assert_same(first, second)
