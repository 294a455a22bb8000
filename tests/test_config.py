"""The run specification: unknown keys and bad values fail with one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytask.config import (
    check_unused,
    load_spec,
    parse_spec,
    unused_spec_fields,
    with_overrides,
)
from polytask.errors import ConfigError, PolytaskError, PolytaskWarning
from tests.conftest import base_spec, write_yaml


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_spec(raw)
    message = str(info.value)
    assert "\n" not in message, "a config error is one line"
    return message


def _allowed_part(message: str) -> list[str]:
    assert "allowed:" in message
    return [word.strip() for word in message.split("allowed:", 1)[1].split(",")]


@pytest.mark.parametrize(
    ("where", "path", "typo", "suggestion", "some_allowed"),
    [
        ("model.archh", ("model",), "archh", "arch", ["arch", "hidden", "num_experts"]),
        ("train.epoch", ("train",), "epoch", "epochs", ["epochs", "batch_size", "lr", "seed"]),
        ("data.trian", ("data",), "trian", "train", ["train", "valid", "numeric"]),
        ("modle", (), "modle", "model", ["data", "tasks", "model", "balance", "train"]),
        ("data.split.vaild", ("data", "split"), "vaild", "valid", ["valid", "test", "seed"]),
        (
            "train.early_stopping.patiense",
            ("train", "early_stopping"),
            "patiense",
            "patience",
            ["patience", "monitor"],
        ),
        ("tasks.1.kindd", ("tasks", 1), "kindd", "kind", ["name", "kind", "target", "loss"]),
    ],
)
def test_unknown_key_names_key_allowed_keys_and_suggestion(
    where, path, typo, suggestion, some_allowed
):
    raw = base_spec("train.csv")
    section = raw
    for part in path:
        section = section[part]
    section[typo] = 1
    message = _error(raw)
    assert where in message
    assert "unknown key" in message
    assert f"did you mean '{suggestion}'" in message
    allowed = _allowed_part(message)
    for key in some_allowed:
        assert key in allowed
    assert typo not in allowed


def test_unknown_key_without_close_match_has_no_suggestion():
    raw = base_spec("train.csv")
    raw["model"]["zzzzqqq"] = 3
    message = _error(raw)
    assert "model.zzzzqqq" in message
    assert "did you mean" not in message
    assert "arch" in _allowed_part(message)


def test_unknown_architecture_names_field_and_suggests():
    message = _error(base_spec("train.csv", model={"arch": "mmo"}))
    assert "model.arch" in message
    assert "'mmo'" in message
    assert "did you mean 'mmoe'" in message
    assert "single" in message and "shared_bottom" in message


def test_unknown_balancing_method_names_field():
    message = _error(base_spec("train.csv", balance={"method": "eqal"}))
    assert "balance.method" in message
    assert "did you mean 'equal'" in message


def test_unknown_task_kind_names_field_and_suggests():
    raw = base_spec("train.csv")
    raw["tasks"][0]["kind"] = "binry"
    message = _error(raw)
    assert "tasks.0.kind" in message
    assert "binry" in message
    assert "did you mean 'binary'" in message


def test_loss_not_fitting_kind_names_task_and_allowed_losses():
    raw = base_spec("train.csv")
    raw["tasks"][0]["loss"] = "mse"  # a binary task
    message = _error(raw)
    assert "tasks.0" in message
    assert "loss 'mse'" in message
    assert "bce" in message


def test_metric_not_fitting_kind_names_metric():
    raw = base_spec("train.csv")
    raw["tasks"][2]["metrics"] = ["rmse", "auc"]  # a regression task
    message = _error(raw)
    assert "tasks.2" in message
    assert "metric 'auc'" in message
    assert "rmse" in message and "mae" in message


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"train": {"lr": -0.1}}, "train.lr"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"optimizer": "adamm"}}, "train.optimizer"),
        ({"model": {"num_experts": 0}}, "model.num_experts"),
        ({"model": {"hidden": [8, 0]}}, "model.hidden"),
        ({"model": {"dropout": 1.0}}, "model.dropout"),
    ],
)
def test_bad_values_name_the_field(sections, field):
    message = _error(base_spec("train.csv", **sections))
    assert field in message


def test_negative_lr_message_shows_value():
    message = _error(base_spec("train.csv", train={"lr": -0.5}))
    assert "train.lr" in message and "-0.5" in message


def test_split_fractions_must_leave_training_rows():
    raw = base_spec("train.csv")
    raw["data"]["split"] = {"valid": 0.5, "test": 0.5}
    assert "data.split" in _error(raw)


def test_data_needs_exactly_one_source():
    raw = base_spec("train.csv")
    raw["data"]["dataset"] = "census_income_sample"
    assert "exactly one" in _error(raw)
    del raw["data"]["dataset"]
    del raw["data"]["train"]
    assert "exactly one" in _error(raw)


def test_task_target_rules():
    raw = base_spec("train.csv")
    raw["tasks"][3] = {"name": "tags", "kind": "multilabel", "target": "tag_a"}
    assert "targets" in _error(raw)
    raw = base_spec("train.csv")
    del raw["tasks"][0]["target"]
    assert "target" in _error(raw)


def test_missing_required_section_and_duplicate_task_names():
    raw = base_spec("train.csv")
    del raw["tasks"]
    assert "tasks: required key is missing" in _error(raw)
    raw = base_spec("train.csv")
    raw["tasks"][1]["name"] = "click"
    assert "repeated: click" in _error(raw)


def test_config_error_is_a_polytask_error():
    assert issubclass(ConfigError, PolytaskError)


def test_defaults_filled_per_kind(tmp_path: Path):
    spec = parse_spec(base_spec("train.csv"))
    by_name = {task.name: task for task in spec.tasks}
    assert by_name["click"].loss == "bce"
    assert by_name["click"].metrics == ["auc", "logloss", "accuracy"]
    assert by_name["segment"].loss == "cross_entropy"
    assert by_name["segment"].metrics == ["accuracy", "macro_f1"]
    assert by_name["spend"].loss == "mse"
    assert by_name["spend"].metrics == ["rmse", "mae", "r2"]
    assert by_name["tags"].metrics == ["mean_auc"]
    assert spec.target_columns == ["clicked", "segment", "spend", "tag_a", "tag_b"]


def test_load_spec_resolves_relative_paths_against_the_yaml_folder(tmp_path: Path):
    folder = tmp_path / "configs"
    folder.mkdir()
    raw = base_spec("../data/train.csv", train={"baseline": "runs/single"})
    spec = load_spec(write_yaml(folder / "run.yaml", raw))
    assert spec.data.train == (tmp_path / "data" / "train.csv").resolve()
    assert spec.train.baseline == (folder / "runs" / "single").resolve()
    # A dict has no folder: paths stay as written.
    assert str(load_spec(raw).data.train) == str(Path("../data/train.csv"))


def test_load_spec_passes_a_runspec_through():
    spec = parse_spec(base_spec("train.csv"))
    assert load_spec(spec) is spec


def test_load_spec_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_load_spec_invalid_yaml_names_line(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  train: a.csv\ntasks: [\n  - {name: x\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_spec(path)


def test_load_spec_rejects_a_non_mapping(tmp_path: Path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_spec(path)


# ---------------------------------------------------------------------- hardening
@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda raw: raw["train"].update(lr=float("inf")), "train.lr: Input should be a finite"),
        (lambda raw: raw["train"].update(lr=float("nan")), "train.lr: Input should be a finite"),
        (lambda raw: raw["tasks"][0].update(weight=float("inf")), "tasks.0.weight"),
        (lambda raw: raw["train"].update(epochs=True), "train.epochs: expected a number"),
        (lambda raw: raw["train"].update(lr=True), "train.lr: expected a number"),
        (lambda raw: raw["model"].update(hidden=[8, False]), "model.hidden.1"),
        (lambda raw: raw["train"].update(seed=2**70), "train.seed"),
        (lambda raw: raw["train"].update(seed=-1), "train.seed"),
        (lambda raw: raw["data"]["split"].update(seed=-1), "data.split.seed"),
        (lambda raw: raw["data"]["split"].update(seed=2**32), "data.split.seed"),
    ],
    ids=[
        "lr-inf", "lr-nan", "weight-inf", "epochs-true", "lr-true", "hidden-bool",
        "seed-2**70", "seed-negative", "split-seed-negative", "split-seed-2**32",
    ],
)  # fmt: skip
def test_numbers_are_finite_never_booleans_and_seeds_fit_the_generators(change, fragment):
    raw = base_spec("t.csv")
    change(raw)
    assert fragment in _error(raw)


def test_yaml_numbers_written_as_text_still_work():
    raw = base_spec("t.csv")
    raw["train"]["lr"] = "1e-3"  # PyYAML reads 1e-3 (no dot) as text
    assert parse_spec(raw).train.lr == 0.001
    raw["train"]["seed"] = 2**32 - 1
    assert parse_spec(raw).train.seed == 2**32 - 1


@pytest.mark.parametrize(
    "name", ["", ".", "..", "../up", "a/b", "a\\b", "-dash", ".hidden", "sp ace", "x" * 101, "a:b"]
)
def test_task_names_that_are_not_words_are_refused(name):
    raw = base_spec("t.csv")
    raw["tasks"][0]["name"] = name
    assert "tasks.0.name" in _error(raw) and "names files and columns" in _error(raw)


@pytest.mark.parametrize("name", ["click", "Click_2", "ctr.v2", "a-b", "ünïcode", "x" * 100])
def test_task_names_that_are_words_are_fine(name):
    raw = base_spec("t.csv")
    raw["tasks"][0]["name"] = name
    assert parse_spec(raw).tasks[0].name == name


def test_a_whole_spec_problem_says_config_once():
    raw = base_spec("t.csv")
    raw["tasks"].append(dict(raw["tasks"][0]))
    message = _error(raw)
    assert message.startswith("config: task names must be unique")
    assert "config: config:" not in message


def test_overrides_are_validated_like_the_file():
    spec = parse_spec(base_spec("t.csv"))
    assert with_overrides(spec, train={"seed": 7}).train.seed == 7
    with pytest.raises(ConfigError, match=r"train.seed"):
        with_overrides(spec, train={"seed": 2**70})
    assert spec.train.seed == 0  # the original is left as it was


@pytest.mark.parametrize(
    ("arch", "model", "train", "unused"),
    [
        ("ple", {"num_experts": 4}, {}, ["model.num_experts"]),
        ("cgc", {"num_experts": 4}, {}, ["model.num_experts"]),
        ("home", {"num_experts": 4}, {}, ["model.num_experts"]),
        ("ple", {}, {}, []),  # left at its default: not the user's doing
        ("mmoe", {"num_experts": 4}, {}, []),
        ("mmoe", {}, {"momentum": 0.5}, ["train.momentum"]),
        ("mmoe", {}, {"optimizer": "sgd", "momentum": 0.5}, []),
        ("mmoe", {}, {"schedule": {"name": "cosine", "gamma": 0.9}}, ["train.schedule.gamma"]),
        ("mmoe", {"encoder": {"out_dim": 8}}, {}, ["model.encoder.out_dim"]),
    ],
)
def test_spec_fields_the_run_does_not_read_are_named(arch, model, train, unused):
    raw = base_spec("t.csv", model={"arch": arch, **model}, train=train)
    if "num_experts" not in model:
        del raw["model"]["num_experts"]  # the base spec sets it; these cases leave it unset
    spec = parse_spec(raw)
    assert unused_spec_fields(spec) == unused


def test_unused_fields_warn_or_refuse_under_strict():
    spec = parse_spec(base_spec("t.csv", model={"arch": "ple", "num_experts": 4}))
    with pytest.warns(PolytaskWarning, match=r"model.num_experts is set but not used.*arch ple"):
        check_unused(spec)
    with pytest.raises(ConfigError, match=r"model.num_experts is set but not used.*remove it"):
        check_unused(spec, strict=True)


def test_track_section():
    from polytask.config import TrackSpec

    assert TrackSpec().enabled is False
    assert TrackSpec(mlflow=True).enabled
    assert TrackSpec(mlflow="sqlite:///m.db").mlflow == "sqlite:///m.db"
    assert TrackSpec(mlflow="runs/m.db").mlflow == "runs/m.db"
    assert TrackSpec(mlflow="http://host:5000").mlflow == "http://host:5000"
    assert TrackSpec(mlflow="databricks").mlflow == "databricks"


@pytest.mark.parametrize(
    ("track", "fragment"),
    [
        ({"mlflow": "somewhere"}, "track.mlflow: expected true, false or an MLflow tracking URI"),
        ({"mlfow": True}, "track.mlfow: unknown key (did you mean 'mlflow'?)"),
        ({"experiment": ""}, "track.experiment"),
    ],
)
def test_track_mistakes_are_one_line(spec_dict, track, fragment):
    spec_dict["track"] = track
    with pytest.raises(ConfigError) as error:
        parse_spec(spec_dict)
    assert fragment in str(error.value)


# ---------------------------------------------------------------------- data.stream
def _streamed(**data) -> dict:
    raw = base_spec("train.parquet")
    raw["data"] = {"train": "train.parquet", "stream": True, **data}
    return raw


def test_stream_true_is_the_default_options_and_false_is_off():
    stream = parse_spec(_streamed()).data.stream
    assert stream is not None
    assert (stream.batch_rows, stream.buffer_rows, stream.sample_rows) == (
        65_536,
        1_000_000,
        1_000_000,
    )
    assert parse_spec(_streamed(stream=False)).data.stream is None
    given = parse_spec(_streamed(stream={"buffer_rows": 5000, "batch_rows": 100})).data.stream
    assert given is not None and (given.buffer_rows, given.batch_rows) == (5000, 100)


def test_a_saved_streamed_spec_reads_back_the_same():
    spec = parse_spec(_streamed(stream={"buffer_rows": 5000}))
    assert parse_spec(spec.to_yaml_dict()) == spec


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"stream": {"buffer_row": 10}}, "data.stream.buffer_row"),
        ({"stream": {"batch_rows": 0}}, "data.stream.batch_rows"),
        ({"split": {"valid": 0.2}}, "a streamed table is not split"),
        ({"reader": "csv"}, "stream reads Parquet only"),
        ({"stream": {"buffer_rows": 10}}, "must hold at least one global batch"),
    ],
)
def test_stream_options_are_checked(data, expected):
    assert expected in _error(_streamed(**data))


def test_stream_reads_a_file_not_a_dataset():
    raw = base_spec("train.parquet")
    raw["data"] = {"dataset": "census_income_sample", "stream": True}
    assert "stream reads data.train" in _error(raw)
