"""use_absa.py and absa/predictor.py, offline on tiny models.

Predictions must be the same whichever way they are made: the script on a file (one process, and two CPU
processes under torchrun), the Python API, and a plain forward pass of the model on one example at a time.
Most script runs happen in-process through `use_absa.main(argv)`; three run as real subprocesses (the file
prediction the others are compared with, the 2-process run, and one error, to see what a user sees).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `import use_absa` also under plain `pytest`

import use_absa  # noqa: E402
from absa.encoders import load_tokenizer  # noqa: E402
from absa.model import AbsaClassifier  # noqa: E402
from absa.aspects import AspectError, parse_marked_text
from absa.data import resolve_aspect  # noqa: E402
from absa.predictor import AbsaPredictor  # noqa: E402

LABELS = ["negative", "neutral", "positive"]
FAMILIES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "electra")
FAMILY = "deberta-v2"  # the family that crashed the seed's script
SAMPLE = REPO / "data" / "sample_laptops"
LAUNCH_VARS = ["WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP", "ACCELERATE_DYNAMO_BACKEND",
               "ACCELERATE_MIXED_PRECISION"]

# 20 sample rows with offsets plus three that exercise the search, an `occurrence` column and markers: 23 rows,
# not a multiple of 2 processes x batch size 4.
SCREEN_TWICE = "The screen is dim but the battery lasts; the screen is huge."
EXTRA_ROWS = [
    {"text": SCREEN_TWICE, "aspect": "screen", "occurrence": 2, "label": "positive"},
    {"text": "The [B-ASP]keyboard[E-ASP] feels cheap.", "label": "negative"},
    {"text": "Battery life is great, the touchscreen less so.", "aspect": "Battery life"},
]
# Where each extra row's aspect is, found independently of the code under test.
EXTRA_SPANS = [(SCREEN_TWICE, SCREEN_TWICE.rindex("screen"), SCREEN_TWICE.rindex("screen") + 6),
               ("The keyboard feels cheap.", 4, 12),
               ("Battery life is great, the touchscreen less so.", 0, 12)]


@pytest.fixture(autouse=True)
def plain_single_process(monkeypatch):
    """In-process runs start as one plain process with fresh Accelerate singletons, and leave them fresh."""
    from accelerate.state import AcceleratorState, GradientState

    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def build_absa_model(encoder_dir: Path, folder: Path, seed: int = 0, label_names=LABELS, **recorded) -> Path:
    """A model folder as finetune_absa.py writes one; the seed draws its head."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AbsaClassifier.from_encoder(str(encoder_dir), label_names, **recorded)
        # A decisive head: a random tiny encoder with the usual 0.02 init gives near-uniform probabilities,
        # whose argmax could flip on float noise between batched and single-example runs.
        torch.nn.init.normal_(model.classifier.weight, std=1.0)
    model.save_pretrained(folder)
    load_tokenizer(str(encoder_dir)).save_pretrained(folder)
    return folder


def crash_on_second_chunk(monkeypatch):
    """The next `predict --input` dies (KeyboardInterrupt, as from Ctrl-C) before its second chunk is written;
    returns the real writer, to put back."""
    from absa.corpus import PartialOutput
    original = PartialOutput.write_chunk

    def die_on_second_chunk(self, index, data):
        if index == 1:
            raise KeyboardInterrupt
        original(self, index, data)
    monkeypatch.setattr(PartialOutput, "write_chunk", die_on_second_chunk)
    return original


@pytest.fixture(scope="module")
def absa_dirs(tiny_model_dirs, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("absa_models")
    return {family: build_absa_model(tiny_model_dirs[family], root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def model_dir(absa_dirs) -> Path:
    return absa_dirs[FAMILY]


@pytest.fixture(scope="module")
def input_rows() -> list:
    sample = [json.loads(line) for line in (SAMPLE / "test.jsonl").read_text().splitlines()[:20]]
    return sample + EXTRA_ROWS


@pytest.fixture(scope="module")
def input_spans(input_rows) -> list:
    return [(row["text"], row["start"], row["end"]) for row in input_rows[:20]] + EXTRA_SPANS


@pytest.fixture(scope="module")
def input_jsonl(input_rows, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "reviews.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in input_rows))
    return path


def direct_probabilities(folder, spans) -> np.ndarray:
    """One example at a time, no padding, no batching, no autocast: the reference."""
    model = AbsaClassifier.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = []
    with torch.no_grad():
        for text, start, end in spans:
            encoding = tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
            # Every token whose characters overlap the aspect's (the rule of absa.aspects).
            tokens = [t for t, (a, b) in enumerate(encoding.pop("offset_mapping")[0].tolist())
                      if a < b and a < end and b > start]
            aspect_mask = torch.zeros_like(encoding["input_ids"], dtype=torch.bool)
            aspect_mask[0, tokens] = True
            logits = model(input_ids=encoding["input_ids"], attention_mask=encoding["attention_mask"],
                           aspect_mask=aspect_mask)
            rows.append(torch.softmax(logits.float(), dim=-1)[0].numpy())
    return np.stack(rows)


@pytest.fixture(scope="module")
def expected(model_dir, input_spans) -> dict:
    """Predictions for the input rows from the Python API (fp32) and from the plain forward pass."""
    predictor = AbsaPredictor.from_pretrained(model_dir, device="cpu", batch_size=4, mixed_precision="no")
    api = predictor.predict([t for t, _, _ in input_spans], starts=[s for _, s, _ in input_spans],
                            ends=[e for _, _, e in input_spans])
    direct = direct_probabilities(model_dir, input_spans)
    return {"api": api, "direct": direct, "labels": [LABELS[i] for i in direct.argmax(axis=1)]}


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               **extra)
    return env


def run_script(args, launcher=(), **env):
    return subprocess.run([sys.executable, *launcher, str(REPO / "use_absa.py"), *map(str, args)], cwd=REPO,
                          env=clean_env(**env), capture_output=True, text=True, timeout=300)


def read_jsonl(path) -> list:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def probabilities_of(rows) -> np.ndarray:
    return np.array([[float(row[f"prob_{name}"]) for name in LABELS] for row in rows])


def check_against_expected(rows, input_rows, input_spans, expected):
    """One output per input, in input order, with the labels and probabilities of the API and the forward pass."""
    assert len(rows) == len(input_rows)
    for row, given, (text, start, end) in zip(rows, input_rows, input_spans):
        assert row["text"] == text  # the text without markers; aspect, start and end say where in it
        assert (int(row["start"]), int(row["end"])) == (start, end) and row["aspect"] == text[start:end]
        if "label" in given:  # the gold label column is kept, the prediction goes beside it
            assert row["label"] == given["label"]
    assert [row["predicted_label"] for row in rows] == expected["labels"]
    assert [p["label"] for p in expected["api"]] == expected["labels"]
    api = np.array([[p["probabilities"][name] for name in LABELS] for p in expected["api"]])
    np.testing.assert_allclose(api, expected["direct"], atol=1e-5)
    np.testing.assert_allclose(probabilities_of(rows), expected["direct"], atol=1e-5)


@pytest.fixture(scope="module")
def one_process_run(model_dir, input_jsonl, tmp_path_factory):
    output = tmp_path_factory.mktemp("one_process") / "predictions.jsonl"
    run = run_script(["predict", model_dir, "--input", input_jsonl, "--output", output, "--batch_size", 4,
                      "--mixed_precision", "no", "--chunk_size", 5])
    assert run.returncode == 0, run.stderr[-3000:]
    return run, read_jsonl(output), output


def exit_message(argv) -> str:
    """The message a user would see: SystemExit with a one-line string."""
    with pytest.raises(SystemExit) as caught:
        use_absa.main([str(a) for a in argv])
    message = caught.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


# --------------------------------------------------------------------------- finding aspects


def test_parse_marked_text():
    assert parse_marked_text("The [B-ASP]battery[E-ASP] lasts") == ("The battery lasts", [(4, 11)])
    text, spans = parse_marked_text("[B-ASP]Food[E-ASP] fine, [B-ASP] service [E-ASP] slow")
    assert [text[s:e] for s, e in spans] == ["Food", "service"]
    assert parse_marked_text("no markers") == ("no markers", [])
    for bad, problem in [("a [E-ASP]b", "without [B-ASP]"), ("a [B-ASP]b", "without [E-ASP]"),
                         ("[B-ASP] [E-ASP]", "empty"), ("[B-ASP]a[B-ASP]b[E-ASP]", "inside")]:
        with pytest.raises(AspectError, match=problem.replace("[", r"\[")):
            parse_marked_text(bad)


def test_resolve_aspect_occurrences():
    first = resolve_aspect(SCREEN_TWICE, "screen")
    assert (first.start, first.occurrences) == (4, 2)
    assert resolve_aspect(SCREEN_TWICE, "screen", occurrence=2).start == SCREEN_TWICE.rindex("screen")
    # Whole words first: "screen" inside "touchscreen" is not taken while the word occurs on its own.
    text = "The touchscreen works, the screen is dim"
    assert resolve_aspect(text, "screen").start == text.rindex("screen")
    assert resolve_aspect("BATTERY is fine", "battery").aspect == "BATTERY"  # any case when no exact match
    assert resolve_aspect("这个电池很好", "电池").aspect == "电池"  # no spaces: part of a "word"
    marked = resolve_aspect("The [B-ASP]screen[E-ASP] and the [B-ASP]battery[E-ASP]", "battery")
    assert marked.aspect == "battery" and marked.text == "The screen and the battery"
    with pytest.raises(AspectError, match="does not occur"):
        resolve_aspect("The screen is dim", "keyboard")
    with pytest.raises(AspectError, match="no occurrence 3"):
        resolve_aspect(SCREEN_TWICE, "screen", occurrence=3)
    with pytest.raises(AspectError, match="2 aspects are marked"):
        resolve_aspect("[B-ASP]a[E-ASP] [B-ASP]b[E-ASP]")
    with pytest.raises(AspectError, match="give 'screen'|not the aspect"):
        resolve_aspect("The screen", "battery", start=4, end=10)


# --------------------------------------------------------------------------- the Python API


@pytest.mark.parametrize("family", FAMILIES)
def test_api_matches_forward_pass_for_every_family(absa_dirs, input_spans, family, monkeypatch):
    spans = input_spans[:8]
    texts, starts, ends = ([s[i] for s in spans] for i in range(3))
    direct = direct_probabilities(absa_dirs[family], spans)
    predictor = AbsaPredictor.from_pretrained(absa_dirs[family], device="cpu", batch_size=5, mixed_precision="no")
    probabilities = predictor.predict_probabilities(texts, starts=starts, ends=ends)
    np.testing.assert_allclose(probabilities, direct, atol=1e-5)
    results = predictor.predict(texts, starts=starts, ends=ends)
    assert [r["label"] for r in results] == [LABELS[i] for i in direct.argmax(axis=1)]
    assert [r["aspect"] for r in results] == [t[s:e] for t, s, e in spans]
    # bf16 autocast runs for every family (DeBERTa's relative attention included) and stays close to fp32
    # (here also where this CPU only emulates bf16, which an explicit --mixed_precision bf16 refuses).
    monkeypatch.setattr("absa.launch.bf16_is_native", lambda device: True)
    bf16 = AbsaPredictor.from_pretrained(absa_dirs[family], device="cpu", batch_size=5, mixed_precision="bf16")
    assert bf16.mixed_precision == "bf16"
    np.testing.assert_allclose(bf16.predict_probabilities(texts, starts=starts, ends=ends), direct, atol=0.1)


def test_api_finds_aspects_like_the_script(model_dir, expected):
    predictor = AbsaPredictor.from_pretrained(model_dir, device="cpu", mixed_precision="no")
    found = predictor.predict([SCREEN_TWICE, "The [B-ASP]keyboard[E-ASP] feels cheap."], ["screen", None],
                              occurrence=2)
    assert [(r["aspect"], r["start"]) for r in found] == [("screen", SCREEN_TWICE.rindex("screen")), ("keyboard", 4)]
    assert [r["label"] for r in found] == expected["labels"][20:22]
    with pytest.raises(AspectError, match="input 2: the aspect 'keyboard' does not occur"):
        predictor.predict(["The screen", "The screen"], ["screen", "keyboard"])


# --------------------------------------------------------------------------- the script


def test_script_file_predictions_match_api_and_forward_pass(one_process_run, input_rows, input_spans, expected):
    run, rows, _ = one_process_run
    check_against_expected(rows, input_rows, input_spans, expected)
    assert "23 rows in" in run.stdout and "with 1 process(es)" in run.stdout and "rows/s" in run.stdout
    assert rows[21]["aspect"] == "keyboard"  # a marked aspect gets its aspect column


@pytest.mark.slow  # 16 s; test_two_processes_ambiguous_rows_and_parquet compares 1 and 2 processes' bytes by default
@pytest.mark.multiprocess
def test_two_cpu_processes_give_the_same_outputs_in_input_order(one_process_run, model_dir, input_jsonl, input_rows,
                                                                input_spans, expected, tmp_path):
    output = tmp_path / "predictions.jsonl"
    run = run_script(["predict", model_dir, "--input", input_jsonl, "--output", output, "--batch_size", 4,
                      "--mixed_precision", "no", "--chunk_size", 5], launcher=("-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", "2"), ACCELERATE_USE_CPU="true")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "with 2 process(es)" in run.stdout  # a real group of two, not two copies of one
    assert run.stdout.count("wrote") == 1  # only the main process writes
    check_against_expected(read_jsonl(output), input_rows, input_spans, expected)
    assert output.read_bytes() == one_process_run[2].read_bytes()  # each chunk is predicted whole by one process


@pytest.mark.slow  # 19 s; test_ensemble.py evaluates on 2 processes like 1, the same inference path, by default
@pytest.mark.multiprocess
def test_two_cpu_processes_evaluate_every_example_once(model_dir, tmp_path):
    """15 batches of 7 for 100 examples: the processes share them unevenly, and gather_for_metrics drops the padding
    copies, so the scores are those of one process."""
    argv = ["evaluate", model_dir, "--test_file", SAMPLE / "test.jsonl", "--mixed_precision", "no", "--batch_size", 7]
    use_absa.main([*map(str, argv), "--output_dir", str(tmp_path / "one")])
    two = run_script([*argv, "--output_dir", tmp_path / "two"], launcher=("-m", "torch.distributed.run",
                     "--standalone", "--nproc_per_node", "2"), ACCELERATE_USE_CPU="true")
    assert two.returncode == 0, two.stderr[-3000:]
    one, two = (json.loads((tmp_path / run / "evaluation_sample_laptops_test.json").read_text()) for run in ("one", "two"))
    assert (one["num_processes"], two["num_processes"], two["examples"]) == (1, 2, 100)
    assert two["confusion_matrix"] == one["confusion_matrix"] and two["accuracy"] == one["accuracy"]
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-6)


def test_predict_csv_in_process(model_dir, input_rows, input_spans, expected, tmp_path, capsys):
    source = tmp_path / "reviews.csv"
    pd.DataFrame(input_rows).to_csv(source, index=False)  # missing values become empty cells
    output = tmp_path / "out" / "predictions.csv"
    use_absa.main(["predict", str(model_dir), "--input", str(source), "--output", str(output), "--batch_size", "4",
                   "--mixed_precision", "no"])
    rows = pd.read_csv(output, keep_default_na=False).to_dict("records")
    check_against_expected(rows, input_rows, input_spans, expected)
    assert list(rows[0])[-4:] == ["predicted_label", "prob_negative", "prob_neutral", "prob_positive"]
    assert [p.name for p in output.parent.iterdir()] == ["predictions.csv"]  # no temporary files left

    # A repeated aspect without offsets or occurrence: the first one, and a note saying so.
    ambiguous = tmp_path / "ambiguous.jsonl"
    ambiguous.write_text(json.dumps({"text": SCREEN_TWICE, "aspect": "screen"}) + "\n")
    capsys.readouterr()
    use_absa.main(["predict", str(model_dir), "--input", str(ambiguous), "--output", str(tmp_path / "a.jsonl"),
                   "--mixed_precision", "no"])
    assert read_jsonl(tmp_path / "a.jsonl")[0]["start"] == 4
    assert "ambiguous.jsonl: in 1 row(s) (first: line 1) the aspect occurs more than once" in capsys.readouterr().err


def test_evaluate_writes_json_and_png(model_dir, tmp_path, capsys):
    use_absa.main(["evaluate", str(model_dir), "--dataset", str(SAMPLE), "--output_dir", str(tmp_path),
                   "--mixed_precision", "no"])
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "macro-F1" in printed and "confusion matrix" in printed
    results = json.loads((tmp_path / "evaluation_sample_laptops_test.json").read_text())
    png = tmp_path / "evaluation_sample_laptops_test_confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["num_processes"] == 1 and results["examples"] == 100 and results["label_names"] == LABELS
    assert np.array(results["confusion_matrix"]).sum() == 100
    assert set(results["per_class"]) == set(LABELS) and results["predictions_per_second"] > 0

    # The same numbers from the API, and from the test file given alone.
    rows = [json.loads(line) for line in (SAMPLE / "test.jsonl").read_text().splitlines()]
    predictor = AbsaPredictor.from_pretrained(model_dir, device="cpu", mixed_precision="no")
    predicted = [p["label"] for p in predictor.predict([r["text"] for r in rows], starts=[r["start"] for r in rows],
                                                        ends=[r["end"] for r in rows])]
    assert results["accuracy"] == pytest.approx(np.mean([p == r["label"] for p, r in zip(predicted, rows)]))
    use_absa.main(["evaluate", str(model_dir), "--test_file", str(SAMPLE / "test.jsonl"), "--output_dir",
                   str(tmp_path / "alone"), "--mixed_precision", "no"])
    alone = json.loads((tmp_path / "alone" / "evaluation_sample_laptops_test.json").read_text())
    assert alone["accuracy"] == results["accuracy"] and alone["confusion_matrix"] == results["confusion_matrix"]


def test_predict_command_line(model_dir, expected, tmp_path, capsys):
    marked = "The [B-ASP]screen[E-ASP] is dim but the [B-ASP]battery[E-ASP] lasts; the screen is huge."
    output = tmp_path / "lines.jsonl"
    use_absa.main(["predict", str(model_dir), "--text", SCREEN_TWICE, "--aspect", "battery", "--aspect", "screen",
                   "--text", marked, "--mixed_precision", "no", "--output", str(output)])
    captured = capsys.readouterr()
    lines = [line for line in captured.out.splitlines() if "|" in line]
    assert len(lines) == 4 and lines[0].startswith("battery: ") and "[battery]" in lines[0]
    assert "'screen' occurs 2 times" in captured.err and "--occurrence" in captured.err
    rows = read_jsonl(output)
    assert [(r["aspect"], r["start"]) for r in rows] == [("battery", 26), ("screen", 4), ("screen", 4),
                                                         ("battery", 26)]
    predictor = AbsaPredictor.from_pretrained(model_dir, device="cpu", mixed_precision="no")
    with pytest.warns(UserWarning, match="first: input 2"):  # SCREEN_TWICE has two screens
        api = predictor.predict([SCREEN_TWICE] * 2, ["battery", "screen"])
    assert [r["predicted_label"] for r in rows[:2]] == [p["label"] for p in api]
    assert [r["predicted_label"] for r in rows[2:]] == [p["label"] for p in api][::-1]  # same text once unmarked

    # --occurrence picks the second "screen": the same prediction as the file row that asked for it.
    use_absa.main(["predict", str(model_dir), "--text", SCREEN_TWICE, "--aspect", "screen", "--occurrence", "2",
                   "--mixed_precision", "no", "--output", str(tmp_path / "second.jsonl")])
    second = read_jsonl(tmp_path / "second.jsonl")
    assert second[0]["start"] == SCREEN_TWICE.rindex("screen")
    assert second[0]["predicted_label"] == expected["labels"][20]


def test_help_explains_the_modes(capsys):
    with pytest.raises(SystemExit) as caught:
        use_absa.main(["--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    assert "evaluate" in text and "predict" in text and "examples:" in text
    with pytest.raises(SystemExit):
        use_absa.main(["predict", "--help"])
    text = capsys.readouterr().out
    assert "--occurrence" in text and "[B-ASP]" in text and "prob_LABEL" in text


# --------------------------------------------------------------------------- bad input: one line, no traceback


def test_bad_input_is_one_line(model_dir, tiny_model_dirs, tmp_path):
    missing_aspect = tmp_path / "missing.jsonl"
    missing_aspect.write_text(json.dumps({"text": "The screen is dim.", "aspect": "screen"}) + "\n"
                              + json.dumps({"text": "The screen is dim.", "aspect": "keyboard"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    no_text = tmp_path / "no_text.csv"
    no_text.write_text("sentence,aspect\nThe screen is dim.,screen\n")
    out = tmp_path / "out.jsonl"
    predict_text = ["--text", "The screen is dim."]
    cases = [
        (["predict", tiny_model_dirs["bert"], *predict_text, "--aspect", "screen"], "not an ABSA model folder"),
        (["predict", tmp_path / "nowhere", *predict_text, "--aspect", "screen"], "no such model folder"),
        (["predict", model_dir, "--input", missing_aspect, "--output", out],
         "missing.jsonl, line 2, field 'aspect': the aspect 'keyboard' does not occur"),
        (["predict", model_dir, "--input", empty, "--output", out], "empty.jsonl: the file is empty"),
        (["predict", model_dir, "--input", no_text, "--output", out], "no 'text' column"),
        (["predict", model_dir, "--input", missing_aspect, "--output", tmp_path / "out.txt"],
         "unknown output type '.txt'"),
        (["predict", model_dir, *predict_text, "--aspect", "keyboard"], "--text: the aspect 'keyboard' does not occur"),
        (["predict", model_dir, *predict_text, "--aspect", "screen", "--occurrence", "2"], "no occurrence 2"),
        (["predict", model_dir, "--text", "The [B-ASP]screen is dim."], "[B-ASP] without [E-ASP]"),
        (["predict", model_dir, "--text", "The [B-ASP]screen[E-ASP] is dim.", "--aspect", "screen"],
         "--aspect is not used"),
        (["evaluate", model_dir, "--dataset", missing_aspect, "--output_dir", tmp_path], "field 'label'"),
    ]
    for argv, problem in cases:
        assert problem in exit_message(argv), argv


def test_existing_output_needs_overwrite(model_dir, input_jsonl, tmp_path, monkeypatch):
    output = tmp_path / "predictions.jsonl"
    output.write_text("keep me\n")
    argv = ["predict", model_dir, "--input", input_jsonl, "--output", output, "--mixed_precision", "no"]
    assert "already exists; pass --overwrite" in exit_message(argv)
    assert output.read_text() == "keep me\n"
    evaluated = ["evaluate", model_dir, "--test_file", SAMPLE / "test.jsonl", "--output_dir", tmp_path]
    (tmp_path / "evaluation_sample_laptops_test.json").write_text("{}")
    assert "evaluation_sample_laptops_test.json already exists" in exit_message(evaluated)

    # --overwrite replaces the file only when the new one is complete: a run that dies on its second chunk (of 3)
    # leaves the old file as it was.
    from absa.corpus import PartialOutput
    original = crash_on_second_chunk(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        use_absa.main([str(a) for a in argv + ["--overwrite", "--chunk_size", "10"]])
    assert output.read_text() == "keep me\n"
    monkeypatch.setattr(PartialOutput, "write_chunk", original)
    use_absa.main([str(a) for a in argv + ["--overwrite"]])
    assert len(read_jsonl(output)) == 23 and [p.name for p in tmp_path.glob("predictions*")] == [output.name]


def test_a_folder_that_is_not_an_absa_model_is_one_line(tiny_model_dirs):
    message = exit_message(["predict", tiny_model_dirs["bert"], "--text", "The screen is dim.", "--aspect", "screen"])
    assert "not an ABSA model folder" in message and "\n" not in message


def test_model_folder_without_tokenizer_is_refused(model_dir, tmp_path):
    # transformers builds an empty tokenizer (special tokens only) from a folder without tokenizer files: every word
    # would become [UNK] and the predictions silently meaningless.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model_dir / name, bare / name)
    message = exit_message(["predict", bare, "--text", "The screen is dim.", "--aspect", "screen"])
    assert "no tokenizer files" in message and str(bare) in message


def test_model_folder_without_weights_is_one_line_for_a_file(model_dir, input_jsonl, tmp_path):
    no_weights = tmp_path / "no_weights"
    shutil.copytree(model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    message = exit_message(["predict", no_weights, "--input", input_jsonl, "--output", tmp_path / "out.jsonl"])
    assert str(no_weights) in message and "model.safetensors" in message


def test_output_where_nothing_can_be_written_is_one_line(model_dir, input_jsonl):
    # /proc passes a permission check for root, but no folder can be made there
    message = exit_message(["predict", model_dir, "--input", input_jsonl, "--output", "/proc/predictions.jsonl"])
    assert "/proc" in message and "cannot write" in message


def test_occurrence_without_aspect_is_refused(model_dir, capsys):
    # Marked texts have no occurrence to choose: --occurrence was silently ignored, every marked aspect predicted.
    with pytest.raises(SystemExit):
        use_absa.parse_arguments(["predict", str(model_dir), "--text", "The [B-ASP]screen[E-ASP] and "
                                  "[B-ASP]screen[E-ASP]", "--occurrence", "2"])
    assert "--occurrence goes with --aspect" in capsys.readouterr().err
