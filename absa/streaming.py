"""Tables larger than memory, a chunk of rows at a time: read from JSONL / CSV / TSV / Parquet, and written as one
file per chunk in OUTPUT.partial/ that become OUTPUT by one rename when every chunk is there.

A chunk file appears only complete (written beside, renamed into place), so after a crash the chunk files present are
exactly the chunks done; `run.json` in the folder describes the run they belong to, so that the same run can continue
with the missing chunks. Other inputs (.json lists, .txt) cannot be read in pieces and are read whole by `read_rows`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .files import DataError, jsonl_row, read_rows

OUTPUT_TYPES = (".jsonl", ".csv", ".tsv", ".parquet")


def read_chunks(path, chunk_size: int):
    """(row label, row) lists of `chunk_size` rows, labelled as `read_rows` does (line N; row N for Parquet)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    suffix = path.suffix.lower()
    rows = (_jsonl_rows(path) if suffix == ".jsonl" else _delimited_rows(path, suffix) if suffix in (".csv", ".tsv")
            else _parquet_rows(path) if suffix == ".parquet" else iter(read_rows(path)))
    chunk, seen = [], False
    for row in rows:
        chunk.append(row)
        if len(chunk) == chunk_size:
            yield chunk
            chunk, seen = [], True
    if chunk:
        yield chunk
    elif not seen:
        raise DataError(path, "the file is empty (no rows)")


def _jsonl_rows(path: Path):
    with path.open("rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                line = line.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise DataError(path, f"not UTF-8 text (byte 0x{line[error.start]:02x}); save the file as UTF-8",
                                row=f"line {line_number}") from None
            if line.strip():
                yield f"line {line_number}", jsonl_row(path, line_number, line)


def _delimited_rows(path: Path, suffix: str):
    comma = suffix == ".csv"
    # The options of read_rows: strings only, no NA guessing; TSV without quoting (GLUE-style corpora).
    options = dict(sep="," if comma else "\t", dtype=str, keep_default_na=False, encoding="utf-8-sig",
                   quoting=csv.QUOTE_MINIMAL if comma else csv.QUOTE_NONE)
    first = 0
    try:
        with pd.read_csv(path, chunksize=65536, **options) as frames:
            for frame in frames:
                for offset, row in enumerate(frame.to_dict("records")):
                    yield f"line {first + offset + 2}", row  # the header is line 1
                first += len(frame)
    except pd.errors.EmptyDataError:
        raise DataError(path, "the file is empty") from None
    except pd.errors.ParserError as error:
        raise DataError(path, f"not a valid {'CSV' if comma else 'tab-separated'} file ({error})") from None
    except UnicodeDecodeError:
        raise DataError(path, f"not UTF-8 text (after line {first + 1}); save the file as UTF-8") from None


def _parquet_rows(path: Path):
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=65536)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(path, "the file is empty" if path.stat().st_size == 0
                        else f"not a valid Parquet file ({error})") from None
    number = 0
    for batch in batches:
        for row in batch.to_pylist():
            number += 1
            yield number, row


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
    (`schema`, else inferred)."""
    if suffix == ".jsonl":
        return "".join(json.dumps(row, default=str) + "\n" for row in rows).encode("utf-8")
    if suffix in (".csv", ".tsv"):
        # dtype=object: each value written as it is (2 stays "2"), not as a per-chunk column type made it ("2.0").
        frame = pd.DataFrame(rows, columns=columns, dtype=object)
        return frame.to_csv(index=False, header=header, sep="\t" if suffix == ".tsv" else ",").encode("utf-8")
    table = pa.Table.from_pylist(rows, schema=schema) if schema else pa.Table.from_struct_array(pa.array(rows))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Written beside `path`, flushed to disk, renamed into place: `path` is complete or absent."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


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
        write_bytes_atomically(self.folder / "run.json", (json.dumps(run, indent=2) + "\n").encode("utf-8"))

    def write_chunk(self, index: int, data: bytes) -> None:
        write_bytes_atomically(self.chunk_path(index), data)

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
