"""Prediction tables, up to corpus scale: `predict_corpus` behind `use_absa.py predict --input`.

Every row is checked first (each process surveys some chunks; the first bad row is one line naming it, before the
model loads). Then the file is predicted --chunk_size rows at a time, one chunk per process in turn; the main process
writes each finished chunk as a file in OUTPUT.partial/ (whole, by rename: the chunk files present are exactly the
chunks done) beside `run.json`, the run's description, and joins them into OUTPUT by one rename at the end. Memory
stays flat, a killed run continues with --resume (the same bytes as an uninterrupted run), and the output does not
depend on the number of processes (a chunk's batches are the same on any). Rows are read by `absa.files.iter_rows`.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate.utils import gather_object
from tqdm import tqdm

from .aspects import AspectError, resolve_aspect
from .files import DELIMITED, DataError, iter_rows, write_atomically
from .launch import decided_by_main
from .model import WEIGHTS_NAME
from .predictor import softmax

OUTPUT_TYPES = (".jsonl", ".csv", ".tsv", ".parquet")


def predict_corpus(predictor, source, output, chunk_size: int, resume: bool = False, overwrite: bool = False) -> None:
    """Predictions for every row of `source` written to `output`, by every process of `predictor.accelerator`."""
    accelerator, partial = predictor.accelerator, PartialOutput(output)
    decided_by_main(accelerator, partial.check, source, resume, overwrite)
    survey = survey_input(source, chunk_size, predictor, partial.suffix)
    if survey["ambiguous"] and accelerator.is_main_process:
        print(f"note: {source}: in {survey['ambiguous']} row(s) (first: {survey['first_ambiguous']}) the aspect "
              "occurs more than once; the first occurrence was used (add start/end or an `occurrence` column, or "
              "mark the aspect)", file=sys.stderr)
    run = describe_run(source, chunk_size, predictor, survey)
    todo = decided_by_main(accelerator, partial.chunks_to_do, run, resume)
    columns = output_columns(survey["columns"], predictor.label_names)
    schema = output_schema(survey["schema"], columns) if partial.suffix == ".parquet" else None

    # Round after round, process p predicts the p-th of the next chunks to do and the main process writes them all;
    # only this process's own chunk is kept in memory.
    rows_in = [min(chunk_size, survey["rows"] - index * chunk_size) for index in range(survey["chunks"])]
    remaining = sum(rows_in[index] for index in todo)
    progress = tqdm(total=survey["rows"], initial=survey["rows"] - remaining, unit=" rows", desc="predicting",
                    disable=not accelerator.is_main_process, dynamic_ncols=True)
    counts, started = collections.Counter(), time.perf_counter()
    for chunks in rounds(read_chunks(source, chunk_size), todo, accelerator):
        done, chunk = [], []
        if accelerator.process_index < len(chunks):
            index, chunk = chunks[accelerator.process_index]
            spans = spans_of_chunk(chunk, source)
            probabilities = softmax(predictor.logits(predictor.encode(spans), progress=progress))
            results = [prediction_row(row, span, predictor.label_names, p)
                       for (_, row), span, p in zip(chunk, spans, probabilities)]
            done.append((index, table_bytes(results, partial.suffix, columns, schema, header=index == 0),
                         collections.Counter(row["predicted_label"] for row in results)))
        for index, data, chunk_counts in collect_on_main(accelerator, done):
            partial.write_chunk(index, data)
            counts.update(chunk_counts)
        progress.update(sum(rows_in[index] for index, _ in chunks) - len(chunk))  # the other processes' chunks
    progress.close()
    seconds = time.perf_counter() - started

    if accelerator.is_main_process:
        partial.finish(survey["chunks"])
        resumed = remaining < survey["rows"]
        print(f"predicted{' (this run)' if resumed else ''}: " + ", ".join(
            f"{name} {counts[name]}" for name in predictor.label_names))
        kept = f"; {survey['rows'] - remaining} rows came from the interrupted run" if resumed else ""
        print(f"{remaining} rows in {seconds:.2f} s ({remaining / max(seconds, 1e-9):.1f} rows/s, tokenizing included) "
              f"with {accelerator.num_processes} process(es) on {accelerator.device}, {predictor.describe()}{kept}; "
              f"wrote {output} ({survey['rows']} rows)")


def check_output(paths, overwrite: bool, types=None):
    """Refuse, before any work is done, an unknown output type, a folder in the output's place, a file or a folder
    without write permission on its way, and an existing file (unless `overwrite`). `paths`: one or a list."""
    if isinstance(paths, list):
        return [check_output(path, overwrite, types) for path in paths]
    path = Path(paths)
    if types and path.suffix.lower() not in types:
        raise SystemExit(f"{path}: unknown output type '{path.suffix}' (expected {', '.join(types)})")
    if path.is_dir():
        raise SystemExit(f"{path} is a folder; name a file to write")
    folder = next(folder for folder in path.absolute().parents if folder.exists())  # the missing ones are made
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise SystemExit(f"{path}: cannot write in {folder} ({'a file' if not folder.is_dir() else 'no permission'})")
    if path.exists() and not overwrite:
        raise SystemExit(f"{path} already exists; pass --overwrite to replace it")
    return path


# --------------------------------------------------------------------------- the survey: every row before the model


def survey_input(source, chunk_size: int, predictor, output_suffix: str) -> dict:
    """Every row placed in its text and its aspect checked against the tokenizer (chunk i by process i mod N); one
    verdict for all.

    Returns the number of rows and chunks, the input columns (first seen first), the Arrow schema of the rows (for a
    Parquet output), and how many rows have an aspect that occurs more than once. The first bad row of the file (for a
    TSV output also a cell with a tab or line break) is a SystemExit on every process.
    """
    accelerator, parquet = predictor.accelerator, output_suffix == ".parquet"
    mine = {"rows": 0, "chunks": 0, "columns": {}, "schemas": {}, "ambiguous": [], "error": None}
    try:
        for index, chunk in enumerate(read_chunks(source, chunk_size)):
            if index % accelerator.num_processes == accelerator.process_index:
                labels = [label for label, _ in chunk]
                spans = spans_of_chunk(chunk, source)
                predictor.check_fit(spans, labels, source)
                if output_suffix == ".tsv":
                    check_tsv_cells(chunk, source)
                mine["columns"][index] = list(dict.fromkeys(key for _, row in chunk for key in row))
                ambiguous = [label for label, span in zip(labels, spans) if span.ambiguous]
                if ambiguous:
                    mine["ambiguous"].append((index, len(ambiguous), ambiguous[0]))
                if parquet:
                    mine["schemas"][index] = infer_schema([row for _, row in chunk], source)
            mine["rows"] += len(chunk)
            mine["chunks"] += 1
    except DataError as error:
        mine["error"] = (mine["chunks"], str(error))  # the index of the chunk it is in
    reports = gather_object([mine])
    errors = [report["error"] for report in reports if report["error"]]
    if errors:
        raise SystemExit(min(errors)[1])
    columns = {index: keys for report in reports for index, keys in report["columns"].items()}
    schemas = {index: schema for report in reports for index, schema in report["schemas"].items()}
    ambiguous = sorted(entry for report in reports for entry in report["ambiguous"])
    return {"rows": reports[0]["rows"], "chunks": reports[0]["chunks"],
            "columns": list(dict.fromkeys(key for index in sorted(columns) for key in columns[index])),
            "schema": unify_schemas([schemas[index] for index in sorted(schemas)], source) if parquet else None,
            "ambiguous": sum(count for _, count, _ in ambiguous),
            "first_ambiguous": ambiguous[0][2] if ambiguous else None}


def spans_of_chunk(chunk, file) -> list:
    """Each row's aspect placed in its text; a row that cannot be placed is a DataError naming it."""
    if not any("text" in row for _, row in chunk):
        raise DataError(file, f"no 'text' column (columns: {', '.join(chunk[0][1])})")
    spans = []
    for label, row in chunk:
        try:
            spans.append(resolve_aspect(row.get("text"), row.get("aspect"), row.get("start"), row.get("end"),
                                        row.get("occurrence"), row.get("spans")))
        except AspectError as error:
            raise DataError(file, str(error), row=label, field=error.field) from None
    return spans


def describe_run(source, chunk_size: int, predictor, survey: dict) -> dict:
    """What the output's bytes depend on: a resumed run must match the interrupted one in all of it (the number of
    processes may differ)."""
    source = Path(source).resolve()
    weights = [member.folder.resolve() / WEIGHTS_NAME for member in predictor.members]  # an ensemble has several
    for member, file in zip(predictor.members, weights):
        if not file.is_file():  # every process alike, before the run folder is made
            raise SystemExit(f"{member.folder}: cannot load the ABSA model (no {WEIGHTS_NAME})")
    models, modified = [str(file.parent) for file in weights], [file.stat().st_mtime_ns for file in weights]
    if len(weights) == 1:  # one model: recorded as before, so that a run started earlier resumes
        models, modified = models[0], modified[0]
    return {"input": str(source), "input_bytes": source.stat().st_size, "input_modified_ns": source.stat().st_mtime_ns,
            "model": models, "model_modified_ns": modified,
            "chunk_size": chunk_size, "batch_size": predictor.batch_size, "max_length": predictor.max_length,
            "input_format": predictor.input_format, "mixed_precision": predictor.mixed_precision,
            "rows": survey["rows"], "chunks": survey["chunks"]}


# --------------------------------------------------------------------------- chunks between the processes


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


def rounds(chunks, todo: list[int], accelerator):
    """The chunks to do, in input order, one per process at a time: lists of (index, rows), with None for the rows
    of the other processes' chunks (read past, not kept)."""
    wanted, batch = set(todo), []
    for index, chunk in enumerate(chunks):
        if index in wanted:
            batch.append((index, chunk if len(batch) == accelerator.process_index else None))
            if len(batch) == accelerator.num_processes:
                yield batch
                batch = []
    if batch:
        yield batch


def collect_on_main(accelerator, items: list) -> list:
    """Every process's items, in process order, on the main process ([] on the others). torch's gather_object:
    accelerate's sends everything to every process."""
    if accelerator.num_processes == 1:
        return items
    gathered = [None] * accelerator.num_processes if accelerator.is_main_process else None
    torch.distributed.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if accelerator.is_main_process else []


# --------------------------------------------------------------------------- prediction rows and their tables


def output_columns(input_columns: list[str], label_names) -> list[str]:
    """The input's columns, then where the aspect is (when the input did not say), the label and the probabilities."""
    return list(dict.fromkeys([*input_columns, "aspect", "start", "end", "predicted_label",
                               *(f"prob_{name}" for name in label_names)]))


def output_schema(input_schema: pa.Schema, columns: list[str]) -> pa.Schema:
    """The Parquet schema of the output: the input's column types, and those of what prediction_row adds."""
    def type_of(column):
        if column in ("start", "end"):
            return pa.int64()
        if column in ("text", "aspect", "predicted_label"):
            return pa.string()
        if column.startswith("prob_"):
            return pa.float64()
        return input_schema.field(column).type if column in input_schema.names else pa.string()
    return pa.schema([(column, type_of(column)) for column in columns])


def prediction_row(row: dict, span, label_names, probabilities) -> dict:
    """The input row, then where the aspect is, the predicted label and every class's probability.

    `text`, `aspect`, `start` and `end` say exactly what was classified, so that the row can be read back as input:
    the text without markers, the aspect as it is in the text (`text[start:end]`, "Screen" for an input "screen").
    """
    result = dict(row)
    result.update(text=span.text, aspect=span.aspect, start=span.start, end=span.end,
                  predicted_label=label_names[int(np.argmax(probabilities))])
    result.update({f"prob_{name}": round(float(p), 6) for name, p in zip(label_names, probabilities)})
    return result


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


# --------------------------------------------------------------------------- OUTPUT.partial/


class PartialOutput:
    """OUTPUT.partial/: `run.json` (the run's description) and chunk-NNNNNNN files; `finish` joins them into OUTPUT."""

    def __init__(self, output: str | Path):
        self.output = Path(output)
        self.folder = self.output.with_name(self.output.name + ".partial")
        self.suffix = self.output.suffix.lower()

    def check(self, source, resume: bool, overwrite: bool) -> None:
        """A known output type, no finished output in the way, and an unfinished one only with resume or overwrite."""
        check_output(self.output, overwrite, OUTPUT_TYPES)
        if self.output.exists() and self.output.resolve() == Path(source).resolve():
            raise SystemExit(f"{self.output} is the input; write the predictions to another file")
        if self.folder.exists() and not self.folder.is_dir():
            raise SystemExit(f"{self.folder} is in the way of the chunk folder; move it")
        if self.folder.exists() and not (resume or overwrite):
            started = self.started_run() or {}
            raise SystemExit(f"{self.folder} holds an unfinished run ({len(self.done_chunks())} of "
                             f"{started.get('chunks', '?')} chunks done): continue it with the same command and "
                             "--resume, or start again with --overwrite")

    def chunks_to_do(self, run: dict, resume: bool) -> list[int]:
        """Every chunk, in a fresh folder; with `resume`, the chunks the interrupted run did not finish."""
        started = self.started_run() if resume else None
        if started is None:  # nothing to resume (or --overwrite): start again
            self.start(run)
            return list(range(run["chunks"]))
        changed = [f"{key} {started.get(key)} -> {value}" for key, value in run.items() if started.get(key) != value]
        if changed:
            raise SystemExit(f"{self.folder}: cannot resume, the run differs from the interrupted one "
                             f"({'; '.join(changed)}); resume with the same command and files, or start again with "
                             "--overwrite")
        done = self.done_chunks()
        return [index for index in range(run["chunks"]) if index not in done]

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
        try:  # a read-only file system, or a place only a permission check for root passes
            self.folder.mkdir(parents=True)
            write_atomically(self.folder / "run.json", (json.dumps(run, indent=2) + "\n").encode("utf-8"))
        except OSError as error:
            raise SystemExit(f"{self.output}: cannot write in {self.folder.parent} ({error.strerror})") from None

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
