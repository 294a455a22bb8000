"""Optional dependencies: imported only by the feature that needs them, with one clear line
(exit code 2 at the CLI) naming the extra to install when they are missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from polytask.errors import PolytaskError


def require(module: str, feature: str, extra: str) -> ModuleType:
    """Import ``module`` for ``feature``, or fail with the ``pip install`` line that adds it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing = getattr(error, "name", None) or module
        raise PolytaskError(
            f"{feature} needs the '{missing}' package: pip install 'polytask[{extra}]'"
        ) from None
