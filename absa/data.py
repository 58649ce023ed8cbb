"""Labelled ABSA data as splits with `text, aspect, start, end, spans, label`, from the Hub, tables, SemEval-2014
XML or the three-line `$T$` format (ABSA-PyTorch, PyABSA). Aspects are placed as predict places them
(`absa.aspects.resolve_aspect`), so training, evaluation and prediction read a file alike; `spans` lists every place
of the aspect (a `$T$` tweet may name its target twice), `start` / `end` the first."""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import datasets
import pandas as pd

from .aspects import AspectError, resolve_aspect
from .files import (TABLE_SUFFIXES, DataError, LabelRule, is_missing, load_hub_dataset, read_rows, read_text,
                    require_columns)
from .splits import SPLIT_NAMES, Splits, choose_validation, split_files

logger = logging.getLogger(__name__)

DEFAULT_LABELS = ("negative", "neutral", "positive")
XML_SUFFIXES = (".xml",)
T_FORMAT_SUFFIXES = (".raw", ".seg", ".txt")
FEATURES = {"text": datasets.Value("string"), "aspect": datasets.Value("string"), "start": datasets.Value("int32"),
            "end": datasets.Value("int32"), "spans": datasets.List(datasets.List(datasets.Value("int32"), length=2))}


def load_absa_splits(source: str | None = "yqzheng/semeval2014_laptops", *, train_file: str | None = None,
                     validation_file: str | None = None, test_file: str | None = None,
                     label_names=DEFAULT_LABELS, validation_fraction: float = 0.1, seed: int = 42,
                     select_on_test: bool = False, numeric_labels: str = "auto") -> Splits:
    """`source`: a Hub name, a folder or a file; `*_file` arguments override the folder's. Without a validation split
    one is carved from train by sentence (`carve_validation`); `select_on_test` reproduces tutorials that selected on
    test. One `LabelRule` reads the labels of all splits; the result records both for the model (`Splits`)."""
    label_names = tuple(label_names)
    files = split_files(source, train_file, validation_file, test_file,
                        TABLE_SUFFIXES + XML_SUFFIXES + T_FORMAT_SUFFIXES)
    if files:
        records = {split: (path, _read_records(path)) for split, path in files.items()}
    elif source:
        hub = load_hub_dataset(source)
        # Hub split names as in a folder (SPLIT_NAMES): a "dev" or "valid" split is the validation split.
        named = {split: next((name for name in names if name in hub), None) for split, names in SPLIT_NAMES.items()}
        records = {split: (f"{source} [{name}]", [(f"row {i + 1}", _label_as_name(row, hub[name].features))
                                                  for i, row in enumerate(hub[name])])
                   for split, name in named.items() if name is not None}
        if "train" not in records:
            raise DataError(source, f"no train split (splits: {', '.join(hub)})")
    else:
        raise DataError("dataset", "no data source given (a Hub name, a folder, or --train_file)")
    # One rule for every split: what a number means is read from the labels of all of them together.
    rule = LabelRule.for_values(label_names, [record.get("label") for _, rows in records.values()
                                              for _, record in rows], numeric_labels, files.get("train", source))
    splits = {split: _normalise_rows(rows, where, rule) for split, (where, rows) in records.items()}

    features = datasets.Features({**FEATURES, "label": datasets.ClassLabel(names=list(rule.names))})
    result = datasets.DatasetDict({split: datasets.Dataset.from_list(rows, features=features)
                                   for split, rows in splits.items()})
    result = choose_validation(result, select_on_test, validation_fraction, seed, files.get("train", source))
    result.numeric_labels = rule.numbers
    return result


def _label_as_name(row: dict, features) -> dict:
    """A Hub ClassLabel id as its name: ids count from 0 in the dataset's own order, which is not -1/0/1."""
    label = features.get("label")
    if isinstance(label, datasets.ClassLabel) and isinstance(row.get("label"), int) and row["label"] >= 0:
        return {**row, "label": label.int2str(row["label"])}
    return row


def read_absa_file(path, label_names=DEFAULT_LABELS, numeric_labels: str = "auto") -> list[dict]:
    """Checked rows of one file; what whole-number labels mean is read from its labels unless `numeric_labels` says."""
    records = _read_records(path)
    rule = LabelRule.for_values(label_names, [record.get("label") for _, record in records], numeric_labels, path)
    return _normalise_rows(records, path, rule)


def _read_records(path) -> list[tuple]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in XML_SUFFIXES:
        return _read_semeval_xml(path)
    if suffix in T_FORMAT_SUFFIXES:
        return _read_t_format(path)
    records = read_rows(path)
    if suffix in (".csv", ".tsv", ".parquet"):  # one header for all rows: name every missing column at once
        header = None if suffix == ".parquet" else "line 1 (header)"
        require_columns(records, path, ("text", "aspect", "label"), header)
    return records


def _normalise_rows(records, file, rule: LabelRule) -> list[dict]:
    """`conflict` rows (SemEval's fourth polarity) are dropped and counted."""
    rows = [_normalise_row(record, file, row_label, rule) for row_label, record in records]
    if None in rows:
        logger.warning("%s: dropped %d 'conflict' rows", file, rows.count(None))
        rows = [row for row in rows if row is not None]
    if not rows:
        raise DataError(file, "no usable rows")
    return rows


def _normalise_row(record: dict, file, row_label, rule: LabelRule) -> dict | None:
    for field in ("text", "aspect", "label"):  # the types of text and aspect: resolve_aspect's check
        if is_missing(record.get(field), text=field != "label"):
            raise DataError(file, "missing or empty", row=row_label, field=field)
    if not pd.api.types.is_scalar(record["label"]):
        raise DataError(file, f"must be one label, got {type(record['label']).__name__} {record['label']!r:.80}",
                        row=row_label, field="label")
    label = rule.id(record["label"])
    if label is None and str(record["label"]).strip().lower() == "conflict":
        return None
    if label is None:
        raise DataError(file, f"unknown label {record['label']!r} (expected one of {rule.expected()})",
                        row=row_label, field="label")
    try:
        span = resolve_aspect(record["text"], record["aspect"], record.get("start"), record.get("end"),
                              record.get("occurrence"), record.get("spans"))
    except AspectError as error:
        raise DataError(file, str(error), row=row_label, field=error.field) from None
    return {"text": span.text, "aspect": span.aspect, "start": span.start, "end": span.end,
            "spans": [list(pair) for pair in span.spans or ((span.start, span.end),)], "label": label}


def _read_semeval_xml(path: Path):
    """One record per `<aspectTerm>`."""
    text = read_text(path)
    # Refused before parsing: entity declarations can expand to gigabytes ("billion laughs"); SemEval XML has none.
    declaration = re.search(r"<!(DOCTYPE|ENTITY)", text)
    if declaration:
        raise DataError(path, f"<!{declaration[1]} is not accepted (entities are not expanded): remove the "
                        "declarations", row=f"line {text.count(chr(10), 0, declaration.start()) + 1}")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise DataError(path, f"malformed XML ({error})") from None
    sentences = root.findall(".//sentence")
    if not sentences:
        raise DataError(path, "no <sentence> elements: is this SemEval-2014 Task 4 XML?")
    records = []
    for sentence in sentences:
        where = f"sentence id={sentence.get('id', '?')}"
        text_element = sentence.find("text")
        if text_element is None or not text_element.text:
            raise DataError(path, "missing <text>", row=where, field="text")
        for term in sentence.findall("./aspectTerms/aspectTerm"):
            for attribute in ("term", "polarity"):
                if term.get(attribute) is None:
                    raise DataError(path, f"<aspectTerm> without '{attribute}'", row=where, field=attribute)
            records.append((where, {"text": text_element.text, "aspect": term.get("term"),
                                    "start": term.get("from"), "end": term.get("to"),
                                    "label": term.get("polarity")}))
    return records


def _read_t_format(path: Path):
    """Three lines a record: the sentence with `$T$`, the aspect, the polarity. Every `$T$` is the aspect: a span
    each (the Twitter set names some targets twice)."""
    lines = re.split(r"\r\n?|\n", read_text(path))  # not splitlines(): tweets hold U+2028, U+0085, ...
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(path, "the file is empty (no rows)")
    if len(lines) % 3:
        raise DataError(path, f"{len(lines)} lines is not a multiple of 3 (sentence with $T$, aspect, polarity)")
    records = []
    for first in range(0, len(lines), 3):
        template, aspect, polarity = (line.strip() for line in lines[first:first + 3])
        # The j-th $T$ moves by j times the length difference once the ones before it hold the aspect.
        starts = [m.start() + j * (len(aspect) - 3) for j, m in enumerate(re.finditer(r"\$T\$", template))]
        if not starts:
            raise DataError(path, f"the sentence has no '$T$' for the aspect: {template[:60]!r}",
                            row=f"line {first + 1}", field="text")
        records.append((f"line {first + 1}", {"text": template.replace("$T$", aspect), "aspect": aspect,
                                              "spans": [(a, a + len(aspect)) for a in starts], "label": polarity}))
    return records
