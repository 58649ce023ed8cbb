"""Reading datasets from local files or the Hub, shared by the ABSA and sequence-classification scripts.

Every problem with the user's data is raised as `DataError`, which names the file, the row and the field,
before any model is loaded. Text files must be UTF-8 (a BOM is allowed, as Excel writes one).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
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


# -------------------------------------------------------------------------------------------- labels

# The sentiment convention of SemEval-style data (the Hub copy of Laptop14, ABSA-PyTorch): -1 / 0 / 1.
SENTIMENT_NUMBERS = {-1: "negative", 0: "neutral", 1: "positive"}
NUMERIC_LABELS = ("auto", "sentiment", "ids")
NUMERIC_LABELS_HELP = ("What whole-number labels mean. auto: read from the numbers: -1/0/1 are "
                       "negative/neutral/positive (by name, wherever those names are among the labels), other "
                       "numbers 0..K-1 are class ids in label-name order; numbers that could mean either (0/1 with "
                       "negative neutral positive) are refused. sentiment / ids: say which. Recorded in the model.")


def whole_number(value) -> int | None:
    """3, "3", -1.0, "-1.0", numpy integers as an int; None for anything else (names, 0.5, true/false)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


@dataclass(frozen=True)
class LabelRule:
    """The one rule from a raw label (a name in any case, or a whole number) to a label id, for every reader.

    A name maps to its position in `names`. Whole numbers map as `numbers` says: "names" when the label names are
    themselves numbers (matched by value), "sentiment" (-1/0/1 = the label named negative/neutral/positive, where
    ever it is in `names`), "ids" (0..K-1 in `names` order), or None when the data holds no numbers.
    Built once per dataset with `for_values`, which reads the meaning of the numbers from all of them.
    """

    names: tuple[str, ...]
    numbers: str | None = None

    @classmethod
    def for_values(cls, names, values, numeric_labels: str = "auto", source="data") -> "LabelRule":
        """The rule for these label names and every raw label value of the data (all splits together).

        `numeric_labels` auto reads the meaning from the numbers and refuses numbers that could mean two things;
        sentiment / ids say which (a one-line note says when the numbers alone were ambiguous)."""
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
        """The label id of a raw value, or None when it is no label of this rule."""
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
        """'0 neutral, 1 positive': what these numbers stand for under this rule, for messages."""
        return ", ".join(f"{n} {self.names[self.id(n)]}" if self.id(n) is not None else f"{n} nothing"
                         for n in numbers)

    def expected(self) -> str:
        """The accepted labels, for messages: 'negative, neutral, positive (or -1 / 0 / 1 for them)'."""
        numbers = {"sentiment": [n for n in SENTIMENT_NUMBERS if self.id(n) is not None],
                   "ids": list(range(len(self.names)))}.get(self.numbers, [])
        return ", ".join(self.names) + (f" (or {' / '.join(map(str, numbers))}: {self.meaning(numbers)})"
                                        if numbers else "")


def check_label_names(names) -> tuple[str, ...]:
    """Label names as given, refused when two are the same name in any case or when one is empty."""
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
    """Map split names to the files of a folder: `train.jsonl`, `dev.csv`, `Laptop_Test.xml`, `2018-E-c-En-dev.txt`.

    Exact file stems win (`train.jsonl` over `Laptop_Train.xml`); otherwise a file whose stem has the split name as
    a whole word (`Laptop_Train`, `LaptopTrain`, `test-gold`; not `retrieval` for "val") and names no other split
    (`train_dev_backup` could be either: never taken) is taken when it is the only one. Files that name a split but
    are left unused are named in one line. A folder without a train file is an error.
    """
    folder = Path(folder)
    every_file = sorted(p for p in folder.iterdir() if p.is_file())
    files = [p for p in every_file if p.suffix.lower() in suffixes]
    found = {}
    for split, names in SPLIT_NAMES.items():
        exact = [p for p in files if p.stem.lower() in names]
        loose = [p for p in files if _splits_named(p.stem) == {split}]
        candidates = exact or loose
        if len(candidates) > 1:
            raise DataError(folder, f"several files could be the {split} split: "
                            f"{', '.join(p.name for p in candidates)}; pass the files explicitly")
        if candidates:
            found[split] = candidates[0]
    if "train" not in found:
        raise DataError(folder, f"no train file (expected e.g. train.jsonl, of type {', '.join(suffixes)}; found: "
                        f"{', '.join(p.name for p in every_file) or 'no files'})")
    unused = [p.name for p in files if p not in found.values() and _splits_named(p.stem)]
    if unused:
        logger.warning("%s: using %s; not using %s (pass files explicitly with --train_file / --validation_file / "
                       "--test_file)", folder, ", ".join(f"{p.name} as {split}" for split, p in found.items()),
                       ", ".join(unused))
    return found


def _splits_named(stem: str) -> set[str]:
    """The splits whose names are whole words of a file stem: words split at non-letters and at camelCase."""
    words = set(re.findall(r"[a-z]+|[0-9]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", stem).lower()))
    return {split for split, names in SPLIT_NAMES.items() if words & set(names)}


def load_hub_dataset(name: str, config: str | None = None) -> datasets.DatasetDict:
    """`datasets.load_dataset`, with an error that says how to use local files when the Hub is out of reach."""
    try:
        return datasets.load_dataset(name, config)
    except Exception as error:  # noqa: BLE001 - any failure here means "could not get it"; say what to do
        raise DataError(name, f"no such local file or folder, and could not load this dataset from the Hugging Face "
                        f"Hub ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Offline? "
                        "Pass a local folder or files instead, e.g. ../shared/data/semeval2014_laptops") from None


class Splits(datasets.DatasetDict):
    """Train / validation / test, with what a model must remember of how they were made (saved in its config.json):

    `validation_split`: how validation was made (`split_record`), so that evaluation rebuilds the same one;
    `numeric_labels`: what whole-number labels meant (`LabelRule.numbers`), so that evaluation reads them alike.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.validation_split: dict = {}
        self.numeric_labels: str | None = None


def split_fingerprint(rows) -> str:
    """A digest of a split's rows (a Dataset or a list of dicts), independent of their order and of the `row`
    column (where a row was in its file): the same rows give the same digest, from any file format."""
    rows = rows.to_list() if isinstance(rows, datasets.Dataset) else rows
    digests = sorted(hashlib.sha256(json.dumps({k: v for k, v in row.items() if k != "row"}, sort_keys=True,
                                               ensure_ascii=False).encode()).digest() for row in rows)
    return hashlib.sha256(b"".join(digests)).hexdigest()[:16]


def split_record(splits, made: str, fraction: float | None = None, seed: int | None = None) -> dict:
    """How validation was made: "carved" from train (with fraction and seed), "given" (a file or Hub split), or
    "test" (--select_on_test), with the row count and fingerprint of train and validation."""
    record = {"made": made}
    if made == "carved":
        record.update(validation_fraction=fraction, seed=seed)
    record["rows"] = {split: len(splits[split]) for split in ("train", "validation") if split in splits}
    record["fingerprints"] = {split: split_fingerprint(splits[split]) for split in ("train", "validation")
                              if split in splits}
    return record


def rebuild_recipe(record: dict | None, model: str, split: str, validation_fraction: float | None = None,
                   seed: int | None = None) -> dict:
    """The `validation_fraction`, `seed` and `select_on_test` that rebuild the splits a model was trained on, from
    its `validation_split` record. Explicit values that differ from the record are refused (they would carve
    another validation split, holding rows the model trained on); a model without a record gets a one-line note."""
    if not record:
        fraction, seed = 0.1 if validation_fraction is None else validation_fraction, 42 if seed is None else seed
        if split != "test":
            logger.warning("note: %s does not record how its validation split was made (trained before this was "
                           "recorded); a validation split carved now uses --validation_fraction %s --seed %s, and "
                           "holds training rows if training used others", model, fraction, seed)
        return {"validation_fraction": fraction, "seed": seed, "select_on_test": False}
    if record["made"] == "carved":
        for name, given in (("validation_fraction", validation_fraction), ("seed", seed)):
            if given is not None and given != record[name] and split != "test":
                raise SystemExit(f"--{name} {given}: {model} was selected on a validation split carved from train "
                                 f"with --validation_fraction {record['validation_fraction']} --seed "
                                 f"{record['seed']}; another carve holds rows it trained on. Leave out --{name}")
        return {"validation_fraction": record["validation_fraction"], "seed": record["seed"], "select_on_test": False}
    return {"validation_fraction": 0.1 if validation_fraction is None else validation_fraction,
            "seed": 42 if seed is None else seed, "select_on_test": record["made"] == "test"}


def check_rebuilt_split(record: dict | None, model: str, split: str, rows, source, carved: bool) -> None:
    """Refuse a train or validation split that is not the one `model` was trained / selected on when it was
    carved (its rows would be unknown, some perhaps trained on); a note when a given one differs."""
    if split == "test" or not record:
        return
    if carved and record["made"] != "carved":
        how = "the test split (--select_on_test)" if record["made"] == "test" else "a given validation split"
        raise DataError(source, f"has no validation split, and {model} was selected on {how} "
                        f"({record['rows'].get('validation')} rows), not on a carve of train: give that split with "
                        "--validation_file")
    if record.get("fingerprints", {}).get(split) in (None, split_fingerprint(rows)):
        return
    problem = (f"the {split} split ({len(rows)} rows) is not the one {model} was "
               f"{'trained' if split == 'train' else 'selected'} on ({record['rows'].get(split)} rows)")
    if carved:
        raise DataError(source, f"{problem}: the train data (or scikit-learn's carve) differ from training's; give "
                        f"the split with --{split}_file")
    logger.warning("note: %s: %s", source, problem)


def carve_validation(splits: datasets.DatasetDict, fraction: float, seed: int, stratify_by: str | None = "label",
                     group_by=("text",), source="train") -> Splits:
    """Give `splits` a validation split taken from train when it has none: whole texts, stratified, seeded; the
    result records how (`Splits.validation_split`).

    Rows with the same `group_by` values (the aspects of a sentence, a repeated tweet) stay on one side, so model
    selection never sees train's texts (nor test's). scikit-learn makes round(1 / fraction) folds (0.1: 10, 0.15: 7),
    stratified by the ClassLabel column `stratify_by` as far as the groups allow, and one fold is validation (above
    0.5: all but one); with fewer texts than folds, one text. `source` names the train data in errors.
    """
    if "validation" in splits:
        result = Splits(splits)
        result.validation_split = split_record(result, "given")
        return result
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
    result = Splits(splits)
    result["train"], result["validation"] = (train.select(np.flatnonzero(~held_out)),
                                             train.select(np.flatnonzero(held_out)))
    result.validation_split = split_record(result, "carved", fraction, seed)
    return result


def write_atomically(path: str | Path, data: str | bytes) -> None:
    """Written beside `path` (its folder made if need be), flushed to disk, renamed over it: `path` is complete, or
    it is what it was before."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)
