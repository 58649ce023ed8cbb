"""Sequence-classification data: train / validation / test splits of texts (or text pairs) with labels.

Sources: a Hub dataset (`imdb`, `glue` + config, `sem_eval_2018_task_1`, ...) or local files (JSONL, JSON, CSV,
TSV, Parquet, and tab-separated `.txt` as SemEval-2018 ships it: `absa.files.read_rows`) in a folder or named one
by one.

The task is read from the labels unless forced:
* several label columns (one 0/1 column per label) or a label column holding lists -> `multi_label`;
* numbers written as floats (`3.8`, `5.000`) -> `regression`, unless --label_names names the classes and every
  number is whole (`1.0`, `-1.0`: class ids or -1/0/1 written by a float column) -> `single_label`;
* anything else (class names, whole numbers) -> `single_label`.

Every problem with the data is a `DataError` naming the file, the row and the field, raised while reading,
i.e. before a model is loaded or a step is trained.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from .files import (SPLIT_NAMES, TABLE_SUFFIXES, DataError, LabelRule, carve_validation, check_label_names,
                    find_split_files, is_missing, load_hub_dataset, read_rows, require_columns)

logger = logging.getLogger(__name__)

TASKS = ("single_label", "multi_label", "regression")
# `config.problem_type` of transformers' *ForSequenceClassification: it picks the loss (CE / BCE / MSE) and the
# function the text-classification pipeline applies (softmax / sigmoid / none).
PROBLEM_TYPES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
                 "regression": "regression"}
TASK_METRICS = {
    "single_label": ("loss", "accuracy", "macro_f1", "macro_precision", "macro_recall"),
    "multi_label": ("loss", "micro_f1", "macro_f1", "roc_auc", "subset_accuracy"),
    "regression": ("loss", "pearson", "spearman", "mse", "rmse", "mae"),
}
ALL_METRICS = tuple(dict.fromkeys(m for metrics in TASK_METRICS.values() for m in metrics))
# Pairs first: GLUE's QNLI has `question, sentence`, and `sentence` alone would be the wrong guess.
TEXT_COLUMN_GUESSES = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                       ("question", "sentence"), ("text",), ("sentence",), ("Tweet",), ("tweet",), ("review",),
                       ("content",))
LABEL_COLUMN_GUESSES = ("label", "labels", "score")
TEXT, TEXT_PAIR, LABELS, ROW = "text", "text_pair", "labels", "row"
_TRUE, _FALSE = ("1", "1.0", "true", "yes"), ("0", "0.0", "false", "no")


@dataclass
class TextData:
    """Clean splits (columns text, [text_pair], labels, row) and what was learned about them."""

    splits: datasets.DatasetDict
    task: str
    label_names: list[str]
    text_columns: list[str]
    label_columns: list[str]
    sources: dict[str, str] = field(default_factory=dict)
    validation_split: dict = field(default_factory=dict)  # how validation was made (absa.files.split_record)
    numeric_labels: str | None = None  # what whole-number labels meant (absa.files.LabelRule)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2


@dataclass
class RawSplit:
    source: str  # file path or "hub-name [split]", for messages
    rows: list  # (row label, record dict)
    header: str | None = None  # where a missing column is reported: the header line of delimited files
    class_names: dict = field(default_factory=dict)  # column -> names of a Hub ClassLabel (values are ids)


def load_text_data(dataset: str | None = None, *, dataset_config: str | None = None, train_file: str | None = None,
                   validation_file: str | None = None, test_file: str | None = None, text_columns=(),
                   label_column: str | None = None, label_columns=(), label_names=(), task: str | None = None,
                   allow_empty_labels: bool = True, max_train_samples: int = 0, validation_fraction: float = 0.1,
                   seed: int = 42, select_on_test: bool = False, numeric_labels: str = "auto") -> TextData:
    """Read, check and clean the splits; carve validation from train when the source has none.

    `max_train_samples` caps train (seeded) before validation is carved from it, so CPU runs stay small. Class labels
    are read by one `LabelRule` for all splits (`numeric_labels`: what whole numbers mean, as in absa.data).
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if label_column and label_columns:
        raise DataError("settings", "give either --label_column (one column) or --label_columns (one 0/1 column "
                        "per label), not both")
    raw = read_raw_splits(dataset, dataset_config, train_file, validation_file, test_file)
    train = raw["train"]
    text_columns = choose_text_columns(train, text_columns)
    label_columns = list(label_columns) or [label_column or _guess_label_column(train)]
    for split in raw.values():
        _require_columns(split, text_columns + label_columns)

    # Task: from the train labels (every value's type checked, so mixed columns fail here), or as forced.
    kinds = {column: _column_kind(raw, column) for column in label_columns}
    task = task or _infer_task(kinds, bool(label_names))
    _check_task_fits(task, kinds, raw, bool(label_names))
    label_names = _label_names(task, raw, label_columns, kinds, list(label_names))
    rule = _label_rule(task, raw, label_columns[0], label_names, numeric_labels)

    features = {TEXT: datasets.Value("string"), ROW: datasets.Value("string")}
    if len(text_columns) == 2:
        features[TEXT_PAIR] = datasets.Value("string")
    features[LABELS] = {"single_label": datasets.ClassLabel(names=label_names),
                        "multi_label": datasets.Sequence(datasets.Value("float32"), length=len(label_names)),
                        "regression": datasets.Value("float32")}[task]
    splits = datasets.DatasetDict()
    for name, split in raw.items():
        rows = [_clean_row(split, row, record, text_columns, label_columns, task, label_names, rule,
                           allow_empty_labels)
                for row, record in split.rows]
        splits[name] = datasets.Dataset.from_list(rows, features=datasets.Features(features))
    empty = sum(1 for labels in splits["train"][LABELS] if task == "multi_label" and not any(labels))
    if empty:
        logger.info("%s: %d rows have no label at all (kept; --allow_empty_labels false refuses them)",
                    train.source, empty)

    if max_train_samples and max_train_samples < len(splits["train"]):
        splits["train"] = splits["train"].shuffle(seed=seed).select(range(max_train_samples))
    if select_on_test:
        if "test" not in splits:
            raise DataError(train.source, "--select_on_test needs a test split")
        logger.warning("selecting the best epoch on the TEST split: its test scores are optimistic")
        splits["validation"] = splits["test"]
    # Whole texts (a repeated text or pair stays on one side); stratified for single-label (a ClassLabel column).
    splits = carve_validation(splits, validation_fraction, seed, stratify_by=LABELS, group_by=(TEXT, TEXT_PAIR),
                              source=train.source)
    if select_on_test:
        splits.validation_split["made"] = "test"
    if max_train_samples:
        splits.validation_split["max_train_samples"] = max_train_samples
    return TextData(splits=splits, task=task, label_names=label_names, text_columns=text_columns,
                    label_columns=label_columns, sources={name: split.source for name, split in raw.items()},
                    validation_split=splits.validation_split, numeric_labels=rule.numbers if rule else None)


# ----------------------------------------------------------------------------------------------- reading


def read_raw_splits(dataset, dataset_config, train_file, validation_file, test_file) -> dict[str, RawSplit]:
    """split -> RawSplit from local files (a folder and/or explicit files) or from the Hub."""
    files = {split: Path(path) for split, path in
             (("train", train_file), ("validation", validation_file), ("test", test_file)) if path}
    if dataset and Path(dataset).is_dir():
        files = {**find_split_files(dataset, TABLE_SUFFIXES), **files}
    elif dataset and Path(dataset).is_file():
        files = {"train": Path(dataset), **files}
    if files:
        if "train" not in files:
            raise DataError(next(iter(files.values())), "a train file is needed as well (--train_file)")
        return {split: _read_file(path) for split, path in files.items()}
    if dataset:
        return _read_hub(dataset, dataset_config)
    raise DataError("dataset", "no data source given (a Hub name, a folder, or --train_file)")


def _read_file(path: Path) -> RawSplit:
    header = "line 1 (header)" if path.suffix.lower() in (".csv", ".tsv", ".txt") else None
    return RawSplit(str(path), read_rows(path), header)


def _read_hub(name: str, config: str | None) -> dict[str, RawSplit]:
    """Train / validation / test of a Hub dataset; a test split without labels (GLUE) is replaced by validation."""
    hub = load_hub_dataset(name, config)
    raw = {}
    for split, names in SPLIT_NAMES.items():
        found = next((n for n in names if n in hub), None)
        if found is None:
            continue
        data = hub[found]
        class_names = {}
        for column, feature in data.features.items():
            if isinstance(feature, datasets.ClassLabel):
                class_names[column] = feature.names
            elif isinstance(getattr(feature, "feature", None), datasets.ClassLabel):  # Sequence / List of ClassLabel
                class_names[column] = feature.feature.names
        rows = [(f"row {i + 1}", record) for i, record in enumerate(data.to_list())]
        raw[split] = RawSplit(f"{name}{'/' + config if config else ''} [{found}]", rows, None, class_names)
    if "train" not in raw:
        raise DataError(name, f"no train split (splits: {', '.join(hub)})")
    return _drop_unlabelled_test(raw)


def _drop_unlabelled_test(raw: dict[str, RawSplit]) -> dict[str, RawSplit]:
    # GLUE hides its test labels (-1). Evaluate on its validation split instead and carve a new validation
    # split from train, so model selection still never sees the split that is reported.
    test = raw.get("test")
    if test is None or not test.rows:
        return raw
    label_keys = [k for k in LABEL_COLUMN_GUESSES if k in test.rows[0][1]]
    if label_keys and all(is_missing(record[label_keys[0]]) or record[label_keys[0]] == -1 for _, record in test.rows):
        logger.warning("%s has no labels: the validation split becomes the test split and validation is carved "
                       "from train", test.source)
        del raw["test"]
        if "validation" in raw:
            raw["test"] = raw.pop("validation")
    return raw


def read_inputs(path: str | Path, text_columns=()) -> tuple[list[str], list]:
    """Texts to predict from a file: (text columns used, [(row label, [text] or [text, text_pair])])."""
    split = _read_file(Path(path))
    columns = choose_text_columns(split, text_columns)
    _require_columns(split, columns)
    return columns, [(row, _texts(split, row, record, columns)) for row, record in split.rows]


# ----------------------------------------------------------------------------------------------- columns


def choose_text_columns(split: RawSplit, given=()) -> list[str]:
    if given:
        if len(given) > 2:
            raise DataError(split.source, f"--text_columns takes one or two columns (a text, or a pair), got "
                            f"{len(given)}: {' '.join(given)}")
        return list(given)
    columns = _columns(split)
    for guess in TEXT_COLUMN_GUESSES:
        if all(column in columns for column in guess):
            return list(guess)
    raise DataError(split.source, f"no text column found (tried {', '.join('+'.join(g) for g in TEXT_COLUMN_GUESSES)};"
                    f" columns: {', '.join(columns)}); pass --text_columns", row=split.header)


def _guess_label_column(split: RawSplit) -> str:
    columns = _columns(split)
    for guess in LABEL_COLUMN_GUESSES:
        if guess in columns:
            return guess
    raise DataError(split.source, f"no label column found (tried {', '.join(LABEL_COLUMN_GUESSES)}; columns: "
                    f"{', '.join(columns)}); pass --label_column NAME, or --label_columns A B ... for one 0/1 "
                    "column per label", row=split.header, field="label")


def _columns(split: RawSplit) -> list[str]:
    return list(split.rows[0][1]) if split.rows else []


def _require_columns(split: RawSplit, columns) -> None:
    """Every needed column exists: reported at the header of delimited files, else at the first row without it."""
    if split.header is not None:
        return require_columns(split.rows, split.source, columns, split.header)
    for column in columns:
        for row, record in split.rows:
            if column not in record:
                raise DataError(split.source, f"no field '{column}' (fields: {', '.join(record)})", row=row,
                                field=column)


# ----------------------------------------------------------------------------------------------- labels


def _parse(value):
    """(kind, value, written as a float) with kind one of missing / number / text / list / bool."""
    if is_missing(value):
        return "missing", None, False
    if isinstance(value, (bool, np.bool_)):
        return "bool", bool(value), False
    if isinstance(value, (int, np.integer)):
        return "number", int(value), False
    if isinstance(value, (float, np.floating)):
        return ("number", float(value), True) if math.isfinite(value) else ("missing", None, False)
    if isinstance(value, (list, tuple, np.ndarray)):
        return "list", list(value), False
    text = str(value).strip()
    if text.startswith("["):  # a list written into a CSV cell as JSON: ["anger", "joy"]
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return "list", parsed, False
    try:
        number = float(text)
    except ValueError:
        return "text", text, False
    if not math.isfinite(number):
        return "missing", None, False
    as_float = any(c in text for c in ".eE")
    return "number", (number if as_float else int(number)), as_float


def _kind_name(kind: str, one: bool = False) -> str:
    return {"number": ("numbers", "a number"), "text": ("text", "text"), "list": ("lists", "a list"),
            "bool": ("true/false values", "a true/false value")}[kind][one]


@dataclass
class ColumnKind:
    kind: str | None  # number / text / list / bool (None: every value missing)
    floats: bool  # some number written as a float: a regression target
    example: str = ""  # "'pos' at line 3 of train.csv", for messages
    fractional: str = ""  # the first number that is not whole ("'0.5' at line 4 of train.csv"), if any


def _column_kind(raw: dict[str, RawSplit], column: str) -> ColumnKind:
    """The type of a label column, from its first value in train; any value of another type is refused."""
    seen: ColumnKind | None = None
    for split in raw.values():  # train first
        for row, record in split.rows:
            kind, value, as_float = _parse(record.get(column))
            if kind == "missing":
                continue
            if seen and {kind, seen.kind} == {"bool", "number"}:
                kind = seen.kind  # True/False and 0/1 mix happily
            if seen is None:
                seen = ColumnKind(kind, as_float, f"{record.get(column)!r} at {row} of {split.source}")
            elif kind != seen.kind:
                raise DataError(split.source, f"mixed label types: {record.get(column)!r} is "
                                f"{_kind_name(kind, one=True)}, but this column holds {_kind_name(seen.kind)} "
                                f"(first: {seen.example})",
                                row=row, field=column)
            seen.floats = seen.floats or as_float
            if kind == "number" and not seen.fractional and not float(value).is_integer():
                seen.fractional = f"{record.get(column)!r} at {row} of {split.source}"
    return seen or ColumnKind(None, False)


def _infer_task(kinds: dict[str, ColumnKind], names_given: bool = False) -> str:
    """Floats are scores, except whole ones when --label_names names classes: a float column of class ids."""
    if len(kinds) > 1 or next(iter(kinds.values())).kind == "list":
        return "multi_label"
    kind = next(iter(kinds.values()))
    scores = kind.kind == "number" and kind.floats and (bool(kind.fractional) or not names_given)
    return "regression" if scores else "single_label"


def _check_task_fits(task: str, kinds: dict[str, ColumnKind], raw: dict[str, RawSplit],
                     names_given: bool = False) -> None:
    source = raw["train"].source
    for column, kind in kinds.items():
        if kind.kind is None:
            raise DataError(source, "every label is missing", field=column)
        if task == "single_label" and (kind.kind == "list" or len(kinds) > 1):
            raise DataError(source, "lists / several label columns are multi-label data; drop --task single_label "
                            "or pass --task multi_label", field=column)
        if task == "single_label" and kind.fractional:
            raise DataError(source, f"labels are floats (e.g. {kind.fractional}): a score to regress? pass --task "
                            "regression (or write whole-number class ids / class names)", field=column)
        if task == "single_label" and kind.floats and not names_given:
            raise DataError(source, f"labels are floats (e.g. {kind.example}): scores to regress (--task "
                            "regression), or class ids written as floats (list the classes with --label_names)?",
                            field=column)
        if task == "regression" and names_given:
            raise DataError(source, f"--label_names names classes, but the labels are scores (e.g. "
                            f"{kind.fractional or kind.example}): drop --label_names to regress, or write the labels "
                            "as class names or whole numbers", field=column)
        if task == "regression" and kind.kind not in ("number",):
            raise DataError(source, f"regression needs numeric scores, but this column holds {_kind_name(kind.kind)} "
                            f"(e.g. {kind.example})", field=column)
        if task == "regression" and len(kinds) > 1:
            raise DataError(source, "regression takes one score column (--label_column), not --label_columns",
                            field=column)
        if task == "multi_label" and kind.kind == "text":
            raise DataError(source, f"a multi-label column holds 0/1 (or true/false) or lists of labels, not text "
                            f"(e.g. {kind.example})", field=column)
        if task == "multi_label" and kind.kind == "list" and len(kinds) > 1:
            raise DataError(source, "with --label_columns every column is one label's 0/1, not a list", field=column)


def _label_names(task, raw, label_columns, kinds, given: list[str]) -> list[str]:
    """Label names in id order: as given, from a Hub ClassLabel, the label columns, or sorted from train."""
    train = raw["train"]
    column = label_columns[0]
    if task == "regression":
        return [column]
    if task == "multi_label" and kinds[column].kind != "list":
        if given and len(given) != len(label_columns):
            raise DataError(train.source, f"--label_names names {len(given)} labels but --label_columns has "
                            f"{len(label_columns)}", field=column)
        return given or list(label_columns)
    if given:
        return list(check_label_names(given))
    if column in train.class_names:
        return list(train.class_names[column])
    # Sorted, so the same data always gives the same ids: numbers numerically, names alphabetically.
    values = set()
    for row, record in train.rows:
        kind, value, _ = _parse(record.get(column))
        if kind == "list":
            values.update(_item_name(item, train, row, column) for item in value)
        elif kind in ("number", "bool"):
            values.add(int(value))
        elif kind == "text":
            values.add(value)
    if kinds[column].kind in ("number", "bool"):
        return [str(v) for v in sorted(values)]
    try:
        return list(check_label_names(sorted(values)))
    except DataError as error:  # "Pos" and "pos": one class or two? The data cannot say
        raise DataError(train.source, f"{error.problem.replace('--label_names has', 'the labels have')}: write them "
                        "alike, or list the classes with --label_names", field=column) from None


def _label_rule(task, raw, column, label_names, numeric_labels) -> LabelRule | None:
    """The one label rule of absa.files, for single-label classes; what numbers mean is read from every split."""
    if task != "single_label":
        return None
    values = []
    for split in raw.values():
        if column in split.class_names:  # Hub ClassLabel ids are turned into their names row by row
            continue
        for _, record in split.rows:
            kind, value, _ = _parse(record.get(column))
            values.append(int(value) if kind in ("number", "bool") else value)
    return LabelRule.for_values(label_names, values, numeric_labels, raw["train"].source)


def _item_name(item, split: RawSplit, row, column) -> str:
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool) and column in split.class_names:
        return split.class_names[column][int(item)]
    if is_missing(item) or isinstance(item, (list, dict)):
        raise DataError(split.source, f"a label list holds {item!r}", row=row, field=column)
    return str(item).strip()


def _texts(split: RawSplit, row, record, text_columns) -> list[str]:
    texts = []
    for column in text_columns:
        value = record.get(column)
        if is_missing(value, text=True):
            raise DataError(split.source, "missing or empty text", row=row, field=column)
        if not isinstance(value, str):  # a number or a list in JSON / Parquet is not a text
            value = getattr(value, "tolist", lambda: value)()  # numpy values from Parquet, as Python ones
            raise DataError(split.source, f"must be a string, got {type(value).__name__} {value!r:.80}", row=row,
                            field=column)
        texts.append(value)
    return texts


def _clean_row(split: RawSplit, row, record, text_columns, label_columns, task, label_names, rule,
               allow_empty_labels) -> dict:
    texts = _texts(split, row, record, text_columns)
    clean = {TEXT: texts[0], ROW: str(row)}
    if len(texts) == 2:
        clean[TEXT_PAIR] = texts[1]
    column = label_columns[0]
    value = record.get(column)
    kind, parsed, _ = _parse(value)
    if kind == "missing" and not (task == "multi_label" and len(label_columns) > 1):
        what = "score" if task == "regression" else "label"
        raise DataError(split.source, f"missing {what} ({value!r}: empty, NaN or null)", row=row, field=column)

    if task == "regression":
        clean[LABELS] = float(parsed)
    elif task == "single_label":
        clean[LABELS] = _class_id(split, row, column, kind, parsed, rule)
    elif kind == "list":
        names = [_item_name(item, split, row, column) for item in parsed]
        unknown = [name for name in names if name not in label_names]
        if unknown:
            raise DataError(split.source, f"unknown label {unknown[0]!r} (labels: {', '.join(label_names)})",
                            row=row, field=column)
        clean[LABELS] = [float(name in names) for name in label_names]
    else:
        clean[LABELS] = [_zero_one(split, row, c, record.get(c)) for c in label_columns]
    if task == "multi_label" and not allow_empty_labels and not any(clean[LABELS]):
        raise DataError(split.source, "no label set in this row (every label is 0); pass --allow_empty_labels true "
                        "to keep such rows", row=row, field=column if kind == "list" else ",".join(label_columns))
    return clean


def _class_id(split, row, column, kind, value, rule: LabelRule) -> int:
    if column in split.class_names and kind == "number":  # Hub ClassLabel id
        if 0 <= value < len(split.class_names[column]):
            value, kind = split.class_names[column][value], "text"
    label = rule.id(int(value) if kind in ("number", "bool") else value)
    if label is None:
        raise DataError(split.source, f"unknown label {value!r}: not among the {len(rule.names)} labels "
                        f"({rule.expected()[:300]}); list every class with --label_names", row=row, field=column)
    return label


def _zero_one(split, row, column, value) -> float:
    kind, parsed, _ = _parse(value)
    if kind == "missing":
        raise DataError(split.source, f"missing value ({value!r}) in a 0/1 label column", row=row, field=column)
    text = str(parsed).strip().lower()
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    raise DataError(split.source, f"a multi-label column holds 0 or 1 (or true / false), got {value!r}", row=row,
                    field=column)


# ----------------------------------------------------------------------------------------------- tokenizing


def encode_text_splits(splits: datasets.DatasetDict, tokenizer, max_length: int):
    """Tokenize every split (truncated to max_length); evaluation splits sorted by length.

    Returns (splits, features) in the same row order, so the i-th prediction of an evaluation split belongs
    to the i-th row of `splits[split]` (the loop keeps already-sorted evaluation splits in order).
    """
    def encode(batch):
        encoded = tokenizer(batch[TEXT], batch[TEXT_PAIR] if TEXT_PAIR in batch else None, truncation=True,
                            max_length=max_length)
        return {**encoded, LABELS: batch[LABELS]}

    features, ordered = datasets.DatasetDict(), datasets.DatasetDict()
    for split, dataset in splits.items():
        encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc=f"tokenizing {split}")
        if split != "train":
            order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
            encoded, dataset = encoded.select(order), dataset.select(order)
        features[split], ordered[split] = encoded, dataset
    return ordered, features
