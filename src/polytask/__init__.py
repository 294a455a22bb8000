"""polytask: one PyTorch model for many tasks.

The public names are imported on first use, so that ``import polytask`` (and the command
line's ``--help``) do not pay for torch and pandas until something needs them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from polytask.api import finetune, grow, load, merge, stream, train
    from polytask.config import RunSpec, load_spec
    from polytask.errors import ConfigError, DataError, PolytaskError

_HOMES = {
    "finetune": "polytask.api",
    "load": "polytask.api",
    "stream": "polytask.api",
    "RunSpec": "polytask.config",
    "load_spec": "polytask.config",
    "ConfigError": "polytask.errors",
    "DataError": "polytask.errors",
    "PolytaskError": "polytask.errors",
}

__all__ = [
    "ConfigError",
    "DataError",
    "PolytaskError",
    "RunSpec",
    "__version__",
    "finetune",
    "grow",
    "load",
    "load_spec",
    "merge",
    "stream",
    "train",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'polytask' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def _api_function(name: str) -> property:
    """A module attribute that is always ``polytask.api.<name>``; assigning to it (as the
    import of a subpackage of the same name does) changes nothing."""

    def get(self: types.ModuleType) -> Any:
        return getattr(importlib.import_module("polytask.api"), name)

    def ignore(self: types.ModuleType, value: Any) -> None:
        del value

    return property(get, ignore)


class _Polytask(types.ModuleType):
    """``polytask.train``, ``polytask.merge`` and ``polytask.grow`` are the functions, although
    subpackages have the same names: importing ``polytask.train.<module>`` makes Python bind
    the subpackage to the attribute, which these properties ignore (the subpackages stay
    reachable by import)."""

    train = _api_function("train")
    merge = _api_function("merge")
    grow = _api_function("grow")


sys.modules[__name__].__class__ = _Polytask
