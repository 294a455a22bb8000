"""polytask: one PyTorch model for many tasks.

``train`` and ``load`` import the training and inference stacks (and torch) on first use, so
that importing polytask, reading a config or listing architectures stays fast.
"""

from __future__ import annotations

from typing import Any

# The subpackage polytask.train is imported first (its __init__ is empty), so that importing
# its modules later does not rebind the name ``train`` below to the subpackage.
import polytask.train as _training  # noqa: F401
from polytask.config import RunSpec, load_spec
from polytask.errors import ConfigError, DataError, PolytaskError

__version__ = "0.2.0"


def train(*args: Any, **kwargs: Any) -> Any:
    """Train a run specification and return the loaded run (see :func:`polytask.api.train`)."""
    from polytask.api import train as train_run

    return train_run(*args, **kwargs)


def grow(*args: Any, **kwargs: Any) -> Any:
    """Add tasks to a finished run (see :func:`polytask.api.grow`)."""
    from polytask.api import grow as grow_run

    return grow_run(*args, **kwargs)


def stream(*args: Any, **kwargs: Any) -> Any:
    """Train a stream of experiences and measure forgetting (see :func:`polytask.api.stream`)."""
    from polytask.api import stream as run_stream

    return run_stream(*args, **kwargs)


def load(*args: Any, **kwargs: Any) -> Any:
    """Load a finished run directory (see :func:`polytask.api.load`)."""
    from polytask.api import load as load_run

    return load_run(*args, **kwargs)


__all__ = [
    "ConfigError",
    "DataError",
    "PolytaskError",
    "RunSpec",
    "__version__",
    "grow",
    "load",
    "load_spec",
    "stream",
    "train",
]
