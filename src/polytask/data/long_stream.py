"""A large long-format table pivoted without holding it: Arrow's streaming group-by.

:func:`polytask.data.long.to_wide` pivots a long table read whole into pandas: the table's
rows, one per (entity, task), are held with every input repeated on each of an entity's
rows. A click log kept per (user, market) can be far larger than the wide table it gives
(one row per user). Here the file is scanned in batches (``pyarrow.dataset``: CSV, TSV or
Parquet, a file or a folder) and reduced per entity as it streams by Arrow's hash
aggregation (Acero): the labels by ``pivot_wider`` (one column per task value), each input by
its minimum and maximum (equal where the entity has one value, so the value, and a clash
where not). The long table is never held whole, but the peak memory still grows with the
file, more slowly than reading it whole (docs/benchmarks.md).

The result is the frame ``to_wide`` gives for the same file, in the same column order and
entity order (first appearance; the aggregation runs on one thread to keep it), with the
same refusals: a missing column, an empty entity or task cell (found again by a scan that
names its row), a target no row has, a task value that is also a column, two values of an
input for one entity, and two labels for one (entity, task) (named by entity and task; a row
whose label is empty is no label and is not counted). Two passes read the file: the task
values (that column only), then the aggregation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from polytask.config import DataSpec
from polytask.data.long import _numbers_where_all_are, check_task_values
from polytask.data.readers import PANDAS_MISSING, ReaderName, reader_for
from polytask.errors import DataError, did_you_mean, shown

# long files at least this large (bytes on disk) are pivoted by streaming
STREAM_PIVOT_BYTES = 256 * 2**20


def streams(path: Path, data: DataSpec) -> bool:
    """Whether the long file at ``path`` is pivoted by streaming: a CSV, TSV or Parquet file
    (or Parquet folder) of at least :data:`STREAM_PIVOT_BYTES`."""
    if _reader(path, data) not in ("csv", "tsv", "parquet"):
        return False
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file()) >= STREAM_PIVOT_BYTES


def _reader(path: Path, data: DataSpec) -> ReaderName:
    return reader_for(path) if data.reader == "auto" else data.reader


def _dataset(path: Path, data: DataSpec) -> Any:
    import pyarrow.csv as pa_csv
    import pyarrow.dataset as ds

    reader = _reader(path, data)
    if reader == "parquet":
        return ds.dataset(path, format="parquet")
    text = ds.CsvFileFormat(
        parse_options=pa_csv.ParseOptions(delimiter="\t" if reader == "tsv" else ","),
        convert_options=pa_csv.ConvertOptions(null_values=PANDAS_MISSING, strings_can_be_null=True),
    )
    return ds.dataset(path, format=text)


def stream_to_wide(path: Path, data: DataSpec, targets: Sequence[str], source: str) -> pd.DataFrame:
    """The long table at ``path`` as one row per entity (see the module docstring)."""
    import pyarrow as pa

    dataset = _dataset(path, data)
    entity, task, label = _check_columns(dataset.schema.names, data, source)
    weight = data.weight if isinstance(data.weight, str) else None
    weight = weight if weight in dataset.schema.names else None
    inputs = [c for c in dataset.schema.names if c not in (entity, task, label, weight)]
    known = _task_values(dataset, entity, task, source)
    check_task_values(known, targets, dataset.schema.names, task, label, source)
    try:
        table = _aggregate(dataset, entity, task, label, weight, inputs, targets)
    except pa.ArrowInvalid as error:
        if "more than one non-null value" in str(error):
            _name_duplicate(dataset, entity, task, label, source)
        raise
    if table.column(entity).null_count:
        _name_empty(dataset, entity, "entity", source)
    keys, columns = _columns(table, entity, weight, inputs, targets, source)
    del table  # the aggregation's state (both extremes, the label structs) goes before pandas
    return _frame(keys, columns, entity, targets)


def _check_columns(names: list[str], data: DataSpec, source: str) -> tuple[str, str, str]:
    entity, task, label = str(data.entity), str(data.task_column), str(data.label_column)
    for key, column in (("entity", entity), ("task_column", task), ("label_column", label)):
        if column not in names:
            raise DataError(
                f"{source}: data.{key} column '{column}' is not in the table"
                f"{did_you_mean(column, names)}"
            )
    return entity, task, label


def _task_values(dataset: Any, entity: str, task: str, source: str) -> set[str]:
    """The task column's distinct values, stripped (one pass over that column)."""
    import pyarrow.compute as pc

    values = dataset.to_table(columns=[task]).group_by(task).aggregate([]).column(task)
    if values.null_count:
        _name_empty(dataset, task, "task_column", source)
    return {str(v).strip() for v in pc.cast(values, "string").to_pylist()}


def _plain(dataset: Any, column: str) -> Any:
    """A column as the aggregation reads it: dictionary-encoded ones decoded."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    kind = dataset.schema.field(column).type
    if pa.types.is_dictionary(kind):
        return ds.field(column).cast(kind.value_type)
    return ds.field(column)


def _aggregate(
    dataset: Any,
    entity: str,
    task: str,
    label: str,
    weight: str | None,
    inputs: list[str],
    targets: Sequence[str],
) -> Any:
    """One streaming pass: per entity, the labels (and weights) pivoted by the stripped task
    value, and each input's minimum and maximum."""
    import pyarrow.acero as ac
    import pyarrow.compute as pc

    projection = {
        entity: _plain(dataset, entity),
        task: pc.utf8_trim_whitespace(_plain(dataset, task).cast("string")),
        label: _plain(dataset, label),
        **{column: _plain(dataset, column) for column in inputs},
    }
    if weight is not None:
        projection[weight] = _plain(dataset, weight)
    pivot = pc.PivotWiderOptions(key_names=list(targets), unexpected_key_behavior="ignore")
    aggregates: list[Any] = [((task, label), "hash_pivot_wider", pivot, "__labels")]
    if weight is not None:
        aggregates.append(((task, weight), "hash_pivot_wider", pivot, "__weights"))
    for column in inputs:
        aggregates.append(([column], "hash_min", None, f"{column}\x00min"))
        aggregates.append(([column], "hash_max", None, f"{column}\x00max"))
    aggregates.append((["__row"], "hash_min", None, "__first"))
    projection["__row"] = pc.field("__row")
    needed = [entity, task, label, *inputs, *([weight] if weight is not None else [])]
    source = ac.RecordBatchReaderSourceNodeOptions(_numbered(dataset, needed))
    project = ac.ProjectNodeOptions(list(projection.values()), list(projection))
    plan = ac.Declaration.from_sequence(
        [
            ac.Declaration("record_batch_reader_source", source),
            ac.Declaration("project", project),
            ac.Declaration("aggregate", ac.AggregateNodeOptions(aggregates, keys=[entity])),
        ]
    )
    table = plan.to_table(use_threads=False)
    # entities in the order of their first row, as the in-memory pivot gives them (a hash
    # aggregation's own order is not that)
    return table.take(pc.sort_indices(table.column("__first")))


def _numbered(dataset: Any, columns: list[str]) -> Any:
    """The dataset's batches in file order, each row numbered (``__row``, from 0)."""
    import numpy as np
    import pyarrow as pa

    scanner = dataset.scanner(
        columns=columns, use_threads=False, batch_readahead=1, fragment_readahead=1
    )
    schema = scanner.projected_schema.append(pa.field("__row", pa.int64()))

    def batches() -> Any:
        offset = 0
        for batch in scanner.to_batches():
            rows = np.arange(offset, offset + batch.num_rows, dtype=np.int64)
            yield batch.append_column("__row", pa.array(rows))
            offset += batch.num_rows

    return pa.RecordBatchReader.from_batches(schema, batches())


def _columns(
    table: Any,
    entity: str,
    weight: str | None,
    inputs: list[str],
    targets: Sequence[str],
    source: str,
) -> tuple[Any, dict[str, Any]]:
    """The entity keys and the wide table's columns (inputs checked for clashes, then the
    labels and the weights per target) from the aggregation's result."""
    import pyarrow.compute as pc

    keys = table.column(entity)
    columns: dict[str, Any] = {}
    for column in inputs:
        low, high = table.column(f"{column}\x00min"), table.column(f"{column}\x00max")
        clash = pc.fill_null(pc.not_equal(low, high), False)
        if pc.any(clash).as_py():
            first = pc.index(clash, True).as_py()
            raise DataError(
                f"{source}: column '{column}' holds {shown(low[first].as_py())} and "
                f"{shown(high[first].as_py())} for entity {shown(keys[first].as_py())}; an "
                "input of a long table belongs to the entity, one value per entity"
            )
        columns[column] = low
    labels = table.column("__labels").combine_chunks()
    for position, target in enumerate(targets):
        columns[target] = labels.field(position)
    if weight is not None:
        weights = table.column("__weights").combine_chunks()
        for position, target in enumerate(targets):
            columns[f"{weight}[{target}]"] = weights.field(position)
    return keys, columns


def _frame(keys: Any, columns: dict[str, Any], entity: str, targets: Sequence[str]) -> pd.DataFrame:
    """The pandas frame of the wide columns, indexed by entity (``to_wide``'s layout)."""
    import pyarrow as pa

    table = pa.table(columns)
    columns.clear()
    wide = table.to_pandas(self_destruct=True, split_blocks=True)  # no second copy held
    del table
    wide.index = pd.Index(keys.to_pandas(), name=entity)
    for column in targets:  # a label column shared by tasks of several kinds is text
        wide[column] = _numbers_where_all_are(wide[column])
    wide.insert(0, entity, wide.index.to_numpy())
    return wide


def _name_empty(dataset: Any, column: str, key: str, source: str) -> None:
    """Raise naming the first row whose ``column`` is empty (a scan in file order)."""
    offset = 0
    for batch in dataset.to_batches(columns=[column]):
        values = batch.column(0)
        if values.null_count:
            row = offset + values.is_null().to_pylist().index(True)
            raise DataError(f"{source}, row {row + 1}: data.{key} column '{column}' is empty")
        offset += batch.num_rows
    raise DataError(f"{source}: data.{key} column '{column}' is empty on a row")


def _name_duplicate(dataset: Any, entity: str, task: str, label: str, source: str) -> None:
    """Raise naming an (entity, task) with two labels (found by counting the labelled pairs)."""
    import pyarrow.compute as pc

    pairs = dataset.to_table(columns=[entity, task, label])
    pairs = pairs.filter(pc.is_valid(pairs.column(label)))
    counted = pairs.group_by([entity, task]).aggregate([(label, "count")])
    twice = counted.filter(pc.greater(counted.column(f"{label}_count"), 1))
    row = twice.slice(0, 1).to_pylist()[0]
    raise DataError(
        f"{source}: entity {shown(row[entity])} has two labels for task {shown(row[task])}; "
        "keep one row per (entity, task)"
    )
