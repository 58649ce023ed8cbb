"""Reading datasets from local files or the Hub, shared by the ABSA and sequence-classification scripts.

Every problem with the user's data is raised as `DataError`, which names the file, the row and the field,
before any model is loaded. Text files must be UTF-8 (a BOM is allowed, as Excel writes one).
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import warnings
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

logger = logging.getLogger(__name__)

# .txt is tab-separated with a header, as SemEval-2018 E-c ships it (the ABSA reader reads .txt as `$T$` files).
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}


def is_missing(value, text: bool = False) -> bool:
    """The one rule for "no value" in every reader: None, NaN (float, numpy, pandas NA), or a string that is empty,
    white space, or "NaN" / "nan" (what pandas writes for an empty cell). In a text field (`text=True`: a sentence,
    an aspect) "nan" is a word (MAMS has the aspect "nan", the bread), so there only blank strings are missing."""
    if isinstance(value, str):
        return value.strip().lower() in (("",) if text else ("", "nan"))
    return pd.api.types.is_scalar(value) and bool(pd.isna(value))  # lists and arrays are values, not missing


class DataError(ValueError):
    """Bad input data: says where (file, row, field) and what is wrong."""

    def __init__(self, file, problem: str, row: int | str | None = None, field: str | None = None):
        where = str(file)
        if row is not None:
            where += f", {row}" if isinstance(row, str) else f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}".replace("\n", " "))  # one line, whatever a library's message holds
        self.file, self.row, self.field, self.problem = str(file), row, field, problem


def read_text(path: str | Path) -> str:
    """A UTF-8 text file (BOM dropped); other bytes are a DataError naming the line and column of the first one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line, line_start = data.count(b"\n", 0, error.start) + 1, data.rfind(b"\n", 0, error.start) + 1
        column = len(data[line_start:error.start].decode("utf-8", errors="replace")) + 1
        raise DataError(path, f"not UTF-8 text (byte 0x{data[error.start]:02x} at column {column}); save the file "
                        "as UTF-8", row=f"line {line}") from None


def jsonl_row(path, line_number: int, line: str) -> dict:
    """One line of a JSONL file as a dict; anything else is a DataError naming the line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON ({error.msg})", row=f"line {line_number}") from None
    if not isinstance(row, dict):
        raise DataError(path, "each line must be a JSON object", row=f"line {line_number}")
    return row


def read_rows(path: str | Path) -> list[tuple[int | str, dict]]:
    """Rows of a JSONL / JSON / CSV / TSV / .txt (tab-separated) / Parquet file as (row label, dict) pairs: `iter_rows`
    read to the end."""
    rows = list(iter_rows(path))
    if not rows:
        raise DataError(path, "the file is empty (no rows)")
    return rows


def iter_rows(path: str | Path):
    """(row label, dict) pairs of a table file, read as they are needed (JSON lists are read whole).

    The row label is what a user finds in an editor: the line a row starts on for JSONL, CSV and TSV (the header is
    line 1; a quoted CSV cell may span lines), the 1-based row for JSON lists and Parquet. CSV and TSV cells are
    strings, as written (no NA guessing): every value is validated by the caller.
    """
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
    """(line number, line) of a UTF-8 text file, line ends kept, a BOM dropped; other bytes are a DataError naming
    the line and column of the first one."""
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
    if _looks_like_jsonl(text):
        yield from _jsonl_rows(path)
        return
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON ({error.msg})", row=f"line {error.lineno}") from None
    if isinstance(data, dict) and "data" in data:  # the {"data": [...]} layout datasets also reads
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise DataError(path, "a .json file must hold a list of objects (or use .jsonl)")
    yield from enumerate(data, start=1)


def _parquet_rows(path: Path):
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=65536)
        number = 0
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(path, "the file is empty" if path.stat().st_size == 0
                        else f"not a valid Parquet file ({error})") from None


# CSV: quoted cells ("a ""b"", c" holds a quote and a comma, and may span lines). TSV (and SemEval-2018's
# tab-separated .txt): no quoting at all, a quote character is a character (GLUE-style corpora carry unbalanced
# ones), so a cell cannot hold a tab or a line break. `absa.streaming.table_bytes` writes both by the same rules.
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


def _looks_like_jsonl(text: str) -> bool:
    if not text.lstrip().startswith("{"):
        return False
    try:  # one object is either the {"data": [...]} layout or a one-line JSONL file
        document = json.loads(text)
    except json.JSONDecodeError:
        return True  # several objects (or a broken one): read line by line so errors name the line
    return not (isinstance(document, dict) and isinstance(document.get("data"), list))


def require_columns(rows: list, path, needed, header: str | None = None) -> None:
    """Every needed column in a table's header; else one error naming the missing columns and the ones found."""
    found = list(rows[0][1])
    missing = [column for column in needed if column not in found]
    if missing:
        hint = "; the file looks separated by ';': save it with commas" if len(found) == 1 and ";" in found[0] else ""
        raise DataError(path, f"no column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))} (columns found: "
                        f"{', '.join(map(repr, found))}){hint}", row=header, field=missing[0])


def find_split_files(folder: str | Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Map split names to the files of a folder: `train.jsonl`, `dev.csv`, `Laptop_Test.xml`, ...

    Exact file stems win (`train.jsonl` over `Laptop_Train.xml`); otherwise a file whose stem contains the split
    name is taken when it is the only one. A folder without a train file is an error.
    """
    folder = Path(folder)
    every_file = sorted(p for p in folder.iterdir() if p.is_file())
    files = [p for p in every_file if p.suffix.lower() in suffixes]
    found = {}
    for split, names in SPLIT_NAMES.items():
        exact = [p for p in files if p.stem.lower() in names]
        loose = [p for p in files if any(name in p.stem.lower() for name in names)]
        candidates = exact or loose
        if len(candidates) > 1:
            raise DataError(folder, f"several files could be the {split} split: "
                            f"{', '.join(p.name for p in candidates)}; pass the files explicitly")
        if candidates:
            found[split] = candidates[0]
    if "train" not in found:
        raise DataError(folder, f"no train file (expected e.g. train.jsonl, of type {', '.join(suffixes)}; found: "
                        f"{', '.join(p.name for p in every_file) or 'no files'})")
    return found


def load_hub_dataset(name: str, config: str | None = None) -> datasets.DatasetDict:
    """`datasets.load_dataset`, with an error that says how to use local files when the Hub is out of reach."""
    try:
        return datasets.load_dataset(name, config)
    except Exception as error:  # noqa: BLE001 - any failure here means "could not get it"; say what to do
        raise DataError(name, f"no such local file or folder, and could not load this dataset from the Hugging Face "
                        f"Hub ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Offline? "
                        "Pass a local folder or files instead, e.g. ../shared/data/semeval2014_laptops") from None


def carve_validation(splits: datasets.DatasetDict, fraction: float, seed: int, stratify_by: str | None = "label",
                     group_by=("text",), source="train") -> datasets.DatasetDict:
    """Give `splits` a validation split taken from train when it has none: whole texts, stratified, seeded.

    Rows with the same `group_by` values (the aspects of a sentence, a repeated tweet) stay on one side, so model
    selection never sees train's texts (nor test's). scikit-learn makes round(1 / fraction) folds (0.1: 10, 0.15: 7),
    stratified by the ClassLabel column `stratify_by` as far as the groups allow, and one fold is validation (above
    0.5: all but one); with fewer texts than folds, one text. `source` names the train data in errors.
    """
    if "validation" in splits:
        return splits
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {fraction}")
    train = splits["train"]
    keys = [column for column in group_by if column in train.column_names]
    groups = (train.select_columns(keys).to_pandas().groupby(keys, sort=False).ngroup().to_numpy() if keys
              else np.arange(len(train)))
    folds = min(round(1 / min(fraction, 1 - fraction)), groups.max() + 1)  # fewer texts than folds: one held out
    if folds < 2:
        raise DataError(source, f"cannot carve a validation split from {len(train)} rows with a single text; give "
                        "a validation file")
    labels = (np.asarray(train[stratify_by]) if isinstance(train.features.get(stratify_by), datasets.ClassLabel)
              else np.zeros(len(train), dtype=int))
    # StratifiedGroupKFold weighs one group at a time (seconds for 10k groups), so texts that occur once, most of a
    # sequence-classification set, go to StratifiedKFold; each part is stratified, so their union is too.
    repeated = np.bincount(groups)[groups] > 1
    if (~repeated).sum() < folds:
        repeated[:] = True
    held_out = np.zeros(len(train), dtype=bool)
    with warnings.catch_warnings():  # a class rarer than the folds is stratified as far as it goes
        warnings.simplefilter("ignore", UserWarning)
        parts = ((np.flatnonzero(~repeated), StratifiedKFold), (np.flatnonzero(repeated), StratifiedGroupKFold))
        for part, splitter in parts:
            if len(np.unique(groups[part])) < folds:  # a few repeated texts: they stay in train
                continue
            y = labels[part] if np.bincount(labels[part]).max() >= folds else np.zeros(len(part), dtype=int)
            fold = next(splitter(folds, shuffle=True, random_state=seed).split(part, y, groups[part]))[1]
            held_out[part[fold]] = True
    if fraction > 0.5:
        held_out = ~held_out
    logger.info("validation split: %d rows (%d texts) carved from train, no text on both sides (seed %d)",
                held_out.sum(), len(np.unique(groups[held_out])), seed)
    result = datasets.DatasetDict(splits)
    result["train"], result["validation"] = (train.select(np.flatnonzero(~held_out)),
                                             train.select(np.flatnonzero(held_out)))
    return result
