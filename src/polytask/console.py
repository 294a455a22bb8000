"""Rich consoles for the command line.

Rich wraps and truncates to the terminal's width, and to 80 columns when the output is not a
terminal, which cuts wide tables (metrics of many tasks, `polytask archs`) when they are
piped into a file or another program. A console that does not write to a terminal is given
a width no table reaches, so piped output is whole.
"""

from __future__ import annotations

from rich.console import Console

PIPED_WIDTH = 100_000


def make_console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=PIPED_WIDTH)
    return console
