"""Long-format tables: the pivot equals the hand-made wide table; bad long tables are named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polytask.config import parse_spec
from polytask.data.long import to_wide
from polytask.errors import DataError, PolytaskWarning
from polytask.train.prepare import prepare

LONG = {"format": "long", "entity": "id", "task_column": "task", "label_column": "y"}


def _data(**extra):
    return parse_spec(
        {
            "data": {"train": "x.csv", **LONG, **extra},
            "tasks": [
                {"name": "math", "kind": "regression", "target": "math"},
                {"name": "pass", "kind": "binary", "target": "passed"},
            ],
        }
    ).data


def _long_and_wide(seed: int = 0, entities: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A wide table made by hand, and the long table holding the same facts (shuffled, with
    some (entity, task) pairs absent)."""
    rng = np.random.default_rng(seed)
    ids = [f"s{i}" for i in range(entities)]
    wide = pd.DataFrame(
        {
            "id": ids,
            "age": rng.integers(10, 18, size=entities).astype(float),
            "school": rng.choice(["a", "b", "c"], size=entities),
            "math": rng.normal(50, 10, size=entities),
            "passed": rng.integers(0, 2, size=entities).astype(float),
        }
    )
    rows = []
    for record in wide.to_dict("records"):
        for task in ("math", "passed"):
            if rng.random() < 0.8:
                rows.append(
                    {
                        "id": record["id"],
                        "age": record["age"],
                        "school": record["school"],
                        "task": task,
                        "y": record[task],
                    }
                )
            else:
                wide.loc[wide["id"] == record["id"], task] = np.nan
    long = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    # entities with no row at all are not in the long table
    present = wide["id"].isin(long["id"])
    return long, wide[present].reset_index(drop=True)


def test_pivot_equals_the_hand_made_wide_table():
    long, wide = _long_and_wide()
    pivoted = to_wide(long, _data(), ["math", "passed"], "data file t.csv")
    ordered = pivoted.set_index("id").loc[wide["id"]].reset_index()
    pd.testing.assert_frame_equal(ordered[wide.columns], wide, check_dtype=False)
    assert pivoted.index.name == "id" and pivoted["id"].is_unique


def test_an_input_given_on_one_row_is_the_entitys():
    long = pd.DataFrame(
        {"id": [1, 1], "task": ["math", "passed"], "y": [3.0, 1.0], "age": [np.nan, 12.0]}
    )
    pivoted = to_wide(long, _data(), ["math", "passed"], "f")
    assert pivoted["age"].tolist() == [12.0]


def test_a_mixed_label_column_gives_numeric_labels_per_task():
    long = pd.DataFrame(
        {"id": [1, 1, 2], "task": ["math", "grade", "math"], "y": ["3.5", "B", "4"]}
    )
    pivoted = to_wide(long, _data(), ["math", "grade"], "f")
    assert pivoted["math"].dtype == np.float64
    assert pivoted["grade"].tolist()[0] == "B"


def test_training_on_a_long_file_equals_training_on_the_wide_one(tmp_path: Path):
    long, wide = _long_and_wide(entities=60)
    long.to_csv(tmp_path / "long.csv", index=False)
    wide.to_csv(tmp_path / "wide.csv", index=False)
    tasks = [
        {"name": "math", "kind": "regression", "target": "math"},
        {"name": "pass", "kind": "binary", "target": "passed"},
    ]
    split = {"valid": 0.0, "test": 0.0, "seed": 0}
    from_long = prepare(
        parse_spec(
            {"data": {"train": str(tmp_path / "long.csv"), **LONG, "split": split}, "tasks": tasks}
        )
    )
    from_wide = prepare(
        parse_spec(
            {
                "data": {"train": str(tmp_path / "wide.csv"), "drop": ["id"], "split": split},
                "tasks": tasks,
            }
        )
    )
    assert from_long.preprocessor.input_columns == ["school", "age"]
    assert from_long.preprocessor.input_columns == from_wide.preprocessor.input_columns
    # the same entities in another order: compare as sets of rows
    for name in ("math", "pass"):
        a = from_long.splits["train"].labels[name].numpy()
        b = from_wide.splits["train"].labels[name].numpy()
        np.testing.assert_allclose(np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)]))
        assert np.isnan(a).sum() == np.isnan(b).sum()


def test_two_labels_for_one_entity_and_task_name_both_rows():
    long = pd.DataFrame({"id": [1, 2, 1], "task": ["math"] * 3, "y": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError, match=r"f, rows 1 and 3: entity 1 has two labels for task"):
        to_wide(long, _data(), ["math"], "f")


def test_an_input_that_differs_within_an_entity_is_named():
    long = pd.DataFrame(
        {"id": [1, 1], "task": ["math", "passed"], "y": [1.0, 0.0], "age": [12, 13]}
    )
    with pytest.raises(DataError, match=r"column 'age' holds 12 and 13 for entity 1"):
        to_wide(long, _data(), ["math", "passed"], "f")


def test_missing_columns_values_and_targets_are_named():
    long = pd.DataFrame({"id": [1, None], "task": ["math", "math"], "y": [1.0, 2.0]})
    with pytest.raises(DataError, match=r"f, row 2: data.entity column 'id' is empty"):
        to_wide(long, _data(), ["math"], "f")
    with pytest.raises(DataError, match=r"data.label_column column 'y' is not in the table"):
        to_wide(long.rename(columns={"y": "label"}), _data(), ["math"], "f")
    long = pd.DataFrame({"id": [1, 2], "task": ["math", "maths"], "y": [1.0, 2.0]})
    with pytest.raises(DataError, match=r"no row has 'passed' in data.task_column 'task'"):
        to_wide(long, _data(), ["math", "passed"], "f")
    with pytest.warns(PolytaskWarning, match="left out: maths"):
        pivoted = to_wide(long, _data(), ["math"], "f")
    assert "maths" not in pivoted.columns


def test_a_bad_label_names_the_entity(tmp_path: Path):
    long, _ = _long_and_wide()
    long.loc[long["task"] == "passed", "y"] = long.loc[long["task"] == "passed", "y"].fillna(0)
    row = long.index[long["task"] == "passed"][0]
    long.loc[row, "y"] = 7
    long.to_csv(tmp_path / "long.csv", index=False)
    spec = parse_spec(
        {
            "data": {"train": str(tmp_path / "long.csv"), **LONG},
            "tasks": [{"name": "pass", "kind": "binary", "target": "passed"}],
        }
    )
    with pytest.raises(DataError, match=rf"holds 7 at id '{long.loc[row, 'id']}'"):
        prepare(spec)


def test_long_keys_are_checked_in_the_spec():
    with pytest.raises(Exception, match="format long needs task_column, label_column"):
        parse_spec(
            {
                "data": {"train": "x", "format": "long", "entity": "id"},
                "tasks": [{"name": "a", "kind": "binary", "target": "a"}],
            }
        )
    with pytest.raises(Exception, match="entity is read only with format: long"):
        parse_spec(
            {
                "data": {"train": "x", "entity": "id"},
                "tasks": [{"name": "a", "kind": "binary", "target": "a"}],
            }
        )
