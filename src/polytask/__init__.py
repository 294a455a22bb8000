"""polytask: one PyTorch model for many tasks.

``train`` and ``load`` import the training and inference stacks (and torch) on first use, so
that importing polytask, reading a config or listing architectures stays fast.
"""

from __future__ import annotations

from typing import Any

# The subpackages polytask.train and polytask.merge are imported first (their __init__ files
# are empty), so that importing their modules later does not rebind the names ``train`` and
# ``merge`` below to the subpackages.
import polytask.merge as _merging  # noqa: F401
import polytask.train as _training  # noqa: F401
from polytask.config import RunSpec, load_spec
from polytask.errors import ConfigError, DataError, PolytaskError

__version__ = "0.2.0"


def train(*args: Any, **kwargs: Any) -> Any:
    """Train a run specification and return the loaded run (see :func:`polytask.api.train`)."""
    from polytask.api import train as train_run

    return train_run(*args, **kwargs)


def load(*args: Any, **kwargs: Any) -> Any:
    """Load a finished run directory (see :func:`polytask.api.load`)."""
    from polytask.api import load as load_run

    return load_run(*args, **kwargs)


def finetune(*args: Any, **kwargs: Any) -> Any:
    """Fine-tune a run on some of its tasks (see :func:`polytask.api.finetune`)."""
    from polytask.api import finetune as finetune_run

    return finetune_run(*args, **kwargs)


def merge(*args: Any, **kwargs: Any) -> Any:
    """Merge fine-tuned runs of one base into one run (see :func:`polytask.api.merge`)."""
    from polytask.api import merge as merge_runs

    return merge_runs(*args, **kwargs)


__all__ = [
    "ConfigError",
    "DataError",
    "PolytaskError",
    "RunSpec",
    "__version__",
    "finetune",
    "load",
    "load_spec",
    "merge",
    "train",
]
