"""Write files so that a reader never sees half of one: write a temp file, then rename.

The temporary file is created with ``os.open(..., 0o666)``, so the kernel applies the user's
umask exactly as it does for any file the user creates (``tempfile.mkstemp`` would give 0600
whatever the umask, and the rename would carry that into the artifact). Nothing here creates
folders: the caller decides where a file may go (see :mod:`polytask.artifacts.ownership`).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def temp_name(path: Path) -> Path:
    """A fresh hidden name beside ``path``: ``.<name>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _create_temp(path: Path) -> Path:
    """Create an empty temp file beside ``path`` with the umask's permissions."""
    for _ in range(100):
        temp = temp_name(path)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return temp
    raise FileExistsError(f"could not create a temporary file beside {path}")


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temp_path)`` then rename over ``path`` (atomic on one filesystem).

    Some writers replace the file they are given with one of their own (safetensors creates
    it 0600): the umask's permissions, read off the temp file as created, are put back."""
    temp = _create_temp(Path(path))
    mode = temp.stat().st_mode & 0o777
    try:
        write(temp)
        if temp.stat().st_mode & 0o777 != mode:
            temp.chmod(mode)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    def write(temp: Path) -> None:
        temp.write_text(text)

    write_atomic(path, write)


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
