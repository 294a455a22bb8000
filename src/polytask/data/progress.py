"""Progress while a large table is read and prepared, instead of seconds of silence.

A command that wants it wraps its work in :func:`reporting`; :func:`polytask.data.tabular.
read_table` then shows the bytes read of a large file, and :func:`step` a line for each
preparation step ("fitting the preprocessor on 1,200,000 rows"), on stderr with rich. Nothing
is shown when stderr is not a terminal, when the command did not ask for it, or for small
files, so logs and tests stay quiet. Reading a file with progress parses exactly as without:
the same reader reads the same bytes through a counting file object.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

# Files smaller than this are read without a progress bar (it would only flicker).
PROGRESS_MIN_BYTES = 16 * 1024 * 1024

_CONSOLE: ContextVar[Console | None] = ContextVar("polytask_progress_console", default=None)


@contextlib.contextmanager
def reporting(enabled: bool = True, console: Console | None = None) -> Iterator[None]:
    """Show reading and preparation progress inside this block (when stderr, or the given
    console, is a terminal)."""
    console = console or Console(stderr=True)
    token = _CONSOLE.set(console if enabled and console.is_terminal else None)
    try:
        yield
    finally:
        _CONSOLE.reset(token)


def active() -> bool:
    return _CONSOLE.get() is not None


@contextlib.contextmanager
def step(description: str) -> Iterator[None]:
    """A spinner line for one step, cleared when it ends."""
    console = _CONSOLE.get()
    if console is None:
        yield
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        progress.add_task(description, total=None)
        yield


class _Counting(io.RawIOBase):
    """A raw binary file that reports every chunk it reads."""

    def __init__(self, raw: Any, advance: Callable[[int], None]) -> None:
        self._raw = raw
        self._advance = advance

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer)
        self._advance(count or 0)
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


@contextlib.contextmanager
def counted(path: Path) -> Iterator[io.BufferedIOBase | None]:
    """A binary handle on ``path`` that drives a progress bar of bytes read, or None when no
    progress is to be shown (the caller then reads the path itself)."""
    console = _CONSOLE.get()
    size = path.stat().st_size
    if console is None or size < PROGRESS_MIN_BYTES:
        yield None
        return
    columns = (
        TextColumn(f"reading {path.name}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("read", total=size)
        raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the reader below
        with io.BufferedReader(_Counting(raw, lambda n: progress.advance(bar, n))) as handle:
            yield handle
