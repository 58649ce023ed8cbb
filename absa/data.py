"""ABSA data: train / validation / test splits with columns `text, aspect, start, end, spans, label` from any source.

Sources: a Hub dataset name (default `yqzheng/semeval2014_laptops`), a folder or files in JSONL / JSON / CSV /
TSV / Parquet with those columns, SemEval-2014 Task 4 XML, or the three-line `$T$` format of ABSA-PyTorch and
PyABSA (`.raw` / `.seg` / `.txt`: sentence with `$T$`, aspect, polarity).

A row may place its aspect as a predict input does (marked as `[B-ASP]...[E-ASP]` in the text, or an `occurrence`
column): it is read as `resolve_aspect` (below) reads it, the text without markers.

`spans` lists every [start, end] of the row's aspect, sorted; `start` / `end` are the first. A row names one
occurrence, except a `$T$` sentence with several `$T$` (the Twitter set of Dong et al. 2014 has "$T$ is back ...
really? $T$ ..."): the same target at each place, so each is a span and the aspect mask covers them all.
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd

from .files import (SPLIT_NAMES, TABLE_SUFFIXES, DataError, LabelRule, Splits, carve_validation, find_split_files,
                    is_missing, load_hub_dataset, read_rows, read_text, require_columns)

logger = logging.getLogger(__name__)

DEFAULT_LABELS = ("negative", "neutral", "positive")
MARK_START, MARK_END = "[B-ASP]", "[E-ASP]"  # an aspect marked in its text, as use_absa.py predict reads it
XML_SUFFIXES = (".xml",)
T_FORMAT_SUFFIXES = (".raw", ".seg", ".txt")
FEATURES = {"text": datasets.Value("string"), "aspect": datasets.Value("string"), "start": datasets.Value("int32"),
            "end": datasets.Value("int32"), "spans": datasets.List(datasets.List(datasets.Value("int32"), length=2))}


def load_absa_splits(source: str | None = "yqzheng/semeval2014_laptops", *, train_file: str | None = None,
                     validation_file: str | None = None, test_file: str | None = None,
                     label_names=DEFAULT_LABELS, validation_fraction: float = 0.1, seed: int = 42,
                     select_on_test: bool = False, numeric_labels: str = "auto") -> Splits:
    """Train / validation / test splits with `text, aspect, start, end, spans, label` (label an index into label_names).

    `source` is a Hub name or a local folder; explicit `*_file` arguments override what the folder holds. When
    the source has no validation split one is carved from train by sentence (every aspect of a sentence on the same
    side, stratified, seeded: `carve_validation`), so model selection never looks at test or at train's sentences.
    `select_on_test=True` reproduces tutorials that selected the best epoch on the test split. Labels are read by
    one `LabelRule` for all splits (`numeric_labels`: what whole numbers mean). The result records how validation
    was made and what the numbers meant (`Splits`), for the model to keep.
    """
    label_names = tuple(label_names)
    files = {split: path for split, path in
             (("train", train_file), ("validation", validation_file), ("test", test_file)) if path}
    if source and Path(source).is_dir():
        files = {**find_split_files(source, TABLE_SUFFIXES + XML_SUFFIXES + T_FORMAT_SUFFIXES), **files}
    elif source and Path(source).is_file():
        files = {"train": Path(source), **files}
    if files:
        if "train" not in files:
            raise DataError(next(iter(files.values())), "a train file is needed as well")
        records = {split: (path, read_absa_records(path)) for split, path in files.items()}
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
    if select_on_test:
        if "test" not in result:
            raise DataError(source or files["train"], "select_on_test needs a test split")
        logger.warning("selecting the best epoch on the TEST split, as the seed tutorial did: "
                       "its test scores are optimistic")
        result["validation"] = result["test"]
    result = carve_validation(result, validation_fraction, seed, source=files.get("train", source))
    if select_on_test:
        result.validation_split["made"] = "test"
    result.numeric_labels = rule.numbers
    return result


def _label_as_name(row: dict, features) -> dict:
    """A Hub ClassLabel id as its name: ids count from 0 in the dataset's own order, which is not -1/0/1."""
    label = features.get("label")
    if isinstance(label, datasets.ClassLabel) and isinstance(row.get("label"), int) and row["label"] >= 0:
        return {**row, "label": label.int2str(row["label"])}
    return row


def read_absa_file(path, label_names=DEFAULT_LABELS, numeric_labels: str = "auto") -> list[dict]:
    """Checked rows (text, aspect, start, end, spans, label index) of one file in any of the supported formats;
    what whole-number labels mean is read from this file's labels (`LabelRule`) unless `numeric_labels` says."""
    records = read_absa_records(path)
    rule = LabelRule.for_values(label_names, [record.get("label") for _, record in records], numeric_labels, path)
    return _normalise_rows(records, path, rule)


def read_absa_records(path) -> list[tuple]:
    """(row label, raw record) pairs of one file in any of the supported formats, not yet checked."""
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
    """Check every row and return clean rows; `conflict` rows are dropped and counted."""
    rows, conflicts = [], 0
    for row_label, record in records:
        row = _normalise_row(record, file, row_label, rule)
        if row is None:
            conflicts += 1
        else:
            rows.append(row)
    if conflicts:
        logger.warning("%s: dropped %d 'conflict' rows", file, conflicts)
    if not rows:
        raise DataError(file, "no usable rows")
    return rows


def _normalise_row(record: dict, file, row_label, rule: LabelRule) -> dict | None:
    for field in ("text", "aspect", "label"):
        value = record.get(field)
        if is_missing(value, text=field != "label"):
            raise DataError(file, "missing or empty", row=row_label, field=field)
        if not pd.api.types.is_scalar(value) or (field != "label" and not isinstance(value, str)):
            value = getattr(value, "tolist", lambda: value)()  # numpy values from Parquet, as Python ones
            raise DataError(file, f"must be {'a string' if field != 'label' else 'one label'}, got "
                            f"{type(value).__name__} {value!r:.80}", row=row_label, field=field)
    text, aspect = record["text"], record["aspect"]
    label = rule.id(record["label"])
    if label is None and str(record["label"]).strip().lower() == "conflict":
        return None
    if label is None:
        raise DataError(file, f"unknown label {record['label']!r} (expected one of {rule.expected()})",
                        row=row_label, field="label")
    if MARK_START in text or MARK_END in text or not is_missing(record.get("occurrence")):
        # Marked aspects and an `occurrence` column are how predict inputs place an aspect: a labelled file written
        # that way is read as predict reads it, not as literal "[B-ASP]" text or the first occurrence.
        try:
            span = resolve_aspect(text, aspect, record.get("start"), record.get("end"), record.get("occurrence"),
                                  record.get("spans"))
        except AspectError as error:
            raise DataError(file, str(error), row=row_label, field=error.field) from None
        spans = span.spans or ((span.start, span.end),)
        return {"text": span.text, "aspect": span.aspect, "start": span.start, "end": span.end,
                "spans": [list(pair) for pair in spans], "label": label}
    given = record.get("spans")  # every occurrence: the `$T$` reader gives them (JSONL and Parquet may too)
    if not is_missing(given):
        pairs = span_pairs(given)
        if pairs is None:
            raise DataError(file, f"must be a non-empty list of [start, end] pairs, got {given!r:.80}", row=row_label,
                            field="spans")
        spans = sorted(_checked_offsets(text, aspect, *span, file, row_label) for span in pairs)
        given_start = (record.get("start"), record.get("end"))
        if not all(map(is_missing, given_start)) and _checked_offsets(text, aspect, *given_start, file,
                                                                       row_label) not in spans:
            raise DataError(file, f"start/end {given_start[0]}:{given_start[1]} is not one of the spans "
                            f"{[list(span) for span in spans]}", row=row_label, field="start")
    elif is_missing(record.get("start")) and is_missing(record.get("end")):
        spans = find_occurrences(text, aspect)[:1]  # the first occurrence, by the rule predict uses
        if not spans:
            raise DataError(file, f"the aspect {aspect!r} does not occur in the text", row=row_label, field="aspect")
    else:
        spans = [_checked_offsets(text, aspect, record.get("start"), record.get("end"), file, row_label)]
    return {"text": text, "aspect": aspect, "start": spans[0][0], "end": spans[0][1],
            "spans": [list(span) for span in spans], "label": label}


def span_pairs(value) -> list[tuple] | None:
    """The [start, end] pairs of a `spans` value: a list (JSONL, Parquet) or its JSON text (a CSV or TSV cell, as
    use_absa.py writes one); None when it is not a non-empty list of pairs."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    value = getattr(value, "tolist", lambda: value)()  # numpy, as pandas reads Parquet
    pair = (lambda span: hasattr(span, "__len__") and not isinstance(span, (str, dict)) and len(span) == 2)
    if not isinstance(value, (list, tuple)) or not value or not all(map(pair, value)):
        return None
    return [tuple(span) for span in value]


def _checked_offsets(text: str, aspect: str, start, end, file, row_label) -> tuple[int, int]:
    """start / end as whole numbers ("4", 4.0, "4.0": CSV cells, float columns with gaps) that give the aspect."""
    offsets = []
    for field, value in (("start", start), ("end", end)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")  # not a whole number
        if not number.is_integer() or isinstance(value, bool):
            raise DataError(file, "missing: give both start and end, or neither to search for the aspect"
                            if is_missing(value) else f"must be a whole number, got {value!r}", row=row_label,
                            field=field)
        offsets.append(int(number))
    start, end = offsets
    for wrong, problem, field in (
            (start < 0, f"start {start} is negative", "start"),
            (start >= end, f"start {start} is {'after' if start > end else 'equal to'} end {end}", "start"),
            (end > len(text), f"end {end} is past the end of the text ({len(text)} characters)", "end"),
            (text[start:end] != aspect, f"the offsets {start}:{end} give {text[start:end]!r}, not the aspect "
                                        f"{aspect!r}", "start")):
        if wrong:
            raise DataError(file, problem, row=row_label, field=field)
    return start, end


def find_occurrences(text: str, aspect: str, ignore_case: bool = True) -> list[tuple[int, int]]:
    """(start, end) of every occurrence of `aspect` in `text`, in text order: whole words (in any case unless
    `ignore_case` is false), or, when there are none, parts of words ("screen" in "touchscreen")."""
    aspect = aspect.strip()
    if not aspect:
        return []
    escaped = re.escape(aspect)
    for pattern in (rf"(?<!\w){escaped}(?!\w)", escaped):
        found = [match.span() for match in re.finditer(pattern, text, re.IGNORECASE if ignore_case else 0)]
        if found:
            return found
    return []


def _read_semeval_xml(path: Path):
    """(row label, record) pairs from SemEval-2014 Task 4 XML: one record per `<aspectTerm>`."""
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
    """(row label, record) pairs from the three-line `$T$` format: sentence with $T$, aspect, polarity.

    Every `$T$` of a sentence is the aspect: each becomes a span (the Twitter set names some targets twice).
    """
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


# --------------------------------------------------------------------------- placing an aspect in its text

_MARKERS = re.compile(re.escape(MARK_START) + "|" + re.escape(MARK_END))


class AspectError(ValueError):
    """An aspect that cannot be placed in its text; `field` says which input was wrong (text / aspect / start)."""

    def __init__(self, message: str, field: str = "aspect"):
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------- finding the aspect in the text


def parse_marked_text(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The text without `[B-ASP]` / `[E-ASP]` markers, and the (start, end) of every marked aspect in it.

    `"The [B-ASP]battery[E-ASP] lasts"` -> `("The battery lasts", [(4, 11)])`. Spaces just inside the markers are
    not part of the aspect. Unbalanced, nested or empty markers raise `AspectError`.
    """
    clean, spans, opened = [], [], None
    length, position = 0, 0
    for match in _MARKERS.finditer(text):
        piece = text[position:match.start()]
        clean.append(piece)
        length += len(piece)
        position = match.end()
        if match.group() == MARK_START:
            if opened is not None:
                raise AspectError(f"{MARK_START} inside a marked aspect (missing {MARK_END}) in {_shorten(text)!r}",
                                  "text")
            opened = length
        else:
            if opened is None:
                raise AspectError(f"{MARK_END} without {MARK_START} in {_shorten(text)!r}", "text")
            joined = "".join(clean)
            start = opened + len(joined[opened:]) - len(joined[opened:].lstrip())
            end = len(joined.rstrip()) if joined[opened:].strip() else start
            if end <= start:
                raise AspectError(f"an empty marked aspect in {_shorten(text)!r}", "text")
            spans.append((start, end))
            opened = None
    if opened is not None:
        raise AspectError(f"{MARK_START} without {MARK_END} in {_shorten(text)!r}", "text")
    clean.append(text[position:])
    return "".join(clean), spans


@dataclass(frozen=True)
class AspectSpan:
    """One aspect placed in its text (the text without markers).

    `occurrences`: how often the searched aspect occurs in the text; `ambiguous`: several, and no occurrence was
    asked for, so the first was taken (worth telling the user).
    """

    text: str
    start: int
    end: int
    occurrences: int = 1
    ambiguous: bool = False
    spans: tuple = ()  # every occurrence the mask covers (a $T$ record naming its target twice); default start:end

    @property
    def aspect(self) -> str:
        return self.text[self.start:self.end]


def resolve_aspect(text: str, aspect: str | None = None, start=None, end=None,
                   occurrence: int | None = None, spans=None) -> AspectSpan:
    """Place one aspect in `text`: by offsets, else by markers, else by searching (the `occurrence`-th, 1-based).

    With markers and an aspect, the marked aspect with that wording is taken (several marked aspects need the
    aspect to say which). `spans`, every [start, end] of an aspect named at several places (a `$T$` record, as
    absa.data reads it for training and evaluation), places it at all of them; start/end, if given too, must be one.
    Raises `AspectError` naming what is wrong.
    """
    if is_missing(text, text=True):
        raise AspectError("the text is missing or empty", "text")
    for value, field in ((text, "text"), (aspect, "aspect")):
        if not (isinstance(value, str) or is_missing(value, text=True)):  # not str(): a list would become "['a']"
            raise AspectError(f"the {field} must be a string, got {type(value).__name__} {value!r:.80}", field)
    clean, marked = parse_marked_text(text)
    aspect = None if is_missing(aspect, text=True) else str(aspect).strip()
    occurrence = None if is_missing(occurrence) else _whole_number(occurrence, "occurrence")
    if occurrence is not None and occurrence < 1:
        raise AspectError(f"occurrence counts from 1, got {occurrence}", "occurrence")
    offsets = not (is_missing(start) and is_missing(end))
    if (offsets or not is_missing(spans)) and marked:
        raise AspectError("give the aspect either with [B-ASP]...[E-ASP] markers or with start/end, not both",
                          "start" if offsets else "spans")
    if not is_missing(spans):
        pairs = span_pairs(spans)
        if pairs is None:
            raise AspectError(f"spans must be a non-empty list of [start, end] pairs, got {spans!r:.80}", "spans")
        placed = sorted({_offsets_of(clean, aspect, *span, field="spans") for span in pairs})
        if offsets and _offsets_of(clean, aspect, start, end) not in placed:
            raise AspectError(f"start/end {start}:{end} is not one of the spans {[list(s) for s in placed]}", "start")
        return AspectSpan(clean, *placed[0], spans=tuple(placed))
    if offsets:
        return AspectSpan(clean, *_offsets_of(clean, aspect, start, end))
    if marked:
        if aspect is None:
            if len(marked) > 1:
                raise AspectError(f"{len(marked)} aspects are marked; say which one with the aspect, or give one "
                                  "marked aspect per text", "aspect")
            return AspectSpan(clean, *marked[0])
        chosen = [span for span in marked if clean[span[0]:span[1]].lower() == aspect.lower()]  # as the search
        if not chosen:
            raise AspectError(f"the aspect {aspect!r} is not one of the marked aspects "
                              f"({', '.join(repr(clean[s:e]) for s, e in marked)})")
        return AspectSpan(clean, *_nth(chosen, occurrence, aspect), len(chosen), len(chosen) > 1 and not occurrence)
    if aspect is None:
        raise AspectError("no aspect: give the aspect, or mark it in the text with [B-ASP]...[E-ASP]")
    found = find_occurrences(clean, aspect)
    if not found:
        raise AspectError(f"the aspect {aspect!r} does not occur in the text {_shorten(clean)!r}")
    return AspectSpan(clean, *_nth(found, occurrence, aspect), len(found), len(found) > 1 and not occurrence)


def _offsets_of(clean: str, aspect: str | None, start, end, field: str = "start") -> tuple[int, int]:
    """Offsets from a file or a caller, checked against the text and the aspect."""
    start, end = _whole_number(start, field), _whole_number(end, field)
    if not 0 <= start < end <= len(clean):
        raise AspectError(f"the offsets {start}:{end} are outside the text ({len(clean)} characters)", field)
    if aspect is not None and clean[start:end].strip() != aspect:
        raise AspectError(f"the offsets {start}:{end} give {clean[start:end]!r}, not the aspect {aspect!r}", field)
    return start, end


def _whole_number(value, field: str) -> int:
    """An offset or occurrence from JSON, CSV ("4", or "4.0" when pandas wrote a column with gaps) or Parquet."""
    try:
        number = float(value)
        if number.is_integer():
            return int(number)
    except (TypeError, ValueError):
        pass
    what = ("start and end must be whole numbers" if field == "start" else "spans must hold whole numbers"
            if field == "spans" else f"{field} must be a whole number")
    raise AspectError(f"{what}, got {value!r}", field)


def _nth(spans, occurrence, aspect):
    number = int(occurrence or 1)
    if number > len(spans):
        raise AspectError(f"the aspect {aspect!r} occurs {len(spans)} time(s) in the text; there is no "
                          f"occurrence {number}", "occurrence")
    return spans[number - 1]


def _shorten(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."
