"""Evaluation on the split the model was trained and selected on, and labels read as training read them (issue 23,
points 1, 2).

The models are tiny random-weight encoders (tests/tiny_models.py); a run of finetune_absa.py is 2 optimizer steps.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import transformers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import finetune_absa  # noqa: E402
import use_absa  # noqa: E402
from absa.data import load_absa_splits  # noqa: E402
from absa.encoders import load_tokenizer  # noqa: E402
from absa.model import AbsaClassifier  # noqa: E402
from absa.settings import parse_settings  # noqa: E402

SAMPLE = REPO / "data" / "sample_laptops"


def exit_message(argv) -> str:
    """The one-line message a user sees."""
    with pytest.raises(SystemExit) as caught:
        use_absa.main([str(a) for a in argv])
    assert isinstance(caught.value.code, str) and "\n" not in caught.value.code, caught.value.code
    return caught.value.code


def evaluate(model_dir, output_dir, *extra) -> dict:
    use_absa.main(["evaluate", str(model_dir), "--output_dir", str(output_dir), "--mixed_precision", "no",
                   *map(str, extra)])
    return json.loads(next(Path(output_dir).glob("evaluation_*.json")).read_text())


def train(tiny_model_dirs, dataset, output_dir, *extra) -> dict:
    settings = parse_settings(finetune_absa.Settings, [
        "--model_name_or_path", str(tiny_model_dirs["bert"]), "--dataset", str(dataset), "--output_dir",
        str(output_dir), "--max_steps", "2", "--mixed_precision", "no", "--per_device_batch_size", "32",
        *map(str, extra)])
    return finetune_absa.main(settings)


@pytest.fixture(scope="module")
def seed_7_run(tiny_model_dirs, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("seed_7") / "run"
    return output_dir, train(tiny_model_dirs, SAMPLE, output_dir, "--seed", 7)


def test_evaluate_validation_is_the_split_the_model_was_selected_on(seed_7_run, tmp_path):
    """Point 1: a model trained with --seed 7 is validated on its own carve (not seed 42's, which holds rows it
    trained on), with the numbers finetune_absa.py selected on; another --seed is refused in one line."""
    output_dir, results = seed_7_run
    carved = load_absa_splits(str(SAMPLE), seed=7)["validation"]
    assert len(carved) != len(load_absa_splits(str(SAMPLE), seed=42)["validation"])  # the seeds do differ here
    evaluation = evaluate(output_dir / "best_model", tmp_path / "default", "--dataset", SAMPLE, "--split", "validation")
    best = results["best_validation"]
    assert evaluation["examples"] == len(carved) == results["validation_split"]["rows"]["validation"]
    assert evaluation["accuracy"] == best["accuracy"] and evaluation["loss"] == pytest.approx(best["loss"], abs=1e-5)
    # the model's own seed, given explicitly, is the same split; another one is refused before any work
    assert evaluate(output_dir / "best_model", tmp_path / "seven", "--dataset", SAMPLE, "--split", "validation",
                    "--seed", 7)["accuracy"] == best["accuracy"]
    # --dataset FILE with --split validation is the carve of that train file, not the whole file
    assert evaluate(output_dir / "best_model", tmp_path / "file", "--dataset", SAMPLE / "train.jsonl", "--split",
                    "validation")["examples"] == len(carved)
    for flag, value in (("--seed", 42), ("--validation_fraction", 0.2)):
        message = exit_message(["evaluate", output_dir / "best_model", "--dataset", SAMPLE, "--split", "validation",
                                flag, value, "--output_dir", tmp_path / "refused"])
        assert f"{flag} {value}" in message and "--seed 7" in message and "trained on" in message
    assert not (tmp_path / "refused").exists()


def notes_of(monkeypatch) -> list[str]:
    """The one-line notes absa.splits logs (a training run in the same process reconfigures logging's handlers)."""
    import absa.splits

    notes = []
    monkeypatch.setattr(absa.splits.logger, "warning", lambda message, *args: notes.append(message % args))
    return notes


def test_evaluate_defaults_to_the_precision_the_model_was_trained_in(seed_7_run, tmp_path):
    """Trained with --mixed_precision no: recorded, and evaluate computes in fp32 without being told, also where
    bf16 is native (where auto would choose bf16)."""
    output_dir, _ = seed_7_run
    assert json.loads((output_dir / "best_model" / "config.json").read_text())["absa_mixed_precision"] == "no"
    use_absa.main(["evaluate", str(output_dir / "best_model"), "--dataset", str(SAMPLE), "--output_dir", str(tmp_path)])
    assert json.loads(next(tmp_path.glob("evaluation_*.json")).read_text())["mixed_precision"] == "no"


def test_a_split_that_does_not_match_the_record_is_refused(seed_7_run, tmp_path, monkeypatch):
    """Other train data give another carve (rows unknown): refused. A model folder without a record (written
    before it was recorded) is evaluated as before, with a one-line note."""
    output_dir, _ = seed_7_run
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "train.jsonl").write_text("".join((SAMPLE / "train.jsonl").read_text().splitlines(True)[:-10]))
    shutil.copy(SAMPLE / "test.jsonl", changed / "test.jsonl")
    message = exit_message(["evaluate", output_dir / "best_model", "--dataset", changed, "--split", "validation",
                            "--output_dir", tmp_path / "out"])
    assert "not the one" in message and "selected on" in message and "--validation_file" in message

    old = tmp_path / "old_model"
    shutil.copytree(output_dir / "best_model", old)
    config = json.loads((old / "config.json").read_text())
    del config["absa_validation_split"]
    (old / "config.json").write_text(json.dumps(config))
    notes = notes_of(monkeypatch)
    evaluation = evaluate(old, tmp_path / "old", "--dataset", SAMPLE, "--split", "validation")
    assert evaluation["examples"] == len(load_absa_splits(str(SAMPLE), seed=42)["validation"])
    assert any("does not record how its validation split was made" in note for note in notes)


def test_a_model_selected_on_a_given_file_or_on_test_is_not_validated_on_a_carve(tiny_model_dirs, tmp_path,
                                                                                  monkeypatch):
    """A model selected on a given validation file trained on all of train: a carve of train is refused; that file
    given alone is recognised, another one is noted. One selected on the test split (--select_on_test) is validated
    on that test split."""
    folder = tmp_path / "with_dev"
    folder.mkdir()
    rows = (SAMPLE / "train.jsonl").read_text().splitlines(True)
    (folder / "train.jsonl").write_text("".join(rows[:250]))
    (folder / "dev.jsonl").write_text("".join(rows[250:]))
    train(tiny_model_dirs, folder, tmp_path / "given")
    message = exit_message(["evaluate", tmp_path / "given" / "best_model", "--dataset", SAMPLE, "--split",
                            "validation", "--output_dir", tmp_path / "out"])
    assert "given validation split (50 rows)" in message and "--validation_file" in message
    assert evaluate(tmp_path / "given" / "best_model", tmp_path / "dev", "--dataset", folder, "--split",
                    "validation")["examples"] == 50
    (folder / "other.jsonl").write_text("".join(rows[:40]))
    notes = notes_of(monkeypatch)
    for name in ("dev", "other"):
        evaluate(tmp_path / "given" / "best_model", tmp_path / f"alone_{name}", "--validation_file",
                 folder / f"{name}.jsonl", "--split", "validation")
    notes = [note for note in notes if "is not the one" in note]
    assert len(notes) == 1 and "other.jsonl" in notes[0] and "(40 rows)" in notes[0] and "(50 rows)" in notes[0]

    results = train(tiny_model_dirs, SAMPLE, tmp_path / "on_test", "--select_on_test")
    evaluation = evaluate(tmp_path / "on_test" / "best_model", tmp_path / "t", "--dataset", SAMPLE, "--split",
                          "validation")
    assert evaluation["examples"] == 100 and evaluation["accuracy"] == results["best_validation"]["accuracy"]


def test_numeric_labels_are_read_by_name_and_as_training_read_them(tiny_model_dirs, tmp_path):
    """Point 2: -1/0/1 in a test file are negative/neutral/positive whatever the order of the model's labels; 0/1
    alone are read as the model's training data had them, and refused when the model does not say."""
    order = ["positive", "neutral", "negative"]
    model = AbsaClassifier.from_encoder(str(tiny_model_dirs["bert"]), order)
    transformers.set_seed(0)
    model.save_pretrained(tmp_path / "model")
    load_tokenizer(str(tiny_model_dirs["bert"])).save_pretrained(tmp_path / "model")
    rows = [json.loads(line) for line in (SAMPLE / "test.jsonl").read_text().splitlines()]
    number = {"negative": -1, "neutral": 0, "positive": 1}
    write = lambda name, labels: (tmp_path / name).write_text(  # noqa: E731
        "".join(json.dumps({**row, "label": label}) + "\n" for row, label in zip(rows, labels)))
    write("names.jsonl", [row["label"] for row in rows])
    write("numbers.jsonl", [number[row["label"]] for row in rows])
    by_name = evaluate(tmp_path / "model", tmp_path / "a", "--test_file", tmp_path / "names.jsonl")
    by_number = evaluate(tmp_path / "model", tmp_path / "b", "--test_file", tmp_path / "numbers.jsonl")
    assert by_number["confusion_matrix"] == by_name["confusion_matrix"] and by_number["loss"] == by_name["loss"]

    non_negative = [row for row in rows if row["label"] != "negative"]
    (tmp_path / "zero_one.jsonl").write_text("".join(json.dumps({**row, "label": number[row["label"]]}) + "\n"
                                                     for row in non_negative))
    message = exit_message(["evaluate", tmp_path / "model", "--test_file", tmp_path / "zero_one.jsonl",
                            "--output_dir", tmp_path / "c"])
    assert "zero_one.jsonl" in message and "could mean two things" in message
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, "absa_numeric_labels": "sentiment"}))
    recorded = evaluate(tmp_path / "model", tmp_path / "d", "--test_file", tmp_path / "zero_one.jsonl")
    counts = [sum(row) for row in recorded["confusion_matrix"]]  # true labels in the model's order
    assert counts == [sum(r["label"] == name for r in non_negative) for name in order]
