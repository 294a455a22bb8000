"""Long-format tables: one row per (entity, task, label), pivoted to one row per entity.

Multi-task data is often stored long (exam scores: student, school, score; conversions:
user, market, converted). ``data: {format: long, entity: id, task_column: task,
label_column: y}`` turns such a table into the wide table polytask trains on: one row per
entity, one label column per task value (named by the value, which a task's ``target``
names), and the entity's other columns as its inputs. A task an entity has no row for is a
missing label, masked as always.

The other columns are the entity's, so they must agree across its rows: a column that holds
two different values for one entity is refused, naming both (an empty cell is not a value:
an input given on one of the entity's rows is its input). Two rows for the same entity and
task are refused too: which label would be meant is not ours to guess.

The wide frame's index is the entity (named after its column), so an error found later names
the entity (``id 'e7'``), which is how a user finds it in the long file.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from polytask.config import DataSpec
from polytask.errors import DataError, did_you_mean, shown, warn

SHOWN = 5  # values named in one message


def _check_columns(frame: pd.DataFrame, data: DataSpec, source: str) -> tuple[str, str, str]:
    entity, task, label = str(data.entity), str(data.task_column), str(data.label_column)
    for key, column in (("entity", entity), ("task_column", task), ("label_column", label)):
        if column not in frame.columns:
            raise DataError(
                f"{source}: data.{key} column '{column}' is not in the table"
                f"{did_you_mean(column, frame.columns)}"
            )
    for key, column in (("entity", entity), ("task_column", task)):
        empty = frame[column].isna()
        if empty.any():
            row = int(empty.to_numpy().nonzero()[0][0])
            raise DataError(f"{source}, row {row + 1}: data.{key} column '{column}' is empty")
    return entity, task, label


def _first_duplicate(frame: pd.DataFrame, entity: str, task: str, source: str) -> None:
    repeated = frame.duplicated([entity, task], keep=False).to_numpy()
    if repeated.any():
        rows = repeated.nonzero()[0]
        first = frame.iloc[rows[0]]
        again = next(
            r
            for r in rows[1:]
            if frame[entity].iat[r] == first[entity] and frame[task].iat[r] == first[task]
        )
        raise DataError(
            f"{source}, rows {rows[0] + 1} and {again + 1}: entity {shown(first[entity])} has "
            f"two labels for task {shown(first[task])}; keep one row per (entity, task)"
        )


def _entity_inputs(frame: pd.DataFrame, entity: str, source: str) -> pd.DataFrame:
    """The entity's other columns, one row per entity (first appearance order); a column
    holding two values for one entity is refused."""
    others = frame.drop(columns=[entity])
    grouped = others.groupby(frame[entity], sort=False)
    if len(others.columns):
        counts = grouped.nunique(dropna=True)
        clash = counts > 1
        if clash.to_numpy().any():
            column = str(clash.columns[clash.any(axis=0).to_numpy()][0])
            who = clash.index[clash[column].to_numpy()][0]
            values = frame.loc[frame[entity] == who, column].dropna().unique()[:2]
            raise DataError(
                f"{source}: column '{column}' holds {shown(values[0])} and {shown(values[1])} for "
                f"entity {shown(who)}; an input of a long table belongs to the entity, one "
                "value per entity"
            )
    inputs = grouped.first()
    if not len(others.columns):
        inputs = pd.DataFrame(index=pd.Index(frame[entity].unique(), name=entity))
    return inputs


def to_wide(
    frame: pd.DataFrame, data: DataSpec, targets: Sequence[str], source: str
) -> pd.DataFrame:
    """The long table ``frame`` (read from ``source``) as one row per entity.

    ``targets`` are the label columns the run's tasks read: their task values become columns;
    other task values are left out with a warning (as columns they would be read as inputs,
    leaking labels), and a target no row has is refused."""
    entity, task, label = _check_columns(frame, data, source)
    _first_duplicate(frame, entity, task, source)
    task_text = frame[task].astype("string").str.strip()
    known = set(task_text.unique())
    check_task_values(known, targets, [str(c) for c in frame.columns], task, label, source)
    wanted = task_text.isin(list(targets)).to_numpy()
    rows = frame.loc[wanted].assign(**{task: task_text[wanted]})
    labels = rows.pivot(index=entity, columns=task, values=label).reindex(columns=list(targets))
    per_task = [label]
    if isinstance(data.weight, str) and data.weight in frame.columns:  # a weight per row
        weights = rows.pivot(index=entity, columns=task, values=data.weight)
        weights = weights.reindex(columns=list(targets))
        weights.columns = [f"{data.weight}[{t}]" for t in targets]
        labels = labels.join(weights)
        per_task.append(data.weight)
    inputs = _entity_inputs(frame.drop(columns=[task, *per_task]), entity, source)
    wide = inputs.join(labels, how="left")
    wide.columns = [str(c) for c in wide.columns]
    for column in targets:  # a label column shared by tasks of several kinds is text
        wide[column] = _numbers_where_all_are(wide[column])
    wide.insert(0, entity, wide.index.to_numpy())
    wide.index.name = entity
    return wide


def check_task_values(
    known: set[str],
    targets: Sequence[str],
    columns: Sequence[str],
    task: str,
    label: str,
    source: str,
) -> None:
    """Refuse a target no row has and a task value that is also a column (``columns``: the
    table's); warn of task values no task names (they are left out)."""
    absent = [t for t in targets if t not in known]
    if absent:
        raise DataError(
            f"{source}: no row has '{absent[0]}' in data.task_column '{task}'"
            f"{did_you_mean(absent[0], sorted(known))}; a task's target names a task value"
        )
    unused = sorted(known - set(targets))
    if unused:
        more = f" (and {len(unused) - SHOWN} more)" if len(unused) > SHOWN else ""
        warn(
            f"{source}: task values without a task in the spec are left out: "
            f"{', '.join(unused[:SHOWN])}{more}"
        )
    clashing = sorted(set(targets) & (set(columns) - {task, label}))
    if clashing:
        raise DataError(
            f"{source}: task value '{clashing[0]}' is also a column of the table; rename one"
        )


def _numbers_where_all_are(series: pd.Series) -> pd.Series:
    """A task's labels as numbers when every present one is a number (a long table's label
    column mixes class names and numbers across tasks, so it is read as text)."""
    if pd.api.types.is_numeric_dtype(series):
        return series
    parsed = pd.to_numeric(series, errors="coerce")
    return parsed if bool((parsed.notna() | series.isna()).all()) else series
