"""Reading datasets from local files or the Hub, shared by the ABSA and sequence-classification scripts.

Every problem with the user's data is raised as `DataError`, which names the file, the row and the field,
before any model is loaded.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import datasets
import pandas as pd

logger = logging.getLogger(__name__)

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}


def is_missing(value) -> bool:
    """The one rule for "no value" in every reader: None, NaN (float, numpy, pandas NA), or a string that is empty,
    white space, or "NaN" / "nan" (what spreadsheets and pandas write for an empty cell)."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, str):
        return value.strip().lower() in ("", "nan")
    try:
        return bool(value != value)  # NaN is the only value not equal to itself
    except (TypeError, ValueError):  # arrays, lists: values, not missing
        return False


class DataError(ValueError):
    """Bad input data: says where (file, row, field) and what is wrong."""

    def __init__(self, file, problem: str, row: int | str | None = None, field: str | None = None):
        where = str(file)
        if row is not None:
            where += f", {row}" if isinstance(row, str) else f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")
        self.file, self.row, self.field = str(file), row, field


def read_rows(path: str | Path) -> list[tuple[int | str, dict]]:
    """Rows of a JSONL / JSON / CSV / TSV / Parquet file as (row label, dict) pairs.

    The row label is what a user finds in an editor: the line number for JSONL, CSV and TSV (the header is
    line 1), the 1-based row for JSON lists and Parquet.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".json" and _looks_like_jsonl(path)):
        rows = []
        with path.open(encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(path, f"not valid JSON ({error.msg})", row=f"line {line_number}") from None
                if not isinstance(row, dict):
                    raise DataError(path, "each line must be a JSON object", row=f"line {line_number}")
                rows.append((f"line {line_number}", row))
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8") or "[]")
        except json.JSONDecodeError as error:
            raise DataError(path, f"not valid JSON ({error.msg} at line {error.lineno})") from None
        if isinstance(data, dict) and "data" in data:  # the {"data": [...]} layout datasets also reads
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise DataError(path, "a .json file must hold a list of objects (or use .jsonl)")
        rows = [(index, row) for index, row in enumerate(data, start=1)]
    elif suffix in (".csv", ".tsv"):
        try:
            # Strings only, no NA guessing: every value is validated by the caller. TSV files of GLUE-style
            # corpora carry unbalanced quote characters, so TSV is read without quoting.
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
        except pd.errors.EmptyDataError:
            raise DataError(path, "the file is empty") from None
        except pd.errors.ParserError as error:
            raise DataError(path, f"not a valid {suffix[1:].upper()} file ({error})") from None
        rows = [(f"line {index + 2}", row) for index, row in enumerate(frame.to_dict("records"))]
    elif suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(path, "the file is empty" if path.stat().st_size == 0
                            else f"not a valid Parquet file ({error})") from None
        rows = [(index + 1, row) for index, row in enumerate(frame.to_dict("records"))]
    else:
        raise DataError(path, f"unknown file type '{suffix}' (expected one of {', '.join(TABLE_SUFFIXES)})")
    if not rows:
        raise DataError(path, "the file is empty (no rows)")
    return rows


def _looks_like_jsonl(path: Path) -> bool:
    with path.open(encoding="utf-8") as handle:
        first = handle.read(1)
        while first and first.isspace():
            first = handle.read(1)
    if first != "{":
        return False
    try:  # one object is either the {"data": [...]} layout or a one-line JSONL file
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return True  # several objects (or a broken one): read line by line so errors name the line
    return not (isinstance(document, dict) and isinstance(document.get("data"), list))


def find_split_files(folder: str | Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Map split names to the files of a folder: `train.jsonl`, `dev.csv`, `Laptop_Test.xml`, ...

    Exact file stems win (`train.jsonl` over `Laptop_Train.xml`); otherwise a file whose stem contains the split
    name is taken when it is the only one. A folder without a train file is an error.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
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
        raise DataError(folder, f"no train file (expected e.g. train.jsonl; found: "
                        f"{', '.join(p.name for p in files) or 'no data files'})")
    return found


def load_hub_dataset(name: str, config: str | None = None) -> datasets.DatasetDict:
    """`datasets.load_dataset`, with an error that says how to use local files when the Hub is out of reach."""
    try:
        return datasets.load_dataset(name, config)
    except Exception as error:  # noqa: BLE001 - any failure here means "could not get it"; say what to do
        raise DataError(name, f"could not load this dataset from the Hugging Face Hub ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}). Offline? Pass a local folder or "
                        "files instead, e.g. ../shared/data/semeval2014_laptops") from None


def carve_validation(splits: datasets.DatasetDict, fraction: float, seed: int,
                     stratify_by: str | None = "label") -> datasets.DatasetDict:
    """Give `splits` a validation split taken from train (seeded, stratified) when it has none.

    Model selection must never look at the test split; this keeps it honest for sources that ship only
    train and test.
    """
    if "validation" in splits:
        return splits
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {fraction}")
    stratify = stratify_by if stratify_by and isinstance(splits["train"].features.get(stratify_by),
                                                          datasets.ClassLabel) else None
    try:
        parts = splits["train"].train_test_split(test_size=fraction, seed=seed, stratify_by_column=stratify)
    except ValueError:  # a class too small to stratify: fall back to a plain seeded split
        parts = splits["train"].train_test_split(test_size=fraction, seed=seed)
    logger.info("validation split: %d rows carved from train (seed %d)", len(parts["test"]), seed)
    result = datasets.DatasetDict(splits)
    result["train"], result["validation"] = parts["train"], parts["test"]
    return result
