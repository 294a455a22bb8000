"""JSON rows -> model inputs without pandas, for the rows where that is provably the same.

Why: :meth:`Preprocessor.transform` is vectorised per column, which is right for a table of
thousands of rows but costs a fixed ~1 ms of pandas overhead per column per call; on a census
run (39 columns) that is 30-40 ms per model call whatever the number of rows, which would cap
a server at a few dozen calls per second. Rows arriving as JSON are already Python dicts, so a
dictionary lookup per cell is cheaper for the few hundred rows of a micro-batch.

Exactness over coverage: :meth:`RowEncoder.encode` handles only cells whose meaning is
unambiguous and returns None for anything else (text in a numeric column other than plain
decimals, booleans, fractional numbers in a categorical column), and the caller then uses the
fitted preprocessor itself. The
rules mirror ``polytask.data.preprocess``: categorical text is stripped, empty means missing,
unseen values go to bucket 0, whole numbers are their integer text; numeric values are
standardised, missing ones become 0 with the missing flag set, and an infinite or far out of
range one is refused naming its row and column (:func:`polytask.data.preprocess.standardise`).
The server tests compare both paths with :meth:`Predictor.predict` row for row.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch

from polytask.data.preprocess import Preprocessor, out_of_range, out_of_range_message
from polytask.errors import DataError
from polytask.features import Features

# The preprocessor state this encoder understands; any other key disables it (a newer
# preprocessor may transform differently, and then only its own transform is right).
KNOWN_STATE = {
    "categorical",
    "numeric",
    "numeric_stats",
    "vocabularies",
    "tasks",
    "ignored_columns",
}
# Decimal text that Python's float() and pandas' to_numeric read alike ("3", " -1.5e3 ").
PLAIN_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*\Z", re.ASCII)


class RowEncoder:
    """A fitted preprocessor's vocabularies and scalers, applied to JSON rows cell by cell."""

    def __init__(self, preprocessor: Preprocessor) -> None:
        state = preprocessor.state
        self.enabled = set(state) <= KNOWN_STATE
        self.categorical: list[str] = list(preprocessor.categorical)
        self.numeric: list[str] = list(preprocessor.numeric)
        self.codes: list[dict[str, int]] = [
            {str(value): i + 1 for i, value in enumerate(state["vocabularies"][c])}
            for c in self.categorical
        ]
        stats = np.array([state["numeric_stats"][c] for c in self.numeric], dtype=np.float64)
        self.mean = stats[:, 0] if len(stats) else np.zeros(0)
        self.std = stats[:, 1] if len(stats) else np.ones(0)

    def encode(self, rows: list[dict[str, Any]]) -> Features | None:
        """Model inputs for ``rows``, or None where a cell needs the preprocessor's own rules."""
        if not self.enabled:
            return None
        n = len(rows)
        codes = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, (column, lookup) in enumerate(zip(self.categorical, self.codes, strict=True)):
            for i, row in enumerate(rows):
                value = row.get(column)
                if value is None:
                    continue
                kind = type(value)
                if kind is str:
                    text = value.strip()
                elif kind is int:
                    text = str(value)
                elif kind is float:
                    if math.isnan(value):
                        continue
                    if not value.is_integer():
                        return None
                    text = str(int(value))
                else:  # bool and anything else: leave it to the preprocessor
                    return None
                if text:
                    codes[i, j] = lookup.get(text, 0)
        width = len(self.numeric)
        values = np.full((n, width), np.nan)
        for j, column in enumerate(self.numeric):
            for i, row in enumerate(rows):
                value = row.get(column)
                if value is None:
                    continue
                kind = type(value)
                if kind is str:
                    if not value.strip():
                        continue  # blank text is a missing value
                    if not PLAIN_NUMBER.match(value):
                        return None  # "1e5x", "nan", "1_000": the preprocessor decides
                    value = float(value)
                elif kind is not float and kind is not int:
                    return None  # bool and anything else
                try:
                    values[i, j] = value
                except OverflowError:  # an int beyond float range
                    return None
        scaled = (values - self.mean) / self.std
        bad = out_of_range(values, scaled)
        if bad.any():
            i, j = (int(k) for k in np.argwhere(bad)[0])
            column = self.numeric[j]
            where = f"rows[{i}][{column!r}] (column '{column}')"
            raise DataError(out_of_range_message(where, values[i, j], self.mean[j], self.std[j]))
        missing = np.isnan(values)
        numeric = np.zeros((n, 2 * width), dtype=np.float32)
        numeric[:, :width] = np.where(missing, 0.0, scaled)
        numeric[:, width:] = missing
        return Features(torch.from_numpy(codes), torch.from_numpy(numeric))
