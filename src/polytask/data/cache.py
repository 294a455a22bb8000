"""A cache of encoded training tensors, so that training on the same file again skips reading,
fitting and encoding it.

Where it lives: ``$POLYTASK_CACHE/tensors`` (``~/.cache/polytask/tensors`` by default; the
same root as the QM9 cache), one safetensors file per entry: every split's feature, label and
weight tensors, with the fitted preprocessor state (JSON) and the warnings the first encoding
issued in its metadata.

How an entry is keyed: SHA-256 over the polytask version, the content (SHA-256 of the bytes,
not the path or the modification time) of every file the data comes from (``data.train`` /
``valid`` / ``test``, every file of a Parquet folder, or a built-in dataset's source files),
the data section and the tasks as validated (columns, split, options: everything that decides
how the rows are read, split and encoded), whether the inputs are an image, and the given
preprocessor state where one is reused (a run resumed or started from trained weights).

Invalidation: any change to one of those is another key, so a stale entry is never read; an
entry that cannot be read (truncated, corrupt, another format) is deleted and recomputed.
Bounded: after each write the least recently used entries (a hit touches its file) are deleted
until the folder holds at most ``$POLYTASK_TENSOR_CACHE_MB`` megabytes (2048 by default).
Off: ``data.cache: false`` in a spec, or ``POLYTASK_TENSOR_CACHE=off`` for every run.
Writes are atomic (a temporary file in the same folder, then :func:`os.replace`), so a reader
sees a whole entry or none, also with several runs at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polytask.config import DataSpec, TaskSpec

if TYPE_CHECKING:
    import torch

DEFAULT_MAX_MB = 2048
FORMAT = "polytask-tensors-1"


def cache_folder() -> Path | None:
    """The folder of the entries, or None where ``POLYTASK_TENSOR_CACHE=off``."""
    if os.environ.get("POLYTASK_TENSOR_CACHE", "").strip().lower() in {"off", "0", "false", "no"}:
        return None
    root = os.environ.get("POLYTASK_CACHE") or str(Path.home() / ".cache" / "polytask")
    return Path(root) / "tensors"


def max_bytes() -> int:
    """The bound on the folder's size, from ``POLYTASK_TENSOR_CACHE_MB``."""
    text = os.environ.get("POLYTASK_TENSOR_CACHE_MB", "")
    try:
        megabytes = float(text) if text.strip() else DEFAULT_MAX_MB
    except ValueError:
        megabytes = DEFAULT_MAX_MB
    return int(max(megabytes, 0.0) * 1024 * 1024)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a folder: of its files' relative names and bytes)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def source_files(data: DataSpec) -> list[Path] | None:
    """The files the data section reads, or None where they are not known (a generated
    dataset: nothing to cache by content)."""
    if data.dataset is None:
        return [p for p in (data.train, data.valid, data.test) if p is not None]
    if data.dataset == "census_income":
        from polytask.data.datasets.census import DEFAULT_CACHE, TEST_FILE, TRAIN_FILE

        path = data.dataset_options.get("path")
        folder = Path(path) if path is not None else DEFAULT_CACHE
        files = [folder / TRAIN_FILE, folder / TEST_FILE]
        return files if all(f.is_file() for f in files) else None
    if data.dataset == "census_income_sample":
        shipped = resources.files("polytask.data.datasets") / "files"
        names = ("census_income_sample.data.gz", "census_income_sample.test.gz")
        return [Path(str(shipped / name)) for name in names]
    return None


def cache_key(
    data: DataSpec,
    tasks: Iterable[TaskSpec],
    *,
    image: bool,
    preprocessor_state: Mapping[str, Any] | None,
    version: str,
) -> str | None:
    """The entry's name, or None where the data cannot be cached (off, or files unknown)."""
    files = source_files(data) if data.cache else None
    if files is None or not all(f.exists() for f in files):
        return None
    section = data.model_dump(mode="json", exclude={"train", "valid", "test", "cache"})
    described = {
        "format": FORMAT,
        "polytask": version,
        "files": [file_digest(f) for f in files],
        "roles": [name for name in ("train", "valid", "test") if getattr(data, name) is not None],
        "data": section,
        "tasks": [task.model_dump(mode="json") for task in tasks],
        "image": image,
        "preprocessor": preprocessor_state,
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load(key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The tensors and metadata stored under ``key``, or None (a miss; an unreadable entry is
    deleted). A hit marks the entry as recently used."""
    folder = cache_folder()
    if folder is None:
        return None
    path = folder / f"{key}.safetensors"
    if not path.is_file():
        return None
    try:  # read whole into memory: tensors mapped from the file would fault if it changed
        tensors, metadata = _parse(path.read_bytes())
    except Exception:  # any unreadable entry is only a miss
        path.unlink(missing_ok=True)
        return None
    with contextlib.suppress(OSError):  # marked used; a read-only folder is still a hit
        os.utime(path)
    return tensors, metadata


def _parse(content: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An entry's tensors and metadata (safetensors: an 8-byte header size, a JSON header
    whose ``__metadata__`` holds ours, then the data)."""
    from safetensors.torch import load as load_tensors

    size = int.from_bytes(content[:8], "little")
    metadata = json.loads(content[8 : 8 + size]).get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise ValueError("not a polytask tensor cache entry")
    return load_tensors(content), dict(metadata)


def store(key: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write an entry atomically, then bound the folder. A cache that cannot be written (a
    read-only home, a full disk) only costs the next run its speed-up."""
    folder = cache_folder()
    if folder is None:
        return
    from safetensors.torch import save_file

    temp: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
        os.close(handle)
        contiguous = {name: tensor.contiguous() for name, tensor in tensors.items()}
        save_file(contiguous, temp, metadata={**metadata, "format": FORMAT})
        os.replace(temp, folder / f"{key}.safetensors")
        temp = None
        evict(folder, max_bytes())
    except OSError:
        pass
    finally:
        if temp is not None:
            Path(temp).unlink(missing_ok=True)


def evict(folder: Path, limit: int) -> None:
    """Delete the least recently used entries until the folder holds at most ``limit`` bytes
    (the newest entry is kept even where it alone is larger)."""
    entries = []
    for path in folder.glob("*.safetensors"):
        if not _is_entry_name(path.name):  # only files this cache wrote (named by their key)
            continue
        try:
            stat = path.stat()
        except OSError:  # removed by another run meanwhile
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    entries.sort(reverse=True)  # newest first
    total = 0
    for position, (_, size, path) in enumerate(entries):
        total += size
        if total > limit and position > 0:
            path.unlink(missing_ok=True)


def _is_entry_name(name: str) -> bool:
    """``<64 hex digits>.safetensors``: the name :func:`store` gives an entry."""
    key = name.removesuffix(".safetensors")
    return len(key) == 64 and all(c in "0123456789abcdef" for c in key)
