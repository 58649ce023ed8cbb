"""use_absa.py predict at corpus scale: chunked reading and writing in every format, resume after a kill -9, the
partial-file rule, one verdict for bad rows before the model loads, several processes, the training max_length.

Small inputs with a small --chunk_size, on the tiny models of tests/tiny_models.py (fixtures of test_use_absa.py).
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import test_use_absa as base
from test_use_absa import (absa_dirs, expected, input_jsonl, input_rows, input_spans, model_dir,  # noqa: F401
                           plain_single_process)
from absa.aspects import encode_aspect_batch
from absa.model import AbsaClassifier
from absa.predictor import resolve_precision

import use_absa

LABEL_COLUMNS = ["predicted_label", "prob_negative", "prob_neutral", "prob_positive"]
FP32 = ["--mixed_precision", "no", "--batch_size", "3"]


def predict(model, source, output, *extra):
    use_absa.main([str(a) for a in ["predict", model, "--input", source, "--output", output, *FP32, *extra]])


def read_table(path: Path) -> list[dict]:
    """An output file as rows of Python values, whatever its format."""
    if path.suffix == ".jsonl":
        return base.read_jsonl(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_dict("records")
    tsv = path.suffix == ".tsv"  # TSV: no quoting (a quote character is a character)
    return pd.read_csv(path, sep="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
                       keep_default_na=False).to_dict("records")


def write_input(rows: list[dict], path: Path) -> Path:
    frame = pd.DataFrame(rows)  # missing values become empty cells / nulls
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t", quoting=csv.QUOTE_NONE)  # TSV has no quoting
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def expected_columns(rows: list[dict]) -> list[str]:
    """The input's columns, first seen first, then what prediction adds (worked out here, not by the script)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    return columns + [c for c in ("aspect", "start", "end") if c not in columns] + LABEL_COLUMNS


# --------------------------------------------------------------------------- formats and order


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
def test_every_input_format_in_chunks(model_dir, input_rows, input_spans, expected, tmp_path, suffix, capsys):
    source = write_input(input_rows, tmp_path / f"reviews{suffix}")
    output = tmp_path / "predictions.jsonl"
    predict(model_dir, source, output, "--chunk_size", 4)  # 23 rows: 6 chunks, the last one of 3
    base.check_against_expected(read_table(output), input_rows, input_spans, expected)
    assert "23 rows in" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([source.name, output.name])  # no partial folder


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_every_output_format_in_chunks(model_dir, input_jsonl, input_rows, input_spans, expected, tmp_path, suffix):
    output = tmp_path / f"predictions{suffix}"
    predict(model_dir, input_jsonl, output, "--chunk_size", 4)
    rows = read_table(output)
    base.check_against_expected(rows, input_rows, input_spans, expected)
    if suffix != ".jsonl":  # one table: every input column, in input order, on every row
        assert list(rows[0]) == expected_columns(input_rows)
        occurrence = [row["occurrence"] for row in rows]  # given on one row (a whole number) only
        assert occurrence[20] in (2, "2") and all(value in ("", None) or value != value
                                                  for i, value in enumerate(occurrence) if i != 20)
    if suffix == ".parquet":
        import pyarrow.parquet as pq
        schema = pq.read_schema(output)
        assert str(schema.field("start").type) == "int64" and str(schema.field("prob_positive").type) == "double"
    # One chunk or six: the same rows, columns and labels (the probabilities may differ by float noise).
    whole = tmp_path / f"whole{suffix}"
    predict(model_dir, input_jsonl, whole)
    def without_probabilities(table):
        return pd.DataFrame(table).drop(columns=LABEL_COLUMNS[1:])
    pd.testing.assert_frame_equal(without_probabilities(read_table(whole)), without_probabilities(rows))


# --------------------------------------------------------------------------- bad rows: before the model, one line


def test_bad_row_in_a_late_chunk_stops_before_the_model_loads(model_dir, absa_dirs, input_rows, tmp_path,
                                                             monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")
    monkeypatch.setattr(AbsaClassifier, "from_pretrained", no_model)
    output = tmp_path / "out.csv"
    bad = input_rows + [{"text": "The fan is loud.", "aspect": "keyboard"}]  # line 24, chunk 6 of 6
    message = base.exit_message(["predict", model_dir, "--input", write_input(bad, tmp_path / "bad.jsonl"),
                                 "--output", output, "--chunk_size", 4])
    assert "bad.jsonl, line 24, field 'aspect': the aspect 'keyboard' does not occur" in message
    # A tokenizer problem too (an aspect longer than --max_length leaves room for), named by its CSV line.
    long_aspect = " ".join(["battery"] * 12)
    bad = input_rows + [{"text": f"The {long_aspect} lasts.", "aspect": long_aspect}]
    message = base.exit_message(["predict", model_dir, "--input", write_input(bad, tmp_path / "bad.csv"),
                                 "--output", output, "--chunk_size", 4, "--max_length", 8])
    assert "bad.csv, line 25, field 'aspect'" in message and "raise --max_length" in message
    # An aspect that BERT's tokenizer drops entirely (a zero-width space).
    bad = input_rows + [{"text": "The \u200b screen is dim.", "aspect": "\u200b"}]
    message = base.exit_message(["predict", absa_dirs["bert"], "--input", write_input(bad, tmp_path / "bad.parquet"),
                                 "--output", output, "--chunk_size", 4])
    assert "bad.parquet, row 24, field 'aspect': the aspect '\\u200b' maps to no token" in message
    assert not output.exists() and not (tmp_path / "out.csv.partial").exists()


# --------------------------------------------------------------------------- resume after kill -9


SLOW_CHUNKS = """
import runpy, sys, time
import absa.corpus as corpus
write = corpus.write_atomically
def slow(path, data):  # half a chunk file on disk for a while: where a kill lands
    path.with_name(f".{path.name}.tmp").write_bytes(data[:len(data) // 2])
    time.sleep(0.25)
    write(path, data)
corpus.write_atomically = slow
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# The CSV half is slow (12 s): the Parquet half runs the same resume by default.
@pytest.mark.parametrize("suffix", [pytest.param(".csv", marks=pytest.mark.slow), ".parquet"])
def test_resume_after_kill_gives_the_same_bytes(model_dir, input_rows, tmp_path, suffix, capsys):
    rows = [dict(row, text=f"{row['text']} ({copy})") for copy in range(3) for row in input_rows]  # 69 rows
    source = write_input(rows, tmp_path / "reviews.jsonl")
    output = tmp_path / f"predictions{suffix}"
    partial = tmp_path / f"predictions{suffix}.partial"
    argv = ["predict", model_dir, "--input", source, "--output", output, *FP32, "--chunk_size", 5]  # 14 chunks
    run = subprocess.Popen([sys.executable, "-c", SLOW_CHUNKS, str(base.REPO / "use_absa.py"), *map(str, argv)],
                           cwd=base.REPO, env=base.clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(list(partial.glob("chunk-*"))) < 3 and run.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL, run.stderr.read().decode()[-2000:]
    done = sorted(p.name for p in partial.glob("chunk-*"))
    assert 3 <= len(done) < 14 and not output.exists()

    # Without --resume the unfinished run is refused and left as it was; a different setting cannot resume it.
    before = sorted(p.name for p in partial.iterdir())
    message = base.exit_message(argv)
    assert "holds an unfinished run" in message and "--resume" in message and "of 14 chunks" in message
    assert "cannot resume" in base.exit_message([*argv[:-1], 4, "--resume"]) and "chunk_size 5 -> 4" in \
        base.exit_message([*argv[:-1], 4, "--resume"])
    assert sorted(p.name for p in partial.iterdir()) == before and not output.exists()

    capsys.readouterr()
    use_absa.main([str(a) for a in argv + ["--resume"]])
    assert f"came from the interrupted run; wrote {output} (69 rows)" in capsys.readouterr().out
    assert not partial.exists()
    uninterrupted = tmp_path / f"uninterrupted{suffix}"
    predict(model_dir, source, uninterrupted, "--chunk_size", 5)
    assert output.read_bytes() == uninterrupted.read_bytes()
    assert [row["text"] for row in read_table(output)] == [base.parse_marked_text(row["text"])[0] for row in rows]

    # A finished output is not mistaken for a run to resume.
    assert "already exists" in base.exit_message(argv + ["--resume"])


# --------------------------------------------------------------------------- several processes


TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")


@pytest.mark.multiprocess
def test_two_processes_ambiguous_rows_and_parquet(model_dir, input_rows, tmp_path, capsys):
    rows = input_rows + [{"text": base.SCREEN_TWICE, "aspect": "screen"}]  # occurs twice, no offsets: a note
    source = write_input(rows, tmp_path / "reviews.jsonl")
    one, two = tmp_path / "one.parquet", tmp_path / "two.parquet"
    predict(model_dir, source, one, "--chunk_size", 5)
    assert capsys.readouterr().err.count("the aspect occurs more than once") == 1
    run = base.run_script(["predict", model_dir, "--input", source, "--output", two, *FP32, "--chunk_size", 5],
                          launcher=TORCHRUN, ACCELERATE_USE_CPU="true")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "with 2 process(es)" in run.stdout  # a real group of two, not two copies of one
    assert run.stderr.count("the aspect occurs more than once") == 1 and run.stdout.count("wrote") == 1
    assert one.read_bytes() == two.read_bytes() and len(read_table(two)) == 24


@pytest.mark.slow  # over 25 s on 2 cores; a sibling in the default suite runs the same path
@pytest.mark.multiprocess
def test_two_processes_predict_text_prints_once(model_dir, tmp_path):
    output = tmp_path / "lines.csv"
    run = base.run_script(["predict", model_dir, "--text", base.SCREEN_TWICE, "--aspect", "screen", "--aspect",
                           "battery", "--output", output, "--mixed_precision", "no"], launcher=TORCHRUN,
                          ACCELERATE_USE_CPU="true")
    assert run.returncode == 0, run.stderr[-3000:]
    assert len([line for line in run.stdout.splitlines() if "|" in line]) == 2
    assert run.stdout.count("wrote") == 1 and run.stderr.count("occurs 2 times") == 1
    assert [row["aspect"] for row in read_table(output)] == ["screen", "battery"]

    # A bad row: every process stops, the main process says why, once, and no process aborts.
    bad = write_input([{"text": "The screen is dim.", "aspect": "screen"}, {"text": "The fan.", "aspect": "lid"}],
                      tmp_path / "bad.jsonl")
    run = base.run_script(["predict", model_dir, "--input", bad, "--output", tmp_path / "bad.csv", "--chunk_size", 1],
                          launcher=TORCHRUN, ACCELERATE_USE_CPU="true")
    assert run.returncode != 0 and run.stderr.count("bad.jsonl, line 2, field 'aspect'") == 1, run.stderr[-3000:]
    assert "terminate called" not in run.stderr and not (tmp_path / "bad.csv.partial").exists()


# --------------------------------------------------------------------------- max_length, precision


def test_max_length_defaults_to_the_training_length(tiny_model_dirs, tmp_path, capsys):
    """A model trained at 16 tokens: evaluate and predict cut a long text as finetune_absa.py's encoding did."""
    folder = tmp_path / "model16"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AbsaClassifier.from_encoder(str(tiny_model_dirs["bert"]), base.LABELS, max_length=16)
        torch.nn.init.normal_(model.classifier.weight, std=1.0)
    model.save_pretrained(folder)
    base.load_tokenizer(str(tiny_model_dirs["bert"])).save_pretrained(folder)
    text = "The battery " + "and the battery lasts all day long " * 6 + "but the screen is dim."
    rows = [{"text": text, "aspect": "screen", "start": text.index("screen"), "end": text.index("screen") + 6,
             "label": "negative"}, {"text": text, "aspect": "battery", "start": 4, "end": 11, "label": "positive"}]
    data = write_input(rows, tmp_path / "test.jsonl")

    def reference_probabilities(max_length):  # finetune_absa.py's encoding, one example at a time
        tokenizer = base.AutoTokenizer.from_pretrained(folder)
        columns = encode_aspect_batch({key: [row[key] for row in rows] for key in ("text", "start", "end")},
                                      [0, 1], tokenizer, max_length)
        reloaded = AbsaClassifier.from_pretrained(folder).eval()
        with torch.no_grad():
            return np.stack([torch.softmax(reloaded(**{key: torch.tensor([columns[key][i]]) for key in
                                                       ("input_ids", "attention_mask", "aspect_mask")}), -1)[0].numpy()
                             for i in range(len(rows))])

    trained = reference_probabilities(16)
    assert np.abs(trained - reference_probabilities(512)).max() > 1e-3  # the cut matters for this text
    use_absa.main(["evaluate", str(folder), "--test_file", str(data), "--output_dir", str(tmp_path),
                   "--mixed_precision", "no"])
    results = json.loads((tmp_path / f"evaluation_{data.parent.name}_{data.stem}.json").read_text())
    assert results["max_length"] == 16
    gold = np.array([base.LABELS.index(row["label"]) for row in rows])
    assert results["loss"] == pytest.approx(-np.log(trained[np.arange(2), gold]).mean(), abs=1e-5)
    printed = capsys.readouterr().out
    for name in base.LABELS:  # scikit-learn's per-class report, 4 digits
        row = results["per_class"][name]
        assert f"{row['precision']:.4f}" in next(line for line in printed.splitlines() if line.strip().startswith(name))
    predict(folder, data, tmp_path / "predictions.jsonl")
    np.testing.assert_allclose(base.probabilities_of(base.read_jsonl(tmp_path / "predictions.jsonl")), trained,
                               atol=1e-5)


def test_from_encoder_records_the_training_length(tiny_model_dirs):
    model = AbsaClassifier.from_encoder(str(tiny_model_dirs["bert"]), base.LABELS, max_length=16)
    assert getattr(model.config, "absa_max_length", None) == 16


def test_the_training_precision_is_recorded_and_is_the_default(tiny_model_dirs, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "bf16"
    model = AbsaClassifier.from_encoder(str(tiny_model_dirs["bert"]), base.LABELS, mixed_precision="bf16")
    model.save_pretrained(folder)
    base.load_tokenizer(str(tiny_model_dirs["bert"])).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["absa_mixed_precision"] == "bf16"
    monkeypatch.setattr("absa.launch.bf16_is_native", lambda device: True)
    assert base.AbsaPredictor.from_pretrained(folder, device="cpu").mixed_precision == "bf16"
    assert base.AbsaPredictor.from_pretrained(folder, device="cpu", mixed_precision="no").mixed_precision == "no"
    # Where bf16 is only emulated, the recorded bf16 falls back to fp32 with a one-line note (an explicit one is
    # refused: test_bf16_is_refused_where_a_cpu_only_emulates_it).
    monkeypatch.setattr("absa.launch.bf16_is_native", lambda device: False)
    with pytest.warns(UserWarning, match="trained in bf16"):
        assert base.AbsaPredictor.from_pretrained(folder, device="cpu").mixed_precision == "no"
    use_absa.main(["predict", str(folder), "--text", "The screen is dim.", "--aspect", "screen"])
    captured = capsys.readouterr()
    assert "trained in bf16" in captured.err and captured.out.rstrip().endswith(", fp32")


def test_explicit_bf16_on_a_gpu_needs_native_bf16(monkeypatch):
    emulated = lambda including_emulation=True: including_emulation  # noqa: E731 - a T4 / V100: emulated only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", emulated)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    with pytest.raises(ValueError, match="Tesla T4.*no native bf16"):
        resolve_precision("bf16", None, "cuda")
    assert resolve_precision("auto", None, "cuda") == ("no", None)
    precision, note = resolve_precision(None, "bf16", "cuda")  # recorded, not asked for: fp32, with a note
    assert precision == "no" and "trained in bf16" in note and "Tesla T4" in note
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100
    assert resolve_precision("bf16", None, "cuda") == ("bf16", None)
    assert resolve_precision(None, "bf16", "cuda") == ("bf16", None)
