"""Optional dependencies: imported only by the feature that needs them, with one clear line
(exit code 2 at the CLI) naming the extra to install when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from polytask.errors import PolytaskError


def require(module: str, feature: str, extra: str, install: str | None = None) -> ModuleType:
    """Import ``module`` for ``feature``, or fail with the ``pip install`` line that adds it
    (``install`` replaces the default ``pip install 'polytask[extra]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None) or module
        line = install or f"pip install 'polytask[{extra}]'"
        raise PolytaskError(f"{feature} needs the '{missing}' package: {line}") from None
