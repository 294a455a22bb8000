"""Which columns of a table a run reads, and the one rule for the columns it does not know.

A misspelt input column is the quietest way to get wrong predictions: the column the model
reads is then absent, every row counts it as missing, and nothing looks wrong. So
``polytask predict``, ``Predictor.predict`` / ``evaluate`` and the server refuse a column the
run does not know, with did-you-mean, unless the caller allows unknown columns
(``--allow-unknown-columns``). Known are the model's inputs and the columns of the training
table that are not inputs (the targets, ``data.drop``), so whole training rows are accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from polytask.errors import DataError, did_you_mean

SHOWN = 5  # unknown columns named in one message


def ignored_columns(
    inputs: Sequence[str], targets: Iterable[str], drop: Iterable[str]
) -> list[str]:
    """Columns of the training table that the model does not read, in order, once each."""
    return [c for c in dict.fromkeys([*targets, *drop]) if c not in inputs]


def unknown_columns(columns: Iterable[str], known: Iterable[str]) -> list[str]:
    """The names in ``columns`` that are not in ``known``, sorted."""
    return sorted(set(map(str, columns)) - set(known))


def unknown_column_problems(unknown: Sequence[str], inputs: Sequence[str]) -> list[str]:
    """One line per unknown column (the first :data:`SHOWN`), with the closest input."""
    return [f"unknown column '{c}'{did_you_mean(c, inputs)}" for c in unknown[:SHOWN]]


def refuse_unknown(columns: Iterable[str], inputs: Sequence[str], ignored: Sequence[str]) -> None:
    """Raise :class:`DataError` naming the columns the run does not know."""
    unknown = unknown_columns(columns, [*inputs, *ignored])
    if not unknown:
        return
    problems = unknown_column_problems(unknown, inputs)
    more = f" (and {len(unknown) - SHOWN} more)" if len(unknown) > SHOWN else ""
    raise DataError(
        f"{'; '.join(problems)}{more}: the run does not read it, so its values would be "
        "ignored; fix the name, or allow unknown columns (--allow-unknown-columns, "
        "allow_unknown_columns=True)"
    )
