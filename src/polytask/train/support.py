"""Which balancing methods run where: several processes, and fp16's scaled gradients.

A method that reads only the losses runs anywhere (under fp16, unless it learns parameters of
its own: their gradients are not all scaled). A Gramian method runs under fp16 (the
Gramian is divided by the square of the loss scale) and, at the shared representation
(``mode: fast``), under several processes (the ranks' Gramians are summed), as does a method
that reads the task gradients only through sums over rows that the ranks add up (GradNorm:
the norms, that Gramian's diagonal; GradDrop: its per-unit sign statistics; Rep-MTL: means
over rows, its contrastive term over every rank's anchors, gathered). Methods that
read the raw task gradients themselves are refused there with one line, rather than
silently training something other than what they define; under fp16 every non-Gramian
method that reads gradients is (Rep-MTL's regularisers, for one, are scale-free, so the
scaler's unscaling would shrink their gradients).
"""

from __future__ import annotations

from polytask.balance import BALANCERS
from polytask.balance.base import Balancer, GramianWeighting, Need
from polytask.errors import ConfigError

LOSS_ONLY = frozenset({Need.LOSSES})


def _gramian_methods() -> list[str]:
    return [n for n in BALANCERS.names() if issubclass(BALANCERS.get(n), GramianWeighting)]


def _row_sum_methods() -> list[str]:
    """The non-Gramian methods that run under several processes (see the module docstring)."""
    return [n for n in BALANCERS.names() if BALANCERS.get(n).sums_over_rows]


def check_balancer(balancer: Balancer, world_size: int, precision: str) -> None:
    """Raise a ConfigError naming ``balance.method`` when the method cannot run with
    ``world_size`` processes or in ``precision``."""
    name = balancer.registry_name
    if precision == "fp16" and balancer.parameters():
        raise ConfigError(
            f"train.precision: fp16 scales the task losses' gradients, not those of the "
            f"weights {name} learns itself; use bf16 or fp32"
        )
    if balancer.needs <= LOSS_ONLY:
        return
    gramian = isinstance(balancer, GramianWeighting)
    if world_size > 1 and not (gramian or balancer.sums_over_rows):
        raise ConfigError(
            f"balance.method: {name} combines the raw per-task gradients of each process's "
            "rows, which several processes do not reproduce; train it in one process, or use "
            f"a loss weighting, {', '.join(_row_sum_methods())}, or a Gramian method "
            f"({', '.join(_gramian_methods())}) with mode: fast"
        )
    if world_size > 1 and gramian and balancer.options.mode == "exact":  # type: ignore[attr-defined]
        raise ConfigError(
            f"balance.options.mode: exact makes {name} form T full parameter gradients, which "
            "several processes would have to exchange; use mode: fast (the Gramian at the "
            "shared representation, summed over processes)"
        )
    if precision == "fp16" and not gramian:
        raise ConfigError(
            f"train.precision: fp16 scales the gradients that {name} reads; use bf16 or fp32"
        )
