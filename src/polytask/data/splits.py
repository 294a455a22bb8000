"""Carving validation and test rows out of a table: random, grouped, stratified or by time.

Each function returns the row positions of (train, valid, test), each sorted, so that every
part keeps the file's row order (and its index, so later errors name the file's rows).

- ``random``: a seeded permutation, ``round(share * rows)`` rows per part.
- ``group``: whole groups (``data.split.group``: a patient, a user) go to one part, so valid
  and test measure generalisation to new groups. Groups are shuffled with the seed and taken
  until the part's share of rows is reached (a group goes to the part its middle row falls
  in), so the shares are met as closely as whole groups allow.
- ``stratify``: per class of a classification task (rows without its label are one more
  stratum), ``round(share * rows of the class)`` rows per part, so every part holds each
  class in the table's proportion.
- ``time``: rows ordered by a column (numbers or dates); the earliest are train, then valid,
  the latest test, with rows of one time kept in one part.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from polytask.config import DataSpec, SplitSpec
from polytask.errors import DataError, did_you_mean, shown

Parts = tuple[np.ndarray, np.ndarray, np.ndarray]


def _cut(order: np.ndarray, n_valid: int, n_test: int) -> Parts:
    valid, test = order[:n_valid], order[n_valid : n_valid + n_test]
    return np.sort(order[n_valid + n_test :]), np.sort(valid), np.sort(test)


def random_parts(n: int, valid: float, test: float, seed: int) -> Parts:
    order = np.random.default_rng(seed).permutation(n)
    return _cut(order, round(valid * n), round(test * n))


def group_parts(groups: pd.Series, valid: float, test: float, seed: int) -> Parts:
    """Whole groups per part; ``groups`` holds each row's group (none may be missing)."""
    codes, uniques = pd.factorize(groups, sort=True)
    order = np.random.default_rng(seed).permutation(len(uniques))
    sizes = np.bincount(codes, minlength=len(uniques))[order]
    middle = np.cumsum(sizes) - sizes / 2.0
    n = len(groups)
    part_of_group = np.empty(len(uniques), dtype=np.int64)  # 0 valid, 1 test, 2 train
    part_of_group[order] = np.searchsorted([valid * n, (valid + test) * n], middle, side="right")
    part = part_of_group[codes]
    return tuple(np.flatnonzero(part == p) for p in (2, 0, 1))  # type: ignore[return-value]


def stratified_parts(strata: pd.Series, valid: float, test: float, seed: int) -> Parts:
    """Each stratum split in the same shares; a missing value is a stratum of its own."""
    codes, _ = pd.factorize(strata, use_na_sentinel=False)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for code in range(codes.max() + 1):
        rows = np.flatnonzero(codes == code)
        order = rows[rng.permutation(len(rows))]
        for part, rows_of_part in zip(
            parts, _cut(order, round(valid * len(rows)), round(test * len(rows))), strict=True
        ):
            part.append(rows_of_part)
    return tuple(np.sort(np.concatenate(p)) for p in parts)  # type: ignore[return-value]


def time_parts(times: pd.Series, valid: float, test: float) -> Parts:
    """Earliest rows train, then valid, latest test; one time never straddles two parts."""
    order = np.argsort(times.to_numpy(), kind="stable")
    ordered = times.to_numpy()[order]
    n = len(times)
    n_train = round((1.0 - valid - test) * n)
    n_train_valid = n_train + round(valid * n)
    # move each cut back to the first row of its time
    cuts = np.searchsorted(ordered, ordered[[min(n_train, n - 1), min(n_train_valid, n - 1)]])
    first = int(cuts[0]) if n_train < n else n
    second = int(cuts[1]) if n_train_valid < n else n
    return np.sort(order[:first]), np.sort(order[first:second]), np.sort(order[second:])


def _column(frame: pd.DataFrame, column: str, key: str) -> pd.Series:
    if column not in frame.columns:
        raise DataError(
            f"data.split.{key}: column '{column}' is not in the table"
            f"{did_you_mean(column, frame.columns)}"
        )
    return frame[column]


def _no_missing(series: pd.Series, key: str) -> None:
    from polytask.data.preprocess import row_label

    empty = series.isna().to_numpy()
    if empty.any():
        raise DataError(
            f"data.split.{key}: column '{series.name}' is empty at "
            f"{row_label(series, int(np.flatnonzero(empty)[0]))}; every row needs a {key}"
        )


def _times(series: pd.Series) -> pd.Series:
    """A time column as numbers or dates, naming the first row that is neither."""
    from polytask.data.preprocess import row_label

    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_datetime64_any_dtype(series):
        return series
    parsed = pd.to_datetime(series, errors="coerce", format="mixed")
    bad = parsed.isna().to_numpy()
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"data.split.time: column '{series.name}' holds {shown(series.iloc[position])} at "
            f"{row_label(series, position)}, which is neither a number nor a date"
        )
    return parsed


def split_positions(
    frame: pd.DataFrame, split: SplitSpec, valid: float, test: float, strata: str | None
) -> Parts:
    """Row positions of (train, valid, test) by ``split``'s rule. ``strata``: the label
    column of the ``stratify`` task."""
    kind = split.kind
    if kind == "group":
        groups = _column(frame, str(split.group), "group")
        _no_missing(groups, "group")
        return group_parts(groups, valid, test, split.seed)
    if kind == "time":
        times = _column(frame, str(split.time), "time")
        _no_missing(times, "time")
        return time_parts(_times(times), valid, test)
    if kind == "stratify" and strata is not None:
        return stratified_parts(_column(frame, strata, "stratify"), valid, test, split.seed)
    return random_parts(len(frame), valid, test, split.seed)


def check_groups_apart(parts: dict[str, pd.DataFrame | None], data: DataSpec) -> None:
    """With ``data.split.group`` and given valid / test files, no group may be in two of
    them: the split would not measure what it says."""
    column = data.split.group
    if column is None:
        return
    seen: dict[str, set[object]] = {}
    for name, frame in parts.items():
        if frame is None:
            continue
        values = set(_column(frame, column, "group").dropna().unique().tolist())
        for other, theirs in seen.items():
            common = values & theirs
            if common:
                value = sorted(common, key=str)[0]
                raise DataError(
                    f"data.split.group: group {shown(value)} of column '{column}' is in both the "
                    f"{other} and the {name} rows; a group must be in one split"
                )
        seen[name] = values
