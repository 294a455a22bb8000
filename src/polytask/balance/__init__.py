"""Task balancing: how per-task losses become one update. One file per method, one registry."""

from polytask.balance import equal  # noqa: F401  (registers it)
from polytask.balance.base import BALANCERS, Balancer, Need, StepContext

__all__ = ["BALANCERS", "Balancer", "Need", "StepContext"]
