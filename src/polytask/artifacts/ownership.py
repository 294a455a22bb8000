"""What polytask may write, replace or delete: the one policy every command goes through.

A user points polytask at their working folders, so a mistyped ``--out`` must never cost them
a file. The rules:

Folders (a run, a slim run, a cascade's output) are built in ``<target>.partial`` beside the
destination and carry :data:`MANIFEST`, which names the kind of artifact and every file
polytask wrote there. Only when complete is the folder swapped into place.

* ``--overwrite`` replaces only a folder that polytask wrote: one with a manifest, or a run
  made before manifests existed (``config.yaml``, ``summary.json`` and ``model.safetensors``,
  and nothing but run files), holding no file that the manifest does not list; or an empty
  folder, which holds nothing to lose.
* Never, whatever the flags: the current folder or one above it, the home folder or one
  above it, the root, or a folder that is, holds or lies inside a run the command reads.
* Replacement is a swap: the new folder is complete beside the old one; the old one is renamed
  away, the new one renamed into place, and only then are the old one's files deleted, file by
  file, exactly those its manifest lists. A crash leaves one whole run at every moment.
* A leftover ``<target>.partial`` (a killed command) is polytask's when its manifest says so
  and it holds only files the command that made it may write; the next command into the same
  place reports and removes it (a training run's resumable one only with ``--overwrite``).
  A leftover holding anything else is left alone and the command refuses.

Single files (``predict -o``, ``export -o``): never a folder, never into a folder that does
not exist (no silent ``mkdir -p``), never over an existing file without ``--overwrite``, never
over an input of the command or over a file of a polytask artifact.

Anything refused is one :class:`~polytask.errors.PolytaskError` line, before any work is done;
what is cleaned up is reported as a :class:`~polytask.errors.PolytaskWarning`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from polytask.artifacts.atomic import TEMP_SUFFIX, temp_name, write_json
from polytask.errors import PolytaskError, warn

MANIFEST = "polytask-manifest.json"
PARTIAL_SUFFIX = ".partial"
MANIFEST_FORMAT = 1
# A run written before manifests existed is recognised by these files ...
LEGACY_RUN_REQUIRED = frozenset({"config.yaml", "summary.json", "model.safetensors"})
# ... and holds nothing but files a run of that time could hold.
LEGACY_RUN_FILES = LEGACY_RUN_REQUIRED | {
    "preprocessor.json",
    "metrics.jsonl",
    "metrics.json",
    "checkpoint.pt",
    "experts.json",
    "experts.png",
    "balance.png",
    "slim.json",
}
_TEMP = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX) + r"\Z")
SHOWN = 3  # foreign files named in a message


def partial_path(target: Path) -> Path:
    """Where the folder for ``target`` is built: ``<target>.partial`` beside it."""
    return target.with_name(target.name + PARTIAL_SUFFIX)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it has none (or one polytask did not write)."""
    path = folder / MANIFEST
    if path.is_symlink() or not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("tool") != "polytask":
        return None
    if not isinstance(manifest.get("files"), dict | list):
        return None
    return manifest


def _entries(folder: Path) -> dict[str, bool]:
    """Name -> whether it is a plain file (not a folder, not a link)."""
    with os.scandir(folder) as scan:
        return {e.name: e.is_file(follow_symlinks=False) for e in scan}


def _listing(names: Iterable[str]) -> str:
    ordered = sorted(names)
    more = f" and {len(ordered) - SHOWN} more" if len(ordered) > SHOWN else ""
    return ", ".join(ordered[:SHOWN]) + more


def artifact_files(folder: Path) -> set[str]:
    """The names a finished polytask artifact in ``folder`` consists of (its manifest's
    files, or a pre-manifest run's possible files); empty when it is not one."""
    manifest = read_manifest(folder)
    if manifest is not None:
        if manifest.get("state", "complete") != "complete":
            return set()
        return set(manifest["files"]) | {MANIFEST}
    if all((folder / name).is_file() for name in LEGACY_RUN_REQUIRED):
        return set(LEGACY_RUN_FILES)
    return set()


def owned_names(folder: Path) -> tuple[set[str] | None, str]:
    """The names of what polytask wrote in a finished ``folder`` and ``""``; or None and why
    the folder is not polytask's to replace (naming what it holds that polytask did not
    write)."""
    entries = _entries(folder)
    listed = artifact_files(folder)
    if not listed:
        return None, f"{folder} is not a folder polytask wrote (it has no {MANIFEST})"
    foreign = [name for name, plain in entries.items() if name not in listed or not plain]
    if foreign:
        return None, (
            f"{folder} holds files polytask did not write ({_listing(foreign)}); "
            "move them away first"
        )
    return set(entries), ""


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_place(target: Path, sources: Sequence[Path] = ()) -> None:
    """Refuse the places no command may write over, whatever its flags."""
    where = target.resolve()
    here = Path.cwd().resolve()
    home = Path.home().resolve()
    if where == Path(where.anchor):
        raise PolytaskError(f"{target} is the root folder; give a folder of its own")
    if _is_within(here, where):
        raise PolytaskError(
            f"{target} is the current folder or one above it; give a folder of its own "
            "(for example runs/NAME)"
        )
    if _is_within(home, where):
        raise PolytaskError(
            f"{target} is the home folder or one above it; give a folder of its own"
        )
    for source in sources:
        read = Path(source).resolve()
        if _is_within(read, where):
            raise PolytaskError(
                f"{target} holds the run {source} that this command reads; give another folder"
            )
        if _is_within(where, read):
            raise PolytaskError(
                f"{target} lies inside the run {source} that this command reads; "
                "give a folder outside it"
            )


def _remove_files(folder: Path, names: Iterable[str]) -> list[str]:
    """Delete exactly ``names`` (plain files) from ``folder``, then the folder if empty;
    return what is left there."""
    for name in names:
        path = folder / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
    left = sorted(_entries(folder))
    if not left:
        folder.rmdir()
    return left


class OutputFolder:
    """One folder polytask is about to create or replace, built beside it and swapped in.

    ``kind`` names the artifact ("run", "slim_run", "cascade"); ``may_write`` the file names
    the command may write there (anything else found in its ``.partial`` folder is not
    polytask's); ``sources`` the runs the command reads; ``resumable`` tells a leftover
    ``.partial`` folder that a later command can continue (kept unless ``overwrite``).

    Use: :meth:`claim` (checks, before any work), :meth:`create` (the ``.partial`` folder),
    write files into :attr:`partial`, then :meth:`publish`; on failure :meth:`discard`.
    """

    def __init__(
        self,
        target: str | Path,
        kind: str,
        may_write: Iterable[str],
        *,
        overwrite: bool = False,
        sources: Sequence[str | Path] = (),
        resumable: Callable[[Path], bool] | None = None,
    ) -> None:
        self.target = Path(target)
        self.partial = partial_path(self.target)
        self.kind = kind
        self.may_write = frozenset(may_write)
        self.overwrite = overwrite
        self.sources = [Path(s) for s in sources]
        self.resumable = resumable

    # ------------------------------------------------------------------ before any work
    def claim(self) -> None:
        """Refuse now (one line, nothing touched) what :meth:`publish` could not do; clean a
        leftover ``.partial`` folder of polytask's."""
        check_place(self.target, self.sources)
        self._check_target()
        if self.partial.exists() or self.partial.is_symlink():
            self._clear_leftover()

    def _check_target(self) -> None:
        target = self.target
        if target.is_symlink():
            raise PolytaskError(f"{target} is a symbolic link; give the folder itself")
        if not target.exists():
            return
        if not target.is_dir():
            raise PolytaskError(f"{target} is a file, not a folder; give a folder to create")
        if not self.overwrite:
            raise PolytaskError(f"{target} already exists; pass --overwrite to replace it")
        if not _entries(target):
            return  # an empty folder: nothing in it to lose
        names, problem = owned_names(target)
        if names is None:
            raise PolytaskError(f"--overwrite refused: {problem}")

    def _leftover_names(self) -> set[str] | None:
        """What a leftover ``.partial`` folder holds, or None when it is not polytask's."""
        if self.partial.is_symlink() or not self.partial.is_dir():
            return None
        manifest = read_manifest(self.partial)
        entries = _entries(self.partial)
        if manifest is not None:
            allowed = {*manifest.get("may_write", []), *manifest["files"], MANIFEST}
        elif "config.yaml" in entries:  # a run's .partial from before manifests existed
            allowed = set(LEGACY_RUN_FILES)
        else:
            return None
        for name, plain in entries.items():
            temp = _TEMP.match(name)
            if not plain or (name not in allowed and not (temp and temp["name"] in allowed)):
                return None
        return set(entries)

    def _clear_leftover(self) -> None:
        names = self._leftover_names()
        if names is None:
            raise PolytaskError(
                f"{self.partial} is in the way and polytask did not write all of it; "
                "move it away first"
            )
        if self.resumable is not None and self.resumable(self.partial) and not self.overwrite:
            raise PolytaskError(
                f"an unfinished run is at {self.partial}; continue it with "
                f"`polytask train --resume {self.target}` or start again with --overwrite"
            )
        left = _remove_files(self.partial, names)
        if left:
            raise PolytaskError(f"{self.partial} could not be cleaned up ({_listing(left)})")
        warn(f"removed {self.partial}, left behind by an unfinished earlier command")

    # ------------------------------------------------------------------ building
    def create(self) -> Path:
        """Create the ``.partial`` folder (and the target's parents) with a manifest that
        marks it as polytask's while it is built."""
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir()
        self._write_manifest(
            {
                "state": "partial",
                "may_write": sorted(self.may_write),
                "overwrite": self.overwrite,
                "files": [],
            }
        )
        return self.partial

    def _write_manifest(self, fields: dict[str, Any]) -> None:
        from polytask import __version__

        manifest = {
            "tool": "polytask",
            "format": MANIFEST_FORMAT,
            "kind": self.kind,
            "polytask_version": __version__,
            "written": _now(),
            **fields,
        }
        write_json(self.partial / MANIFEST, manifest)

    @classmethod
    def resume(cls, target: str | Path, kind: str, may_write: Iterable[str]) -> OutputFolder:
        """The folder of an unfinished command being continued: its ``.partial`` folder
        exists, and its manifest says whether the command was allowed to replace the target."""
        folder = cls(target, kind, may_write)
        manifest = read_manifest(folder.partial)
        # before manifests, a run could only start beside an existing folder with --overwrite
        folder.overwrite = True if manifest is None else bool(manifest.get("overwrite", False))
        return folder

    def publish(self) -> Path:
        """List the files written in the manifest and swap the folder into place."""
        entries = _entries(self.partial)
        for name, plain in entries.items():
            temp = _TEMP.match(name)
            if plain and temp and temp["name"] in self.may_write:
                (self.partial / name).unlink()  # a temp file of a killed earlier attempt
        files = {
            name: (self.partial / name).stat().st_size
            for name, plain in sorted(_entries(self.partial).items())
            if plain and name in self.may_write
        }
        self._write_manifest({"state": "complete", "files": files})
        self._swap()
        return self.target

    def _swap(self) -> None:
        target = self.target
        if target.is_symlink() or target.exists():
            if target.is_dir() and not target.is_symlink() and not _entries(target):
                target.rmdir()
            else:
                self._replace()
                return
        os.rename(self.partial, target)

    def _replace(self) -> None:
        target = self.target
        if not self.overwrite:
            raise PolytaskError(
                f"{target} appeared while this command ran; the result is in {self.partial}"
            )
        names, problem = owned_names(target)  # again: files may have appeared since claim
        if names is None:
            raise PolytaskError(f"{problem}; the result is in {self.partial}")
        old = temp_name(target)
        os.rename(target, old)
        try:
            os.rename(self.partial, target)
        except BaseException:
            os.rename(old, target)
            raise
        left = _remove_files(old, names)
        if left:
            warn(f"{old} kept: files appeared in it while it was replaced ({_listing(left)})")

    def discard(self) -> None:
        """Remove the ``.partial`` folder of a command that failed (only polytask's files)."""
        if not self.partial.is_dir() or self.partial.is_symlink():
            return
        names = self._leftover_names()
        if names is None:
            warn(f"{self.partial} kept: it holds files polytask did not write")
            return
        with contextlib.suppress(OSError):
            _remove_files(self.partial, names)


def check_output_file(
    path: str | Path, *, overwrite: bool = False, inputs: Sequence[str | Path] = ()
) -> Path:
    """Refuse a single-file output that would lose data or land somewhere unintended."""
    path = Path(path)
    if path.is_dir():
        raise PolytaskError(f"{path} is a folder; give a file name (for example {path}/out.csv)")
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise PolytaskError(f"cannot write {path}: the folder {parent} {what}; create it first")
    resolved = path.resolve()
    for source in inputs:
        if Path(source).resolve() == resolved:
            raise PolytaskError(f"{path} is an input of this command; write the output elsewhere")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise PolytaskError(f"{path} already exists; pass --overwrite to replace it")
        if path.name in artifact_files(resolved.parent):
            raise PolytaskError(
                f"{path} is a file of the polytask artifact in {parent}; write elsewhere"
            )
    return path
