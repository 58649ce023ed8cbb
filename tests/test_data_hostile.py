"""The readers as a hostile (or just unlucky) user meets them: every case is either accepted or refused with one
line that names the file, the row or line, and the field (absa/files.py, absa/data.py, absa/seqcls_data.py)."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from test_data import ROWS, assert_names, error_of, load_all, write_csv, write_jsonl, write_xml

from absa.data import load_absa_splits
from absa.files import DataError, is_missing
from absa.seqcls_data import load_text_data

LATIN_1 = "café".encode("latin-1")  # b"caf\xe9": the é is byte 0xe9, not UTF-8


def one_line(message: str) -> str:
    assert "\n" not in message, message
    return message


def absa_error(path, **kwargs) -> str:
    return one_line(error_of(path, **kwargs))


def seqcls_error(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_text_data(train_file=str(path), **kwargs)
    return one_line(str(info.value))


def seqcls_rows(n=6):
    return [{"text": f"review number {i} was {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
            for i in range(n)]


# --------------------------------------------------------------------------- the missing-value rule


@pytest.mark.parametrize("value, missing", [
    (None, True), (float("nan"), True), (pd.NA, True), ("", True), ("  \t", True), ("NaN", True), ("nan", True),
    (0, False), ("0", False), ("none", False), ([], False), ([float("nan")], False), ("naan", False),
])
def test_one_missing_value_rule(value, missing):
    assert is_missing(value) is missing


def test_nan_is_a_word_in_a_text_field_but_not_a_label(tmp_path):
    # MAMS has the aspect "nan" (the bread): a word in text fields, an empty cell elsewhere.
    text = "The salad, nan and rice were fine."
    assert is_missing("nan", text=True) is False and is_missing(" ", text=True) is True
    row = {"text": text, "aspect": "nan", "start": 11, "end": 14, "label": "neutral"}
    assert load_all(write_jsonl(tmp_path / "train.jsonl", [row]))[0]["aspect"] == "nan"
    message = absa_error(write_jsonl(tmp_path / "label.jsonl", [{**row, "label": "NaN"}]))
    assert_names(message, "label.jsonl", "line 1", "label")
    assert "missing or empty" in message


# --------------------------------------------------------------------------- text that is not UTF-8


def test_latin_1_csv_names_the_line_and_the_byte(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"text,aspect,label\nThe screen is fine.,screen,positive\n"
                     b"The " + LATIN_1 + b" is ok.,cafe,neutral\n")
    message = absa_error(path)
    assert_names(message, "train.csv", "line 3", None)
    assert "not UTF-8 text (byte 0xe9 at column 8)" in message and "save the file as UTF-8" in message
    message = seqcls_error(path)
    assert_names(message, "train.csv", "line 3", None)
    assert "not UTF-8" in message


@pytest.mark.parametrize("name", ["train.jsonl", "train.json", "train.tsv", "train.txt", "train.seg"])
def test_latin_1_in_every_text_format(tmp_path, name):
    path = tmp_path / name
    if name == "train.seg":  # $T$ format: sentence, aspect, polarity
        path.write_bytes(b"the $T$ is fine\nscreen\n1\nthe " + LATIN_1 + b" $T$\nscreen\n0\n")
        line = "line 4"
    elif name == "train.json":
        path.write_bytes(b'[\n{"text": "the screen", "aspect": "screen", "label": 1},\n{"text": "' + LATIN_1 + b'"}]')
        line = "line 3"
    elif name == "train.jsonl":
        path.write_bytes(b'{"text": "the screen", "aspect": "screen", "label": 1}\n{"text": "' + LATIN_1 + b'"}\n')
        line = "line 2"
    else:
        path.write_bytes(b"text\taspect\tlabel\nthe screen\tscreen\t1\n" + LATIN_1 + b"\tscreen\t1\n")
        line = "line 3"
    message = absa_error(path)
    assert_names(message, name, line, None)
    assert "not UTF-8 text (byte 0xe9" in message


def test_latin_1_xml(tmp_path):
    path = write_xml(tmp_path / "train.xml", ROWS)
    text = path.read_text(encoding="utf-8").replace("encoding='utf-8'", "encoding='iso-8859-1'")
    path.write_bytes(text.encode("latin-1"))  # ROWS has "Größe" and "café": Latin-1 bytes
    message = absa_error(path)
    assert "train.xml, line " in message and "not UTF-8 text (byte 0xf6" in message  # the ö of Größe


# --------------------------------------------------------------------------- broken files


def test_jsonl_with_a_broken_line_in_the_middle(tmp_path):
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(row) for row in ROWS]
    lines[3] = lines[3][:-5]  # line 4 of 7 cut short
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    message = absa_error(path)
    assert_names(message, "train.jsonl", "line 4", None)
    assert "not valid JSON" in message
    rows = [json.dumps(row) for row in seqcls_rows()]
    rows[2] = '{"text": "cut here", "label": '
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    message = seqcls_error(path)
    assert_names(message, "train.jsonl", "line 3", None)
    assert "not valid JSON" in message


def test_csv_row_with_too_many_cells(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,aspect,label\nThe screen is fine.,screen,positive\nOne, two,screen,neutral\n",
                    encoding="utf-8")
    message = absa_error(path)
    assert_names(message, "train.csv", "line 3", None)
    assert "4 cells, the header has 3" in message


def test_csv_errors_name_the_line_after_a_multi_line_cell(tmp_path):
    # A quoted cell spanning three lines: the rows after it start two lines later than their row number says.
    path = tmp_path / "train.csv"
    path.write_text('text,aspect,label\n"The screen,\nreally\nis fine.",screen,positive\n\n'
                    "The keyboard is bad.,keyboard,awful\n", encoding="utf-8")
    assert_names(absa_error(path), "train.csv", "line 6", "label")
    path.write_text('text,aspect,label\n"The screen,\nreally\nis fine.",screen,positive\nOne, two,screen,neutral\n',
                    encoding="utf-8")
    assert_names(absa_error(path), "train.csv", "line 5", None)


def test_semicolon_separated_csv_names_missing_and_found_columns(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text;aspect;start;end;label\nThe screen is fine.;screen;4;10;positive\n", encoding="utf-8")
    message = absa_error(path)
    assert_names(message, "train.csv", "line 1 (header)", "text")
    assert "no columns 'text', 'aspect', 'label'" in message
    assert "columns found: 'text;aspect;start;end;label'" in message and "separated by ';'" in message
    path.write_text("text;label\ngood;pos\nbad;neg\n", encoding="utf-8")
    message = seqcls_error(path)
    assert_names(message, "train.csv", "line 1", None)
    assert "no text column found" in message and "columns: text;label" in message


def test_excel_csv_export_is_accepted(tmp_path):
    # What Excel's "CSV UTF-8" writes: a BOM, CRLF line ends, quotes around cells with commas; no offsets.
    path = tmp_path / "train.csv"
    path.write_bytes("\ufefftext,aspect,label\r\n"
                     '"The screen, sadly, is dim.",screen,negative\r\n'
                     '"Fast, light, and the keyboard is great.",keyboard,positive\r\n'.encode("utf-8"))
    rows = load_all(path)
    assert [(r["text"], r["aspect"], r["start"], r["end"], r["spans"]) for r in rows] == [
        ("The screen, sadly, is dim.", "screen", 4, 10, [[4, 10]]),
        ("Fast, light, and the keyboard is great.", "keyboard", 21, 29, [[21, 29]])]
    path.write_bytes("\ufefftext,label\r\n".encode() + b"".join(
        f'"{row["text"]}, yes",{row["label"]}\r\n'.encode() for row in seqcls_rows()))
    data = load_text_data(train_file=str(path), validation_file=str(path))
    assert data.text_columns == ["text"] and data.splits["train"][0]["text"] == "review number 0 was bad, yes"


def test_xml_with_entities_is_refused_at_once(tmp_path):
    laughs = ['<!ENTITY lol "lol">'] + [f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 or "")) * 10}">' for i in range(1, 10)]
    path = tmp_path / "train.xml"
    path.write_text('<?xml version="1.0"?>\n<!DOCTYPE sentences [\n' + "\n".join(laughs) + "\n]>\n"
                    '<sentences><sentence id="1"><text>&lol9;</text></sentence></sentences>\n', encoding="utf-8")
    started = time.perf_counter()
    message = absa_error(path)
    assert time.perf_counter() - started < 1
    assert_names(message, "train.xml", "line 2", None)
    assert "<!DOCTYPE is not accepted (entities are not expanded)" in message
    path.write_text('<sentences>\n<!ENTITY x "y">\n</sentences>', encoding="utf-8")
    assert "line 2" in absa_error(path) and "<!ENTITY" in absa_error(path)


def test_folder_without_a_train_file(tmp_path):
    (tmp_path / "Train.xlsx").write_bytes(b"PK")
    write_jsonl(tmp_path / "test.jsonl", ROWS)
    for load in (lambda: load_absa_splits(str(tmp_path)), lambda: load_text_data(str(tmp_path))):
        with pytest.raises(DataError) as info:
            load()
        message = one_line(str(info.value))
        assert message.startswith(str(tmp_path)) and "no train file" in message
        assert "found: Train.xlsx, test.jsonl" in message


# --------------------------------------------------------------------------- offsets


def test_offsets_written_as_strings(tmp_path):
    rows = [{**ROWS[0], "start": "4", "end": "10"}, {**ROWS[1], "start": "32.0", "end": 39.0}]
    dataset = load_all(write_jsonl(tmp_path / "train.jsonl", rows))
    assert [(r["start"], r["end"]) for r in dataset] == [(4, 10), (32, 39)]
    for field, value in (("start", "abc"), ("end", "ten"), ("start", "4.5"), ("end", True)):
        message = absa_error(write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], {**ROWS[1], field: value}]))
        assert_names(message, "bad.jsonl", "line 2", field)
        assert f"must be a whole number, got {value!r}" in message


@pytest.mark.parametrize("start, end, field, problem", [
    (12, 5, "start", "start 12 is after end 5"),
    (-3, 6, "start", "start -3 is negative"),
    (7, 7, "start", "start 7 is equal to end 7"),
    (45, 60, "end", "end 60 is past the end of the text (50 characters)"),
])
def test_offsets_that_cannot_be_a_span(tmp_path, start, end, field, problem):
    rows = [ROWS[1], {**ROWS[0], "start": start, "end": end}]
    assert len(ROWS[0]["text"]) == 50
    for path in (write_jsonl(tmp_path / "train.jsonl", rows), write_csv(tmp_path / "train.csv", rows)):
        message = absa_error(path)
        assert_names(message, path.name, "line 2" if path.suffix == ".jsonl" else "line 3", field)
        assert problem in message and "give ''" not in message


# --------------------------------------------------------------------------- empty cells


def test_empty_label_cell(tmp_path):
    rows = ROWS[:2] + [{**ROWS[2], "label": ""}]
    assert_names(absa_error(write_csv(tmp_path / "train.csv", rows)), "train.csv", "line 4", "label")
    pd.DataFrame([{**ROWS[0], "label": None}]).to_parquet(tmp_path / "train.parquet")
    assert_names(absa_error(tmp_path / "train.parquet"), "train.parquet", "row 1", "label")
    path = tmp_path / "seqcls.csv"
    path.write_text("text,label\ngood,pos\nbad,\nfine,pos\n", encoding="utf-8")
    message = seqcls_error(path)
    assert_names(message, "seqcls.csv", "line 3", "label")
    assert "missing label" in message


def test_whitespace_only_aspect(tmp_path):
    rows = [ROWS[0], {"text": ROWS[1]["text"], "aspect": "   ", "label": "negative"}]
    message = absa_error(write_csv(tmp_path / "train.csv", rows, fields=("text", "aspect", "label")))
    assert_names(message, "train.csv", "line 3", "aspect")
    assert "missing or empty" in message
    path = tmp_path / "train.seg"
    path.write_text("the $T$ is fine\nscreen\n1\nthe $T$ is bad\n \t \n-1\n", encoding="utf-8")
    assert_names(absa_error(path), "train.seg", "line 4", "aspect")


# --------------------------------------------------------------------------- Parquet column types


@pytest.mark.parametrize("field, value, problem", [
    ("text", 12345, "must be a string, got int 12345"),
    ("text", ["The", "screen"], "must be a string, got list ['The', 'screen']"),
    ("aspect", 7, "must be a string, got int 7"),
    ("label", [1, 2], "must be one label, got list [1, 2]"),
])
def test_parquet_with_the_wrong_column_types(tmp_path, field, value, problem):
    path = tmp_path / "train.parquet"
    pd.DataFrame([{**row, field: value} for row in ROWS[:2]]).to_parquet(path)
    message = absa_error(path)
    assert_names(message, "train.parquet", "row 1", field)
    assert problem in message


def test_parquet_text_that_is_not_text_for_seqcls(tmp_path):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"text": [101, 102, 103], "label": ["a", "b", "a"]}).to_parquet(path)
    message = seqcls_error(path)
    assert_names(message, "train.parquet", "row 1", "text")
    assert "must be a string, got int 101" in message
