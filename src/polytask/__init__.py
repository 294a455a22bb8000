"""polytask: one PyTorch model for many tasks."""

__version__ = "0.1.0"

from polytask.api import load, train
from polytask.config import RunSpec, load_spec
from polytask.errors import ConfigError, DataError, PolytaskError

__all__ = [
    "ConfigError",
    "DataError",
    "PolytaskError",
    "RunSpec",
    "__version__",
    "load",
    "load_spec",
    "train",
]
