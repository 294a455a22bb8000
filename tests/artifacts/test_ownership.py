"""What polytask may replace or delete: the manifest, the places never written over, atomic
replacement, leftover .partial folders, failed runs and single-file outputs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import polytask
from polytask.artifacts import ownership
from polytask.artifacts import run_dir as rd
from polytask.artifacts.ownership import MANIFEST, OutputFolder, check_output_file, check_place
from polytask.errors import PolytaskError, PolytaskWarning
from polytask.train.trainer import TrainingDiverged, fit
from tests.conftest import base_spec


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def small_spec(table_csv: Path, **train) -> dict:
    return base_spec(table_csv, train={"epochs": 1, **train})


@pytest.fixture
def run(tmp_path: Path, table_csv: Path) -> Path:
    return fit(polytask.load_spec(small_spec(table_csv)), tmp_path / "run", progress=False)


# ---------------------------------------------------------------------- the manifest
def test_a_run_lists_every_file_it_wrote_in_its_manifest(run: Path):
    manifest = json.loads((run / MANIFEST).read_text())
    assert (manifest["tool"], manifest["kind"]) == ("polytask", "run")
    assert manifest["state"] == "complete"
    on_disk = {p.name: p.stat().st_size for p in run.iterdir() if p.name != MANIFEST}
    assert manifest["files"] == on_disk
    assert {rd.CONFIG, rd.WEIGHTS, rd.SUMMARY} <= set(on_disk)
    assert rd.CHECKPOINT not in on_disk  # only for resuming: dropped at publish


def test_overwrite_replaces_a_run_polytask_wrote(run: Path, table_csv: Path):
    old = snapshot(run)
    fit(polytask.load_spec(small_spec(table_csv, seed=3)), run, overwrite=True, progress=False)
    assert snapshot(run) != old
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".run.")]  # old removed


def test_overwrite_refuses_a_run_holding_a_file_polytask_did_not_write(run, table_csv):
    (run / "my_notes.txt").write_text("mine")
    before = snapshot(run)
    with pytest.raises(PolytaskError, match=r"holds files polytask did not write \(my_notes"):
        fit(polytask.load_spec(small_spec(table_csv)), run, overwrite=True, progress=False)
    assert snapshot(run) == before
    assert not rd.partial_path(run).exists()


def test_a_run_from_before_manifests_is_recognised_by_its_files(run: Path, table_csv: Path):
    (run / MANIFEST).unlink()
    fit(polytask.load_spec(small_spec(table_csv)), run, overwrite=True, progress=False)
    assert (run / MANIFEST).is_file()
    (run / MANIFEST).unlink()
    (run / "extra.bin").write_bytes(b"?")
    with pytest.raises(PolytaskError, match="holds files polytask did not write"):
        fit(polytask.load_spec(small_spec(table_csv)), run, overwrite=True, progress=False)


def test_overwrite_refuses_a_folder_without_manifest(tmp_path: Path, table_csv: Path):
    mine = tmp_path / "data"
    mine.mkdir()
    (mine / "config.yaml").write_text("a user's own config")
    with pytest.raises(PolytaskError, match="is not a folder polytask wrote"):
        fit(polytask.load_spec(small_spec(table_csv)), mine, overwrite=True, progress=False)
    assert (mine / "config.yaml").read_text() == "a user's own config"


def test_an_empty_folder_may_be_used_with_overwrite(tmp_path: Path, table_csv: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PolytaskError, match="already exists; pass --overwrite"):
        fit(polytask.load_spec(small_spec(table_csv)), empty, progress=False)
    fit(polytask.load_spec(small_spec(table_csv)), empty, overwrite=True, progress=False)
    assert (empty / rd.SUMMARY).is_file()


# ---------------------------------------------------------------------- never written over
def test_protected_places(tmp_path: Path, monkeypatch):
    work, home = tmp_path / "a" / "work", tmp_path / "home"
    work.mkdir(parents=True)
    home.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    for place, why in [
        (Path("."), "current folder"),
        (Path(".."), "current folder or one above"),
        (home, "home folder"),
        (Path("/"), "root folder"),
    ]:
        with pytest.raises(PolytaskError, match=why):
            check_place(place)
    source = tmp_path / "runs" / "source"
    for place, why in [
        (source, "holds the run"),
        (source.parent, "holds the run"),
        (source / "inner", "lies inside the run"),
    ]:
        with pytest.raises(PolytaskError, match=why):
            check_place(place, [source])
    check_place(tmp_path / "runs" / "other", [source])


def test_a_symbolic_link_is_not_replaced(run: Path, tmp_path: Path, table_csv: Path):
    link = tmp_path / "link"
    link.symlink_to(run)
    with pytest.raises(PolytaskError, match="is a symbolic link"):
        fit(polytask.load_spec(small_spec(table_csv)), link, overwrite=True, progress=False)
    assert link.is_symlink() and (run / rd.SUMMARY).is_file()


# ---------------------------------------------------------------------- atomic replacement
def test_a_failure_while_building_leaves_the_old_run_whole(run: Path, table_csv: Path):
    old = snapshot(run)

    def crash(row):
        raise RuntimeError("killed mid-run")

    with pytest.raises(RuntimeError, match="killed mid-run"):
        fit(
            polytask.load_spec(small_spec(table_csv)),
            run,
            overwrite=True,
            progress=False,
            callbacks=[crash],
        )
    assert snapshot(run) == old
    assert rd.has_checkpoint(rd.partial_path(run))  # kept for --resume


def test_a_failure_during_the_swap_puts_the_old_run_back(run: Path, table_csv, monkeypatch):
    old = snapshot(run)
    real = os.rename

    def rename(source, target):
        if str(source).endswith(".partial"):
            raise OSError("disk gone")
        real(source, target)

    monkeypatch.setattr(ownership.os, "rename", rename)
    with pytest.raises(OSError, match="disk gone"):
        fit(polytask.load_spec(small_spec(table_csv)), run, overwrite=True, progress=False)
    assert snapshot(run) == old


def test_only_listed_files_are_deleted_from_a_replaced_run(tmp_path: Path):
    """Files that appear in the old run between the check and the swap survive it."""
    folder = OutputFolder(tmp_path / "out", "cascade", ["cascade.json"], overwrite=True)
    folder.claim()
    (folder.create() / "cascade.json").write_text("{}")
    folder.publish()
    again = OutputFolder(tmp_path / "out", "cascade", ["cascade.json"], overwrite=True)
    again.claim()
    (again.create() / "cascade.json").write_text('{"new": 1}')
    real = ownership.owned_names

    def owned_then_foreign(target):
        names = real(target)
        (target / "late.txt").write_text("written after the check")
        return names

    ownership.owned_names = owned_then_foreign
    try:
        with pytest.warns(PolytaskWarning, match="files appeared in it"):
            again.publish()
    finally:
        ownership.owned_names = real
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    assert [p.name for p in kept[0].iterdir()] == ["late.txt"]
    assert (tmp_path / "out" / "cascade.json").read_text() == '{"new": 1}'


# ---------------------------------------------------------------------- leftovers and failures
def test_a_killed_commands_partial_folder_is_reported_and_removed(tmp_path: Path):
    leftover = OutputFolder(tmp_path / "out", "slim_run", ["config.yaml"])
    (leftover.create() / "config.yaml").write_text("half")
    (leftover.partial / ".config.yaml.0123abcd.tmp").write_text("half a temp file")
    folder = OutputFolder(tmp_path / "out", "slim_run", ["config.yaml"])
    with pytest.warns(PolytaskWarning, match=r"removed .*out.partial, left behind"):
        folder.claim()
    assert not folder.partial.exists()


def test_a_partial_folder_holding_a_user_file_is_left_alone(tmp_path: Path):
    leftover = OutputFolder(tmp_path / "out", "slim_run", ["config.yaml"])
    (leftover.create() / "thesis.tex").write_text("mine")
    with pytest.raises(PolytaskError, match="polytask did not write all of it"):
        OutputFolder(tmp_path / "out", "slim_run", ["config.yaml"], overwrite=True).claim()
    assert (leftover.partial / "thesis.tex").read_text() == "mine"
    plain = tmp_path / "other.partial"
    plain.mkdir()
    (plain / "a.txt").write_text("a folder a user named .partial")
    with pytest.raises(PolytaskError, match="polytask did not write all of it"):
        OutputFolder(tmp_path / "other", "run", ["config.yaml"]).claim()


def test_a_resumable_training_leftover_needs_resume_or_overwrite(tmp_path, table_csv):
    def crash(row):
        raise KeyboardInterrupt

    spec = polytask.load_spec(small_spec(table_csv, epochs=2))
    with pytest.raises(KeyboardInterrupt, match="--resume"):
        fit(spec, tmp_path / "run", progress=False, callbacks=[crash])
    with pytest.raises(PolytaskError, match="continue it with `polytask train --resume"):
        fit(spec, tmp_path / "run", progress=False)
    with pytest.warns(PolytaskWarning, match="removed"):
        fit(spec, tmp_path / "run", overwrite=True, progress=False)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, table_csv):
    with pytest.raises(TrainingDiverged, match="nothing was kept"):
        fit(polytask.load_spec(small_spec(table_csv, lr=1e8)), tmp_path / "run", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


# ---------------------------------------------------------------------- permissions
@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_files_follow_the_umask(tmp_path: Path, table_csv: Path, umask, file_mode, dir_mode):
    previous = os.umask(umask)
    try:
        run = fit(polytask.load_spec(small_spec(table_csv)), tmp_path / "run", progress=False)
    finally:
        os.umask(previous)
    assert run.stat().st_mode & 0o777 == dir_mode
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.iterdir()}
    assert set(modes.values()) == {file_mode}, modes


# ---------------------------------------------------------------------- single files
def test_single_file_outputs(tmp_path: Path, run: Path):
    (tmp_path / "input.csv").write_text("x\n1\n")
    with pytest.raises(PolytaskError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(PolytaskError, match="does not exist; create it first"):
        check_output_file(tmp_path / "missing" / "out.csv")
    with pytest.raises(PolytaskError, match="is not a folder"):
        check_output_file(tmp_path / "input.csv" / "out.csv")
    with pytest.raises(PolytaskError, match="already exists; pass --overwrite"):
        check_output_file(tmp_path / "input.csv")
    with pytest.raises(PolytaskError, match="is an input of this command"):
        check_output_file(tmp_path / "input.csv", overwrite=True, inputs=[tmp_path / "input.csv"])
    with pytest.raises(PolytaskError, match="is a file of the polytask artifact"):
        check_output_file(run / rd.CONFIG, overwrite=True)
    assert check_output_file(tmp_path / "input.csv", overwrite=True) == tmp_path / "input.csv"
    assert check_output_file(tmp_path / "new.csv") == tmp_path / "new.csv"
    assert not (tmp_path / "missing").exists()


def test_the_legacy_recognition_does_not_touch_a_run_copy(trained_run, tmp_path: Path):
    """A copy of the session's run, manifest removed: it is a run by its files."""
    copy = tmp_path / "copy"
    shutil.copytree(trained_run["run"], copy)
    (copy / MANIFEST).unlink()
    names, problem = ownership.owned_names(copy)
    assert problem == "" and names == {p.name for p in copy.iterdir()}
