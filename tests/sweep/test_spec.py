"""The sweep file: shorthand forms, key and objective checks, grids, and how sampled values
are written into the base run spec."""

from __future__ import annotations

import pytest
import yaml

from polytask.errors import ConfigError
from polytask.sweep.spec import check_key, load_sweep, parse_sweep, set_key
from tests.conftest import base_spec


@pytest.fixture
def raw(table_csv):
    return {
        "base": base_spec(table_csv),
        "space": {
            "model.arch": ["mmoe", "omoe"],
            "train.lr": {"type": "log_float", "low": 1e-3, "high": 1e-1},
        },
        "objectives": ["click.auc", {"metric": "spend.rmse"}, "latency"],
        "trials": 5,
    }


def test_shorthands_and_directions(raw, tmp_path):
    sweep = parse_sweep(raw, tmp_path)
    assert sweep.spec.space["model.arch"].type == "categorical"
    assert sweep.spec.space["model.arch"].labels == ["mmoe", "omoe"]
    assert [(o.name, o.direction) for o in sweep.spec.objectives] == [
        ("click.auc", "maximize"),
        ("spend.rmse", "minimize"),
        ("latency_ms@1", "minimize"),
    ]
    assert sweep.spec.pruning.enabled
    assert sweep.pruning_target() == ("click", "auc")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"space": {"model.archh": ["mmoe"]}}, "model has no 'archh' (did you mean 'arch'?)"),
        (
            {"space": {"modle.arch": ["mmoe"]}},
            "the run spec has no 'modle' (did you mean 'model'?)",
        ),
        ({"objectives": ["clik.auc"]}, "names task 'clik' (did you mean 'click'?)"),
        ({"objectives": ["click.rmse"]}, "task 'click' reports auc, logloss, accuracy"),
        ({"objectives": ["click.aucc"]}, "(did you mean 'auc'?)"),
        ({"objectives": ["click.auc", "click.auc"]}, "objectives must be distinct"),
        ({"trials": None}, "the tpe sampler needs 'trials'"),
        ({"sampler": "grid"}, "space key 'train.lr' is a log_float range"),
        ({"space": {"train.lr": {"type": "float", "low": 1, "high": 0.1}}}, "must not exceed"),
        ({"space": {"model.hidden": [[8], [16]]}}, "labelled choices"),
        ({"space": {"model.arch": {"type": "int", "choices": [1]}}}, "takes low / high"),
        ({"pruning": {"metric": "spend.auc"}}, "task 'spend' reports rmse, mae, r2"),
        ({"samplr": "grid"}, "unknown key (did you mean 'sampler'?)"),
    ],
)
def test_mistakes_are_one_line(raw, tmp_path, change, fragment):
    raw.update(change)
    with pytest.raises(ConfigError) as error:
        parse_sweep(raw, tmp_path)
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_a_bad_base_is_named(raw, tmp_path):
    raw["base"]["model"]["arch"] = "mmeo"
    with pytest.raises(ConfigError, match=r"sweep base: config: model\.arch"):
        parse_sweep(raw, tmp_path)


def test_grid(raw, tmp_path):
    raw.update(
        sampler="grid",
        trials=None,
        space={
            "model.arch": ["mmoe", "omoe"],
            "model.num_experts": {"type": "int", "low": 2, "high": 6, "step": 2},
        },
    )
    sweep = parse_sweep(raw, tmp_path)
    assert sweep.spec.budget == 6
    assert sweep.spec.grid_points()[:2] == [
        {"model.arch": "mmoe", "model.num_experts": 2},
        {"model.arch": "mmoe", "model.num_experts": 4},
    ]
    raw["trials"] = 7
    with pytest.raises(ConfigError, match=r"trials \(7\) exceeds the grid's 6 combinations"):
        parse_sweep(raw, tmp_path)


def test_base_file_is_read_relative_to_the_sweep(tmp_path, table_csv):
    (tmp_path / "specs").mkdir()
    spec = base_spec("../" + table_csv.name)
    (tmp_path / "specs" / "base.yaml").write_text(yaml.safe_dump(spec))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "base": "specs/base.yaml",
                "space": {"model.arch": ["omoe"]},
                "objectives": ["click.auc"],
                "trials": 1,
            }
        )
    )
    sweep = load_sweep(sweep_file, {"trials": 2, "parallel": None})
    assert sweep.spec.trials == 2
    trial = sweep.trial_spec({"model.arch": "omoe"}, threads=1)
    assert trial.data.train == table_csv.resolve()
    assert trial.model.arch == "omoe"
    assert trial.train.threads == 1


def test_labelled_mapping_choices_merge_into_the_spec(raw, tmp_path):
    raw["space"] = {
        "model": {
            "choices": {
                "cgc": {"arch": "cgc", "options": {"task_experts": 1, "shared_experts": 1}},
                "plain": {"arch": "shared_bottom"},
            }
        },
        "balance": {"choices": {"dwa": {"method": "dwa", "options": {"temperature": 3.0}}}},
    }
    sweep = parse_sweep(raw, tmp_path)
    spec = sweep.trial_spec({"model": "cgc", "balance": "dwa"}, threads=None)
    assert spec.model.arch == "cgc"
    assert spec.model.options == {"task_experts": 1, "shared_experts": 1}
    assert spec.model.hidden == [8]  # kept from the base
    assert spec.balance.method == "dwa"
    assert spec.balance.options == {"temperature": 3.0}
    assert spec.train.threads is None


def test_set_key():
    raw = {"model": {"arch": "mmoe", "options": {"a": 1}}, "tasks": [{"weight": 1.0}]}
    set_key(raw, "model.options", {"b": 2})
    set_key(raw, "tasks.0.weight", 0.5)
    set_key(raw, "train.lr", 0.1)
    set_key(raw, "model.hidden", [4])
    assert raw == {
        "model": {"arch": "mmoe", "options": {"a": 1, "b": 2}, "hidden": [4]},
        "tasks": [{"weight": 0.5}],
        "train": {"lr": 0.1},
    }


def test_check_key_allows_new_keys_only_in_free_mappings():
    reference = {"model": {"options": {}, "arch": "mmoe"}, "tasks": [{"weight": 1.0}]}
    check_key(reference, "model.options.top_k")
    check_key(reference, "tasks.0.weight")
    for bad in ("model.top_k", "tasks.1.weight", "model.options.a.b"):
        with pytest.raises(ConfigError):
            check_key(reference, bad)
