"""ABSA data loading (absa/data.py, absa/files.py): every format, labels, offsets, splits, and every bad input.

Every bad-input test asserts on the message itself: it must name the file, the row (line / sentence id) and the
field, because that is what a user needs to fix their data.
"""

from __future__ import annotations

import csv
import json
import logging
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

import datasets
import pandas as pd
import pytest
from conftest import SHARED_DATA

from absa.data import DEFAULT_LABELS, load_absa_splits
from absa.files import DataError, LabelRule, read_rows
from absa.splits import carve_validation, find_split_files

LAPTOPS = SHARED_DATA / "semeval2014_laptops"

# Rows chosen to trip up readers: an aspect that occurs twice (offsets pick the second), non-ASCII, quote
# characters and a comma inside the text (CSV quoting, TSV without quoting), an aspect at position 0.
TEXT_TWICE = "The battery is bad but the battery life is great."
ROWS = [
    {"text": "The screen is gorgeous, but the battery dies fast.", "aspect": "screen", "start": 4, "end": 10,
     "label": "positive"},
    {"text": "The screen is gorgeous, but the battery dies fast.", "aspect": "battery", "start": 32, "end": 39,
     "label": "negative"},
    {"text": TEXT_TWICE, "aspect": "battery life", "start": 27, "end": 39, "label": "positive"},
    {"text": TEXT_TWICE, "aspect": "battery", "start": 27, "end": 34, "label": "neutral"},
    {"text": "Die Größe des Bildschirms, ehrlich: café-tauglich.", "aspect": "Größe", "start": 4, "end": 9,
     "label": "neutral"},
    {"text": 'The tech guy said the "sales" team would call.', "aspect": '"sales" team', "start": 22, "end": 34,
     "label": "negative"},
    {"text": "Keyboard, trackpad and fan are all fine.", "aspect": "Keyboard", "start": 0, "end": 8,
     "label": "neutral"},
]
LABEL_INDEX = {name: i for i, name in enumerate(DEFAULT_LABELS)}
EXPECTED = [(r["text"], r["aspect"], r["start"], r["end"], LABEL_INDEX[r["label"]]) for r in ROWS]
POLARITY_NUMBER = {"negative": -1, "neutral": 0, "positive": 1}


def test_rows_are_consistent():
    for row in ROWS:
        assert row["text"][row["start"]:row["end"]] == row["aspect"]


# --------------------------------------------------------------------------- writers


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(list(rows), ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_csv(path: Path, rows, fields=("text", "aspect", "start", "end", "label")) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_tsv(path: Path, rows, fields=("text", "aspect", "start", "end", "label")) -> Path:
    lines = ["\t".join(fields)] + ["\t".join(str(row.get(f, "")) for f in fields) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path: Path, rows) -> Path:
    pd.DataFrame(list(rows)).to_parquet(path)
    return path


def write_xml(path: Path, rows) -> Path:
    """SemEval-2014 Task 4 XML; consecutive rows with the same text become one <sentence>."""
    root = ElementTree.Element("sentences")
    sentence, text = None, None
    for row in rows:
        if sentence is None or row["text"] != text:
            text = row["text"]
            sentence = ElementTree.SubElement(root, "sentence", id=str(len(root) + 100))
            ElementTree.SubElement(sentence, "text").text = text
            terms = ElementTree.SubElement(sentence, "aspectTerms")
        ElementTree.SubElement(terms, "aspectTerm", term=row["aspect"], polarity=row["label"],
                               **{"from": str(row["start"]), "to": str(row["end"])})
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def write_t_format(path: Path, rows) -> Path:
    """ABSA-PyTorch three-line format: sentence with $T$, aspect, polarity (-1 / 0 / 1)."""
    lines = []
    for row in rows:
        lines += [row["text"][:row["start"]] + "$T$" + row["text"][row["end"]:], row["aspect"],
                  str(POLARITY_NUMBER[row["label"]])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


WRITERS = {
    "train.jsonl": write_jsonl, "train.json": write_json, "train.csv": write_csv, "train.tsv": write_tsv,
    "train.parquet": write_parquet, "train.xml": write_xml, "train.raw": write_t_format,
    "train.seg": write_t_format, "train.txt": write_t_format,
}


def as_tuples(dataset) -> list[tuple]:
    return [(r["text"], r["aspect"], r["start"], r["end"], r["label"]) for r in dataset]


def load_all(path, **kwargs) -> datasets.Dataset:
    """Every row of one file, in order, as the train split (the same file as validation so nothing is carved)."""
    return load_absa_splits(None, train_file=str(path), validation_file=str(path), **kwargs)["train"]


def error_of(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_absa_splits(None, train_file=str(path), **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- every format


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_format_gives_the_same_rows(tmp_path, name):
    path = WRITERS[name](tmp_path / name, ROWS)
    dataset = load_all(path)
    assert as_tuples(dataset) == EXPECTED
    assert dataset.features["label"].names == list(DEFAULT_LABELS)
    assert list(dataset.features) == ["text", "aspect", "start", "end", "spans", "label"]
    assert [r["spans"] for r in dataset] == [[[r["start"], r["end"]]] for r in ROWS]  # one occurrence each


def test_json_data_layout_and_json_lines_named_json(tmp_path):
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    assert as_tuples(load_all(wrapped)) == EXPECTED
    wrapped.write_text(json.dumps({"version": 1, "data": ROWS}, indent=2), encoding="utf-8")  # pretty-printed
    assert as_tuples(load_all(wrapped)) == EXPECTED
    lines = write_jsonl(tmp_path / "lines.json", ROWS)  # JSON Lines with a .json suffix
    assert as_tuples(load_all(lines)) == EXPECTED
    one = write_jsonl(tmp_path / "one.json", ROWS[:1])  # a one-line JSON Lines file is one object
    assert as_tuples(load_all(one)) == EXPECTED[:1]


def test_blank_lines_in_jsonl_and_t_format_are_skipped(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n" + "\n\n".join(json.dumps(r) for r in ROWS) + "\n\n\n", encoding="utf-8")
    assert as_tuples(load_all(path)) == EXPECTED
    t_path = write_t_format(tmp_path / "train.seg", ROWS)
    t_path.write_text(t_path.read_text() + "\n\n", encoding="utf-8")
    assert as_tuples(load_all(t_path)) == EXPECTED


def test_read_rows_labels_rows_as_an_editor_shows_them(tmp_path):
    assert [label for label, _ in read_rows(write_jsonl(tmp_path / "a.jsonl", ROWS[:2]))] == ["line 1", "line 2"]
    assert [label for label, _ in read_rows(write_csv(tmp_path / "a.csv", ROWS[:2]))] == ["line 2", "line 3"]
    assert [label for label, _ in read_rows(write_json(tmp_path / "a.json", ROWS[:2]))] == [1, 2]
    assert [label for label, _ in read_rows(write_parquet(tmp_path / "a.parquet", ROWS[:2]))] == [1, 2]


# --------------------------------------------------------------------------- labels


SENTIMENT_RULE = LabelRule(DEFAULT_LABELS, "sentiment")


@pytest.mark.parametrize("value, index", [
    (-1, 0), (0, 1), (1, 2), ("-1", 0), ("0", 1), ("1", 2), (-1.0, 0), ("1.0", 2),
    ("negative", 0), ("NEGATIVE", 0), ("Neutral", 1), ("positive", 2), ("PoSiTiVe", 2), (" positive ", 2),
])
def test_labels_numbers_and_names_in_any_case(value, index):
    assert SENTIMENT_RULE.id(value) == index


@pytest.mark.parametrize("value", ["positve", "2", "-2", "good", "0.5", "conflict", True])
def test_unknown_label_values(value):
    assert SENTIMENT_RULE.id(value) is None


@pytest.mark.parametrize("writer", [write_jsonl, write_csv, write_parquet], ids=["jsonl", "csv", "parquet"])
def test_mixed_label_spellings_in_a_file(tmp_path, writer):
    labels = [-1, "0", "POSITIVE", "Negative", 1, "neutral", "1"]
    rows = [{**row, "label": str(label)} for row, label in zip(ROWS, labels)]
    suffix = {write_jsonl: ".jsonl", write_csv: ".csv", write_parquet: ".parquet"}[writer]
    dataset = load_all(writer(tmp_path / f"train{suffix}", rows))
    assert list(dataset["label"]) == [0, 1, 2, 0, 2, 1, 2]


def test_integer_labels_in_jsonl_and_parquet(tmp_path):
    rows = [{**row, "label": POLARITY_NUMBER[row["label"]]} for row in ROWS]
    for path in (write_jsonl(tmp_path / "train.jsonl", rows), write_parquet(tmp_path / "train.parquet", rows)):
        assert as_tuples(load_all(path)) == EXPECTED


def test_custom_label_set(tmp_path):
    names = ("against", "neither", "in favor")
    labels = ["AGAINST", "In Favor", "neither", "Neither", "in favor", "against", "IN FAVOR"]
    rows = [{**row, "label": label} for row, label in zip(ROWS, labels)]
    splits = load_absa_splits(None, train_file=str(write_jsonl(tmp_path / "train.jsonl", rows)),
                              validation_file=str(write_jsonl(tmp_path / "dev.jsonl", rows)), label_names=names)
    assert splits["train"].features["label"].names == list(names)
    assert list(splits["train"]["label"]) == [0, 2, 1, 1, 2, 0, 2]
    # the default names are unknown under a custom label set, and the message lists the expected ones
    message = error_of(write_jsonl(tmp_path / "bad.jsonl", ROWS), label_names=names)
    assert "bad.jsonl" in message and "line 1" in message and "field 'label'" in message
    assert "'positive'" in message and "against, neither, in favor" in message


def test_conflict_rows_are_dropped_and_counted(tmp_path, caplog):
    rows = ROWS[:3] + [{**ROWS[3], "label": "conflict"}] + ROWS[4:6] + [{**ROWS[6], "label": "Conflict"}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="absa.data"):
        dataset = load_all(path)
    assert as_tuples(dataset) == EXPECTED[:3] + EXPECTED[4:6]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "conflict" in r.getMessage()]
    assert warnings and all("train.jsonl" in w and "dropped 2 'conflict' rows" in w for w in warnings)


def test_conflict_rows_in_xml_are_dropped(tmp_path):
    rows = ROWS[:1] + [{**ROWS[1], "label": "conflict"}] + ROWS[2:]
    assert as_tuples(load_all(write_xml(tmp_path / "train.xml", rows))) == EXPECTED[:1] + EXPECTED[2:]


def test_only_conflict_rows_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{**row, "label": "conflict"} for row in ROWS])
    message = error_of(path)
    assert "train.jsonl" in message and "no usable rows" in message


# --------------------------------------------------------------------------- offsets


@pytest.mark.parametrize("writer, suffix", [(write_jsonl, ".jsonl"), (write_json, ".json"), (write_csv, ".csv"),
                                            (write_tsv, ".tsv"), (write_parquet, ".parquet")])
def test_offsets_are_located_when_missing(tmp_path, writer, suffix):
    # rows whose aspect occurs once (without offsets the first occurrence is the only sensible choice)
    rows = [row for row in ROWS if row["text"].count(row["aspect"]) == 1]
    without = [{k: v for k, v in row.items() if k not in ("start", "end")} for row in rows]
    if writer in (write_csv, write_tsv):
        dataset = load_all(writer(tmp_path / f"train{suffix}", without, fields=("text", "aspect", "label")))
    else:
        dataset = load_all(writer(tmp_path / f"train{suffix}", without))
    assert [(r["start"], r["end"]) for r in dataset] == [(r["start"], r["end"]) for r in rows]


def test_empty_offset_cells_are_located(tmp_path):
    rows = [{**ROWS[0], "start": "", "end": ""}, ROWS[2]]
    dataset = load_all(write_csv(tmp_path / "train.csv", rows))
    assert [(r["start"], r["end"]) for r in dataset] == [(4, 10), (27, 39)]
    partly = [{**ROWS[0], "start": None, "end": None}, ROWS[2]]  # parquet: NaN / None next to whole numbers
    dataset = load_all(write_parquet(tmp_path / "train.parquet", partly))
    assert [(r["start"], r["end"]) for r in dataset] == [(4, 10), (27, 39)]


def test_missing_offsets_take_the_first_occurrence(tmp_path):
    row = {"text": TEXT_TWICE, "aspect": "battery", "label": "neutral"}
    dataset = load_all(write_jsonl(tmp_path / "train.jsonl", [row]))
    assert (dataset[0]["start"], dataset[0]["end"]) == (4, 11)


# --------------------------------------------------------------------------- splits


def make_rows(counts=(30, 20, 10)) -> list[dict]:
    rows = []
    for label, count in zip(DEFAULT_LABELS, counts):
        for i in range(count):
            text = f"Review {label} {i}: the screen is fine."
            rows.append({"text": text, "aspect": "screen", "start": text.index("screen"),
                         "end": text.index("screen") + 6, "label": label})
    return rows


def test_validation_is_carved_from_train_stratified_and_seeded(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", make_rows())
    test = write_jsonl(tmp_path / "test.jsonl", ROWS)
    a = load_absa_splits(None, train_file=str(train), test_file=str(test), validation_fraction=0.2, seed=1)
    b = load_absa_splits(None, train_file=str(train), test_file=str(test), validation_fraction=0.2, seed=1)
    c = load_absa_splits(None, train_file=str(train), test_file=str(test), validation_fraction=0.2, seed=2)
    assert set(a) == {"train", "validation", "test"}
    assert len(a["validation"]) == 12 and len(a["train"]) == 48
    # stratified: every class in proportion (30/20/10 -> 6/4/2)
    assert Counter(a["validation"]["label"]) == {0: 6, 1: 4, 2: 2}
    # seeded: same seed same split, another seed another split
    assert list(a["validation"]["text"]) == list(b["validation"]["text"])
    assert list(a["train"]["text"]) == list(b["train"]["text"])
    assert set(a["validation"]["text"]) != set(c["validation"]["text"])
    for splits in (a, c):
        # no row of validation in train, nothing lost, and the test split is untouched
        assert not set(splits["validation"]["text"]) & set(splits["train"]["text"])
        assert sorted(list(splits["validation"]["text"]) + list(splits["train"]["text"])) == sorted(r["text"] for r in make_rows())
        assert as_tuples(splits["test"]) == EXPECTED


def test_a_given_validation_file_is_used_as_is(tmp_path):
    splits = load_absa_splits(None, train_file=str(write_jsonl(tmp_path / "train.jsonl", make_rows())),
                              validation_file=str(write_jsonl(tmp_path / "dev.jsonl", ROWS)))
    assert len(splits["train"]) == 60 and as_tuples(splits["validation"]) == EXPECTED


def test_carve_validation_without_classlabel_and_with_a_tiny_class():
    plain = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": list(range(20)), "label": [0] * 20})})
    parts = carve_validation(plain, 0.25, seed=0)  # label is not a ClassLabel: a plain seeded split
    assert len(parts["validation"]) == 5 and not set(parts["validation"]["x"]) & set(parts["train"]["x"])
    features = datasets.Features({"x": datasets.Value("int32"), "label": datasets.ClassLabel(names=["a", "b"])})
    tiny = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": list(range(10)), "label": [0] * 9 + [1]},
                                                                     features=features)})
    parts = carve_validation(tiny, 0.2, seed=0)  # one row of class b cannot be stratified: falls back
    assert len(parts["validation"]) == 2 and len(parts["train"]) == 8


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_validation_fraction_out_of_range(tmp_path, fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        load_absa_splits(None, train_file=str(write_jsonl(tmp_path / "train.jsonl", make_rows())),
                         validation_fraction=fraction)


def test_select_on_test(tmp_path, caplog):
    train = write_jsonl(tmp_path / "train.jsonl", make_rows())
    test = write_jsonl(tmp_path / "test.jsonl", ROWS)
    with caplog.at_level(logging.WARNING, logger="absa.data"):
        splits = load_absa_splits(None, train_file=str(train), test_file=str(test), select_on_test=True)
    assert len(splits["train"]) == 60  # nothing carved out of train
    assert as_tuples(splits["validation"]) == as_tuples(splits["test"]) == EXPECTED
    assert any("TEST" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match="select_on_test needs a test split"):
        load_absa_splits(None, train_file=str(train), select_on_test=True)


def test_folder_source(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", make_rows())
    write_jsonl(tmp_path / "test.jsonl", ROWS)
    (tmp_path / "notes.md").write_text("not data")
    splits = load_absa_splits(str(tmp_path), validation_fraction=0.1)
    assert len(splits["train"]) == 54 and len(splits["validation"]) == 6 and as_tuples(splits["test"]) == EXPECTED
    # an explicit file overrides what the folder holds
    (tmp_path / "other").mkdir()
    other = write_csv(tmp_path / "other" / "held_out.csv", ROWS[:2])
    splits = load_absa_splits(str(tmp_path), test_file=str(other))
    assert as_tuples(splits["test"]) == EXPECTED[:2]


def test_folder_source_with_xml_and_dev_files(tmp_path):
    write_xml(tmp_path / "Laptop_Train.xml", make_rows())
    write_xml(tmp_path / "Laptop_Dev.xml", ROWS)
    write_t_format(tmp_path / "laptop_test.seg", ROWS)
    assert find_split_files(tmp_path, (".xml", ".seg")) == {
        "train": tmp_path / "Laptop_Train.xml", "validation": tmp_path / "Laptop_Dev.xml",
        "test": tmp_path / "laptop_test.seg"}
    splits = load_absa_splits(str(tmp_path))
    assert len(splits["train"]) == 60
    assert as_tuples(splits["validation"]) == as_tuples(splits["test"]) == EXPECTED


def test_a_single_file_source_is_the_train_split(tmp_path):
    splits = load_absa_splits(str(write_jsonl(tmp_path / "mine.jsonl", make_rows())), validation_fraction=0.5)
    assert set(splits) == {"train", "validation"} and len(splits["train"]) == len(splits["validation"]) == 30
    splits = load_absa_splits(str(tmp_path / "mine.jsonl"), validation_fraction=0.75)  # all but one of 4 folds
    assert len(splits["train"]) == 15 and len(splits["validation"]) == 45


# --------------------------------------------------------------------------- the real SemEval-2014 laptops


def label_counts(*splits) -> dict[str, int]:
    counts = Counter()
    for split in splits:
        counts.update(split.features["label"].int2str(split["label"]))
    return dict(counts)


@pytest.mark.skipif(not (LAPTOPS / "train.jsonl").is_file(), reason="../shared/data/semeval2014_laptops absent")
def test_real_laptops_jsonl():
    splits = load_absa_splits(str(LAPTOPS))  # train.jsonl / test.jsonl win over Laptop_*.xml
    assert len(splits["train"]) + len(splits["validation"]) == 2328 and len(splits["test"]) == 638
    assert label_counts(splits["train"], splits["validation"]) == {"negative": 870, "neutral": 464, "positive": 994}
    assert label_counts(splits["test"]) == {"negative": 128, "neutral": 169, "positive": 341}
    assert all(r["text"][r["start"]:r["end"]] == r["aspect"] for r in splits["test"])


@pytest.mark.skipif(not (LAPTOPS / "Laptop_Train.xml").is_file(), reason="../shared/data/semeval2014_laptops absent")
def test_real_laptops_xml_gives_the_same_rows_as_jsonl(caplog):
    with caplog.at_level(logging.WARNING, logger="absa.data"):
        xml = load_absa_splits(None, train_file=str(LAPTOPS / "Laptop_Train.xml"),
                               test_file=str(LAPTOPS / "Laptop_Test.xml"))
    jsonl = load_absa_splits(None, train_file=str(LAPTOPS / "train.jsonl"), test_file=str(LAPTOPS / "test.jsonl"))
    assert Counter(as_tuples(xml["train"]) + as_tuples(xml["validation"])) == \
        Counter(as_tuples(jsonl["train"]) + as_tuples(jsonl["validation"]))
    assert Counter(as_tuples(xml["test"])) == Counter(as_tuples(jsonl["test"]))
    assert len(xml["test"]) == 638
    dropped = " ".join(r.getMessage() for r in caplog.records)
    assert "Laptop_Train.xml: dropped 45 'conflict' rows" in dropped
    assert "Laptop_Test.xml: dropped 16 'conflict' rows" in dropped


# --------------------------------------------------------------------------- the Hub


def test_hub_failure_says_what_to_do_offline():
    with pytest.raises(DataError) as info:
        load_absa_splits("no-such-user/no-such-absa-dataset")
    message = str(info.value)
    assert message.startswith("no-such-user/no-such-absa-dataset")
    assert "Hugging Face Hub" in message and "Offline?" in message and "local folder" in message


def test_no_source_at_all():
    with pytest.raises(DataError, match="no data source"):
        load_absa_splits(None)


# --------------------------------------------------------------------------- bad input


def assert_names(message: str, file: str, row: str | None, field: str | None):
    assert file in message, message
    if row is not None:
        assert row in message, message
    if field is not None:
        assert f"field '{field}'" in message, message


def test_missing_column_csv(tmp_path):
    path = write_csv(tmp_path / "train.csv", ROWS, fields=("text", "start", "end", "label"))
    message = error_of(path)
    assert_names(message, "train.csv", "line 1 (header)", "aspect")
    assert "no column 'aspect' (columns found: 'text', 'start', 'end', 'label')" in message


@pytest.mark.parametrize("field", ["text", "aspect", "label"])
def test_missing_field_jsonl(tmp_path, field):
    rows = [ROWS[0], ROWS[1], {k: v for k, v in ROWS[2].items() if k != field}]
    assert_names(error_of(write_jsonl(tmp_path / "train.jsonl", rows)), "train.jsonl", "line 3", field)


@pytest.mark.parametrize("field", ["text", "aspect", "label"])
def test_empty_value_json_and_parquet(tmp_path, field):
    rows = [ROWS[0], {**ROWS[1], field: "  "}]
    assert_names(error_of(write_json(tmp_path / "train.json", rows)), "train.json", "row 2", field)
    assert_names(error_of(write_parquet(tmp_path / "train.parquet", rows)), "train.parquet", "row 2", field)


def test_unknown_label(tmp_path):
    rows = ROWS[:4] + [{**ROWS[4], "label": "positve"}]
    message = error_of(write_jsonl(tmp_path / "train.jsonl", rows))
    assert_names(message, "train.jsonl", "line 5", "label")
    assert "'positve'" in message and "negative, neutral, positive" in message
    message = error_of(write_tsv(tmp_path / "train.tsv", rows))
    assert_names(message, "train.tsv", "line 6", "label")


def test_aspect_not_in_text(tmp_path):
    rows = [{"text": "The screen is fine.", "aspect": "screen", "label": "neutral"},
            {"text": "The screen is fine.", "aspect": "keyboard", "label": "neutral"}]
    path = write_csv(tmp_path / "train.csv", rows, fields=("text", "aspect", "label"))
    message = error_of(path)
    assert_names(message, "train.csv", "line 3", "aspect")
    assert "'keyboard' does not occur in the text" in message  # (a case-only difference is found: predict's rule)


def test_offsets_that_do_not_match_the_aspect(tmp_path):
    rows = [ROWS[0], {**ROWS[1], "start": 31, "end": 38}]
    message = error_of(write_jsonl(tmp_path / "train.jsonl", rows))
    assert_names(message, "train.jsonl", "line 2", "start")
    assert "31:38" in message and "'battery'" in message


def test_offsets_that_are_not_numbers(tmp_path):
    rows = [ROWS[0], {**ROWS[1], "start": "x", "end": 39}, ROWS[2]]
    message = error_of(write_csv(tmp_path / "train.csv", rows))
    assert_names(message, "train.csv", "line 3", "start")
    assert "must be a whole number, got 'x'" in message
    rows = [ROWS[0], {**ROWS[1], "start": 32, "end": None}]  # one offset given, the other not
    message = error_of(write_jsonl(tmp_path / "one.jsonl", rows))
    assert_names(message, "one.jsonl", "line 2", "end")
    assert "give both start and end, or neither" in message


@pytest.mark.parametrize("name", ["train.jsonl", "train.json", "train.csv", "train.tsv", "train.parquet", "train.xml",
                                  "train.raw", "train.seg", "train.txt"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    message = error_of(path)
    assert name in message
    assert "empty" in message or (name.endswith(".xml") and "malformed XML" in message), message


@pytest.mark.parametrize("name", ["train.jsonl", "train.csv", "train.tsv", "train.parquet"])
def test_header_or_schema_only_file_is_empty(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        pd.DataFrame({c: pd.Series([], dtype=str) for c in ("text", "aspect", "label")}).to_parquet(path)
    else:
        path.write_text("\n\n" if name.endswith(".jsonl") else "text,aspect,label\n".replace(",", "\t" if "tsv" in name
                                                                                            else ","))
    message = error_of(path)
    assert name in message and "empty" in message


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    message = error_of(path)
    assert "train.parquet" in message and "Parquet" in message


def test_invalid_json(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"text": "oops", "aspect": \n', encoding="utf-8")
    message = error_of(path)
    assert "train.jsonl" in message and "line 2" in message and "not valid JSON" in message
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n", encoding="utf-8")
    assert "line 2" in error_of(path) and "JSON object" in error_of(path)
    listing = tmp_path / "train.json"
    listing.write_text('[{"text": "a"},\n {"text": }]', encoding="utf-8")
    message = error_of(listing)
    assert "train.json" in message and "not valid JSON" in message and "line 2" in message
    listing.write_text('"just a string"', encoding="utf-8")
    assert "list of objects" in error_of(listing)


def test_unknown_file_type_and_missing_file(tmp_path):
    sheet = tmp_path / "train.xlsx"
    sheet.write_bytes(b"PK")
    message = error_of(sheet)
    assert "train.xlsx" in message and "unknown file type '.xlsx'" in message
    message = error_of(tmp_path / "nowhere.jsonl")
    assert "nowhere.jsonl" in message and "not found" in message


def test_malformed_xml(tmp_path):
    path = write_xml(tmp_path / "Laptop_Train.xml", ROWS)
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("</sentence>", "</sentnce>", 1), encoding="utf-8")
    message = error_of(path)
    assert "Laptop_Train.xml" in message and "malformed XML" in message and "line" in message


def test_xml_that_is_not_semeval(tmp_path):
    path = tmp_path / "train.xml"
    path.write_text("<reviews><review>great</review></reviews>", encoding="utf-8")
    message = error_of(path)
    assert "train.xml" in message and "<sentence>" in message


def test_xml_aspect_term_without_polarity(tmp_path):
    path = write_xml(tmp_path / "train.xml", ROWS)
    root = ElementTree.parse(path).getroot()
    del root.findall(".//aspectTerm")[2].attrib["polarity"]  # the third term: second sentence, id=101
    ElementTree.ElementTree(root).write(path, encoding="utf-8")
    assert_names(error_of(path), "train.xml", "sentence id=101", "polarity")


def test_xml_sentence_without_text(tmp_path):
    path = write_xml(tmp_path / "train.xml", ROWS)
    root = ElementTree.parse(path).getroot()
    sentence = root.findall("sentence")[1]
    sentence.remove(sentence.find("text"))
    ElementTree.ElementTree(root).write(path, encoding="utf-8")
    assert_names(error_of(path), "train.xml", "sentence id=101", "text")


def test_xml_offsets_that_do_not_match(tmp_path):
    rows = ROWS[:2] + [{**ROWS[2], "start": 4, "end": 16}] + ROWS[3:]
    path = write_xml(tmp_path / "train.xml", rows)
    message = error_of(path)
    assert_names(message, "train.xml", "sentence id=101", "start")
    assert "'battery life'" in message


def test_xml_unknown_polarity(tmp_path):
    path = write_xml(tmp_path / "train.xml", ROWS[:4] + [{**ROWS[4], "label": "mixed"}])
    message = error_of(path)
    assert_names(message, "train.xml", "sentence id=102", "label")
    assert "'mixed'" in message


def t_format_error(path: Path, edit) -> str:
    """The error for a `$T$` file of ROWS whose lines `edit` changed."""
    lines = write_t_format(path, ROWS).read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")
    return error_of(path)


def test_t_format_record_without_placeholder(tmp_path):
    message = t_format_error(tmp_path / "train.seg",  # second record, file line 4
                             lambda lines: lines[:3] + [lines[3].replace("$T$", "battery")] + lines[4:])
    assert_names(message, "train.seg", "line 4", "text")
    assert "no '$T$'" in message


def test_t_format_record_cut_short(tmp_path):
    message = t_format_error(tmp_path / "train.raw", lambda lines: lines[:-1])  # the last record lost its polarity
    assert "train.raw" in message and "not a multiple of 3" in message


def test_t_format_unknown_polarity(tmp_path):
    path = write_t_format(tmp_path / "train.txt", ROWS)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[5] = "2"  # polarity of the second record (record starts on line 4)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = error_of(path)
    assert_names(message, "train.txt", "line 4", "label")
    assert "'2'" in message


def test_folder_problems(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", ROWS)
    with pytest.raises(DataError) as info:
        load_absa_splits(str(tmp_path))
    assert str(tmp_path) in str(info.value) and "no train file" in str(info.value) and "test.jsonl" in str(info.value)
    write_jsonl(tmp_path / "train_a.jsonl", ROWS)
    write_jsonl(tmp_path / "train_b.jsonl", ROWS)
    with pytest.raises(DataError) as info:
        load_absa_splits(str(tmp_path))
    assert "several files could be the train split" in str(info.value)
    assert "train_a.jsonl" in str(info.value) and "train_b.jsonl" in str(info.value)


def test_test_file_without_train_file(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", ROWS)
    with pytest.raises(DataError) as info:
        load_absa_splits(None, test_file=str(path))
    assert "test.jsonl" in str(info.value) and "a train file is needed" in str(info.value)


def test_data_error_attributes():
    error = DataError("data/train.csv", "unknown label 'x'", row="line 7", field="label")
    assert (error.file, error.row, error.field) == ("data/train.csv", "line 7", "label")
    assert str(error) == "data/train.csv, line 7, field 'label': unknown label 'x'"
    assert str(DataError("train.json", "bad", row=3)) == "train.json, row 3: bad"
    assert isinstance(error, ValueError)


# --------------------------------------------------------------------------- a target named several times


def test_t_format_with_the_target_twice_gives_every_span(tmp_path):
    path = tmp_path / "train.seg"
    path.write_text("$T$ has brought back the female rapper . - really ? $T$ is back\nlady gaga\n1\n"
                    "i like $T$\nthe new phone\n0\n"
                    "$T$ $T$ $T$\nsam\n-1\n", encoding="utf-8")
    rows = load_all(path)
    text = "lady gaga has brought back the female rapper . - really ? lady gaga is back"
    second = text.index("lady gaga", 1)
    assert rows[0]["text"] == text and (rows[0]["start"], rows[0]["end"]) == (0, 9)
    assert rows[0]["spans"] == [[0, 9], [second, second + 9]]
    assert rows[1]["spans"] == [[7, 20]] and rows[1]["text"] == "i like the new phone"
    assert rows[2]["text"] == "sam sam sam" and rows[2]["spans"] == [[0, 3], [4, 7], [8, 11]]
    assert all(r["text"][a:b] == r["aspect"] for r in rows for a, b in r["spans"])


def test_spans_given_in_jsonl_are_checked(tmp_path):
    row = {"text": TEXT_TWICE, "aspect": "battery", "label": "neutral"}
    rows = load_all(write_jsonl(tmp_path / "train.jsonl", [{**row, "spans": [[27, 34], [4, 11]]}]))
    assert rows[0]["spans"] == [[4, 11], [27, 34]] and (rows[0]["start"], rows[0]["end"]) == (4, 11)
    message = error_of(write_jsonl(tmp_path / "wrong.jsonl", [{**row, "spans": [[4, 11], [5, 12]]}]))
    assert_names(message, "wrong.jsonl", "line 1", "spans")  # the field predict names for a wrong entry of spans
    assert "5:12 give 'attery '" in message
    message = error_of(write_jsonl(tmp_path / "shape.jsonl", [{**row, "spans": [4, 11]}]))
    assert_names(message, "shape.jsonl", "line 1", "spans")
    assert "list of [start, end] pairs" in message


# --------------------------------------------------------------------------- validation by sentence


def sentences_with_aspects(count: int) -> list[dict]:
    """`count` sentences with 1-3 aspects each, labels mixed within a sentence."""
    rows = []
    for i in range(count):
        aspects = ["screen", "battery", "keyboard"][:1 + i % 3]
        text = f"Laptop {i}: " + ", ".join(f"the {a} is so-so" for a in aspects) + "."
        for k, aspect in enumerate(aspects):
            start = text.index(aspect)
            rows.append({"text": text, "aspect": aspect, "start": start, "end": start + len(aspect),
                         "label": DEFAULT_LABELS[(i + k) % 3]})
    return rows


def test_validation_holds_out_whole_sentences(tmp_path):
    rows = sentences_with_aspects(90)  # 180 rows
    splits = load_absa_splits(None, train_file=str(write_jsonl(tmp_path / "train.jsonl", rows)), seed=3)
    train, validation = splits["train"], splits["validation"]
    assert not set(train["text"]) & set(validation["text"])
    assert Counter(train["text"]) + Counter(validation["text"]) == Counter(r["text"] for r in rows)  # all aspects
    assert abs(len(validation) - 18) <= 3
    again = load_absa_splits(None, train_file=str(tmp_path / "train.jsonl"), seed=3)  # what use_absa.py evaluate gets
    assert as_tuples(again["validation"]) == as_tuples(validation)
    other = load_absa_splits(None, train_file=str(tmp_path / "train.jsonl"), seed=4)
    assert set(other["validation"]["text"]) != set(validation["text"])


def test_validation_from_very_few_sentences(tmp_path):
    rows = sentences_with_aspects(3)  # 6 rows, 3 sentences: fewer texts than the 10 folds of fraction 0.1
    splits = load_absa_splits(None, train_file=str(write_jsonl(tmp_path / "train.jsonl", rows)))
    assert len(set(splits["validation"]["text"])) == 1 and len(set(splits["train"]["text"])) == 2
    one = sentences_with_aspects(3)[3:]  # the three aspects of one sentence
    message = error_of(write_jsonl(tmp_path / "one.jsonl", one))
    assert "one.jsonl: cannot carve a validation split" in message and "a single text" in message


def test_validation_for_sequence_classification_keeps_repeated_texts_together(tmp_path):
    from absa.seqcls_data import load_text_data

    rows = [{"text": f"tweet {i % 40}", "label": ["a", "b", "c"][i % 3]} for i in range(200)]  # each text 5 times
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    data = load_text_data(train_file=str(train), seed=5)
    assert not set(data.splits["train"]["text"]) & set(data.splits["validation"]["text"])
    assert len(data.splits["validation"]) == 20 and len(data.splits["train"]) == 180


@pytest.mark.skipif(not (LAPTOPS / "train.jsonl").is_file(), reason="../shared/data/semeval2014_laptops absent")
def test_real_laptops_validation_shares_no_sentence_with_train():
    splits = load_absa_splits(str(LAPTOPS))
    train, validation = splits["train"], splits["validation"]
    assert not set(validation["text"]) & set(train["text"])
    assert abs(len(validation) - 233) <= 5  # 10 % of 2328 rows, in whole sentences
    share = {name: count / len(train) for name, count in label_counts(train).items()}
    for name, count in label_counts(validation).items():
        assert abs(count / len(validation) - share[name]) < 0.02, (name, count)
    again = load_absa_splits(str(LAPTOPS))  # use_absa.py evaluate --split validation makes this same call
    assert as_tuples(again["validation"]) == as_tuples(validation)


# --------------------------------------------------------------------------- one label rule (issue 23, point 2)


def with_labels(rows, labels) -> list[dict]:
    return [{**row, "label": label} for row, label in zip(rows, labels)]


NAMES = [r["label"] for r in ROWS]
SENTIMENT_NAMES = {-1: "negative", 0: "neutral", 1: "positive"}


def test_numbers_mean_their_sentiment_name_in_any_label_order(tmp_path):
    """-1/0/1 is negative/neutral/positive by name, not by position in --label_names."""
    order = ("positive", "neutral", "negative")
    named = load_all(write_jsonl(tmp_path / "named.jsonl", ROWS), label_names=order)
    numbered = load_all(write_jsonl(tmp_path / "numbered.jsonl",
                                    with_labels(ROWS, [POLARITY_NUMBER[n] for n in NAMES])), label_names=order)
    assert list(numbered["label"]) == list(named["label"]) == [order.index(n) for n in NAMES]


def test_zero_one_with_three_sentiment_names_is_refused_unless_said(tmp_path):
    """Binary 0/1 (0 negative, as in SST-2) with negative/neutral/positive could be ids or -1/0/1: refused in one
    line that says how to choose; each choice then reads the numbers as asked."""
    zero_one = [0, 1, 1, 0, 1, 0, 1]
    path = write_jsonl(tmp_path / "train.jsonl", with_labels(ROWS, zero_one))
    message = error_of(path)
    assert "train.jsonl" in message and "field 'label'" in message and "could mean two things" in message
    assert "--numeric_labels" in message and "--label_names negative positive" in message
    assert list(load_all(path, label_names=("negative", "positive"))["label"]) == zero_one
    assert list(load_all(path, numeric_labels="sentiment")["label"]) == [n + 1 for n in zero_one]  # neutral/positive
    assert list(load_all(path, numeric_labels="ids")["label"]) == zero_one  # negative/neutral
    # 0/1/2 cannot be -1/0/1: class ids in label order, without a word
    assert list(load_all(write_jsonl(tmp_path / "ids.jsonl", with_labels(ROWS, [0, 1, 2, 2, 1, 0, 2])))["label"]) \
        == [0, 1, 2, 2, 1, 0, 2]


def test_what_numbers_mean_is_read_from_every_split_together(tmp_path):
    """A test file with only 0 and 1 is read as the train file's -1/0/1, and the meaning is recorded."""
    train = write_jsonl(tmp_path / "train.jsonl", with_labels(ROWS, [POLARITY_NUMBER[n] for n in NAMES]))
    test = write_jsonl(tmp_path / "test.jsonl", with_labels(ROWS[:3], [1, 0, 1]))
    splits = load_absa_splits(None, train_file=str(train), test_file=str(test))
    assert list(splits["test"]["label"]) == [2, 1, 2] and splits.numeric_labels == "sentiment"


def test_label_names_that_differ_only_in_case_are_refused(tmp_path):
    with pytest.raises(DataError, match="duplicates"):
        load_all(write_jsonl(tmp_path / "train.jsonl", ROWS), label_names=("positive", "Positive", "negative"))


def test_a_hub_dev_split_is_the_validation_split(monkeypatch):
    """A Hub dataset's 'dev' split is its validation split, as in a folder; not ignored while one is carved."""
    monkeypatch.setattr("absa.data.load_hub_dataset", lambda name: datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS * 4), "dev": datasets.Dataset.from_list(ROWS * 2),
         "test": datasets.Dataset.from_list(ROWS)}))
    splits = load_absa_splits("some/hub-set")
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 28, "validation": 14, "test": 7}
    assert splits.validation_split["made"] == "given"


def test_hub_class_label_ids_are_names_not_sentiment_numbers(monkeypatch):
    """A Hub ClassLabel counts from 0 in its own order: id 0 is its first name, not 'neutral'."""
    features = datasets.Features({"text": datasets.Value("string"), "aspect": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["positive", "negative", "neutral"])})
    hub = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"text": ["the screen is fine"] * 3 + ["a screen"] * 3, "aspect": ["screen"] * 6, "label": [0, 1, 2] * 2},
        features=features)})
    monkeypatch.setattr("absa.data.load_hub_dataset", lambda name: hub)
    splits = load_absa_splits("some/hub-set", validation_fraction=0.5, seed=0)
    rows = splits["train"].to_list() + splits["validation"].to_list()
    assert sorted(DEFAULT_LABELS[r["label"]] for r in rows) == sorted(["positive", "negative", "neutral"] * 2)


def test_seqcls_reads_labels_with_the_same_rule(tmp_path):
    from absa.seqcls_data import load_text_data

    texts = [f"sentence {i}" for i in range(12)]
    write = lambda name, labels: write_jsonl(tmp_path / name, [{"text": t, "label": x} for t, x in zip(texts, labels)])
    numbers = dict(zip(texts, [-1, 0, 1] * 4))
    data = load_text_data(train_file=str(write("a.jsonl", numbers.values())),
                          label_names=["positive", "neutral", "negative"])
    read = {text: data.label_names[label] for split in data.splits.values()
            for text, label in zip(split["text"], split["labels"])}
    assert read == {text: SENTIMENT_NAMES[number] for text, number in numbers.items()}
    # SST-2 style: 0 negative / 1 positive with two names; with three sentiment names it could mean two things
    data = load_text_data(train_file=str(write("b.jsonl", [0, 1] * 6)), label_names=["negative", "positive"])
    assert data.numeric_labels == "ids"
    with pytest.raises(DataError, match="could mean two things"):
        load_text_data(train_file=str(write("c.jsonl", [0, 1] * 6)), label_names=["negative", "neutral", "positive"])


# --------------------------------------------------------------------------- split files (issue 23, point 7)


def test_split_files_are_found_by_whole_words(tmp_path, caplog):
    """train_dev_backup names two splits and is never taken; 'val' inside 'retrieval' is no split name."""
    write_jsonl(tmp_path / "train.jsonl", make_rows())
    write_jsonl(tmp_path / "test.jsonl", ROWS)
    write_jsonl(tmp_path / "train_dev_backup.jsonl", ROWS[:5])
    write_jsonl(tmp_path / "retrieval.jsonl", ROWS[:2])
    with caplog.at_level(logging.WARNING, logger="absa.splits"):
        assert find_split_files(tmp_path, (".jsonl",)) == {"train": tmp_path / "train.jsonl",
                                                           "test": tmp_path / "test.jsonl"}
    note = " ".join(r.getMessage() for r in caplog.records)
    assert "not using train_dev_backup.jsonl" in note and "retrieval" not in note
    splits = load_absa_splits(str(tmp_path))
    assert splits.validation_split["made"] == "carved" and len(splits["train"]) + len(splits["validation"]) == 60
    # whole words also at camelCase and digits: LaptopTrain, 2018-E-c-En-dev, test_gold
    for name in ("train.jsonl", "test.jsonl", "train_dev_backup.jsonl", "retrieval.jsonl"):
        (tmp_path / name).unlink()
    for name in ("LaptopTrain.jsonl", "2018-E-c-En-dev.jsonl", "test_gold.jsonl"):
        write_jsonl(tmp_path / name, ROWS)
    assert {split: p.name for split, p in find_split_files(tmp_path, (".jsonl",)).items()} == {
        "train": "LaptopTrain.jsonl", "validation": "2018-E-c-En-dev.jsonl", "test": "test_gold.jsonl"}


def test_seqcls_class_names_that_differ_only_in_case_are_refused(tmp_path):
    """'Pos' and 'pos' in the data: one class or two? Refused in one line rather than guessed."""
    from absa.seqcls_data import load_text_data

    path = write_jsonl(tmp_path / "train.jsonl", [{"text": f"t {i}", "label": ["Pos", "pos", "neg"][i % 3]}
                                                  for i in range(12)])
    with pytest.raises(DataError) as info:
        load_text_data(train_file=str(path))
    assert "train.jsonl" in str(info.value) and "'Pos' and 'pos'" in str(info.value) and "--label_names" in str(
        info.value)


def test_marked_aspects_and_occurrence_columns_are_read_as_predict_reads_them(tmp_path):
    # A labelled file written as predict input (aspect marked in the text, or an `occurrence` column) was read as
    # literal "[B-ASP]" text / the first occurrence by training and evaluate: another input than predict classifies.
    from absa.data import read_absa_file
    from absa.aspects import resolve_aspect
    rows = [{"text": "Good [B-ASP]screen[E-ASP], but the screen hinge broke", "aspect": "screen", "label": "positive"},
            {"text": "Good screen, but the screen hinge broke", "aspect": "screen", "occurrence": 2,
             "label": "negative"},
            {"text": "The [B-ASP]battery[E-ASP] lasts", "label": "positive", "aspect": "Battery"}]
    path = tmp_path / "marked.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    read = read_absa_file(path)
    assert [(row["text"], row["start"], row["end"], row["label"]) for row in read] == [
        ("Good screen, but the screen hinge broke", 5, 11, 2),
        ("Good screen, but the screen hinge broke", 21, 27, 0),
        ("The battery lasts", 4, 11, 2)]
    for row, given in zip(read, rows):
        span = resolve_aspect(given["text"], given["aspect"], occurrence=given.get("occurrence"))
        assert (row["text"], row["start"], row["end"], row["aspect"]) == (span.text, span.start, span.end, span.aspect)
    path.write_text(json.dumps({"text": "A [B-ASP]screen", "aspect": "screen", "label": "positive"}) + "\n")
    with pytest.raises(DataError, match="line 1, field 'text'"):
        read_absa_file(path)


def test_an_aspect_without_offsets_is_placed_by_the_rule_predict_uses(tmp_path):
    # Training / evaluate took the first same-case match ("screen" -> the second word below), predict the first match
    # in any case: evaluate scored another occurrence than predict classified. One rule now.
    from absa.data import read_absa_file
    from absa.aspects import resolve_aspect
    text = "Screen is bright, but the screen hinge is loose"
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"text": text, "aspect": "screen", "label": "positive"}) + "\n", encoding="utf-8")
    row = read_absa_file(path)[0]
    span = resolve_aspect(text, "screen")
    assert (row["start"], row["end"]) == (span.start, span.end) == (0, 6)


def test_offsets_are_read_by_one_rule_in_training_evaluate_and_predict(tmp_path):
    # Training refused offsets that took in a space beside the aspect while predict took them with the space (the
    # mask, the bracketed and the paired input then held it): one rule now, the aspect's own characters, both ways.
    from absa.aspects import AspectError, resolve_aspect
    from absa.data import read_absa_file
    text = "The battery lasts"
    for start, end in ((3, 11), (4, 12), (3, 12), (4, 11)):
        path = write_jsonl(tmp_path / f"train{start}{end}.jsonl", [
            {"text": text, "aspect": "battery", "start": start, "end": end, "label": "positive"}])
        row = read_absa_file(path)[0]
        span = resolve_aspect(text, "battery", start, end)
        assert (row["start"], row["end"], row["aspect"]) == (span.start, span.end, span.aspect) == (4, 11, "battery")
    assert resolve_aspect(text, None, 3, 12).aspect == "battery"
    for start, end, field, problem in ((3, 4, "start", "give ' ', not an aspect"),
                                       (True, 11, "start", "start must be a whole number, got True"),
                                       (4, 11.5, "end", "end must be a whole number")):
        with pytest.raises(AspectError, match=problem) as info:
            resolve_aspect(text, None, start, end)
        assert info.value.field == field
        message = error_of(write_jsonl(tmp_path / "bad.jsonl", [
            {"text": text, "aspect": "battery", "start": start, "end": end, "label": "positive"}]))
        assert_names(message, "bad.jsonl", "line 1", field)
