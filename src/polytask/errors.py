"""User-facing errors.

Everything a user can cause (a bad config, bad data, a bad request) raises
:class:`PolytaskError` with one line that names the field, column or row and what was
expected. The CLI turns it into exit code 2 and the server into a 4xx; anything else is a bug.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable


class PolytaskError(Exception):
    """A problem with the user's input, reported as one clear line."""


class ConfigError(PolytaskError):
    """The run specification is invalid."""


class OptionError(ConfigError, ValueError):
    """A method's option is unknown, of the wrong type or out of its declared range.

    A :class:`ConfigError` for the CLI and the spec (exit code 2), and a :class:`ValueError`
    for Python code that builds a method with a bad keyword argument.
    """


class DataError(PolytaskError):
    """A table does not match what the run specification or fitted preprocessor expects."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class PolytaskWarning(UserWarning):
    """Something the user should know that does not stop the command: one line, like an
    error. The CLI prints it as ``warning: ...``; the Python API leaves it to ``warnings``."""


def warn(message: str) -> None:
    """Issue a :class:`PolytaskWarning` pointing at the caller's caller."""
    warnings.warn(message, PolytaskWarning, stacklevel=3)
