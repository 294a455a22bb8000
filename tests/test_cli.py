"""The ``polytask`` command: user mistakes are one line and exit code 2, and the subcommands
work end to end on a finished run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.cli_helpers import assert_user_error, invoke
from tests.conftest import base_spec, make_table, write_yaml


def assert_no_run_left(folder: Path, out: Path) -> None:
    assert not out.exists()
    assert not out.with_name(out.name + ".partial").exists()
    assert not [p for p in folder.rglob("*") if p.name.endswith(".partial")]


# ---------------------------------------------------------------------- config errors
def test_train_with_a_misspelt_key(tmp_path: Path, table_csv):
    raw = base_spec(table_csv)
    raw["train"]["epoch"] = 3
    config = write_yaml(tmp_path / "bad.yaml", raw)
    line = assert_user_error(
        invoke("train", config, "--out", tmp_path / "run"),
        "train.epoch",
        "did you mean 'epochs'",
        "allowed:",
    )
    assert "batch_size" in line
    assert_no_run_left(tmp_path, tmp_path / "run")


def test_train_without_a_config_file(tmp_path: Path):
    assert_user_error(invoke("train", tmp_path / "nope.yaml"), "config file not found")


# ---------------------------------------------------------------------- bad data
def _table_with(tmp_path: Path, change) -> Path:
    frame = make_table(n=60)
    frame = change(frame) if change is not None else frame
    path = tmp_path / "data.csv"
    if isinstance(frame, str):
        path.write_text(frame)
    else:
        frame.to_csv(path, index=False)
    return path


def _label_three(frame):
    frame["clicked"] = frame["clicked"].fillna(0)
    frame.loc[36, "clicked"] = 3
    return frame


def _no_labels(frame):
    frame["spend"] = np.nan
    return frame


def _bad_number(frame):
    frame["x1"] = frame["x1"].astype(object)
    frame.loc[44, "x1"] = "abc"
    return frame


def _bad_inferred_number(frame):
    frame["x2"] = frame["x2"].round(2).astype(str)
    frame.loc[19, "x2"] = "n.a."
    return frame


def _unknown_arch(raw):
    raw["model"]["arch"] = "mmoee"


def _unknown_kind(raw):
    raw["tasks"][0]["kind"] = "binry"


def _declare_numeric(raw):
    raw["data"]["numeric"] = ["x1", "x2", "count"]


@pytest.mark.parametrize(
    ("table_change", "spec_change", "fragments"),
    [
        ("missing", None, ["data file not found", "data.csv"]),
        (lambda f: "color,x1,clicked\n", None, ["has a header but no rows"]),
        (lambda f: f.drop(columns=["clicked"]), None, ["target column 'clicked'", "not in"]),
        (_label_three, None, ["task 'click'", "holds 3 at row 37", "0 or 1"]),
        (_no_labels, None, ["target column 'spend' has no labels"]),
        (_bad_number, _declare_numeric, ["column 'x1', row 45: 'abc' is not a number"]),
        (_bad_inferred_number, None, ["column 'x2', row 20: 'n.a.' is not a number"]),
        (None, _unknown_arch, ["model.arch", "unknown architecture 'mmoee'", "'mmoe'"]),
        (None, _unknown_kind, ["tasks.0.kind", "binry", "'binary'"]),
    ],
    ids=[
        "missing-file",
        "header-only",
        "missing-target",
        "binary-label-3",
        "no-labels",
        "bad-declared-numeric",
        "bad-inferred-numeric",
        "unknown-arch",
        "unknown-kind",
    ],
)
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    tmp_path: Path, table_change, spec_change, fragments
):
    if table_change == "missing":
        data = tmp_path / "data.csv"
    else:
        data = _table_with(tmp_path, table_change)
    raw = base_spec(data)
    if spec_change is not None:
        spec_change(raw)
    config = write_yaml(tmp_path / "cfg.yaml", raw)
    out = tmp_path / "runs" / "run"
    assert_user_error(invoke("train", config, "--out", out, "--quiet"), *fragments)
    assert_no_run_left(tmp_path, out)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_resume_and_config_together_is_an_error(tmp_path: Path):
    result = invoke("train", tmp_path / "c.yaml", "--resume", tmp_path / "run")
    assert_user_error(result, "--resume")
    assert_user_error(invoke("train"), "CONFIG")


def test_resume_of_nothing(tmp_path: Path):
    assert_user_error(invoke("train", "--resume", tmp_path / "run"), "no checkpoint")


# ---------------------------------------------------------------------- happy paths
def test_train_then_info(tmp_path: Path, table_csv):
    balance = {"method": "cagrad", "options": {"c": 0.2}}
    spec = base_spec(table_csv, train={"epochs": 1}, balance=balance)
    config = write_yaml(tmp_path / "cfg.yaml", spec)
    out = tmp_path / "run"
    result = invoke("train", config, "--out", out, "--seed", "7", "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "summary.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 7
    assert_user_error(invoke("train", config, "--out", out, "--quiet"), "--overwrite")
    assert invoke("train", config, "--out", out, "--overwrite", "--quiet").exit_code == 0
    info = invoke("info", out)
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)
    assert facts["tasks"] == {
        "click": "binary",
        "segment": "multiclass",
        "spend": "regression",
        "tags": "multilabel",
    }
    assert facts["inputs"]["categorical"] == ["color", "city"]
    assert facts["inputs"]["rule"].startswith("every column of the training table but")
    resolved = {"mode": "fast", "every": 1, "c": 0.2, "rescale": 1}  # the defaults filled in
    assert facts["balance"] == {"method": "cagrad", "options": resolved}


def test_balancers_lists_every_method_with_its_options():
    from polytask.balance import BALANCERS

    result = invoke("balancers", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert sorted(listing) == BALANCERS.names()
    assert listing["equal"]["options"] == {}
    assert listing["cagrad"]["options"]["c"] == {
        "default": 0.4,
        "accepts": "a number in [0, 1)",
        "description": "radius around the mean gradient (0: the mean gradient)",
    }
    assert listing["mgda"]["options"]["mode"]["default"] == "exact"
    assert all(entry["summary"] for entry in listing.values())
    table = invoke("balancers")
    assert table.exit_code == 0, table.output
    for name in listing:
        assert name in table.stdout


def test_a_bad_balancing_option_is_one_line(tmp_path: Path, table_csv):
    balance = {"method": "cagrad", "options": {"c": True, "rescal": 1}}
    config = write_yaml(tmp_path / "cfg.yaml", base_spec(table_csv, balance=balance))
    assert_user_error(
        invoke("train", config, "--out", tmp_path / "run"),
        "balance.options.c (cagrad): expected a number in [0, 1), got True",
        "balance.options.rescal (cagrad): unknown key (did you mean 'rescale'?)",
    )
    assert_no_run_left(tmp_path, tmp_path / "run")


def test_train_prints_progress_and_a_report(tmp_path: Path, table_csv):
    config = write_yaml(tmp_path / "cfg.yaml", base_spec(table_csv, train={"epochs": 2}))
    result = invoke("train", config, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "epoch   2" in result.output
    assert "mean_normalised" in result.output
    assert "run saved to" in result.output


def test_evaluate_on_a_file(trained_run):
    run, test_csv = trained_run["run"], trained_run["paths"]["test"]
    result = invoke("evaluate", run, "--data", test_csv)
    assert result.exit_code == 0, result.output
    for name in ("click", "spend", "tags", "mean_normalised", "(120 rows)"):
        assert name in result.stdout
    as_json = invoke("evaluate", run, "--data", test_csv, "--json")
    report = json.loads(as_json.stdout)
    final = json.loads((run / "metrics.json").read_text())["test"]
    assert report["metrics"]["click"]["auc"] == pytest.approx(final["click"]["auc"])
    assert report["score"]["name"] == "mean_normalised"


def test_evaluate_on_the_runs_own_split(trained_run):
    run = trained_run["run"]
    final = json.loads((run / "metrics.json").read_text())
    for split in ("test", "valid"):
        result = invoke("evaluate", run, "--split", split, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["metrics"]["spend"]["rmse"] == pytest.approx(final[split]["spend"]["rmse"])
        assert report["metrics"]["click"]["auc"] == pytest.approx(final[split]["click"]["auc"])
    against_itself = invoke("evaluate", run, "--split", "test", "--baseline", run, "--json")
    score = json.loads(against_itself.stdout)["score"]
    assert score["name"] == "delta_m" and score["value"] == pytest.approx(0.0)


def test_evaluate_mistakes(trained_run, tmp_path: Path):
    run = trained_run["run"]
    assert_user_error(invoke("evaluate", run), "exactly one of --data")
    both = invoke("evaluate", run, "--data", trained_run["paths"]["test"], "--split", "test")
    assert_user_error(both, "exactly one of --data")
    assert_user_error(invoke("evaluate", run, "--split", "train"), "--split must be")
    assert_user_error(
        invoke("evaluate", tmp_path / "nothing", "--split", "test"), "no finished run"
    )


def test_predict_to_a_csv_file(trained_run, tmp_path: Path):
    rows = make_table(n=25, seed=9).drop(columns=["clicked", "segment", "spend", "x2"])
    rows.loc[0, "color"] = "purple"
    rows.loc[1, "city"] = ""
    rows.loc[2, "x1"] = np.nan
    rows.to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "pred.csv"
    result = invoke("predict", trained_run["run"], tmp_path / "rows.csv", "-o", out)
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out)
    assert len(predictions) == 25
    assert {"click", "segment", "spend", "tags_tag_a", "tags_tag_b"} <= set(predictions.columns)
    assert np.isfinite(predictions.drop(columns=["segment"]).to_numpy(dtype=float)).all()
    assert set(predictions["segment"]) <= {"high", "low", "mid"}


def test_predict_to_stdout_parquet_and_keep(trained_run, tmp_path: Path):
    trained_run["frames"]["test"].head(8).to_parquet(tmp_path / "rows.parquet", index=False)
    result = invoke("predict", trained_run["run"], tmp_path / "rows.parquet", "--keep", "color")
    assert result.exit_code == 0, result.output
    from io import StringIO

    printed = pd.read_csv(StringIO(result.stdout))
    assert len(printed) == 8 and printed.columns[0] == "color"
    assert list(printed["color"]) == list(trained_run["frames"]["test"]["color"].head(8))
    out = tmp_path / "pred.parquet"
    assert (
        invoke("predict", trained_run["run"], tmp_path / "rows.parquet", "-o", out).exit_code == 0
    )
    np.testing.assert_allclose(pd.read_parquet(out)["click"], printed["click"], rtol=1e-5)
    missing = invoke("predict", trained_run["run"], tmp_path / "rows.parquet", "--keep", "nope")
    assert_user_error(missing, "--keep names column 'nope'")
    assert_user_error(
        invoke("predict", trained_run["run"], tmp_path / "none.csv"), "data file not found"
    )


def test_strategies_lists_every_strategy_and_its_options():
    from polytask.grow.strategies import STRATEGIES
    from tests.cli_helpers import invoke

    result = invoke("strategies")
    assert result.exit_code == 0, result.output
    for name in STRATEGIES.names():
        assert name in result.output
    assert "lambda" in result.output and "rows_per_task" in result.output


# ---------------------------------------------------------------------- never fall over
def _tree(*roots: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under the roots with its size, mode and modification time."""
    listing = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            info = path.lstat()
            listing[str(path)] = (info.st_size, info.st_mode, info.st_mtime_ns)
    return listing


def _config(tmp_path: Path, change) -> Path:
    make_table(n=60).to_csv(tmp_path / "data.csv", index=False)
    raw = base_spec(tmp_path / "data.csv")
    change(raw)
    return write_yaml(tmp_path / "cfg.yaml", raw)


def _set(section: str, key: str, value):
    def change(raw):
        raw[section][key] = value

    return change


def _weight(raw):
    raw["tasks"][0]["weight"] = float("inf")


def _split_seed(raw):
    raw["data"]["split"]["seed"] = -1


def _task_name(name: str):
    def change(raw):
        raw["tasks"][0]["name"] = name

    return change


def _huge_cell(tmp_path: Path) -> Path:
    frame = make_table(n=30, seed=4)
    frame.loc[5, "x1"] = 1e300
    frame.to_csv(tmp_path / "huge.csv", index=False)
    return tmp_path / "huge.csv"


def _rows(tmp_path: Path) -> Path:
    make_table(n=10, seed=5).to_csv(tmp_path / "rows.csv", index=False)
    return tmp_path / "rows.csv"


def _misspelt(tmp_path: Path) -> Path:
    make_table(n=10, seed=5).rename(columns={"color": "colour"}).to_csv(
        tmp_path / "rows.csv", index=False
    )
    return tmp_path / "rows.csv"


def _existing(tmp_path: Path, name: str = "taken.csv") -> Path:
    (tmp_path / name).write_text("the user's file\n")
    return tmp_path / name


def _foreign_folder(tmp_path: Path) -> Path:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not polytask's\n")
    return tmp_path / "mine"


def _damaged_run(tmp_path: Path, run: Path, name: str, content: bytes) -> Path:
    """A copy of a finished run with one file replaced."""
    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    (copy / name).write_bytes(content)
    return copy


def _killed_run(tmp_path: Path, run: Path) -> Path:
    """A run killed mid-training whose checkpoint file is truncated."""
    partial = tmp_path / "killed.partial"
    shutil.copytree(run, partial)
    (partial / "summary.json").unlink()
    (partial / "checkpoint.pt").write_bytes(b"truncated")
    return tmp_path / "killed"


def _binary_config(tmp_path: Path) -> Path:
    (tmp_path / "cfg.yaml").write_bytes(b"\xff\xfe\x00\x00 not text")
    return tmp_path / "cfg.yaml"


# Each case: (id, command line built from (tmp_path, run), fragments of the one error line).
# "run" is a finished run; the whole of tmp_path and the run must be untouched afterwards.
NEVER_FALL_OVER = [
    ("lr .inf", lambda t, r: ["train", _config(t, _set("train", "lr", float("inf")))],
     ["train.lr", "finite number"]),
    ("task weight .inf", lambda t, r: ["train", _config(t, _weight)],
     ["tasks.0.weight", "finite number"]),
    ("negative split.seed", lambda t, r: ["train", _config(t, _split_seed)],
     ["data.split.seed", "greater than or equal to 0"]),
    ("train.seed 2**70", lambda t, r: ["train", _config(t, _set("train", "seed", 2**70))],
     ["train.seed", "less than 4294967296"]),
    ("--seed 2**70", lambda t, r: ["train", _config(t, lambda raw: None), "--seed", 2**70],
     ["train.seed", "less than 4294967296"]),
    ("epochs: true", lambda t, r: ["train", _config(t, _set("train", "epochs", True))],
     ["train.epochs", "not the boolean true"]),
    ("task name with a slash", lambda t, r: ["train", _config(t, _task_name("../up"))],
     ["tasks.0.name", "'../up'", "names files"]),
    ("empty task name", lambda t, r: ["train", _config(t, _task_name(""))],
     ["tasks.0.name", "''"]),
    ("predict -o a folder", lambda t, r: ["predict", r, _rows(t), "-o", t],
     ["is a folder; give a file name"]),
    ("export -o a folder", lambda t, r: ["export", r, "-o", t],
     ["is a folder; give a file name"]),
    ("export -o into a missing folder", lambda t, r: ["export", r, "-o", t / "no" / "m.onnx"],
     ["folder", "does not exist; create it first"]),
    ("predict -o into a missing folder",
     lambda t, r: ["predict", r, _rows(t), "-o", t / "no" / "p.csv"],
     ["does not exist; create it first"]),
    ("predict --keep a target", lambda t, r: ["predict", r, _rows(t), "--keep", "spend"],
     ["--keep column 'spend'", "output column 'spend'", "task 'spend'"]),
    ("serve --port 99999", lambda t, r: ["serve", r, "--port", 99999],
     ["--port must be 0..65535", "99999"]),
    ("serve --max-body-mib -1", lambda t, r: ["serve", r, "--max-body-mib", -1],
     ["--max-body-mib must be a positive number"]),
    ("evaluate on 1e300", lambda t, r: ["evaluate", r, "--data", _huge_cell(t)],
     ["column 'x1', row 6: 1e+300 is out of range"]),
    ("predict on 1e300", lambda t, r: ["predict", r, _huge_cell(t)],
     ["column 'x1', row 6: 1e+300 is out of range"]),
    ("predict a misspelt column", lambda t, r: ["predict", r, _misspelt(t)],
     ["unknown column 'colour'", "did you mean 'color'", "--allow-unknown-columns"]),
    ("predict -o over a file", lambda t, r: ["predict", r, _rows(t), "-o", _existing(t)],
     ["taken.csv already exists; pass --overwrite"]),
    ("predict -o over its input",
     lambda t, r: ["predict", r, _rows(t), "-o", t / "rows.csv", "--overwrite"],
     ["is an input of this command"]),
    ("train --out . --overwrite", lambda t, r: ["train", _config(t, lambda raw: None),
                                                "--out", ".", "--overwrite"],
     ["is the current folder or one above it"]),
    ("train --out .. --overwrite", lambda t, r: ["train", _config(t, lambda raw: None),
                                                 "--out", "..", "--overwrite"],
     ["is the current folder or one above it"]),
    ("train --out ~ --overwrite", lambda t, r: ["train", _config(t, lambda raw: None),
                                                "--out", t.parent / "home", "--overwrite"],
     ["is the home folder or one above it"]),
    ("train --out a user folder --overwrite",
     lambda t, r: ["train", _config(t, lambda raw: None), "--out", _foreign_folder(t),
                   "--overwrite"],
     ["--overwrite refused", "mine is not a folder polytask wrote"]),
    ("slim -o the folder holding the source run",
     lambda t, r: ["slim", r, "--tasks", "click", "-o", r.parent, "--overwrite"],
     ["holds the run", "that this command reads"]),
    ("slim -o inside the source run",
     lambda t, r: ["slim", r, "--tasks", "click", "-o", r / "slim", "--overwrite"],
     ["lies inside the run"]),
    ("slim -o the source run itself",
     lambda t, r: ["slim", r, "--tasks", "click", "-o", r, "--overwrite"],
     ["holds the run"]),
    ("cascade -o a user folder --overwrite",
     lambda t, r: ["cascade", r, r, "--task", "click", "--split", "test",
                   "-o", _foreign_folder(t), "--overwrite"],
     ["mine is not a folder polytask wrote"]),
    # found while hunting for more of the same kind
    ("train.threads 10**6 (torch segfaults)",
     lambda t, r: ["train", _config(t, _set("train", "threads", 10**6))],
     ["train.threads", "less than or equal to 1024"]),
    ("a config that is not text", lambda t, r: ["train", _binary_config(t)],
     ["not UTF-8 text"]),
    ("resume from a truncated checkpoint", lambda t, r: ["train", "--resume", _killed_run(t, r)],
     ["checkpoint", "could not be read"]),
    ("predict with damaged weights",
     lambda t, r: ["predict", _damaged_run(t, r, "model.safetensors", b"xx"), _rows(t)],
     ["model.safetensors could not be loaded"]),
    ("predict with a damaged preprocessor",
     lambda t, r: ["predict", _damaged_run(t, r, "preprocessor.json", b"{"), _rows(t)],
     ["preprocessor.json could not be read"]),
    ("cascade --low nan",
     lambda t, r: ["cascade", r, r, "--task", "click", "--split", "test", "--low", "nan"],
     ["--low and --high must be finite numbers"]),
    ("serve --threads 10**6", lambda t, r: ["serve", r, "--threads", 10**6],
     ["serve option threads=1000000 is out of range"]),
    ("export -o /", lambda t, r: ["export", r, "-o", "/"], ["give a file name"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "fragments"),
    [case[1:] for case in NEVER_FALL_OVER],
    ids=[case[0] for case in NEVER_FALL_OVER],
)
def test_bad_input_through_the_cli_is_one_line_exit_2_and_nothing_written(
    tmp_path: Path, trained_run, monkeypatch, command, fragments
):
    """Every input issue 12 found giving a traceback (or losing files), through the real
    command line: exit code 2, one line on stderr, nothing on stdout, nothing written."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(work)
    args = command(work, trained_run["run"])
    before = _tree(tmp_path, trained_run["run"])
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""
    assert _tree(tmp_path, trained_run["run"]) == before


# ---------------------------------------------------------------------- flags and output
def test_unused_spec_fields_are_a_one_line_warning_or_an_error_under_strict(
    tmp_path: Path, table_csv
):
    raw = base_spec(table_csv, model={"arch": "ple"}, train={"epochs": 1})
    config = write_yaml(tmp_path / "cfg.yaml", raw)  # the base spec sets num_experts: 3
    strict = invoke("train", config, "--out", tmp_path / "strict", "--quiet", "--strict")
    assert_user_error(strict, "model.num_experts is set but not used", "arch ple")
    assert not (tmp_path / "strict").exists()
    result = invoke("train", config, "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "model.num_experts" in warnings[0]


def test_divergence_through_the_cli_is_exit_2(tmp_path: Path, table_csv):
    config = write_yaml(tmp_path / "cfg.yaml", base_spec(table_csv, train={"lr": 1e8}))
    result = invoke("train", config, "--out", tmp_path / "run", "--quiet")
    assert_user_error(result, "training diverged", "nothing was kept")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml", "table.csv"]


def test_predict_overwrite_and_unknown_columns_flags(trained_run, tmp_path: Path):
    rows = make_table(n=10, seed=5).rename(columns={"color": "colour"})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    out = tmp_path / "pred.csv"
    args = ["predict", trained_run["run"], tmp_path / "rows.csv", "-o", out]
    assert invoke(*args, "--allow-unknown-columns").exit_code == 0
    first = out.read_bytes()
    assert_user_error(invoke(*args, "--allow-unknown-columns"), "already exists")
    assert out.read_bytes() == first
    assert invoke(*args, "--allow-unknown-columns", "--overwrite").exit_code == 0
    assert_user_error(invoke(*args, "--overwrite"), "unknown column 'colour'")


def test_tables_are_whole_when_piped(trained_run):
    """Rich cut tables at 80 columns when stdout was not a terminal; piped output is whole."""
    result = invoke("evaluate", trained_run["run"], "--split", "test")
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    header = next(line for line in result.stdout.splitlines() if "task" in line)
    for metric in ("auc", "logloss", "accuracy", "macro_f1", "rmse", "mae", "r2", "mean_auc"):
        assert f" {metric} " in header, header
    assert len(header) > 80


def test_help_and_info_do_not_import_torch(trained_run):
    """What makes them start in well under a second (torch alone takes ~1.7 s here)."""
    probe = (
        "import sys; from polytask.cli import app\n"
        "for args in (['--help'], ['info', sys.argv[1]]):\n"
        "    try: app(args)\n"
        "    except SystemExit as stop: assert stop.code == 0, (args, stop.code)\n"
        "heavy = [m for m in ('torch', 'pandas', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(trained_run["run"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert '"click": "binary"' in result.stdout


def test_cascade_overwrite_replaces_an_earlier_cascade(trained_run, tmp_path: Path):
    run = trained_run["run"]
    args = ["cascade", run, run, "--task", "click", "--split", "test", "-o", tmp_path / "c"]
    assert invoke(*args, "--steps", "3").exit_code == 0
    assert_user_error(invoke(*args, "--steps", "3"), "already exists; pass --overwrite")
    assert invoke(*args, "--steps", "5", "--overwrite").exit_code == 0
    assert len(json.loads((tmp_path / "c" / "cascade.json").read_text())["points"]) == 5
    assert json.loads((tmp_path / "c" / "polytask-manifest.json").read_text())["kind"] == "cascade"


def test_a_streamed_runs_valid_and_test_rows_are_its_files(tmp_path):
    from polytask.cli import labelled_rows
    from polytask.config import parse_spec

    test = tmp_path / "test.csv"
    make_table(n=30, seed=2).to_csv(test, index=False)
    data = {"stream": True, "split": {}, "test": str(test)}
    spec = parse_spec(base_spec(tmp_path / "absent.parquet", data=data))
    assert len(labelled_rows(spec, None, "test")) == 30  # the streamed table is not read
    with pytest.raises(Exception, match="the run's data has no valid split"):
        labelled_rows(spec, None, "valid")
