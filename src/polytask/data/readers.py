"""Table readers: one per file format, picked by the file's extension or forced by name.

``data.reader`` (``auto`` by default) forces one of :data:`READERS` for every file of the
``data`` section, for a file whose extension says nothing (``data.txt`` holding tab-separated
values). Every reader returns a pandas frame whose index is the 0-based row of the file, so
that later errors name the row a user can find; every failure is one line naming the file
(and the line, where the parser says it).

The parsing is pandas' and pyarrow's; MATLAB files are read with ``scipy.io.loadmat``: their
2-D numeric variables with one common row count become columns (``name`` for one column,
``name_0``, ``name_1``, ... for more), and cell arrays of matrices (MALSAR's layout of
multi-task data sets: ``X{t}``, ``Y{t}`` for task t) are stacked with a 1-based ``task``
column, which is a long-format table (``data.format: long``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from polytask.data import progress
from polytask.errors import DataError

ReaderName = Literal["csv", "tsv", "parquet", "jsonl", "feather", "mat"]

# What pandas infers from a path's suffix, given explicitly when it reads an open handle.
Compression = Literal["gzip", "bz2", "zip", "xz", "zstd"]
COMPRESSION: dict[str, Compression] = {
    ".gz": "gzip",
    ".bz2": "bz2",
    ".zip": "zip",
    ".xz": "xz",
    ".zst": "zstd",
}

# The reader of each extension (the one before a compression suffix, for text formats).
SUFFIXES: dict[str, ReaderName] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".feather": "feather",
    ".arrow": "feather",
    ".ipc": "feather",
    ".mat": "mat",
}
PARQUET_SUFFIXES = {s for s, name in SUFFIXES.items() if name == "parquet"}


def reader_for(path: Path) -> ReaderName:
    """The reader an extension picks; a folder is a Parquet data set; anything else is CSV
    (as polytask always read it)."""
    if path.is_dir():
        return "parquet"
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION:
        suffixes = suffixes[:-1]
    return SUFFIXES.get(suffixes[-1], "csv") if suffixes else "csv"


# pandas' default missing-value markers, given to pyarrow so both readers read the same nulls
PANDAS_MISSING = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip


# the compressions pyarrow decompresses itself (its codec names)
ARROW_CODECS = {"gzip": "gzip", "bz2": "bz2", "zstd": "zstd"}


def _read_text(path: Path, sep: str) -> pd.DataFrame:
    """Delimited text by pyarrow's multi-threaded reader, to the frame pandas would give;
    pandas reads what pyarrow's reader would read differently (see :func:`_read_text_arrow`)."""
    frame = _read_text_arrow(path, sep)
    return frame if frame is not None else _read_text_pandas(path, sep)


def _read_text_pandas(path: Path, sep: str) -> pd.DataFrame:
    with progress.counted(path) as handle:
        if handle is None:
            return pd.read_csv(path, sep=sep, low_memory=False)
        # the same reader on the same bytes, counted for a progress bar
        compression = COMPRESSION.get(path.suffix.lower())
        return pd.read_csv(handle, sep=sep, low_memory=False, compression=compression)


def _read_text_arrow(path: Path, sep: str) -> pd.DataFrame | None:
    """The table as ``pandas.read_csv`` reads it, parsed by pyarrow (several times faster:
    threads, and no Python per field); None where pandas must read it: a file pyarrow cannot
    parse as given (quoted line breaks, a column whose type changes after the first block,
    an empty file), repeated column names (pandas renames them), or a column of true/false
    with gaps. Dates and times stay text, as pandas leaves them."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    compression = COMPRESSION.get(path.suffix.lower())
    if compression is not None and compression not in ARROW_CODECS:
        return None  # zip, xz: pandas opens them
    parse = pa_csv.ParseOptions(delimiter=sep)

    def read(column_types: dict[str, pa.DataType]) -> pa.Table:
        convert = pa_csv.ConvertOptions(
            null_values=PANDAS_MISSING, strings_can_be_null=True, column_types=column_types
        )
        with progress.counted(path) as handle:
            source = str(path) if handle is None else _decompressed(handle, path)
            return pa_csv.read_csv(source, parse_options=parse, convert_options=convert)

    try:
        table = read({})
        temporal = {f.name: pa.string() for f in table.schema if pa.types.is_temporal(f.type)}
        if temporal:
            table = read(temporal)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    names = table.column_names
    if len(set(names)) < len(names):
        return None
    for index, field in enumerate(table.schema):
        if pa.types.is_boolean(field.type) and table.column(index).null_count:
            return None
        if pa.types.is_null(field.type):  # an empty column: pandas reads it as NaN
            table = table.set_column(index, field.name, table.column(index).cast(pa.float64()))
    return table.to_pandas()


def _decompressed(handle: Any, path: Path) -> Any:
    """A counted file handle as pyarrow reads it: decompressed as the suffix says."""
    import pyarrow as pa

    codec = ARROW_CODECS.get(COMPRESSION.get(path.suffix.lower(), ""))
    return pa.CompressedInputStream(handle, codec) if codec else handle


def _read_csv(path: Path) -> pd.DataFrame:
    return _read_text(path, ",")


def _read_tsv(path: Path) -> pd.DataFrame:
    return _read_text(path, "\t")


def _read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet file, or a folder of them (one data set, as pyarrow reads it)."""
    with progress.step(f"reading {path.name}"):
        return pd.read_parquet(path)


def _read_jsonl(path: Path) -> pd.DataFrame:
    """One JSON object per line, read by pyarrow (whose errors name the row)."""
    import pyarrow.json as pa_json

    with progress.step(f"reading {path.name}"):
        return pa_json.read_json(path).to_pandas()


def _read_feather(path: Path) -> pd.DataFrame:
    """Feather (v2 is the Arrow IPC file format), or an Arrow IPC stream."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    with progress.step(f"reading {path.name}"):
        try:
            table = ipc.open_file(path).read_all()
        except pa.ArrowInvalid:  # not the file format: the stream format, or feather v1
            try:
                table = ipc.open_stream(path).read_all()
            except pa.ArrowInvalid:
                return pd.read_feather(path)
        return table.to_pandas()


def _read_mat(path: Path) -> pd.DataFrame:
    from scipy.io import loadmat

    with progress.step(f"reading {path.name}"):
        contents = loadmat(path)
    variables = {k: v for k, v in contents.items() if not k.startswith("__")}
    if not variables:
        raise ValueError("it holds no variables")
    cells = {k: v for k, v in variables.items() if v.dtype == object}
    if cells:
        return _stack_cells(cells)
    return _columns_of(variables)


def _as_matrix(name: str, value: np.ndarray) -> np.ndarray:
    if value.ndim == 1:
        value = value[:, None]
    if value.ndim != 2 or value.dtype.kind not in "biuf":
        raise ValueError(
            f"variable '{name}' is not a numeric matrix (shape {value.shape}, {value.dtype})"
        )
    return value


def _columns_of(variables: dict[str, np.ndarray]) -> pd.DataFrame:
    """Numeric matrices of one row count side by side; a row vector as long as the others'
    columns counts as a column (MATLAB saves vectors as rows)."""
    matrices = {name: _as_matrix(name, value) for name, value in variables.items()}
    n = max(m.shape[0] for m in matrices.values())
    for name, matrix in matrices.items():
        if n > 1 and matrix.shape == (1, n):
            matrices[name] = matrix.T
    rows = {name: m.shape[0] for name, m in matrices.items()}
    if len(set(rows.values())) > 1:
        listed = ", ".join(f"'{n}' {r}" for n, r in rows.items())
        raise ValueError(f"its variables have different numbers of rows ({listed})")
    columns: dict[str, np.ndarray] = {}
    for name, matrix in matrices.items():
        if matrix.shape[1] == 1:
            columns[name] = matrix[:, 0]
        else:
            columns.update({f"{name}_{j}": matrix[:, j] for j in range(matrix.shape[1])})
    return pd.DataFrame(columns)


def _stack_cells(cells: dict[str, np.ndarray]) -> pd.DataFrame:
    """Cell arrays ``X{t}``, ``Y{t}`` (one cell per task) as one table with a ``task``
    column: cell t of every variable holds task t's rows."""
    flat = {name: value.ravel() for name, value in cells.items()}
    lengths = {name: len(value) for name, value in flat.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"'{n}' {c}" for n, c in lengths.items())
        raise ValueError(f"its cell arrays have different numbers of cells ({listed})")
    parts = []
    for t in range(next(iter(lengths.values()))):
        frame = _columns_of({name: np.asarray(value[t]) for name, value in flat.items()})
        parts.append(frame.assign(task=t + 1))
    return pd.concat(parts, ignore_index=True)


READERS: dict[ReaderName, Callable[[Path], pd.DataFrame]] = {
    "csv": _read_csv,
    "tsv": _read_tsv,
    "parquet": _read_parquet,
    "jsonl": _read_jsonl,
    "feather": _read_feather,
    "mat": _read_mat,
}


@contextlib.contextmanager
def _named_errors(path: Path, reader: ReaderName) -> Iterator[None]:
    """Any parser failure as one line naming the file (the parsers name the line)."""
    import pyarrow as pa

    try:
        yield
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"data file {path} is empty") from None
    except (
        pd.errors.ParserError,
        pa.ArrowException,
        UnicodeDecodeError,
        OSError,
        ValueError,
        TypeError,
        NotImplementedError,
    ) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        detail = first_line or type(error).__name__
        raise DataError(f"data file {path} could not be read as {reader}: {detail}") from None


def read_table(path: str | Path, reader: ReaderName | Literal["auto"] = "auto") -> pd.DataFrame:
    """Read a table with the reader its extension picks (or ``reader``); a clear error where
    it cannot."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    name: ReaderName = reader_for(path) if reader == "auto" else reader
    if path.is_dir() and name != "parquet":
        raise DataError(f"data path {path} is a folder; only a Parquet data set can be one")
    with _named_errors(path, name):
        frame = READERS[name](path)
    if len(frame) == 0:
        raise DataError(f"data file {path} has a header but no rows")
    frame.columns = [str(c) for c in frame.columns]
    return frame.reset_index(drop=True)
