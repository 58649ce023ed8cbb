"""The Twitter set of Dong et al. (2014) as ABSA-PyTorch ships it: `$T$` files where some tweets name their target
twice. They load, train and evaluate end to end, and a file that is not UTF-8 stops each script with one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import finetune_absa
from absa.aspects import encode_absa_splits
from absa.data import load_absa_splits
from absa.encoders import load_tokenizer
from absa.settings import parse_settings

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["lady gaga", "britney spears", "windows 7", "xbox", "google", "obama"]
WORDS = {"-1": ["awful", "terrible"], "0": ["here", "around"], "1": ["great", "amazing"]}


def tweets(count: int, seed: int) -> str:
    """Three lines per record, as in ABSA-PyTorch's acl-14-short-data: every other tweet names its target twice."""
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        polarity = rng.choice(sorted(WORDS))
        word = rng.choice(WORDS[polarity])
        template = f"$T$ is {word} . - really ? $T$ is {word} !" if i % 2 else f"so $T$ is {word} today"
        lines += [template, rng.choice(TARGETS), polarity]
    return "\n".join(lines) + "\n"


@pytest.fixture
def twitter_folder(tmp_path) -> Path:
    folder = tmp_path / "acl-14-short-data"
    folder.mkdir()
    (folder / "train.raw").write_text(tweets(24, seed=0), encoding="utf-8")
    (folder / "test.raw").write_text(tweets(10, seed=1), encoding="utf-8")
    return folder


def train(model_dir, data_dir, output_dir) -> dict:
    args = ["--model_name_or_path", str(model_dir), "--dataset", str(data_dir), "--output_dir", str(output_dir),
            "--per_device_batch_size", "8", "--learning_rate", "3e-3", "--warmup_steps", "0", "--num_epochs", "1",
            "--max_steps", "2", "--mixed_precision", "no"]
    return finetune_absa.main(parse_settings(finetune_absa.Settings, args))


def test_doubled_targets_train_end_to_end(tiny_model_dirs, twitter_folder, tmp_path):
    splits = load_absa_splits(str(twitter_folder))
    assert [len(r["spans"]) for r in splits["test"]] == [1, 2] * 5
    tokenizer = load_tokenizer(str(tiny_model_dirs["bert"]))
    features = encode_absa_splits(splits, tokenizer, 64)
    for row, feature in zip(splits["test"], features["test"]):
        masked = [t for t, m in enumerate(feature["aspect_mask"]) if m]
        places = 1 + sum(b - a > 1 for a, b in zip(masked, masked[1:]))  # separate runs of masked tokens
        assert places == len(row["spans"]), row["text"]

    results = train(tiny_model_dirs["bert"], twitter_folder, tmp_path / "run")
    validation = results["validation_history"][-1]["examples"]
    assert validation == len(splits["validation"]) and results["optimizer_steps"] == 2
    assert 0 <= results["test_accuracy"] <= 1 and sum(map(sum, results["test"]["confusion_matrix"])) == 10
    assert (tmp_path / "run" / "best_model" / "config.json").is_file()


def test_use_absa_evaluates_doubled_targets_as_training_did(tiny_model_dirs, twitter_folder, tmp_path):
    import use_absa

    results = train(tiny_model_dirs["bert"], twitter_folder, tmp_path / "run")
    use_absa.main(["evaluate", str(tmp_path / "run" / "best_model"), "--dataset", str(twitter_folder),
                   "--output_dir", str(tmp_path / "eval"), "--mixed_precision", "no"])
    evaluated = json.loads((tmp_path / "eval" / f"evaluation_{twitter_folder.name}_test.json").read_text())
    assert evaluated["loss"] == pytest.approx(results["test"]["loss"], abs=1e-5)


@pytest.fixture
def latin_1_folder(tmp_path) -> Path:
    folder = tmp_path / "latin"
    folder.mkdir()
    (folder / "train.raw").write_bytes(tweets(3, seed=0).encode() + "caf\u00e9 $T$\nxbox\n1\n".encode("latin-1"))
    return folder


def test_finetune_absa_stops_on_a_latin_1_file_with_one_line(latin_1_folder, tmp_path, run_as_main):
    # The script as `python finetune_absa.py` runs it, in this process. A model that does not exist: the data must
    # be refused before any model is looked for.
    with pytest.raises(SystemExit) as stopped:  # a string: Python prints it as one line, without a traceback
        run_as_main(ROOT / "finetune_absa.py", "--model_name_or_path", "no/such-model", "--dataset", latin_1_folder,
                    "--output_dir", tmp_path / "out")
    message = stopped.value.code
    assert isinstance(message, str) and "\n" not in message, message
    assert "train.raw, line 10" in message and "not UTF-8 text (byte 0xe9 at column 4)" in message, message
    assert not (tmp_path / "out").exists()


def test_use_absa_stops_on_a_latin_1_file_with_one_line(tiny_model_dirs, twitter_folder, latin_1_folder, tmp_path):
    import use_absa

    train(tiny_model_dirs["bert"], twitter_folder, tmp_path / "run")
    with pytest.raises(SystemExit) as info:
        use_absa.main(["evaluate", str(tmp_path / "run" / "best_model"), "--test_file",
                       str(latin_1_folder / "train.raw"), "--output_dir", str(tmp_path / "eval")])
    assert "train.raw, line 10" in str(info.value) and "not UTF-8" in str(info.value)
    assert not (tmp_path / "eval").exists()
