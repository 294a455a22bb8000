"""Built-in datasets, named by ``data.dataset`` in a config. Each returns train / valid / test
frames with features and label columns, ready for the preprocessor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from polytask.errors import ConfigError, did_you_mean

Frames = tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]


def _census(**options: Any) -> Frames:
    from polytask.data.datasets.census import load_census_income

    return load_census_income(**options)


def _census_sample(**options: Any) -> Frames:
    from polytask.data.datasets.census import load_census_income_sample

    return load_census_income_sample(**options)


def _mmoe_synthetic(**options: Any) -> Frames:
    from polytask.data.datasets.synthetic import load_mmoe_synthetic

    return load_mmoe_synthetic(**options)


def _clustered(**options: Any) -> Frames:
    from polytask.data.datasets.clustered import load_clustered_tasks

    try:
        return load_clustered_tasks(**options)
    except ValueError as error:  # the generator's own checks (sizes, within, dim)
        raise ConfigError(f"config: data.dataset_options (clustered_tasks): {error}") from None


def _qm9(**options: Any) -> Frames:
    from polytask.data.datasets.qm9 import load_qm9

    return load_qm9(**options)


def _digits(**options: Any) -> Frames:
    from polytask.data.datasets.digits import load_digits

    return load_digits(**options)


def _multi_mnist(**options: Any) -> Frames:
    from polytask.data.datasets.multimnist import load_multi_mnist

    return load_multi_mnist(**options)


DATASETS: dict[str, Callable[..., Frames]] = {
    "digits": _digits,
    "multi_mnist": _multi_mnist,
    "census_income": _census,
    "census_income_sample": _census_sample,
    "mmoe_synthetic": _mmoe_synthetic,
    "clustered_tasks": _clustered,
    "qm9": _qm9,
}


def load_dataset(name: str, **options: Any) -> Frames:
    if name not in DATASETS:
        raise ConfigError(
            f"config: data.dataset: unknown dataset '{name}'{did_you_mean(name, DATASETS)}; "
            f"allowed: {', '.join(sorted(DATASETS))}"
        )
    try:
        return DATASETS[name](**options)
    except TypeError as error:
        raise ConfigError(f"config: data.dataset_options: {error}") from None
