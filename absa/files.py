"""Reading and writing data tables, shared by both tasks; every problem with the user's data is a one-line
`DataError` naming the file, row and field, raised before any model is loaded. Text must be UTF-8 (a BOM, as Excel
writes one, is dropped)."""

from __future__ import annotations

import codecs
import csv
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

# .txt is tab-separated with a header, as SemEval-2018 E-c ships it (the ABSA reader reads .txt as `$T$` files).
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet")


def is_missing(value, text: bool = False) -> bool:
    """None, NaN, pandas NA, or a blank string or "nan" (what pandas writes for an empty cell). In a text field
    "nan" is a word (MAMS has the aspect "nan", the bread): there only blank strings are missing."""
    if isinstance(value, str):
        return value.strip().lower() in (("",) if text else ("", "nan"))
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))  # lists and arrays are values, not missing


class DataError(ValueError):
    def __init__(self, file, problem: str, row: int | str | None = None, field: str | None = None):
        where = str(file)
        if row is not None:
            where += f", {row}" if isinstance(row, str) else f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}".replace("\n", " "))  # one line, whatever a library's message holds
        self.file, self.row, self.field, self.problem = str(file), row, field, problem


# -------------------------------------------------------------------------------------------- labels

# The sentiment convention of SemEval-style data (the Hub copy of Laptop14, ABSA-PyTorch): -1 / 0 / 1.
SENTIMENT_NUMBERS = {-1: "negative", 0: "neutral", 1: "positive"}
NUMERIC_LABELS = ("auto", "sentiment", "ids")
NUMERIC_LABELS_HELP = ("What whole-number labels mean. auto: read from the numbers: -1/0/1 are "
                       "negative/neutral/positive (by name, wherever those names are among the labels), other "
                       "numbers 0..K-1 are class ids in label-name order; numbers that could mean either (0/1 with "
                       "negative neutral positive) are refused. sentiment / ids: say which. Recorded in the model.")


def whole_number(value) -> int | None:
    """The one whole-number rule (labels, offsets, occurrences): 3, "3", -1.0, " -1.0" (CSV cells, float columns
    with gaps), numpy integers; None for anything else (names, 0.5, True). Callers name the field in errors."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        number = float(str(value))
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


@dataclass(frozen=True)
class LabelRule:
    """Raw label (a name in any case, or a whole number) -> label id, for every reader. Whole numbers mean what
    `numbers` says: "names" (the names are numbers), "sentiment" (-1/0/1 = negative/neutral/positive by name),
    "ids" (0..K-1 in `names` order), or None (the data has none); `for_values` reads it from all of a dataset's."""

    names: tuple[str, ...]
    numbers: str | None = None

    @classmethod
    def for_values(cls, names, values, numeric_labels: str = "auto", source="data") -> "LabelRule":
        """auto refuses numbers that could mean two things; sentiment / ids say which (noted when ambiguous)."""
        names = check_label_names(names)
        if numeric_labels not in NUMERIC_LABELS:
            raise ValueError(f"numeric_labels must be one of {NUMERIC_LABELS}, got {numeric_labels!r}")
        lowered = [name.lower() for name in names]
        numbers = sorted({whole_number(v) for v in values if str(v).strip().lower() not in lowered} - {None})
        if all(whole_number(name) is not None for name in names):
            return cls(names, "names")
        if not numbers:
            return cls(names, None if numeric_labels == "auto" else numeric_labels)
        readings = {meaning: cls(names, meaning) for meaning in ("sentiment", "ids")}
        fits = {meaning: rule for meaning, rule in readings.items()
                if all(rule.id(number) is not None for number in numbers)}
        ambiguous = len(fits) == 2 and any(fits["sentiment"].id(n) != fits["ids"].id(n) for n in numbers)
        if numeric_labels != "auto":
            if ambiguous:
                logger.warning("note: %s: labels %s read as %s (%s), as --numeric_labels or the model's training "
                               "data say", source, " / ".join(map(str, numbers)), numeric_labels,
                               readings[numeric_labels].meaning(numbers))
            return readings[numeric_labels]
        if ambiguous:
            raise DataError(source, f"the labels {' / '.join(map(str, numbers))} could mean two things with the "
                            f"labels {', '.join(names)}: -1/0/1 sentiment ({readings['sentiment'].meaning(numbers)}) "
                            f"or class ids ({readings['ids'].meaning(numbers)}); say which with --numeric_labels "
                            "sentiment or ids (binary 0/1 data: --label_names negative positive), or write the "
                            "label names", field="label")
        if fits:
            return next(iter(fits.values()))
        return readings["sentiment" if min(numbers) < 0 else "ids"]  # a number that fits neither is refused by row

    def id(self, value) -> int | None:
        text = str(value).strip().lower()
        lowered = [name.lower() for name in self.names]
        if text in lowered:
            return lowered.index(text)
        number = whole_number(value)
        if number is None or self.numbers is None:
            return None
        if self.numbers == "names":
            return next((i for i, name in enumerate(self.names) if whole_number(name) == number), None)
        if self.numbers == "sentiment":
            name = SENTIMENT_NUMBERS.get(number)
            return lowered.index(name) if name in lowered else None
        return number if 0 <= number < len(self.names) else None

    def meaning(self, numbers) -> str:
        """'0 neutral, 1 positive', for messages."""
        return ", ".join(f"{n} {self.names[self.id(n)]}" if self.id(n) is not None else f"{n} nothing"
                         for n in numbers)

    def expected(self) -> str:
        """'negative, neutral, positive (or -1 / 0 / 1: ...)', for messages."""
        numbers = {"sentiment": [n for n in SENTIMENT_NUMBERS if self.id(n) is not None],
                   "ids": list(range(len(self.names)))}.get(self.numbers, [])
        return ", ".join(self.names) + (f" (or {' / '.join(map(str, numbers))}: {self.meaning(numbers)})"
                                        if numbers else "")


def check_label_names(names) -> tuple[str, ...]:
    """Names are matched in any case: two that differ only in case, or an empty one, are refused."""
    names = tuple(str(name).strip() for name in names)
    seen = {}
    for name in names:
        if not name:
            raise DataError("settings", "--label_names holds an empty name")
        if name.lower() in seen:
            raise DataError("settings", f"--label_names has duplicates: {seen[name.lower()]!r} and {name!r} (labels "
                            "are matched in any case)")
        seen[name.lower()] = name
    return names


def read_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    return "".join(line for _, line in _decoded_lines(path))


def jsonl_row(path, line_number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON ({error.msg})", row=f"line {line_number}") from None
    if not isinstance(row, dict):
        raise DataError(path, "each line must be a JSON object", row=f"line {line_number}")
    return row


def read_rows(path: str | Path) -> list[tuple[int | str, dict]]:
    rows = list(iter_rows(path))
    if not rows:
        raise DataError(path, "the file is empty (no rows)")
    return rows


def iter_rows(path: str | Path):
    """(row label, dict) pairs, read as needed (JSON lists whole). The label is what an editor shows: the line a row
    starts on (JSONL, CSV, TSV; a quoted CSV cell may span lines), else the 1-based row. CSV and TSV cells stay
    strings as written (no NA guessing): callers check every value."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataError(path, f"unknown file type '{suffix}' (expected one of {', '.join(TABLE_SUFFIXES)})")
    if suffix == ".parquet":
        return _parquet_rows(path)
    if suffix == ".jsonl":
        return _jsonl_rows(path)
    if suffix == ".json":
        return _json_rows(path)
    return _delimited_rows(path, DELIMITED[suffix])


def _decoded_lines(path: Path):
    with path.open("rb") as handle:
        for number, data in enumerate(handle, start=1):
            if number == 1:
                data = data.removeprefix(codecs.BOM_UTF8)
            try:
                yield number, data.decode("utf-8")
            except UnicodeDecodeError as error:
                column = len(data[:error.start].decode("utf-8", errors="replace")) + 1
                raise DataError(path, f"not UTF-8 text (byte 0x{data[error.start]:02x} at column {column}); save "
                                "the file as UTF-8", row=f"line {number}") from None


def _jsonl_rows(path: Path):
    for number, line in _decoded_lines(path):
        if line.strip():
            yield f"line {number}", jsonl_row(path, number, line)


def _json_rows(path: Path):
    text = read_text(path)
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as error:
        if not text.lstrip().startswith("{"):
            raise DataError(path, f"not valid JSON ({error.msg})", row=f"line {error.lineno}") from None
        data = None
    if isinstance(data, dict) and isinstance(data.get("data"), list):  # the {"data": [...]} layout datasets reads
        data = data["data"]
    elif data is None or isinstance(data, dict):  # JSON Lines saved as .json: read by line, so errors name the line
        yield from _jsonl_rows(path)
        return
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise DataError(path, "a .json file must hold a list of objects (or use .jsonl)")
    yield from enumerate(data, start=1)


def _parquet_rows(path: Path):
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=65536)
        yield from enumerate((row for batch in batches for row in batch.to_pylist()), start=1)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(path, "the file is empty" if path.stat().st_size == 0
                        else f"not a valid Parquet file ({error})") from None


# CSV: quoted cells ("a ""b"", c" holds a quote and a comma, and may span lines). TSV (and SemEval-2018's
# tab-separated .txt): no quoting at all, a quote character is a character (GLUE-style corpora carry unbalanced
# ones), so a cell cannot hold a tab or a line break. `absa.corpus.table_bytes` writes both by the same rules.
class TabSeparated(csv.excel_tab):
    quoting = csv.QUOTE_NONE
    quotechar = None


DELIMITED = {".csv": csv.excel, ".tsv": TabSeparated, ".txt": TabSeparated}
csv.field_size_limit(2 ** 31 - 1)  # a long document is one cell; the csv module's default stops at 128 KiB


def _delimited_rows(path: Path, dialect):
    kind = "CSV" if dialect is csv.excel else "tab-separated"
    lines = _decoded_lines(path)
    reader = csv.reader((line for _, line in lines), dialect)
    header, first = None, 1
    try:
        for cells in reader:
            start, first = first, reader.line_num + 1  # the line this record starts on; the next one's
            if not cells:  # a blank line
                continue
            if header is None:
                header = cells
                repeated = sorted({name for name in header if header.count(name) > 1})
                if repeated:
                    raise DataError(path, f"the header names {', '.join(map(repr, repeated))} more than once",
                                    row=f"line {start}")
                continue
            if len(cells) > len(header):
                raise DataError(path, f"{len(cells)} cells, the header has {len(header)} (not a valid {kind} file"
                                f"{'; a cell with a comma needs quotes' if kind == 'CSV' else ''})",
                                row=f"line {start}")
            yield f"line {start}", dict(zip(header, cells + [""] * (len(header) - len(cells))))
    except csv.Error as error:
        raise DataError(path, f"not a valid {kind} file ({error})", row=f"line {reader.line_num}") from None
    if header is None:
        raise DataError(path, "the file is empty")


def require_columns(rows: list, path, needed, header: str | None = None) -> None:
    """One error names every missing column (and the ones found), not one row at a time."""
    found = list(rows[0][1])
    missing = [column for column in needed if column not in found]
    if missing:
        hint = "; the file looks separated by ';': save it with commas" if len(found) == 1 and ";" in found[0] else ""
        raise DataError(path, f"no column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))} (columns found: "
                        f"{', '.join(map(repr, found))}){hint}", row=header, field=missing[0])


def load_hub_dataset(name: str, config: str | None = None) -> datasets.DatasetDict:
    """An unreachable Hub is an error that says how to use local files instead."""
    try:
        return datasets.load_dataset(name, config)
    except Exception as error:  # noqa: BLE001 - any failure here means "could not get it"; say what to do
        raise DataError(name, f"no such local file or folder, and could not load this dataset from the Hugging Face "
                        f"Hub ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Offline? "
                        "Pass a local folder or files instead, e.g. ../shared/data/semeval2014_laptops") from None


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """`path` is complete or as it was: written beside it, flushed to disk, renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)
