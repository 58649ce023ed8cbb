"""Issue 23, "trust the numbers", on the prediction and evaluation-output paths: every output row says exactly what
was classified and reads back as input, in every format pair; odd but legal files give the answers plain ones do;
mistakes in where the output goes, the length or the precision are refused before any work.

Tiny models and data, in-process through `use_absa.main` (fixtures of test_use_absa.py).
"""

import json

import numpy as np
import pandas as pd
import pytest

import test_use_absa as base
from test_predict_stream import FP32, LABEL_COLUMNS, predict, read_table, write_input
from test_use_absa import (absa_dirs, expected, input_jsonl, input_rows, input_spans, model_dir,  # noqa: F401
                           plain_single_process)
from absa.files import read_rows
from absa.aspects import resolve_aspect
from absa.model import AbsaClassifier
from absa.predictor import AbsaPredictor, resolve_precision
from absa.corpus import read_chunks

import use_absa

TWICE = "Screen is bright, but the screen hinge is loose."
# Legal but odd rows: quotes (TSV has no quoting), a multi-line CSV cell is not here (TSV cannot hold one), a marked
# aspect with an empty aspect cell, a case-insensitive match, RTL text, emoji (outside the BMP: UTF-16 offsets would
# differ), a cell that a spreadsheet takes for a formula, a duplicate row, a missing extra cell.
ODD_ROWS = [
    {"text": 'The "pro" keyboard is great', "aspect": "keyboard", "note": "quotes"},
    {"text": "The [B-ASP]screen[E-ASP] is dim", "aspect": "", "note": "marked"},
    {"text": TWICE, "aspect": "screen", "note": None},
    {"text": "המסך בהיר מאוד, screen", "aspect": "המסך", "note": "rtl"},
    {"text": "😀😀 battery 😀 lasts", "aspect": "battery", "note": "=1+1"},
    {"text": "-2 battery, @cell +3", "aspect": "battery", "note": "@x"},
    {"text": 'The "pro" keyboard is great', "aspect": "keyboard", "note": "quotes"},
]


def first_in_any_case(text: str, aspect: str) -> tuple[str, int, int]:
    """Where an aspect is in the text without markers, worked out here: its first occurrence in any case."""
    text = text.replace("[B-ASP]", "").replace("[E-ASP]", "")
    start = text.lower().index(aspect.lower())
    return text, start, start + len(aspect)


ODD_SPANS = [first_in_any_case(row["text"], row["aspect"] or "screen") for row in ODD_ROWS]
FORMATS = [".jsonl", ".csv", ".tsv", ".parquet"]


def identified(rows) -> list[tuple]:
    """(text, aspect, start, end, predicted label) of each output row; its aspect must be text[start:end]."""
    for row in rows:
        assert row["aspect"] == row["text"][int(row["start"]):int(row["end"])], row
    return [(row["text"], row["aspect"], int(row["start"]), int(row["end"]), row["predicted_label"]) for row in rows]


# --------------------------------------------------------------------------- points 4, 5, 15: outputs read back


@pytest.mark.parametrize("source_suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
def test_every_format_pair_round_trips_odd_rows(model_dir, tmp_path, source_suffix):
    source = write_input(ODD_ROWS, tmp_path / f"odd{source_suffix}")
    predictor = AbsaPredictor.from_pretrained(model_dir, device="cpu", mixed_precision="no", batch_size=3)
    api = predictor.predict([t for t, _, _ in ODD_SPANS], starts=[s for _, s, _ in ODD_SPANS],
                            ends=[e for _, _, e in ODD_SPANS])
    with pytest.warns(UserWarning, match="in 1 input.*first: input 3.*occurs more than once"):  # TWICE
        assert predictor.predict([row["text"] for row in ODD_ROWS], [row["aspect"] or None for row in ODD_ROWS]) == api
    wanted = [(t, t[s:e], s, e, p["label"]) for (t, s, e), p in zip(ODD_SPANS, api)]
    for suffix in FORMATS:
        output = tmp_path / f"out{suffix}"
        predict(model_dir, source, output, "--chunk_size", 3)
        rows = read_table(output)
        assert identified(rows) == wanted, suffix
        assert [row["note"] for row in rows][:2] == ["quotes", "marked"] and rows[4]["note"] == "=1+1"
        # Fed back in: the same rows, the same labels, no "markers and start/end" or "not the aspect" refusal.
        again = tmp_path / f"again{suffix}"
        predict(model_dir, output, again, "--chunk_size", 4)
        assert identified(read_table(again)) == wanted, suffix
        assert [row for _, row in read_rows(again)] == [row for chunk in read_chunks(again, 2) for _, row in chunk]


def test_tsv_is_read_and_written_without_quoting(model_dir, tmp_path):
    source = tmp_path / "in.tsv"
    source.write_text('text\taspect\tstart\tend\nThe "pro" keyboard\tkeyboard\t10\t18\n', encoding="utf-8")
    output = tmp_path / "out.tsv"
    predict(model_dir, source, output)
    line = output.read_text(encoding="utf-8").splitlines()[1]
    assert line.startswith('The "pro" keyboard\tkeyboard\t10\t18\t')  # as it came in
    # A tab or line break cannot be in a TSV cell: refused before the model loads, nothing written.
    bad = write_input([{"text": "The screen\tis dim", "aspect": "screen"}], tmp_path / "bad.jsonl")
    message = base.exit_message(["predict", model_dir, "--input", bad, "--output", tmp_path / "bad.tsv"])
    assert "bad.jsonl, line 1, field 'text'" in message and "write .csv" in message
    assert "prediction 1, field 'text'" in base.exit_message(
        ["predict", model_dir, "--text", "The screen\nis dim", "--aspect", "screen", "--output", tmp_path / "x.tsv"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "in.tsv", "out.tsv"]


def test_formula_like_cells_are_written_as_they_are(model_dir, tmp_path):
    rows = [{"text": "=HYPERLINK(1) screen", "aspect": "screen", "note": "+1"},
            {"text": "@SUM screen", "aspect": "screen", "note": "-1"}]
    output = tmp_path / "out.csv"
    predict(model_dir, write_input(rows, tmp_path / "in.jsonl"), output)
    written = pd.read_csv(output, dtype=str, keep_default_na=False)
    assert list(written["text"]) == [row["text"] for row in rows] and list(written["note"]) == ["+1", "-1"]


# --------------------------------------------------------------------------- point 3: pandas inputs by position


def test_api_pairs_pandas_series_by_position(model_dir):
    frame = pd.DataFrame([{"text": t, "aspect": t[s:e]} for t, s, e in ODD_SPANS[3:6] + [
        ("The keyboard is bad, the fan is loud", 4, 12), ("The fan is loud, the keyboard is bad", 4, 7)]])
    shuffled = frame.sort_values("aspect")  # index 4, 5, 2, 1, 0 ...: not 0..n-1
    assert list(shuffled.index) != list(range(len(frame)))
    predictor = AbsaPredictor.from_pretrained(model_dir, device="cpu", mixed_precision="no")
    by_position = predictor.predict(shuffled.text, shuffled.aspect)
    as_lists = predictor.predict(list(shuffled.text), list(shuffled.aspect))
    assert by_position == as_lists
    assert [(r["text"], r["aspect"]) for r in by_position] == list(zip(shuffled.text, shuffled.aspect))
    np.testing.assert_array_equal(predictor.predict_probabilities(shuffled.text.to_numpy(), shuffled.aspect),
                                  predictor.predict_probabilities(list(shuffled.text), list(shuffled.aspect)))
    with pytest.raises(TypeError, match="aspects must be a list"):
        predictor.predict(["The screen is dim"] * 6, "screen")


# --------------------------------------------------------------------------- point 6: the first occurrence, any case


def test_search_takes_the_first_occurrence_in_any_case(model_dir, tmp_path, capsys):
    span = resolve_aspect(TWICE, "screen")
    assert (span.start, span.aspect, span.occurrences, span.ambiguous) == (0, "Screen", 2, True)
    assert resolve_aspect(TWICE, "screen", occurrence=2).start == TWICE.index("screen")
    assert resolve_aspect("The touchscreen and the Touchscreen", "touchscreen").start == 4
    assert resolve_aspect("触摸屏很好", "屏").start == 2  # no word boundary: parts of words
    marked = "The [B-ASP]Screen[E-ASP] and the [B-ASP]screen[E-ASP]"
    assert resolve_aspect(marked, "screen").start == 4 and resolve_aspect(marked, "screen").ambiguous
    use_absa.main(["predict", str(model_dir), "--text", TWICE, "--aspect", "screen", *FP32])
    captured = capsys.readouterr()
    assert "'screen' occurs 2 times" in captured.err and "Screen: " in captured.out


# --------------------------------------------------------------------------- points 10, 11, 14: refused up front


def test_output_paths_are_checked_before_any_work(model_dir, input_jsonl, tmp_path, monkeypatch):
    folder = tmp_path / "adir.jsonl"
    folder.mkdir()
    (tmp_path / "afile").write_text("keep\n")
    text = ["--text", "The screen is dim.", "--aspect", "screen", *FP32]

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")
    monkeypatch.setattr(AbsaClassifier, "from_pretrained", no_model)
    for argv, problem in [
            (["predict", model_dir, "--input", input_jsonl, "--output", folder, "--overwrite"],
             "adir.jsonl is a folder"),
            (["predict", model_dir, *text, "--output", folder, "--overwrite"], "adir.jsonl is a folder"),
            (["predict", model_dir, *text, "--output", tmp_path / "afile" / "x.csv"], "cannot write in"),
            (["evaluate", model_dir, "--test_file", base.SAMPLE / "test.jsonl", "--output_dir", tmp_path / "afile"],
             "cannot write in")]:
        assert problem in base.exit_message(argv), argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.jsonl", "afile"] and not any(folder.iterdir())
    monkeypatch.undo()
    use_absa.main([str(a) for a in ["predict", model_dir, *text, "--output", tmp_path / "new" / "deeper" / "x.jsonl"]])
    assert base.read_jsonl(tmp_path / "new" / "deeper" / "x.jsonl")[0]["aspect"] == "screen"


def test_max_length_beyond_the_position_table_is_refused(absa_dirs, tmp_path, capsys):
    long_text = "The screen is dim. " + "The fan is loud and the keyboard is fine. " * 40
    for family, positions in [("roberta", 128), ("bert", 128)]:
        message = base.exit_message(["predict", absa_dirs[family], "--text", long_text, "--aspect", "screen",
                                     "--max_length", positions + 1])
        assert f"{absa_dirs[family]}: max_length {positions + 1} is more tokens than this encoder has positions for " \
               f"({positions})" in message
        use_absa.main(["predict", str(absa_dirs[family]), "--text", long_text, "--aspect", "screen", "--max_length",
                       str(positions), *FP32])  # the limit itself fits (RoBERTa's positions start at 2)
        assert "screen: " in capsys.readouterr().out
    # DeBERTa-v2 without absolute positions has no such limit.
    use_absa.main(["predict", str(absa_dirs["deberta-v2"]), "--text", long_text, "--aspect", "screen", "--max_length",
                   "512", *FP32])
    with pytest.raises(ValueError, match="positions for"):
        AbsaPredictor.from_pretrained(absa_dirs["bert"], device="cpu", max_length=129)


def test_bf16_is_refused_where_a_cpu_only_emulates_it(model_dir, monkeypatch):
    monkeypatch.setattr("absa.launch.bf16_is_native", lambda device: False)
    with pytest.raises(ValueError, match="this CPU .*no native bf16"):
        resolve_precision("bf16", None, "cpu")
    assert resolve_precision("auto", None, "cpu") == ("no", None)
    assert "mixed_precision bf16: this CPU" in base.exit_message(["predict", model_dir, "--text", "The screen is dim.",
                                                                  "--aspect", "screen", "--mixed_precision", "bf16"])
    monkeypatch.setattr("absa.launch.bf16_is_native", lambda device: True)
    assert resolve_precision("bf16", None, "cpu") == ("bf16", None)


def test_empty_or_broken_spans_are_named(model_dir, tmp_path):
    rows = [{"text": "The screen is dim", "aspect": "screen", "label": "negative", "spans": [[4, 10]]},
            {"text": "The screen is dim", "aspect": "screen", "label": "negative", "spans": []}]
    for suffix, row in [(".jsonl", "line 2"), (".parquet", "row 2")]:
        data = write_input(rows, tmp_path / f"test{suffix}")
        message = base.exit_message(["evaluate", model_dir, "--test_file", data, "--output_dir", tmp_path])
        assert f"test{suffix}, {row}, field 'spans': must be a non-empty list of [start, end] pairs" in message


def test_a_list_or_number_is_no_text_and_the_input_is_no_output(model_dir, tmp_path):
    # str() would make ["The screen"] the text "['The screen']" and classify that.
    rows = [{"text": "The screen", "aspect": "screen"}, {"text": ["The screen"], "aspect": "screen"},
            {"text": "The 5 screen", "aspect": 5}]
    for line, field in [(2, "text"), (3, "aspect")]:
        source = write_input([rows[0], rows[line - 1]], tmp_path / f"in{line}.jsonl")
        message = base.exit_message(["predict", model_dir, "--input", source, "--output", tmp_path / "out.csv"])
        assert f"in{line}.jsonl, line 2, field '{field}': the {field} must be a string" in message
    source = write_input(rows[:1], tmp_path / "same.csv")
    assert "is the input" in base.exit_message(["predict", model_dir, "--input", source, "--output", source,
                                                "--overwrite"])
    assert read_rows(source)[0][1] == {"text": "The screen", "aspect": "screen"}


# --------------------------------------------------------------------------- point 12: outputs named after the data


def test_evaluations_of_different_data_do_not_collide(model_dir, tmp_path, capsys):
    argv = ["evaluate", str(model_dir), "--output_dir", str(tmp_path), *FP32]
    use_absa.main(argv + ["--dataset", str(base.SAMPLE)])
    use_absa.main(argv + ["--test_file", str(base.REPO / "data" / "contrastive" / "test.jsonl")])
    laptops = json.loads((tmp_path / "evaluation_sample_laptops_test.json").read_text())
    contrastive = json.loads((tmp_path / "evaluation_contrastive_test.json").read_text())
    assert (laptops["examples"], contrastive["examples"]) == (100, 72)
    assert (tmp_path / "evaluation_contrastive_test_confusion_matrix.png").exists()
    # The same data again is still refused without --overwrite.
    assert "already exists" in base.exit_message(["evaluate", model_dir, "--dataset", base.SAMPLE, "--output_dir",
                                                  tmp_path])


# --------------------------------------------------------------------------- extra pass: a `spans` column


def test_predict_places_the_aspect_at_every_span_as_evaluate_does(absa_dirs, tmp_path):
    from absa.aspects import AspectCollator
    from absa.aspects import AspectSpan
    from absa.predictor import softmax

    text = "obama is back, really? obama yes"
    rows = [{"text": text, "aspect": "obama", "spans": [[23, 28], [0, 5]], "label": "positive"},
            {"text": text, "aspect": "obama", "label": "positive"}]
    model_dir = absa_dirs["bert"]  # a model to which the second mention matters (checked below)
    predictor = AbsaPredictor.from_pretrained(model_dir, device="cpu", mixed_precision="no", max_length=128)

    def direct(span):
        batch = AspectCollator(predictor.tokenizer)(predictor.encode([span]))
        batch.pop("labels")
        return softmax(predictor.model(**batch).detach().numpy())[0]
    both, first = direct(AspectSpan(text, 0, 5, spans=((0, 5), (23, 28)))), direct(AspectSpan(text, 0, 5))
    assert np.abs(both - first).max() > 0.1
    for suffix in (".jsonl", ".parquet"):
        source = write_input(rows, tmp_path / f"in{suffix}")
        for output in (tmp_path / f"out{suffix}.csv", tmp_path / f"out{suffix}.jsonl"):
            predict(model_dir, source, output)
            written = read_table(output)
            np.testing.assert_allclose([float(written[0][c]) for c in LABEL_COLUMNS[1:]], both, atol=1e-5)
            np.testing.assert_allclose([float(written[1][c]) for c in LABEL_COLUMNS[1:]], first, atol=1e-5)
            again = tmp_path / f"again{suffix}{output.suffix}"
            predict(model_dir, output, again)  # the spans column read back (JSON text in a CSV cell)
            assert [r["predicted_label"] for r in read_table(again)] == [r["predicted_label"] for r in written]
    message = base.exit_message(["predict", model_dir, "--input", write_input(
        [dict(rows[0], spans=[[1, 5]])], tmp_path / "bad.jsonl"), "--output", tmp_path / "bad.csv"])
    assert "bad.jsonl, line 1, field 'spans': the offsets 1:5 give 'bama', not the aspect 'obama'" in message


# --------------------------------------------------------------------------- extra pass: two processes


@pytest.mark.slow  # over 25 s on 2 cores; a sibling in the default suite runs the same path
@pytest.mark.multiprocess
def test_two_processes_write_the_same_odd_tsv_and_one_verdict(model_dir, tmp_path):
    from test_predict_stream import TORCHRUN

    source = write_input(ODD_ROWS, tmp_path / "odd.parquet")
    one, two = tmp_path / "one.tsv", tmp_path / "two.tsv"
    predict(model_dir, source, one, "--chunk_size", 2)
    run = base.run_script(["predict", model_dir, "--input", source, "--output", two, *FP32, "--chunk_size", 2],
                          launcher=TORCHRUN, ACCELERATE_USE_CPU="true")
    assert run.returncode == 0 and "with 2 process(es)" in run.stdout, run.stderr[-3000:]
    assert one.read_bytes() == two.read_bytes()
    assert [row[:4] for row in identified(read_table(two))] == [(t, t[s:e], s, e) for t, s, e in ODD_SPANS]
    # A cell TSV cannot hold, in the chunk the second process checks: one line, once, before any prediction.
    bad = write_input([ODD_ROWS[0], dict(ODD_ROWS[0], note="a\tb")], tmp_path / "bad.jsonl")
    run = base.run_script(["predict", model_dir, "--input", bad, "--output", tmp_path / "bad.tsv", "--chunk_size", 1],
                          launcher=TORCHRUN, ACCELERATE_USE_CPU="true")
    assert run.returncode != 0 and run.stderr.count("bad.jsonl, line 2, field 'note'") == 1, run.stderr[-3000:]
    assert not (tmp_path / "bad.tsv").exists() and not (tmp_path / "bad.tsv.partial").exists()


def test_fp16_on_a_cpu_does_not_blame_missing_bf16_instructions():
    with pytest.raises(ValueError) as refused:
        resolve_precision("fp16", None, "cpu")
    assert "no native fp16" in str(refused.value) and "BF16" not in str(refused.value)
    precision, note = resolve_precision(None, "fp16", "cpu")  # recorded fp16: fp32 with a note
    assert precision == "no" and "trained in fp16" in note and "BF16" not in note
