"""A large long-format table pivoted without holding it: Arrow's streaming group-by, by parts.

:func:`polytask.data.long.to_wide` pivots a long table read whole into pandas: the table's
rows, one per (entity, task), are held with every input repeated on each of an entity's
rows. A click log kept per (user, market) can be far larger than the wide table it gives
(one row per user). Here the file is scanned in batches (``pyarrow.dataset``: CSV, TSV or
Parquet, a file or a folder) and reduced per entity by Arrow's hash aggregation (Acero): the
labels by ``pivot_wider`` (one column per task value), each input by its minimum and maximum
(equal where the entity has one value, so the value, and a clash where not).

An aggregation holds its state for every entity it has seen (both extremes of every input,
the labels' structs) until it ends, which for a whole file can exceed the table it reduces.
So a file larger than :data:`SPILL_PART_BYTES` is first written, as it streams, to parts
split by a hash of the entity (Arrow IPC files in a temporary folder, removed after), and the
parts are aggregated one at a time: every entity's rows are in one part, and what is held
at once is one part's aggregation and the wide columns reduced so far.

The result is the frame ``to_wide`` gives for the same file, in the same column order and
entity order (first appearance, from each entity's first row number), with the same
refusals: a missing column, an empty entity or task cell (found again by a scan that names
its row), a target no row has, a task value that is also a column, two values of an input
for one entity (the first such entity by first row, in input order), and two labels for one
(entity, task) (named by entity and task; a row whose label is empty is no label and is not
counted). The file is read twice: the task values (that column only), then the rows.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from polytask.config import DataSpec
from polytask.data.long import _numbers_where_all_are, check_task_values
from polytask.data.readers import PANDAS_MISSING, ReaderName, reader_for
from polytask.errors import DataError, did_you_mean, shown

# long files at least this large (bytes on disk) are pivoted by streaming
STREAM_PIVOT_BYTES = 256 * 2**20
# a streamed file is aggregated in parts of about this many bytes on disk (split by entity)
SPILL_PART_BYTES = 32 * 2**20


@dataclass(frozen=True)
class _Numbered:
    """The file's dataset, aggregated whole (its rows numbered as they are read)."""

    dataset: Any


def streams(path: Path, data: DataSpec) -> bool:
    """Whether the long file at ``path`` is pivoted by streaming: a CSV, TSV or Parquet file
    (or Parquet folder) of at least :data:`STREAM_PIVOT_BYTES`."""
    if _reader(path, data) not in ("csv", "tsv", "parquet"):
        return False
    return _size(path) >= STREAM_PIVOT_BYTES


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
    needed = [entity, task, label, *inputs, *([weight] if weight is not None else [])]
    clashes: dict[str, tuple[Any, ...]] = {}
    parts = []
    try:
        with _spilled(dataset, entity, needed, _size(path)) as pieces:
            for piece in pieces:
                table = _aggregate(piece, entity, task, label, weight, inputs, targets)
                if table.column(entity).null_count:
                    _name_empty(dataset, entity, "entity", source)
                parts.append(_reduce(table, entity, weight, inputs, targets, clashes))
                del table  # the aggregation's state (both extremes, label structs) goes now
    except pa.ArrowInvalid as error:
        if "more than one non-null value" in str(error):
            _name_duplicate(dataset, entity, task, label, source)
        raise
    for column in inputs:  # the first clash in input order, then in entity order
        if column in clashes:
            _, key, low, high = clashes[column]
            raise DataError(
                f"{source}: column '{column}' holds {shown(low)} and {shown(high)} for entity "
                f"{shown(key)}; an input of a long table belongs to the entity, one value per "
                "entity"
            )
    return _frame(_in_first_row_order(parts), entity, targets)


def _size(path: Path) -> int:
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file())


@contextmanager
def _spilled(dataset: Any, entity: str, columns: list[str], size: int) -> Iterator[list[Any]]:
    """The dataset's ``columns`` (rows numbered ``__row``) as datasets to aggregate one by
    one: the whole file where it is at most :data:`SPILL_PART_BYTES`, else parts of about
    that size on disk, split by a hash of the entity, so that every entity's rows are in one
    part and one part's aggregation is held at a time. Parts are Arrow IPC files in a
    temporary folder this function makes and removes."""
    import pyarrow.dataset as ds

    count = math.ceil(size / SPILL_PART_BYTES)
    if count <= 1:
        yield [_Numbered(dataset)]
        return
    with tempfile.TemporaryDirectory(prefix="polytask-pivot-") as folder:
        paths = _write_parts(_numbered(dataset, columns), entity, count, Path(folder))
        yield [ds.dataset(str(path), format="ipc") for path in paths]


def _write_parts(batches: Any, entity: str, count: int, folder: Path) -> list[Path]:
    """Each batch's rows written to part ``hash(entity) % count`` (dictionaries decoded: an
    IPC file holds one dictionary per column)."""
    import numpy as np
    import pyarrow as pa

    schema = pa.schema(
        [
            field.with_type(field.type.value_type) if pa.types.is_dictionary(field.type) else field
            for field in batches.schema
        ]
    )
    paths = [folder / f"part-{number}.arrow" for number in range(count)]
    writers = [pa.ipc.new_file(str(path), schema) for path in paths]
    try:
        for batch in batches:
            arrays = [
                column.dictionary_decode() if pa.types.is_dictionary(column.type) else column
                for column in batch.columns
            ]
            batch = pa.RecordBatch.from_arrays(arrays, schema=schema)
            keys = batch.column(schema.get_field_index(entity)).to_numpy(zero_copy_only=False)
            part = pd.util.hash_array(np.asarray(keys, dtype=object)) % np.uint64(count)
            order = np.argsort(part, kind="stable")
            grouped = batch.take(pa.array(order))
            start = 0
            for number, rows in enumerate(np.bincount(part.astype(np.int64), minlength=count)):
                if rows:
                    writers[number].write_batch(grouped.slice(start, int(rows)))
                    start += int(rows)
    finally:
        for writer in writers:
            writer.close()
    return paths


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


def _plain(schema: Any, column: str) -> Any:
    """A column as the aggregation reads it: dictionary-encoded ones decoded."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    kind = schema.field(column).type
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

    schema = dataset.dataset.schema if isinstance(dataset, _Numbered) else dataset.schema
    projection = {
        entity: _plain(schema, entity),
        task: pc.utf8_trim_whitespace(_plain(schema, task).cast("string")),
        label: _plain(schema, label),
        **{column: _plain(schema, column) for column in inputs},
    }
    if weight is not None:
        projection[weight] = _plain(schema, weight)
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
    if isinstance(dataset, _Numbered):
        reader = _numbered(dataset.dataset, needed)
    else:  # a spilled part: rows numbered already
        scanner = dataset.scanner(columns=[*needed, "__row"], use_threads=False)
        reader = scanner.to_reader()
    source = ac.RecordBatchReaderSourceNodeOptions(reader)
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


def _reduce(
    table: Any,
    entity: str,
    weight: str | None,
    inputs: list[str],
    targets: Sequence[str],
    clashes: dict[str, tuple[Any, ...]],
) -> Any:
    """The wide columns of one aggregation (entity, ``__first``, each input's one value, the
    labels and the weights per target); each input's clash with the earliest first row is
    kept in ``clashes`` as (first row, entity, one value, another) to name it later."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys, first = table.column(entity), table.column("__first")
    columns: dict[str, Any] = {entity: keys, "__first": first}
    for column in inputs:
        low, high = table.column(f"{column}\x00min"), table.column(f"{column}\x00max")
        clash = pc.fill_null(pc.not_equal(low, high), False)
        if pc.any(clash).as_py():
            at = pc.index(clash, True).as_py()  # rows are in first-row order
            found = (first[at].as_py(), keys[at].as_py(), low[at].as_py(), high[at].as_py())
            if column not in clashes or found[0] < clashes[column][0]:
                clashes[column] = found
        columns[column] = low
    labels = table.column("__labels").combine_chunks()
    for position, target in enumerate(targets):
        columns[target] = labels.field(position)
    if weight is not None:
        weights = table.column("__weights").combine_chunks()
        for position, target in enumerate(targets):
            columns[f"{weight}[{target}]"] = weights.field(position)
    return pa.table(columns)


def _in_first_row_order(parts: list[Any]) -> Any:
    """The parts' rows as one table in the order of the entities' first rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    whole = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
    parts.clear()
    if len(whole) and not pc.all(pc.greater(whole["__first"][1:], whole["__first"][:-1])).as_py():
        whole = whole.take(pc.sort_indices(whole.column("__first")))
    return whole.drop_columns(["__first"])


def _frame(table: Any, entity: str, targets: Sequence[str]) -> pd.DataFrame:
    """The pandas frame of the wide table, indexed by entity (``to_wide``'s layout)."""
    keys = table.column(entity)
    table = table.drop_columns([entity])
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
