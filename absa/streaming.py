"""Tables larger than memory, a chunk of rows at a time: read from JSONL / CSV / TSV / Parquet, and written as one
file per chunk in OUTPUT.partial/ that become OUTPUT by one rename when every chunk is there.

A chunk file appears only complete (written beside, renamed into place), so after a crash the chunk files present are
exactly the chunks done; `run.json` in the folder describes the run they belong to, so that the same run can continue
with the missing chunks. Rows are read by `absa.files.iter_rows` (JSON lists are read whole: use JSONL when large).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .files import DELIMITED, DataError, iter_rows, write_atomically

OUTPUT_TYPES = (".jsonl", ".csv", ".tsv", ".parquet")


def read_chunks(path, chunk_size: int):
    """(row label, row) lists of `chunk_size` rows of `absa.files.iter_rows`: chunks joined are `read_rows`."""
    chunk, seen = [], False
    for row in iter_rows(path):
        chunk.append(row)
        if len(chunk) == chunk_size:
            yield chunk
            chunk, seen = [], True
    if chunk:
        yield chunk
    elif not seen:
        raise DataError(path, "the file is empty (no rows)")


def infer_schema(rows: list[dict], file) -> pa.Schema:
    """The Arrow schema of these rows (every key of every row), for a Parquet output."""
    try:
        return pa.schema(pa.array(rows).type)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise DataError(file, f"a column holds values of different types ({error}); Parquet output needs one type "
                        "per column: write .jsonl or .csv instead") from None


def unify_schemas(schemas: list[pa.Schema], file) -> pa.Schema:
    try:  # permissive: a column empty in one chunk (null) and text in another is text
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise DataError(file, f"a column holds values of different types in different rows ({error}); Parquet "
                        "output needs one type per column: write .jsonl or .csv instead") from None


def table_bytes(rows: list[dict], suffix: str, columns=None, schema: pa.Schema | None = None,
                header: bool = True) -> bytes:
    """Rows as the bytes of a .jsonl, .csv, .tsv (`columns` in this order, the header with `header`) or .parquet file
    (`schema`, else inferred), written so that `absa.files.iter_rows` reads back the same values.

    A missing value (None, NaN) is null in JSONL and an empty cell in CSV / TSV. CSV quotes a cell only when it holds
    a comma, a quote or a line break; TSV has no quoting, so a tab or line break in a cell is a DataError
    (`check_tsv_cells` finds them before any work). Cells are written as they are: `=1+1` stays `=1+1`.
    """
    if suffix == ".jsonl":
        return "".join(json.dumps({key: _missing_as(None, value) for key, value in row.items()}, default=str) + "\n"
                       for row in rows).encode("utf-8")
    if suffix in (".csv", ".tsv"):
        columns = list(columns or dict.fromkeys(key for row in rows for key in row))
        if suffix == ".tsv":
            check_tsv_cells(enumerate(rows, start=1), "output")
        text = io.StringIO()
        writer = csv.writer(text, DELIMITED[suffix], lineterminator="\n")
        if header:
            writer.writerow(columns)
        writer.writerows([_missing_as("", row.get(column)) for column in columns] for row in rows)
        return text.getvalue().encode("utf-8")
    table = pa.Table.from_pylist(rows, schema=schema) if schema else pa.Table.from_struct_array(pa.array(rows))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _missing_as(empty, value):
    return empty if value is None or (isinstance(value, float) and math.isnan(value)) else value


def check_tsv_cells(rows, file) -> None:
    """A tab or line break in a column name or cell is a DataError naming the row: TSV cannot hold one."""
    for label, row in rows:
        for key, value in row.items():
            for cell, where in ((key, "a column name"), (value, "the cell")):
                if isinstance(cell, str) and any(character in cell for character in "\t\n\r"):
                    raise DataError(file, f"{where} holds a tab or line break, which a .tsv file cannot hold (TSV has "
                                    "no quoting): write .csv, .jsonl or .parquet", row=label, field=key)


class PartialOutput:
    """OUTPUT.partial/: `run.json` (the run's description) and chunk-NNNNNNN files; `finish` joins them into OUTPUT."""

    def __init__(self, output: str | Path):
        self.output = Path(output)
        self.folder = self.output.with_name(self.output.name + ".partial")
        self.suffix = self.output.suffix.lower()

    def chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk-{index:07d}{self.suffix}"

    def started_run(self) -> dict | None:
        """The description of the run that left this folder, None when there is no (readable) folder."""
        try:
            return json.loads((self.folder / "run.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def done_chunks(self) -> set[int]:
        return {int(path.stem.removeprefix("chunk-")) for path in self.folder.glob(f"chunk-*{self.suffix}")}

    def start(self, run: dict) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        write_atomically(self.folder / "run.json", (json.dumps(run, indent=2) + "\n").encode("utf-8"))

    def write_chunk(self, index: int, data: bytes) -> None:
        write_atomically(self.chunk_path(index), data)

    def finish(self, chunks: int) -> None:
        """Join chunks 0..chunks-1 into OUTPUT (one rename), then remove the folder. Reads one chunk at a time."""
        joined = self.folder / f"joined{self.suffix}"
        if self.suffix == ".parquet":
            writer = None
            for index in range(chunks):
                table = pq.read_table(self.chunk_path(index))
                writer = writer or pq.ParquetWriter(joined, table.schema)
                writer.write_table(table)
            writer.close()
        else:
            with open(joined, "wb") as handle:
                for index in range(chunks):
                    with open(self.chunk_path(index), "rb") as chunk:
                        shutil.copyfileobj(chunk, handle)
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(joined, self.output)
        shutil.rmtree(self.folder)
