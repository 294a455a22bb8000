"""Every merging method, registered: import :data:`MERGERS` from here to look one up."""

from polytask.merge import (  # noqa: F401  (each module registers its method)
    adamerging,
    average,
    breadcrumbs,
    dare,
    fisher,
    lines,
    pcb,
    regmean,
    routed,
    task_arithmetic,
    ties,
    tsv,
)
from polytask.merge.base import MERGERS

__all__ = ["MERGERS"]
