"""The fitted preprocessor: raw table rows <-> model tensors.

It is saved with the model (as JSON) so that a run directory predicts on raw rows: categorical
columns map through vocabularies with index 0 for unknown or missing values; numeric columns
are standardised with missing values set to the mean and flagged in an extra input.
All mapping is vectorised (pandas / numpy), never a Python loop over rows.

Extreme values, stated: a scaler (and a regression target's scale) is fitted on the column's
values winsorised at their 0.5 % and 99.5 % order statistics (at least the single most extreme
value at each end is clipped for the fit), so that a few extreme values cannot dominate it.
A value farther than :data:`RANGE_LIMIT` fitted standard deviations from the fitted mean, or
an infinite one, is refused, at fit time and at predict time alike, with the column and the
row: it is a sentinel or a corrupt cell, and the model could only answer nonsense (or NaN) for
it. An empty cell (or NaN) is a missing value, as always.

Categorical vocabularies are capped (``data.max_categories``, 10,000 by default): a column with
more distinct values keeps its most frequent values among those seen at least twice, warns, and
maps the rest to the unknown bucket. An ID-like column would otherwise grow the embedding table
(and every prediction's start-up) with values that cannot be learnt from one row each.

Image inputs (``model.encoder: cnn``) are scaled as one block by default (``data.scaling:
auto``): one mean and standard deviation over all pixel values, so that pixels keep their
relative brightness (per-pixel standardisation blows up near-constant border pixels).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from polytask.config import DataSpec, TaskKind, TaskSpec
from polytask.errors import DataError, PolytaskError, did_you_mean, shown, warn
from polytask.tasks import Task

if TYPE_CHECKING:  # torch is imported where tensors are made: predicting from arrays needs none
    import torch

    from polytask.features import Features

# An object column whose non-empty values parse as numbers at least this often is taken to be
# numeric with a few bad cells (which are then reported by row), not categorical.
NUMERIC_LIKE_SHARE = 0.95
# Scalers are fitted on values winsorised at these order statistics (see the module docstring).
WINSOR_SHARE = 0.005
# Farther than this many fitted standard deviations from the fitted mean: refused.
RANGE_LIMIT = 1e6
# A column over data.max_categories keeps only values seen at least this often.
CAPPED_MIN_FREQUENCY = 2


def row_label(frame: pd.DataFrame | pd.Series, position: int) -> str:
    """Name a row as the user counts it: a table read from a file keeps its 0-based row
    number as the index (also after a split), so that is reported 1-based; a long table
    pivoted to one row per entity is indexed by the entity, which names the row."""
    label = frame.index[position]
    if frame.index.name is not None:
        return f"{frame.index.name} {shown(label)}"
    if isinstance(label, int | np.integer) and not isinstance(label, bool):
        return f"row {int(label) + 1}"
    return f"row {position + 1}"


def plain_numeric(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Those of ``columns`` that ``frame`` holds with a numeric, non-boolean dtype: read as
    one block (a table of pixels has hundreds), the others parsed column by column, where a
    bad cell is reported by row. Through a plain dict of dtypes: a Series lookup per column
    costs more than the block's arithmetic."""
    dtypes = dict(zip(frame.columns, frame.dtypes, strict=True))
    plain = {
        dtype: ptypes.is_numeric_dtype(dtype) and not ptypes.is_bool_dtype(dtype)
        for dtype in set(dtypes.values())
    }
    return [c for c in columns if c in dtypes and plain[dtypes[c]]]


def to_numeric(series: pd.Series, what: str) -> np.ndarray:
    """Parse a column as float (NaN where missing; infinities kept, for
    :func:`standardise` to refuse); name the first row holding something that is not a
    number."""
    if ptypes.is_bool_dtype(series):
        return series.astype("float64").to_numpy()
    if ptypes.is_numeric_dtype(series):
        values = series.astype("float64").to_numpy()
    else:
        parsed = pd.to_numeric(series, errors="coerce")
        bad = parsed.isna() & series.notna() & (series.astype(str).str.strip() != "")
        if bad.any():
            position = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{what}, {row_label(series, position)}: {series.iloc[position]!r} is not a number"
            )
        values = parsed.astype("float64").to_numpy()
    return values.copy()


def fit_scale(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the finite ``values`` winsorised at their
    :data:`WINSOR_SHARE` order statistics (at least one value clipped at each end). Where both
    order statistics are one value (a column constant but for a few values): that value and
    the standard deviation of all finite values. A standard deviation of (nearly) 0 is 1."""
    present = values[np.isfinite(values)]  # a copy: partitioned and clipped in place below
    n = len(present)
    if n == 0:
        return 0.0, 1.0
    k = min(math.ceil(WINSOR_SHARE * (n - 1)), (n - 1) // 2)
    present.partition([k, n - 1 - k])  # the two order statistics, in linear time
    low, high = float(present[k]), float(present[n - 1 - k])
    if low == high:  # constant but for a few values: centred there, scaled by their spread
        size = float(np.abs(present).max())
        std = float((present / size).std()) * size if size > 0 else 0.0
        return low, std if math.isfinite(std) and std > 1e-12 else 1.0
    np.clip(present, low, high, out=present)
    mean, std = float(present.mean()), float(present.std())
    return mean, std if math.isfinite(std) and std > 1e-12 else 1.0


def standardise(
    values: np.ndarray, mean: float, std: float, what: str, series: pd.Series
) -> np.ndarray:
    """``(values - mean) / std``, NaN where missing; refuses an infinite value or one farther
    than :data:`RANGE_LIMIT` standard deviations, naming the column and the row."""
    scaled = (values - mean) / std
    bad = out_of_range(values, scaled)
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        where = f"{what}, {row_label(series, position)}"
        raise DataError(out_of_range_message(where, values[position], mean, std))
    return scaled


def out_of_range(values: np.ndarray, scaled: np.ndarray) -> np.ndarray:
    """Where a present value is infinite or beyond :data:`RANGE_LIMIT` once scaled."""
    return ~np.isnan(values) & ~(np.abs(scaled) <= RANGE_LIMIT)


def out_of_range_message(where: str, value: float, mean: float, std: float) -> str:
    return (
        f"{where}: {value:g} is out of range (the model reads (value - {mean:.6g}) / "
        f"{std:.6g}, which must be at most {RANGE_LIMIT:g} in size); leave the cell empty if "
        "the value is unknown"
    )


def _numeric_like(series: pd.Series) -> bool:
    present = series.dropna()
    present = present[present.astype(str).str.strip() != ""]
    if len(present) == 0:
        return False
    parsed = pd.to_numeric(present, errors="coerce")
    return bool(parsed.notna().mean() >= NUMERIC_LIKE_SHARE)


def as_text(series: pd.Series) -> pd.Series:
    """Category values as stripped strings; missing and empty become NaN.

    Whole-number floats print as integers, so a code column read as int in one file and as
    float in another (a NaN forces floats) maps to the same category: 3 and 3.0 are "3".
    """
    if ptypes.is_float_dtype(series):
        values = series.to_numpy()
        whole = np.isfinite(values) & (np.mod(values, 1) == 0)
        if whole[np.isfinite(values)].all():
            series = series.astype("Int64")
    text = series.astype("string").str.strip()
    return text.mask(text == "")


def _category_text(series: pd.Series) -> tuple[pd.Series, np.ndarray] | None:
    """For a pandas categorical column: the text of each category (as :func:`as_text` gives
    it) and each row's category code (-1 where missing), so that mapping works on the few
    categories rather than on every row. None for other columns."""
    if not isinstance(series.dtype, pd.CategoricalDtype):
        return None
    codes = series.cat.codes.to_numpy()
    categories = series.cat.categories
    used = np.bincount(codes[codes >= 0], minlength=len(categories)) > 0
    if not used.all():  # unused categories (their text could differ): renumbered out
        renumber = np.full(len(categories) + 1, -1, dtype=np.int64)
        renumber[:-1][used] = np.arange(int(used.sum()))
        codes, categories = renumber[codes], categories[used]
    return as_text(pd.Series(categories, dtype=categories.dtype)), codes


def _category_positions(series: pd.Series, vocabulary: pd.Index) -> np.ndarray:
    """Each row's position in ``vocabulary`` (-1 where unseen or missing)."""
    by_category = _category_text(series)
    if by_category is None:
        return vocabulary.get_indexer(pd.Index(as_text(series)))
    text, codes = by_category
    positions = vocabulary.get_indexer(pd.Index(text))
    return np.where(codes >= 0, positions[np.maximum(codes, 0)], -1)


def value_counts(series: pd.Series) -> pd.Series:
    """How often each value occurs, as text (:func:`as_text`), most frequent first and ties
    by value, whatever the column's dtype."""
    by_category = _category_text(series)
    if by_category is None:
        counts = as_text(series).value_counts(dropna=True)
    else:
        text, codes = by_category
        per_category = np.bincount(codes[codes >= 0], minlength=len(text))
        counts = pd.Series(per_category, index=text.to_numpy()).groupby(level=0).sum()
        counts = counts[counts.index.notna() & (counts > 0)]
    return sorted_counts(counts)


def sorted_counts(counts: pd.Series) -> pd.Series:
    """Counts indexed by value, most frequent first and ties by value (the vocabulary order)."""
    frame = pd.DataFrame({"value": counts.index.astype(object), "count": counts.to_numpy()})
    frame = frame.sort_values(["count", "value"], ascending=[False, True], kind="stable")
    return pd.Series(frame["count"].to_numpy(), index=frame["value"].to_numpy())


def require_targets(frame: pd.DataFrame, task: TaskSpec) -> None:
    for column in task.columns:
        if column not in frame.columns:
            raise DataError(
                f"task '{task.name}': target column '{column}' is not in the table"
                f"{did_you_mean(column, frame.columns)}"
            )


def check_columns(frame: pd.DataFrame, columns: list[str], where: str) -> None:
    for column in columns:
        if column not in frame.columns:
            raise DataError(
                f"column '{column}' named in {where} is not in the table"
                f"{did_you_mean(column, frame.columns)}"
            )


class Preprocessor:
    """Fits vocabularies, scalers and label encodings on training rows; applies them anywhere."""

    def __init__(self, state: dict[str, Any]) -> None:
        _check_state(state)
        self.state = state
        self._categories = {c: pd.Index(v) for c, v in state["vocabularies"].items()}

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls, frame: pd.DataFrame, data: DataSpec, tasks: list[TaskSpec], *, image: bool = False
    ) -> Preprocessor:
        """Fit on training rows. ``image``: the numeric columns are an image's pixels (the
        cnn encoder), which ``data.scaling: auto`` scales as one block."""
        targets = [column for task in tasks for column in task.columns]
        for task in tasks:
            require_targets(frame, task)
        check_columns(frame, data.drop, "data.drop")
        categorical, numeric = cls.feature_columns(frame, data, tasks, set(targets))
        numeric_stats = cls._fit_scalers(frame, numeric, data, image)
        vocabularies = {column: _vocabulary(frame[column], column, data) for column in categorical}
        task_state = {task.name: cls._fit_task(frame, task) for task in tasks}
        inputs = set(categorical) | set(numeric)
        state = {
            "categorical": categorical,
            "numeric": numeric,
            "numeric_stats": numeric_stats,
            "vocabularies": vocabularies,
            "tasks": task_state,
            # the training table's other columns (targets, data.drop): rows to predict may
            # hold them, and they are ignored (also by a slim run, whose spec has fewer tasks)
            "ignored_columns": [str(c) for c in frame.columns if c not in inputs],
        }
        return cls(state)

    def with_tasks(self, frame: pd.DataFrame, tasks: list[TaskSpec]) -> Preprocessor:
        """This preprocessor with the label encodings of ``tasks`` fitted on ``frame``; its
        input encodings (columns, vocabularies, scalers) stay exactly as they are, so a model
        trained on them reads the new rows as it read the old ones (growing a run). The new
        table's columns that are not inputs join the columns the run knows and ignores."""
        inputs = set(self.input_columns)
        self.check_labels(frame, tasks)
        for task in tasks:
            if task.name in self.state["tasks"]:
                raise DataError(f"task '{task.name}' already has a label encoding")
            for column in task.columns:
                if column in inputs:
                    raise DataError(
                        f"task '{task.name}': target column '{column}' is one of the model's "
                        "input columns; the model would read its own label"
                    )
        fitted = {task.name: self._fit_task(frame, task) for task in tasks}
        state = {**self.state, "tasks": {**self.state["tasks"], **fitted}}
        if "ignored_columns" in state:  # the new table's other columns are known, not unknown
            new = [str(c) for c in frame.columns if c not in inputs]
            state["ignored_columns"] = list(dict.fromkeys([*state["ignored_columns"], *new]))
        return Preprocessor(state)

    @classmethod
    def check_labels(cls, frame: pd.DataFrame, tasks: list[TaskSpec]) -> None:
        """Raise the error fitting ``tasks``' label encodings on ``frame`` would raise (a
        missing column, no labels, labels that do not fit the kind), without keeping them:
        to check every experience of a stream before training the first."""
        for task in tasks:
            require_targets(frame, task)
            cls._fit_task(frame, task)

    def missing_inputs(self, frame: pd.DataFrame) -> list[str]:
        """The input columns ``frame`` lacks (read as missing values, as at predict time)."""
        return [column for column in self.input_columns if column not in frame.columns]

    @staticmethod
    def _fit_scalers(
        frame: pd.DataFrame, numeric: list[str], data: DataSpec, image: bool
    ) -> dict[str, list[float]]:
        """Per numeric column [mean, std]; one pair for all of them when scaled as a block.
        Every training value is checked against the fitted range."""
        plain = set(plain_numeric(frame, numeric))
        matrix = frame[[c for c in numeric if c in plain]].to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        columns = iter(matrix.T)
        values = {
            c: next(columns) if c in plain else to_numeric(frame[c], f"column '{c}'")
            for c in numeric
        }
        scaling = data.scaling
        if scaling == "auto":
            scaling = "block" if image else "standard"
        if scaling == "none":
            stats = {c: (0.0, 1.0) for c in numeric}
        elif scaling == "block" and numeric:
            block = fit_scale(np.concatenate(list(values.values())))
            stats = dict.fromkeys(numeric, block)
        else:
            stats = {c: fit_scale(v) for c, v in values.items()}
        for column in numeric:
            standardise(values[column], *stats[column], f"column '{column}'", frame[column])
        return {c: [float(mean), float(std)] for c, (mean, std) in stats.items()}

    @staticmethod
    def feature_columns(
        frame: pd.DataFrame, data: DataSpec, tasks: list[TaskSpec], targets: set[str]
    ) -> tuple[list[str], list[str]]:
        """The inputs by the rule stated in the README: ``data.inputs`` where given, exactly;
        otherwise every column but the targets, ``data.drop`` and the row columns (entity,
        split group, sample weights). ``data.categorical`` / ``data.numeric`` say the type of
        the columns they name; the others' type is inferred."""
        weights = set(data.weight_columns(tasks).values())
        excluded = targets | set(data.drop) | set(data.row_columns()) | weights
        for listed, where in (
            (data.categorical, "data.categorical"),
            (data.numeric, "data.numeric"),
            (data.inputs, "data.inputs"),
        ):
            if listed:
                check_columns(frame, listed, where)
                clash = sorted(set(listed) & (targets | set(data.row_columns())))
                if clash:
                    what = "target" if clash[0] in targets else "row (entity, group, weight)"
                    raise DataError(f"{where} names {what} column '{clash[0]}' as a feature")
        categorical = list(data.categorical or [])
        numeric = list(data.numeric or [])
        declared = set(categorical) | set(numeric)
        candidates = frame.columns if data.inputs is None else data.inputs
        for column in candidates:
            if column in excluded or column in declared:
                continue
            series = frame[column]
            if ptypes.is_bool_dtype(series) or not ptypes.is_numeric_dtype(series):
                # an explicitly categorical dtype (pandas "category") is never second-guessed
                if not isinstance(series.dtype, pd.CategoricalDtype) and _numeric_like(series):
                    numeric.append(column)  # bad cells are reported by row during fitting
                else:
                    categorical.append(column)
            else:
                numeric.append(column)
        if not categorical and not numeric:
            raise DataError(
                "the table has no feature columns once targets and data.drop are removed"
            )
        return categorical, numeric

    @staticmethod
    def _fit_task(frame: pd.DataFrame, task: TaskSpec) -> dict[str, Any]:
        for column in task.columns:
            if as_text(frame[column]).isna().all():
                raise no_labels(task, column)
        if task.kind is TaskKind.multiclass:
            return {"classes": checked_classes(observed_classes(frame[task.target], task), task)}
        if task.kind is TaskKind.regression:
            what = f"task '{task.name}', column '{task.target}'"
            values = to_numeric(frame[task.target], what)
            mean, std = fit_scale(values)
            standardise(values, mean, std, what, frame[task.target])
            return {"mean": mean, "std": std}
        return {}

    # ------------------------------------------------------------------ facts
    @property
    def categorical(self) -> list[str]:
        return self.state["categorical"]

    @property
    def numeric(self) -> list[str]:
        return self.state["numeric"]

    @property
    def input_columns(self) -> list[str]:
        return self.categorical + self.numeric

    @property
    def cardinalities(self) -> list[int]:
        """Embedding rows per categorical column, the unknown bucket included."""
        return [len(self.state["vocabularies"][c]) + 1 for c in self.categorical]

    @property
    def numeric_width(self) -> int:
        return 2 * len(self.numeric)

    def build_tasks(self, specs: list[TaskSpec]) -> list[Task]:
        tasks = []
        for spec in specs:
            fitted = self.state["tasks"][spec.name]
            if spec.kind is TaskKind.multiclass:
                tasks.append(Task(spec, out_dim=len(fitted["classes"]), classes=fitted["classes"]))
            elif spec.kind is TaskKind.multilabel:
                tasks.append(Task(spec, out_dim=len(spec.columns)))
            elif spec.kind is TaskKind.regression:
                tasks.append(Task(spec, 1, target_mean=fitted["mean"], target_std=fitted["std"]))
            else:
                tasks.append(Task(spec, out_dim=1))
        return tasks

    # ------------------------------------------------------------------ applying
    def transform(self, frame: pd.DataFrame) -> Features:
        """Raw rows -> model inputs. Absent feature columns count as missing values."""
        import torch

        from polytask.features import Features

        codes, numeric = self.transform_arrays(frame)
        return Features(torch.from_numpy(codes), torch.from_numpy(numeric))

    def transform_arrays(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows -> (categorical codes [N, C] int64, numeric [N, 2F] float32), the arrays
        of :meth:`transform` without torch."""
        n = len(frame)
        codes = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, column in enumerate(self.categorical):
            if column in frame.columns:
                # -1 for unseen or missing values, so those land in bucket 0
                positions = _category_positions(frame[column], self._categories[column])
                codes[:, j] = positions.astype(np.int64) + 1
        width = len(self.numeric)
        numeric = np.zeros((n, 2 * width), dtype=np.float32)
        # columns of a numeric dtype in one block; the others column by column
        plain = set(plain_numeric(frame, self.numeric))
        block = [j for j, column in enumerate(self.numeric) if column in plain]
        if block:
            columns = [self.numeric[j] for j in block]
            values = frame[columns].to_numpy(dtype=np.float64, copy=True)
            self._scale(numeric, block, values, columns, frame)
        in_block = set(block)
        for j, column in enumerate(self.numeric):
            if j in in_block:
                continue
            if column in frame.columns:
                values = to_numeric(frame[column], f"column '{column}'")
            else:
                values = np.full(n, np.nan)
            self._scale(numeric, [j], values[:, None], [column], frame)
        return codes, numeric

    def _scale(
        self,
        out: np.ndarray,
        index: list[int],
        values: np.ndarray,
        columns: list[str],
        frame: pd.DataFrame,
    ) -> None:
        """Standardised values and missing flags of ``columns`` ([N, k] raw values, modified)
        into their places in ``out`` (a slice where the columns are consecutive); an infinite
        or out-of-range value is refused with its column and row, as :func:`standardise` does."""
        stats = np.array([self.state["numeric_stats"][c] for c in columns], dtype=np.float64)
        missing = np.isnan(values)
        raw = values.copy()
        values -= stats[:, 0]
        values /= stats[:, 1]
        bad = out_of_range(raw, values)
        if bad.any():
            row, k = (int(i) for i in np.argwhere(bad)[0])
            where = f"column '{columns[k]}', {row_label(frame, row)}"
            raise DataError(out_of_range_message(where, raw[row, k], *stats[k]))
        values[missing] = 0.0
        width = len(self.numeric)
        if index == list(range(index[0], index[0] + len(index))):
            out[:, index[0] : index[0] + len(index)] = values
            out[:, width + index[0] : width + index[0] + len(index)] = missing
        else:
            out[:, index] = values
            out[:, [width + j for j in index]] = missing

    def encode_labels(self, frame: pd.DataFrame, tasks: list[Task]) -> dict[str, torch.Tensor]:
        """Label columns -> float tensors with NaN where unlabelled; rejects labels that do not
        fit the task's kind, naming the row."""
        import torch

        return {task.name: torch.from_numpy(self._encode_task(frame, task)) for task in tasks}

    def _encode_task(self, frame: pd.DataFrame, task: Task) -> np.ndarray:
        require_targets(frame, task.spec)
        if task.kind is TaskKind.multiclass:
            return self._encode_classes(frame[task.spec.target], task)
        if task.kind is TaskKind.regression:
            what = f"task '{task.name}', column '{task.spec.target}'"
            series = frame[task.spec.target]
            values = to_numeric(series, what)
            scaled = standardise(values, task.target_mean, task.target_std, what, series)
            return scaled.astype(np.float32)
        columns = [self._encode_binary(frame[c], task, c) for c in task.spec.columns]
        stacked = np.stack(columns, axis=1) if task.kind is TaskKind.multilabel else columns[0]
        return stacked.astype(np.float32)

    @staticmethod
    def _encode_binary(series: pd.Series, task: Task, column: str) -> np.ndarray:
        if ptypes.is_object_dtype(series) or ptypes.is_string_dtype(series):
            lowered = as_text(series).str.lower()
            mapped = lowered.map({"true": "1", "false": "0"}).fillna(lowered)
            series = mapped.astype(object).where(mapped.notna(), np.nan)
        values = to_numeric(series, f"task '{task.name}', column '{column}'")
        bad = ~np.isnan(values) & (values != 0) & (values != 1)
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"task '{task.name}' ({task.kind.value}): column '{column}' holds "
                f"{_format_number(values[position])} at {row_label(series, position)}; "
                "labels must be 0 or 1"
            )
        return values

    @staticmethod
    def _encode_classes(series: pd.Series, task: Task) -> np.ndarray:
        classes = task.classes
        if isinstance(classes[0], int):
            values = to_numeric(series, f"task '{task.name}', column '{task.spec.target}'")
            keys = pd.Series(values)
            lookup = {float(c): i for i, c in enumerate(classes)}
        else:
            keys = as_text(series)
            lookup = {c: i for i, c in enumerate(classes)}
        codes = keys.map(lookup).astype("float64").to_numpy()
        unknown = np.isnan(codes) & keys.notna().to_numpy()
        if unknown.any():
            position = int(np.flatnonzero(unknown)[0])
            raise DataError(
                f"task '{task.name}' (multiclass): column '{task.spec.target}' holds class "
                f"{series.iloc[position]!r} at {row_label(series, position)}, unseen in training; "
                f"known classes: {', '.join(map(str, classes[:20]))}"
            )
        return codes.astype(np.float32)


def no_labels(task: TaskSpec, column: str) -> DataError:
    return DataError(
        f"task '{task.name}': target column '{column}' has no labels in the training rows"
    )


def observed_classes(series: pd.Series, task: TaskSpec) -> set[Any]:
    """The classes of a multiclass task's labels in ``series``: integers where the column is
    numeric (refusing fractions), else their text."""
    series = series.dropna()
    if ptypes.is_numeric_dtype(series):
        values = series.to_numpy()
        if not np.all(np.equal(np.mod(values, 1), 0)):
            raise DataError(
                f"task '{task.name}': multiclass labels in column '{task.target}' must be "
                "integers or names, found fractional values"
            )
        return {int(v) for v in np.unique(values)}
    return set(as_text(series).dropna().unique().tolist())


def checked_classes(classes: set[Any], task: TaskSpec) -> list[Any]:
    """The classes in order; a multiclass task needs two."""
    ordered = sorted(classes)
    if len(ordered) < 2:
        raise DataError(
            f"task '{task.name}': column '{task.target}' holds a single class; "
            "a multiclass task needs at least two"
        )
    return ordered


def _vocabulary(series: pd.Series, column: str, data: DataSpec) -> list[Any]:
    """The values of a categorical column that get their own embedding row (see
    :func:`vocabulary_from_counts`)."""
    return vocabulary_from_counts(value_counts(series), column, data)


def vocabulary_from_counts(counts: pd.Series, column: str, data: DataSpec) -> list[Any]:
    """From a column's value counts (as text, most frequent first, ties by value): the values
    that get their own embedding row, most frequent first: seen at least
    ``data.min_frequency`` times, and at most ``data.max_categories`` of them (a column over
    the cap also needs :data:`CAPPED_MIN_FREQUENCY` sightings; warned). One rule for a table
    in memory and one counted while streaming."""
    kept = counts[counts >= data.min_frequency]
    cap = data.max_categories
    if cap is not None and len(kept) > cap:
        floor = max(data.min_frequency, CAPPED_MIN_FREQUENCY)
        kept = kept[kept >= floor].iloc[:cap]
        share = 1.0 - kept.sum() / max(counts.sum(), 1)
        warn(
            f"column '{column}' has {len(counts):,} distinct values; kept the {len(kept):,} "
            f"most frequent seen at least {floor} times (data.max_categories: {cap:,}); "
            f"the other values ({share:.1%} of its training rows) map to the unknown bucket"
        )
    return sorted(kept.index.tolist(), key=lambda v: (-counts[v], v))


def _check_state(state: dict[str, Any]) -> None:
    """A saved preprocessor must have usable scales: an older polytask could save a null
    standard deviation for a column holding an extreme value."""
    scales = {f"column '{c}'": pair for c, pair in state.get("numeric_stats", {}).items()}
    for task, fitted in state.get("tasks", {}).items():
        if "std" in fitted:
            scales[f"task '{task}'"] = [fitted.get("mean"), fitted.get("std")]
    for what, pair in scales.items():
        usable = (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and all(isinstance(v, int | float) and math.isfinite(v) for v in pair)
            and pair[1] > 0
        )
        if not usable:
            raise PolytaskError(
                f"preprocessor.json: {what} has no usable scale {pair!r} (an older polytask "
                "wrote it from a column holding an extreme value); train the run again"
            )


def _format_number(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else repr(value)
