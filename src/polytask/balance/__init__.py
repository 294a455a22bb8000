"""Task balancing: how per-task losses become one update. One file per method, one registry."""

from polytask.balance import (  # noqa: F401  (importing a method registers it)
    aligned_mtl,
    cagrad,
    db_mtl,
    dwa,
    equal,
    famo,
    graddrop,
    gradnorm,
    gradvac,
    imtl,
    mgda,
    nash_mtl,
    pcgrad,
    rep_mtl,
    rlw,
    sam,
    uncertainty,
    upgrad,
)
from polytask.balance.base import BALANCERS, Balancer, Need, StepContext

__all__ = ["BALANCERS", "Balancer", "Need", "StepContext"]
