"""The fitted preprocessor: vocabularies, standardisation, missing values and label checks."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from polytask.config import DataSpec, TaskSpec, parse_spec
from polytask.data.preprocess import Preprocessor
from polytask.errors import DataError, PolytaskError, PolytaskWarning
from tests.conftest import base_spec, make_table


def winsorised(values: pd.Series) -> tuple[float, float]:
    """Mean and std of the present values clipped to their 0.5 % / 99.5 % order statistics,
    as the module docstring defines the robust fit (numpy's own quantile methods)."""
    x = values.dropna().to_numpy(dtype=float)
    clipped = np.clip(
        x, np.quantile(x, 0.005, method="higher"), np.quantile(x, 0.995, method="lower")
    )
    return float(clipped.mean()), float(clipped.std())


def fit(frame: pd.DataFrame, **data) -> tuple[Preprocessor, list]:
    spec = parse_spec(base_spec("unused.csv", data=data))
    preprocessor = Preprocessor.fit(frame, spec.data, spec.tasks)
    return preprocessor, preprocessor.build_tasks(spec.tasks)


def small_spec_parts(tasks: list[dict], **data) -> tuple[DataSpec, list[TaskSpec]]:
    spec = parse_spec(
        {"data": {"train": "unused.csv", **data}, "tasks": tasks, "model": {"arch": "mmoe"}}
    )
    return spec.data, spec.tasks


# ---------------------------------------------------------------------- column roles
def test_column_roles_are_inferred_and_targets_excluded(table):
    preprocessor, _ = fit(table)
    assert preprocessor.categorical == ["color", "city"]
    assert preprocessor.numeric == ["x1", "x2", "count"]
    assert preprocessor.numeric_width == 6
    for target in ["clicked", "segment", "spend", "tag_a", "tag_b"]:
        assert target not in preprocessor.input_columns


def test_declared_roles_and_drop_are_respected(table):
    preprocessor, _ = fit(table, categorical=["count"], drop=["x2"])
    assert preprocessor.categorical == ["count", "color", "city"]
    assert preprocessor.numeric == ["x1"]
    # an integer column declared categorical gets one bucket per value, plus unknown
    assert preprocessor.cardinalities[0] == table["count"].nunique() + 1


def test_bool_column_is_numeric():
    frame = pd.DataFrame({"flag": [True, False, True, True], "y": [0, 1, 0, 1]})
    data, tasks = small_spec_parts([{"name": "y", "kind": "binary", "target": "y"}])
    preprocessor = Preprocessor.fit(frame, data, tasks)
    assert preprocessor.numeric == ["flag"]


def test_declared_column_that_is_missing_is_reported(table):
    with pytest.raises(
        DataError, match=r"'colour' named in data.categorical.*did you mean 'color'"
    ):
        fit(table, categorical=["colour"])
    with pytest.raises(DataError, match=r"data\.drop"):
        fit(table, drop=["nope"])


def test_a_target_cannot_be_declared_a_feature(table):
    with pytest.raises(DataError, match=r"data\.numeric names target column 'spend'"):
        fit(table, numeric=["x1", "spend"])


def test_no_feature_columns_left(table):
    with pytest.raises(DataError, match="no feature columns"):
        fit(table, drop=["color", "city", "x1", "x2", "count"])


# ---------------------------------------------------------------------- categorical
def test_unseen_and_missing_categories_map_to_zero(table):
    preprocessor, _ = fit(table)
    raw = pd.DataFrame(
        {
            "color": ["red", "purple", "", None, " red "],
            "city": ["rome", "rome", "oslo", "lima", np.nan],
            "x1": 0.0,
            "x2": 0.0,
            "count": 1,
        }
    )
    codes = preprocessor.transform(raw).categorical
    assert codes.dtype == torch.int64
    color = codes[:, 0].tolist()
    assert color[0] > 0
    assert color[1] == 0  # unseen
    assert color[2] == 0 and color[3] == 0  # empty and missing
    assert color[4] == color[0]  # surrounding spaces do not make a new category
    city = codes[:, 1].tolist()
    assert city[0] == city[1] > 0 and city[2] > 0 and city[2] != city[0]
    assert city[3] == 0 and city[4] == 0


def test_known_categories_get_distinct_nonzero_codes(table):
    preprocessor, _ = fit(table)
    codes = preprocessor.transform(table).categorical[:, 0]
    by_value = {}
    for value, code in zip(table["color"], codes.tolist(), strict=True):
        by_value.setdefault(value, set()).add(code)
    assert all(len(c) == 1 for c in by_value.values())
    flat = [next(iter(c)) for c in by_value.values()]
    assert 0 not in flat and len(set(flat)) == len(flat) == 4
    assert preprocessor.cardinalities == [5, 4]
    assert max(codes.tolist()) < preprocessor.cardinalities[0]


def test_rare_categories_below_min_frequency_are_unknown():
    frame = pd.DataFrame(
        {"c": ["a"] * 5 + ["b"] * 3 + ["z"], "x": np.arange(9.0), "y": [0, 1] * 4 + [1]}
    )
    data, tasks = small_spec_parts([{"name": "y", "kind": "binary", "target": "y"}])
    data.min_frequency = 2
    preprocessor = Preprocessor.fit(frame, data, tasks)
    codes = preprocessor.transform(frame).categorical[:, 0].tolist()
    assert codes[-1] == 0  # 'z' seen once
    assert codes[0] > 0 and codes[5] > 0 and codes[0] != codes[5]
    assert preprocessor.cardinalities == [3]


def test_a_huge_vocabulary_is_capped_with_a_frequency_floor_and_a_warning():
    """An ID-like column (a million levels in the report) no longer grows the embedding table
    without a word: at most data.max_categories values, each seen at least twice."""
    ids = [f"id{i}" for i in range(50)] + ["common"] * 30 + ["rare"] * 2 + ["pair"] * 2
    frame = pd.DataFrame({"c": ids, "x": np.arange(84.0), "y": [0, 1] * 42})
    data, tasks = small_spec_parts([{"name": "y", "kind": "binary", "target": "y"}])
    data.max_categories = 10
    with pytest.warns(PolytaskWarning, match=r"column 'c' has 53 distinct values; kept the 3"):
        preprocessor = Preprocessor.fit(frame, data, tasks)
    assert preprocessor.state["vocabularies"]["c"] == ["common", "pair", "rare"]
    data.max_categories = 60  # under the cap: every value, as before, and no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(Preprocessor.fit(frame, data, tasks).state["vocabularies"]["c"]) == 53


def test_the_default_vocabulary_cap_is_stated():
    data, _ = small_spec_parts([{"name": "y", "kind": "binary", "target": "y"}])
    assert data.max_categories == 10_000


def test_image_pixels_are_scaled_as_one_block_by_default():
    """With the cnn encoder (image=True), data.scaling auto shares one mean and std over all
    pixel values: relative brightness survives, near-constant border pixels do not blow up."""
    rng = np.random.default_rng(0)
    pixels = rng.random((50, 4)) * np.array([0.0, 0.01, 0.5, 1.0])  # a dark border pixel
    frame = pd.DataFrame(pixels, columns=["p0", "p1", "p2", "p3"]).assign(y=[0, 1] * 25)
    data, tasks = small_spec_parts([{"name": "y", "kind": "binary", "target": "y"}])
    stats = Preprocessor.fit(frame, data, tasks, image=True).state["numeric_stats"]
    block = winsorised(pd.Series(pixels.ravel()))
    for column in ("p0", "p1", "p2", "p3"):
        assert stats[column] == pytest.approx(list(block))
    per_column = Preprocessor.fit(frame, data, tasks).state["numeric_stats"]  # tabular: auto
    assert per_column["p1"][1] < 0.01 < per_column["p3"][1]  # standard, per column


# ---------------------------------------------------------------------- numeric
def test_numeric_columns_are_standardised_on_training_rows():
    frame = make_table(n=200)
    frame.loc[[3, 10, 50], "x2"] = np.nan
    preprocessor, _ = fit(frame)
    numeric = preprocessor.transform(frame).numeric.double()
    width = len(preprocessor.numeric)
    j = preprocessor.numeric.index("x2")
    present = ~np.isnan(frame["x2"].to_numpy())
    values = numeric[present, j]
    mean, std = winsorised(frame["x2"])
    assert values.mean().item() == pytest.approx(0.0, abs=0.02)  # winsorised: near, not at
    assert values.std(unbiased=False).item() == pytest.approx(1.0, abs=0.03)
    expected = (frame["x2"][present] - mean) / std
    np.testing.assert_allclose(values.numpy(), expected.to_numpy(), rtol=1e-5, atol=1e-5)
    flags = numeric[:, width + j]
    assert flags[~present].tolist() == [1.0, 1.0, 1.0]
    assert flags[present].sum().item() == 0.0


def test_missing_and_absent_numerics_get_flag_one_and_value_zero(table):
    preprocessor, _ = fit(table)
    raw = pd.DataFrame({"color": ["red", "red"], "x1": [np.nan, 1.5], "count": [None, 3]})
    numeric = preprocessor.transform(raw).numeric
    width = len(preprocessor.numeric)
    x1, x2, count = (preprocessor.numeric.index(c) for c in ("x1", "x2", "count"))
    assert numeric[0, x1].item() == 0.0 and numeric[0, width + x1].item() == 1.0
    assert numeric[1, x1].item() != 0.0 and numeric[1, width + x1].item() == 0.0
    assert numeric[:, x2].tolist() == [0.0, 0.0]  # the column is absent
    assert numeric[:, width + x2].tolist() == [1.0, 1.0]
    assert numeric[0, width + count].item() == 1.0 and numeric[1, width + count].item() == 0.0
    # absent categorical column -> unknown bucket
    assert preprocessor.transform(raw).categorical[:, 1].tolist() == [0, 0]


@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e300, -1e300])
def test_infinite_or_huge_values_at_predict_time_are_refused_naming_row_and_column(table, value):
    """Never a NaN answer: a value the model cannot read is one error naming where it is."""
    preprocessor, _ = fit(table)
    raw = table.head(3).copy()
    raw.loc[raw.index[1], "x1"] = value
    with pytest.raises(DataError, match=r"column 'x1', row 2: .* is out of range"):
        preprocessor.transform(raw)


def test_an_extreme_training_value_cannot_blow_up_the_scaler(table):
    """Winsorised fit: one extreme (but not absurd) value moves the scaler as little as the
    second-largest value would; without winsorising the std would grow ~60-fold."""
    extreme = table.copy()
    extreme.loc[5, "x2"] = 1e4
    capped = table.copy()
    capped.loc[5, "x2"] = table["x2"].drop(index=5).max()  # the value it is clipped to
    got = fit(extreme)[0].state["numeric_stats"]["x2"]
    assert got == pytest.approx(list(winsorised(capped["x2"])), rel=1e-9)
    assert got[1] < 2 * table["x2"].std(ddof=0)


@pytest.mark.parametrize("column", ["x1", "spend"])
def test_an_absurd_training_value_is_refused_naming_row_and_column(table, column):
    """1e300 in a numeric input (or a regression target) used to publish a null standard
    deviation, after which every prediction crashed; now the fit refuses it."""
    table.loc[7, column] = 1e300
    with pytest.raises(DataError, match=rf"column '{column}', row 8: 1e\+300 is out of range"):
        fit(table)


def test_a_saved_null_scale_is_refused_on_load(table):
    """Runs written by the old code with a null std load with a clear message."""
    preprocessor, _ = fit(table)
    state = json.loads(json.dumps(preprocessor.state))
    state["numeric_stats"]["x1"] = [0.5, None]
    with pytest.raises(PolytaskError, match=r"column 'x1' has no usable scale"):
        Preprocessor(state)


def test_declared_numeric_with_a_bad_value_names_the_row(table):
    table["x1"] = table["x1"].astype(object)
    table.loc[17, "x1"] = "n/a?"
    with pytest.raises(DataError, match=r"column 'x1', row 18: 'n/a\?' is not a number"):
        fit(table, numeric=["x1"])


def test_inferred_numeric_like_column_with_one_bad_cell_names_the_row(table):
    table["x1"] = table["x1"].round(3).astype(str)
    table.loc[41, "x1"] = "oops"
    with pytest.raises(DataError, match=r"column 'x1', row 42: 'oops' is not a number"):
        fit(table)


def test_a_mostly_text_column_is_categorical(table):
    table["code"] = ["A1", "B2", "7"] * (len(table) // 3)
    preprocessor, _ = fit(table)
    assert "code" in preprocessor.categorical


def test_bad_numeric_value_at_prediction_time_names_the_row(table):
    preprocessor, _ = fit(table)
    raw = table.head(3).copy()
    raw["x2"] = ["1.5", "2", "abc"]
    with pytest.raises(DataError, match=r"column 'x2', row 3: 'abc'"):
        preprocessor.transform(raw)


# ---------------------------------------------------------------------- labels
def test_labels_are_encoded_with_nan_where_missing(table):
    preprocessor, tasks = fit(table)
    labels = preprocessor.encode_labels(table, tasks)
    assert set(labels) == {"click", "segment", "spend", "tags"}
    for name, column in [("click", "clicked"), ("spend", "spend")]:
        np.testing.assert_array_equal(np.isnan(labels[name].numpy()), table[column].isna())
    np.testing.assert_array_equal(
        labels["click"].numpy()[table["clicked"].notna()], table["clicked"].dropna()
    )
    assert labels["tags"].shape == (len(table), 2)
    np.testing.assert_array_equal(
        np.isnan(labels["tags"].numpy()), table[["tag_a", "tag_b"]].isna()
    )


def test_regression_labels_are_standardised_with_training_statistics(table):
    preprocessor, tasks = fit(table)
    spend = next(t for t in tasks if t.name == "spend")
    present = table["spend"].dropna()
    mean, std = winsorised(table["spend"])
    assert spend.target_mean == pytest.approx(mean)
    assert spend.target_std == pytest.approx(std)
    encoded = preprocessor.encode_labels(table, tasks)["spend"].numpy()
    decoded = spend.decode_labels(encoded.astype(np.float64))
    np.testing.assert_allclose(decoded[table["spend"].notna()], present, rtol=1e-5)


def test_multiclass_classes_are_sorted_and_indexed(table):
    preprocessor, tasks = fit(table)
    segment = next(t for t in tasks if t.name == "segment")
    assert segment.classes == ["high", "low", "mid"]
    assert segment.out_dim == 3
    encoded = preprocessor.encode_labels(table, tasks)["segment"].numpy()
    for value, code in zip(table["segment"], encoded, strict=True):
        if pd.isna(value):
            assert np.isnan(code)
        else:
            assert segment.classes[int(code)] == value


def test_integer_multiclass_labels():
    frame = pd.DataFrame({"x": np.arange(6.0), "y": [3, 1, 3, 7, 1, np.nan]})
    data, tasks = small_spec_parts([{"name": "y", "kind": "multiclass", "target": "y"}])
    preprocessor = Preprocessor.fit(frame, data, tasks)
    (task,) = preprocessor.build_tasks(tasks)
    assert task.classes == [1, 3, 7]
    encoded = preprocessor.encode_labels(frame, [task])["y"].numpy()
    np.testing.assert_array_equal(encoded[:5], [1, 0, 1, 2, 0])
    assert np.isnan(encoded[5])


def test_binary_labels_accept_true_false_text():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": ["True", "false", "", "1"]})
    data, tasks = small_spec_parts([{"name": "y", "kind": "binary", "target": "y"}])
    preprocessor = Preprocessor.fit(frame, data, tasks)
    encoded = preprocessor.encode_labels(frame, preprocessor.build_tasks(tasks))["y"].numpy()
    np.testing.assert_array_equal(encoded[[0, 1, 3]], [1.0, 0.0, 1.0])
    assert np.isnan(encoded[2])


def test_binary_label_outside_zero_one_names_the_row(table):
    table.loc[9, "clicked"] = 3
    preprocessor, tasks = fit(table)
    with pytest.raises(DataError) as info:
        preprocessor.encode_labels(table, tasks)
    message = str(info.value)
    assert "task 'click'" in message and "'clicked'" in message
    assert "holds 3 at row 10" in message and "0 or 1" in message


def test_multilabel_label_outside_zero_one_names_column_and_row(table):
    table.loc[4, "tag_b"] = -1
    preprocessor, tasks = fit(table)
    with pytest.raises(DataError, match=r"column 'tag_b' holds -1 at row 5"):
        preprocessor.encode_labels(table, tasks)


def test_unseen_multiclass_label_names_the_row(table):
    preprocessor, tasks = fit(table)
    other = table.head(6).copy()
    other.loc[other.index[4], "segment"] = "huge"
    with pytest.raises(DataError, match=r"class 'huge' at row 5, unseen in training"):
        preprocessor.encode_labels(other, tasks)


def test_fractional_or_single_class_multiclass_labels_are_rejected():
    data, tasks = small_spec_parts([{"name": "y", "kind": "multiclass", "target": "y"}])
    with pytest.raises(DataError, match="fractional"):
        Preprocessor.fit(pd.DataFrame({"x": [1.0, 2.0], "y": [0.5, 1.0]}), data, tasks)
    with pytest.raises(DataError, match="single class"):
        Preprocessor.fit(pd.DataFrame({"x": [1.0, 2.0], "y": ["a", "a"]}), data, tasks)


def test_missing_target_column_is_reported(table):
    with pytest.raises(
        DataError, match=r"task 'click': target column 'clicked' is not in the table"
    ):
        fit(table.drop(columns=["clicked"]))
    preprocessor, tasks = fit(table)
    with pytest.raises(DataError, match=r"target column 'tag_a' is not in the table"):
        preprocessor.encode_labels(table.drop(columns=["tag_a"]), tasks)


def test_target_without_any_label_is_reported(table):
    table["spend"] = np.nan
    with pytest.raises(DataError, match=r"task 'spend': target column 'spend' has no labels"):
        fit(table)


def test_non_numeric_regression_label_names_the_row(table):
    table["spend"] = table["spend"].astype(object)
    table.loc[2, "spend"] = "lots"
    with pytest.raises(DataError, match=r"task 'spend', column 'spend', row 3: 'lots'"):
        fit(table)


# ---------------------------------------------------------------------- state
def test_state_round_trips_through_json(table):
    preprocessor, tasks = fit(table)
    again = Preprocessor(json.loads(json.dumps(preprocessor.state)))
    raw = make_table(n=30, seed=5)
    raw.loc[0, "color"] = "purple"
    first, second = preprocessor.transform(raw), again.transform(raw)
    assert torch.equal(first.categorical, second.categorical)
    assert torch.equal(first.numeric, second.numeric)
    assert [t.classes for t in again.build_tasks([t.spec for t in tasks])] == [
        t.classes for t in tasks
    ]


def test_features_take_selects_rows(table):
    preprocessor, _ = fit(table)
    features = preprocessor.transform(table)
    assert len(features) == len(table)
    part = features.take(torch.tensor([5, 2]))
    assert torch.equal(part.categorical, features.categorical[[5, 2]])
    assert torch.equal(part.numeric, features.numeric[[5, 2]])


def test_scaling_none_keeps_raw_values_and_flags_missing():
    frame = pd.DataFrame({"pixel": [0.0, 0.0, 1.0, np.nan], "y": [0, 1, 0, 1]})
    data = DataSpec(train=Path("t.csv"), scaling="none")
    tasks = [TaskSpec(name="y", kind="binary", target="y")]
    features = Preprocessor.fit(frame, data, tasks).transform(frame)
    assert features.numeric[:, 0].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert features.numeric[:, 1].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_inputs_are_exactly_the_listed_columns(table):
    raw = base_spec("t.csv", data={"inputs": ["x1", "color"], "numeric": ["x1"]})
    spec = parse_spec(raw)
    fitted = Preprocessor.fit(table, spec.data, spec.tasks)
    assert fitted.input_columns == ["color", "x1"]
    assert {"x2", "city", "count"} <= set(fitted.state["ignored_columns"])


def test_numeric_alone_does_not_limit_the_inputs(table):
    """The rule stated in the README: without data.inputs, unlisted columns are inputs too."""
    spec = parse_spec(base_spec("t.csv", data={"numeric": ["x1"]}))
    fitted = Preprocessor.fit(table, spec.data, spec.tasks)
    assert set(fitted.input_columns) == {"color", "city", "x1", "x2", "count"}


def test_inputs_are_checked(table):
    from polytask.errors import ConfigError

    with pytest.raises(ConfigError, match="categorical names 'city', which is not in inputs"):
        parse_spec(base_spec("t.csv", data={"inputs": ["x1"], "categorical": ["city"]}))
    with pytest.raises(ConfigError, match=r"data.inputs: 'spend' is a target"):
        parse_spec(base_spec("t.csv", data={"inputs": ["x1", "spend"]}))
    spec = parse_spec(base_spec("t.csv", data={"inputs": ["x1", "colour"]}))
    with pytest.raises(DataError, match=r"column 'colour' named in data.inputs .*'color'"):
        Preprocessor.fit(table, spec.data, spec.tasks)


def test_a_categorical_dtype_column_maps_as_its_text_does():
    """The per-category fast path gives the same vocabulary and codes as the rows' text."""
    values = ["a", " b", "b", None, "c", "a", "", "b ", "d", "a"] * 3
    as_text = pd.DataFrame({"k": values, "y": [0.0, 1.0] * 15})
    as_category = as_text.assign(
        k=pd.Categorical(values, categories=["a", " b", "b", "b ", "c", "d", "unused", ""])
    )
    floats = as_text.assign(k=pd.Categorical([1.0, 2.0, np.nan] * 10, categories=[1.0, 2.0, 3.0]))
    spec = DataSpec(train="t.csv", categorical=["k"])
    tasks = [TaskSpec(name="y", kind="binary", target="y")]
    plain = Preprocessor.fit(as_text, spec, tasks)
    fast = Preprocessor.fit(as_category, spec, tasks)
    assert fast.state["vocabularies"] == plain.state["vocabularies"]
    torch.testing.assert_close(
        fast.transform(as_category).categorical, plain.transform(as_text).categorical
    )
    torch.testing.assert_close(
        plain.transform(as_category).categorical, plain.transform(as_text).categorical
    )
    whole = Preprocessor.fit(floats, spec, tasks)
    assert whole.state["vocabularies"]["k"] == ["1", "2"]
    codes = whole.transform(floats.assign(k=floats["k"].astype("float64"))).categorical
    torch.testing.assert_close(whole.transform(floats).categorical, codes)


def test_with_tasks_fits_new_labels_and_keeps_the_inputs():
    frame = make_table(n=120, seed=2)
    base_tasks = [TaskSpec(name="click", kind="binary", target="clicked")]
    data = DataSpec(train="unused.csv", drop=["segment", "spend", "tag_a", "tag_b"])
    base = Preprocessor.fit(frame, data, base_tasks)
    new = TaskSpec(name="segment", kind="multiclass", target="segment")
    other = make_table(n=80, seed=3).drop(columns=["city"])
    grown = base.with_tasks(other, [new])
    assert grown.state["vocabularies"] == base.state["vocabularies"]
    assert grown.state["numeric_stats"] == base.state["numeric_stats"]
    assert grown.state["tasks"]["segment"] == {"classes": ["high", "low", "mid"]}
    assert "segment" not in base.state["tasks"]
    assert grown.missing_inputs(other) == ["city"]
    features = grown.transform(other)
    assert (features.categorical[:, base.categorical.index("city")] == 0).all()
    with pytest.raises(DataError, match="already has a label encoding"):
        grown.with_tasks(other, [new])
    with pytest.raises(DataError, match="input columns"):
        base.with_tasks(frame, [TaskSpec(name="x", kind="regression", target="x1")])
