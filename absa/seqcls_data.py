"""finetune_seqcls.py's data: train / validation / test splits of texts (or text pairs) with labels, from local files
(`absa.files.read_rows`) or the Hub, checked row by row before any model is loaded; and the test split's rows with
their predictions.

The task is read from the labels unless forced: several 0/1 label columns or label lists: multi_label; numbers
written as floats: regression, unless --label_names names the classes and every number is whole; else single_label.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

import datasets
import numpy as np
from scipy.special import expit, softmax

from .files import (TABLE_SUFFIXES, DataError, LabelRule, check_label_names, is_missing, load_hub_dataset, read_rows,
                    require_columns, whole_number)
from .splits import SPLIT_NAMES, choose_validation, split_files

logger = logging.getLogger(__name__)

TASKS = ("single_label", "multi_label", "regression")
# transformers' config.problem_type: it picks the loss and what the text-classification pipeline applies to the
# logits (softmax / sigmoid / none).
PROBLEM_TYPES = dict(zip(TASKS, ("single_label_classification", "multi_label_classification", "regression")))
# Pairs first: GLUE's QNLI has `question, sentence`, and `sentence` alone would be the wrong guess.
TEXT_COLUMN_GUESSES = (("sentence1", "sentence2"), ("question1", "question2"), ("premise", "hypothesis"),
                       ("question", "sentence"), ("text",), ("sentence",), ("Tweet",), ("tweet",), ("review",),
                       ("content",))
LABEL_COLUMN_GUESSES = (("label",), ("labels",), ("score",))
TEXT, TEXT_PAIR, LABELS, ROW = "text", "text_pair", "labels", "row"
ZERO_ONE = {"1": 1.0, "1.0": 1.0, "true": 1.0, "yes": 1.0, "0": 0.0, "0.0": 0.0, "false": 0.0, "no": 0.0}
KIND_NAMES = {"number": ("numbers", "a number"), "text": ("text", "text"), "list": ("lists", "a list")}


@dataclass
class TextData:
    """Clean splits (columns text, [text_pair], labels, row) and what was learned about them."""

    splits: datasets.DatasetDict
    task: str
    label_names: list[str]
    text_columns: list[str]
    label_columns: list[str]
    sources: dict[str, str] = field(default_factory=dict)
    validation_split: dict = field(default_factory=dict)  # how validation was made (absa.splits.split_record)
    numeric_labels: str | None = None  # what whole-number labels meant (LabelRule.numbers)


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
    """Read, check and clean the splits; train capped (seeded) before validation is carved from it if missing."""
    if label_column and label_columns:
        raise DataError("settings", "give either --label_column (one column) or --label_columns (one 0/1 column "
                        "per label), not both")
    raw = _read_splits(dataset, dataset_config, train_file, validation_file, test_file)
    train = raw["train"]
    if len(text_columns) > 2:
        raise DataError(train.source, f"--text_columns takes one or two columns (a text, or a pair), got "
                        f"{len(text_columns)}: {' '.join(text_columns)}")
    text_columns = list(text_columns) or _guess_columns(train, TEXT_COLUMN_GUESSES, "text", "--text_columns")
    label_columns = list(label_columns) or ([label_column] if label_column else _guess_columns(
        train, LABEL_COLUMN_GUESSES, "label", "--label_column NAME, or --label_columns A B ... for one 0/1 column "
        "per label", field="label"))
    for split in raw.values():
        _require_columns(split, text_columns + label_columns)

    # Every label value's type is checked here, so a mixed column fails before the task is chosen.
    kinds = {column: _column_kind(raw, column) for column in label_columns}
    task = task or _infer_task(kinds, bool(label_names))
    _check_task_fits(task, kinds, train.source, bool(label_names))
    label_names = _label_names(task, raw, label_columns, kinds, list(label_names))
    rule = _label_rule(task, raw, label_columns[0], kinds[label_columns[0]].kind, label_names, numeric_labels)

    string = datasets.Value("string")
    features = datasets.Features({TEXT: string, ROW: string, **({TEXT_PAIR: string} if len(text_columns) == 2 else {}),
                                  LABELS: {"single_label": datasets.ClassLabel(names=label_names),
                                           "multi_label": datasets.Sequence(datasets.Value("float32"),
                                                                            length=len(label_names)),
                                           "regression": datasets.Value("float32")}[task]})
    splits = datasets.DatasetDict({name: datasets.Dataset.from_list(
        [_clean_row(split, row, record, text_columns, label_columns, task, label_names, rule, allow_empty_labels)
         for row, record in split.rows], features=features) for name, split in raw.items()})
    empty = sum(not any(labels) for labels in splits["train"][LABELS]) if task == "multi_label" else 0
    if empty:
        logger.info("%s: %d rows have no label at all (kept; --allow_empty_labels false refuses them)",
                    train.source, empty)

    if max_train_samples and max_train_samples < len(splits["train"]):
        splits["train"] = splits["train"].shuffle(seed=seed).select(range(max_train_samples))
    # Whole texts (a repeated text or pair stays on one side); stratified for single-label (a ClassLabel column).
    splits = choose_validation(splits, select_on_test, validation_fraction, seed, train.source, stratify_by=LABELS,
                               group_by=(TEXT, TEXT_PAIR))
    if max_train_samples:
        splits.validation_split["max_train_samples"] = max_train_samples
    return TextData(splits=splits, task=task, label_names=label_names, text_columns=text_columns,
                    label_columns=label_columns, sources={name: split.source for name, split in raw.items()},
                    validation_split=splits.validation_split,
                    numeric_labels=rule.numbers if task == "single_label" else None)


# ----------------------------------------------------------------------------------------------- reading


def _read_splits(dataset, dataset_config, train_file, validation_file, test_file) -> dict[str, RawSplit]:
    files = split_files(dataset, train_file, validation_file, test_file, TABLE_SUFFIXES)
    if files:
        return {split: RawSplit(str(path), read_rows(path),
                                "line 1 (header)" if path.suffix.lower() in (".csv", ".tsv", ".txt") else None)
                for split, path in files.items()}
    if dataset:
        return _read_hub(dataset, dataset_config)
    raise DataError("dataset", "no data source given (a Hub name, a folder, or --train_file)")


def _read_hub(name: str, config: str | None) -> dict[str, RawSplit]:
    hub = load_hub_dataset(name, config)
    raw = {}
    for split, names in SPLIT_NAMES.items():
        found = next((n for n in names if n in hub), None)
        if found is None:
            continue
        class_names = {column: getattr(feature, "feature", feature).names  # a ClassLabel, or a list of them
                       for column, feature in hub[found].features.items()
                       if isinstance(getattr(feature, "feature", feature), datasets.ClassLabel)}
        rows = [(f"row {i + 1}", record) for i, record in enumerate(hub[found].to_list())]
        raw[split] = RawSplit(f"{name}{'/' + config if config else ''} [{found}]", rows, None, class_names)
    if "train" not in raw:
        raise DataError(name, f"no train split (splits: {', '.join(hub)})")
    # GLUE hides its test labels (-1): its validation split becomes the reported test split, and validation is
    # carved from train, so model selection still never sees the split that is reported.
    test = raw.get("test")
    label = next((k for (k,) in LABEL_COLUMN_GUESSES if test and test.rows and k in test.rows[0][1]), None)
    if label and all(is_missing(record[label]) or record[label] == -1 for _, record in test.rows):
        logger.warning("%s has no labels: the validation split becomes the test split and validation is carved "
                       "from train", test.source)
        del raw["test"]
        if "validation" in raw:
            raw["test"] = raw.pop("validation")
    return raw


# ----------------------------------------------------------------------------------------------- columns


def _guess_columns(split: RawSplit, guesses, what: str, hint: str, field: str | None = None) -> list[str]:
    columns = list(split.rows[0][1])
    found = next((list(guess) for guess in guesses if set(guess) <= set(columns)), None)
    if found is None:
        raise DataError(split.source, f"no {what} column found (tried {', '.join('+'.join(g) for g in guesses)}; "
                        f"columns: {', '.join(columns)}); pass {hint}", row=split.header, field=field)
    return found


def _require_columns(split: RawSplit, columns) -> None:
    if split.header is not None:  # a delimited file: reported at its header
        return require_columns(split.rows, split.source, columns, split.header)
    for row, record in split.rows:
        missing = next((column for column in columns if column not in record), None)
        if missing:
            raise DataError(split.source, f"no field '{missing}' (fields: {', '.join(record)})", row=row,
                            field=missing)


# ----------------------------------------------------------------------------------------------- labels


def _parse(value):
    """(kind, value, written as a float), kind one of missing / number / list / text; true / false are 1 / 0."""
    if is_missing(value):
        return "missing", None, False
    if isinstance(value, (int, np.integer, bool, np.bool_)):
        return "number", int(value), False
    if isinstance(value, (float, np.floating)):
        return ("number", float(value), True) if math.isfinite(value) else ("missing", None, False)
    if isinstance(value, (list, tuple, np.ndarray)):
        return "list", list(value), False
    text = str(value).strip()
    if text.startswith("["):  # a list written into a CSV cell as JSON: ["anger", "joy"]
        try:
            return "list", list(json.loads(text)), False
        except json.JSONDecodeError:
            pass
    try:
        number = float(text)
    except ValueError:
        return "text", text, False
    if not math.isfinite(number):
        return "missing", None, False
    as_float = any(c in text for c in ".eE")
    return "number", (number if as_float else int(number)), as_float


@dataclass
class ColumnKind:
    kind: str | None  # number / text / list (None: every value missing)
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
            if seen is None:
                seen = ColumnKind(kind, as_float, _where(split, row, record, column))
            elif kind != seen.kind:
                raise DataError(split.source, f"mixed label types: {record.get(column)!r} is {KIND_NAMES[kind][1]}, "
                                f"but this column holds {KIND_NAMES[seen.kind][0]} (first: {seen.example})",
                                row=row, field=column)
            seen.floats = seen.floats or as_float
            if kind == "number" and not seen.fractional and whole_number(value) is None:
                seen.fractional = _where(split, row, record, column)
    return seen or ColumnKind(None, False)


def _where(split, row, record, column) -> str:
    return f"{record.get(column)!r} at {row} of {split.source}"


def _infer_task(kinds: dict[str, ColumnKind], names_given: bool) -> str:
    kind = next(iter(kinds.values()))
    if len(kinds) > 1 or kind.kind == "list":
        return "multi_label"
    # Floats are scores, except whole ones when --label_names names classes: a float column of class ids.
    scores = kind.kind == "number" and kind.floats and (bool(kind.fractional) or not names_given)
    return "regression" if scores else "single_label"


def _check_task_fits(task: str, kinds: dict[str, ColumnKind], source: str, names_given: bool) -> None:
    for column, kind in kinds.items():
        example, holds = kind.fractional or kind.example, KIND_NAMES.get(kind.kind, ("",))[0]
        single, several = task == "single_label", len(kinds) > 1
        problem = next((message for failed, message in (
            (kind.kind is None, "every label is missing"),
            (single and (kind.kind == "list" or several), "lists / several label columns are multi-label data; "
             "drop --task single_label or pass --task multi_label"),
            (single and kind.fractional, f"labels are floats (e.g. {kind.fractional}): a score to regress? pass "
             "--task regression (or write whole-number class ids / class names)"),
            (single and kind.floats and not names_given, f"labels are floats (e.g. {kind.example}): scores to "
             "regress (--task regression), or class ids written as floats (list the classes with --label_names)?"),
            (task == "regression" and names_given, f"--label_names names classes, but the labels are scores (e.g. "
             f"{example}): drop --label_names to regress, or write the labels as class names or whole numbers"),
            (task == "regression" and kind.kind != "number", f"regression needs numeric scores, but this column "
             f"holds {holds} (e.g. {kind.example})"),
            (task == "regression" and several, "regression takes one score column (--label_column), not "
             "--label_columns"),
            (task == "multi_label" and kind.kind == "list" and several, "with --label_columns every column is one "
             "label's 0/1, not a list")) if failed), None)
        if problem:
            raise DataError(source, problem, field=column)


def _label_names(task, raw, label_columns, kinds, given: list[str]) -> list[str]:
    """Label names in id order: as given, from a Hub ClassLabel, the label columns, or sorted from train."""
    train, column = raw["train"], label_columns[0]
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
    values = set()  # sorted below, so the same data always gives the same ids
    for row, record in train.rows:
        kind, value, _ = _parse(record.get(column))
        if kind == "list":
            values.update(_item_name(item, train, row, column) for item in value)
        elif kind != "missing":
            values.add(value)
    if kinds[column].kind == "number":
        return [str(v) for v in sorted(values)]  # numerically: 2 before 10
    try:
        return list(check_label_names(sorted(values)))
    except DataError as error:  # "Pos" and "pos": one class or two? The data cannot say
        raise DataError(train.source, f"{error.problem.replace('--label_names has', 'the labels have')}: write them "
                        "alike, or list the classes with --label_names", field=column) from None


def _label_rule(task, raw, column, kind, label_names, numeric_labels) -> LabelRule | None:
    """absa.files' one label rule for class names (single labels, label lists); what numbers mean is read from the
    single labels of every split."""
    if task == "regression" or task == "multi_label" and kind != "list":
        return None
    values = [_parse(record.get(column))[1] for split in raw.values() if task == "single_label"
              and column not in split.class_names for _, record in split.rows]  # Hub ClassLabel ids: names by row
    return LabelRule.for_values(label_names, values, numeric_labels, raw["train"].source)


def _item_name(item, split: RawSplit, row, column) -> str:
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool) and column in split.class_names:
        return split.class_names[column][int(item)]
    if is_missing(item) or isinstance(item, (list, dict)):
        raise DataError(split.source, f"a label list holds {item!r}", row=row, field=column)
    return str(item).strip()


def _clean_row(split: RawSplit, row, record, text_columns, label_columns, task, label_names, rule,
               allow_empty_labels) -> dict:
    clean = {ROW: str(row)}
    for name, column in zip((TEXT, TEXT_PAIR), text_columns):
        value = record.get(column)
        if is_missing(value, text=True):
            raise DataError(split.source, "missing or empty text", row=row, field=column)
        if not isinstance(value, str):  # a number or a list in JSON / Parquet is not a text
            value = getattr(value, "tolist", lambda: value)()  # numpy values from Parquet, as Python ones
            raise DataError(split.source, f"must be a string, got {type(value).__name__} {value!r:.80}", row=row,
                            field=column)
        clean[name] = value
    column = label_columns[0]
    value = record.get(column)
    kind, parsed, _ = _parse(value)
    if kind == "missing" and not (task == "multi_label" and len(label_columns) > 1):
        raise DataError(split.source, f"missing {'score' if task == 'regression' else 'label'} ({value!r}: empty, "
                        "NaN or null)", row=row, field=column)
    if task == "regression":
        clean[LABELS] = float(parsed)
    elif task == "single_label":
        if column in split.class_names and kind == "number" and 0 <= parsed < len(split.class_names[column]):
            kind, parsed = "text", split.class_names[column][parsed]  # a Hub ClassLabel id
        clean[LABELS] = rule.id(parsed)
        if clean[LABELS] is None:
            raise DataError(split.source, f"unknown label {parsed!r}: not among the {len(rule.names)} labels "
                            f"({rule.expected()[:300]}); list every class with --label_names", row=row, field=column)
    elif kind == "list":
        names = [_item_name(item, split, row, column) for item in parsed]
        ids = [rule.id(name) for name in names]
        if None in ids:
            raise DataError(split.source, f"unknown label {names[ids.index(None)]!r} (labels: "
                            f"{', '.join(label_names)})", row=row, field=column)
        clean[LABELS] = [float(i in ids) for i in range(len(label_names))]
    else:
        clean[LABELS] = [_zero_one(split, row, c, record.get(c)) for c in label_columns]
    if task == "multi_label" and not allow_empty_labels and not any(clean[LABELS]):
        raise DataError(split.source, "no label set in this row (every label is 0); pass --allow_empty_labels true "
                        "to keep such rows", row=row, field=column if kind == "list" else ",".join(label_columns))
    return clean


def _zero_one(split, row, column, value) -> float:
    kind, parsed, _ = _parse(value)
    if kind == "missing":
        raise DataError(split.source, f"missing value ({value!r}) in a 0/1 label column", row=row, field=column)
    number = ZERO_ONE.get(str(parsed).strip().lower())
    if number is None:
        raise DataError(split.source, f"a multi-label column holds 0 or 1 (or true / false), got {value!r}", row=row,
                        field=column)
    return number


# ----------------------------------------------------------------------------------------------- tokenizing


def encode_text_splits(splits: datasets.DatasetDict, tokenizer, max_length: int):
    """(splits, features), tokenized and truncated; evaluation splits sorted by length, both in the same order, so
    the i-th prediction of an evaluation split belongs to the i-th row of `splits[split]`."""
    features, ordered = datasets.DatasetDict(), datasets.DatasetDict()
    for split, dataset in splits.items():
        encoded = dataset.map(lambda batch: tokenizer(batch[TEXT], batch.get(TEXT_PAIR), truncation=True,
                                                      max_length=max_length),
                              batched=True, remove_columns=[c for c in dataset.column_names if c != LABELS],
                              desc=f"tokenizing {split}")
        if split != "train":
            order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
            encoded, dataset = encoded.select(order), dataset.select(order)
        features[split], ordered[split] = encoded, dataset
    return ordered, features


def labelled_prediction_rows(data: TextData, split: datasets.Dataset, logits: np.ndarray,
                             threshold: float) -> list[dict]:
    """One row per example of `split` (its text, gold label and prediction), `logits` in the same order, scored as
    the text-classification pipeline scores them (softmax / sigmoid / the raw score): the README's snippet agrees."""
    if len(split) != len(logits):
        raise RuntimeError(f"{len(logits)} predictions for {len(split)} test rows")
    scores = {"single_label": lambda x: softmax(x, axis=-1), "multi_label": expit,
              "regression": lambda x: x}[data.task](logits)
    rows = []
    for record, row_scores in zip(split, scores.tolist()):
        row = {ROW: record[ROW], TEXT: record[TEXT], **({TEXT_PAIR: record[TEXT_PAIR]} if TEXT_PAIR in record else {})}
        by_label = dict(zip(data.label_names, row_scores))
        if data.task == "regression":
            rows.append({**row, "label": record[LABELS], "prediction": row_scores[0]})
        elif data.task == "multi_label":
            rows.append({**row, "label": [name for name, gold in zip(data.label_names, record[LABELS]) if gold],
                         "prediction": [name for name, p in by_label.items() if p >= threshold], "scores": by_label})
        else:
            best = max(by_label, key=by_label.get)
            rows.append({**row, "label": data.label_names[record[LABELS]], "prediction": best,
                         "score": by_label[best], "scores": by_label})
    return rows
