"""Aspect-aware input formats beside TD-BERT: the sentence with the aspect bracketed, and the sentence-pair form
(sentence / aspect), for every encoder family; recorded in the saved model, and applied again by use_absa.py and
AbsaPredictor, which reproduce finetune_absa.py's own test scores."""

from __future__ import annotations

import json

import pytest
import torch

import finetune_absa
from absa.aspects import INPUT_FORMATS, MARKER_CLOSE, MARKER_OPEN, AspectCollator, encode_aspect_batch, format_input
from absa.encoders import load_tokenizer
from absa.settings import parse_settings
from test_finetune_absa import synthetic_absa, write_jsonl

TEXT = "The battery lasts forever but the screen is dim."
BATTERY, SCREEN = (4, 11), (34, 40)


def test_markers_bracket_every_occurrence_and_move_the_spans():
    text, spans, pair = format_input("the fan and the fan", [(4, 7), (16, 19)], "aspect_markers")
    assert text == f"the {MARKER_OPEN}fan{MARKER_CLOSE} and the {MARKER_OPEN}fan{MARKER_CLOSE}" and pair is None
    assert [text[a:b] for a, b in spans] == ["fan", "fan"]
    assert format_input(TEXT, [SCREEN], "sentence_pair") == (TEXT, [SCREEN], "screen")
    assert format_input(TEXT, [SCREEN], "td_bert") == (TEXT, [SCREEN], None)
    with pytest.raises(ValueError, match="input_format"):
        format_input(TEXT, [SCREEN], "prompt")


@pytest.mark.parametrize("input_format", INPUT_FORMATS)
def test_every_family_masks_the_aspect_in_the_sentence(tiny_model_dir, input_format):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    batch = {"text": [TEXT, TEXT], "start": [BATTERY[0], SCREEN[0]], "end": [BATTERY[1], SCREEN[1]]}
    columns = encode_aspect_batch(batch, [0, 1], tokenizer, 64, input_format=input_format)
    for ids, mask, aspect in zip(columns["input_ids"], columns["aspect_mask"], ("battery", "screen")):
        marked = [i for i, m in zip(ids, mask) if m]
        assert tokenizer.decode(marked).strip().lower() == aspect
        shown = tokenizer.decode(ids)
        if input_format == "sentence_pair":  # the aspect again, after the sentence, outside the mask
            assert shown.lower().rstrip().rsplit(aspect, 1)[0].count(aspect) == 1
            first_sentence_end = [t for t, i in enumerate(ids) if i == tokenizer.sep_token_id or
                                  i == tokenizer.eos_token_id][0]
            assert all(t < first_sentence_end for t, m in enumerate(mask) if m)
        else:
            assert shown.lower().count(aspect) == 1
    distinct = len({tuple(ids) for ids in columns["input_ids"]})
    assert distinct == (1 if input_format == "td_bert" else 2)  # only TD-BERT's aspects can share an encoder pass
    if input_format == "sentence_pair" and "token_type_ids" in tokenizer.model_input_names:
        types = columns["token_type_ids"][0]
        assert types[0] == 0 and types[-1] == 1
        batch = AspectCollator(tokenizer)([{k: v[i] for k, v in columns.items()} for i in range(2)])
        assert batch["token_type_ids"].shape == batch["input_ids"].shape


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta-v2"])
def test_a_long_sentence_pair_keeps_the_aspect_and_fits(tiny_model_dirs, family):
    tokenizer = load_tokenizer(str(tiny_model_dirs[family]))
    text = "the fan is loud . " * 40 + "but the screen is dim . " + "the fan is loud . " * 40
    start = text.index("screen")
    for input_format in INPUT_FORMATS:
        columns = encode_aspect_batch({"text": [text], "start": [start], "end": [start + 6]}, [0], tokenizer, 32,
                                      input_format=input_format)
        ids, mask = columns["input_ids"][0], columns["aspect_mask"][0]
        assert len(ids) <= 32
        assert tokenizer.decode([i for i, m in zip(ids, mask) if m]).strip() == "screen", input_format


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    write_jsonl(folder / "train.jsonl", synthetic_absa(150, seed=0))
    write_jsonl(folder / "validation.jsonl", synthetic_absa(25, seed=1))
    write_jsonl(folder / "test.jsonl", synthetic_absa(25, seed=2))
    return folder


# sentence_pair with BERT is slow-marked: sentence_pair (RoBERTa) and BERT (aspect markers) run by default.
@pytest.mark.parametrize("input_format,family", [("aspect_markers", "bert"),
                                                 pytest.param("sentence_pair", "bert", marks=pytest.mark.slow),
                                                 ("sentence_pair", "roberta")])
def test_each_format_learns_and_use_absa_reproduces_the_test_scores(tiny_model_dirs, data, tmp_path, input_format,
                                                                      family):
    import use_absa
    from absa.predictor import AbsaPredictor

    out = tmp_path / "run"
    results = finetune_absa.main(parse_settings(finetune_absa.Settings, [
        "--model_name_or_path", str(tiny_model_dirs[family]), "--dataset", str(data), "--output_dir", str(out),
        "--input_format", input_format, "--per_device_batch_size", "8", "--learning_rate", "3e-3",
        "--warmup_steps", "5", "--num_epochs", "12", "--mixed_precision", "no"]))
    assert results["test_accuracy"] >= 0.8, results["validation_history"]  # needs the aspect: chance is 1/3
    config = json.loads((out / "best_model/config.json").read_text())
    assert config["absa_input_format"] == input_format

    use_absa.main(["evaluate", str(out / "best_model"), "--dataset", str(data), "--output_dir", str(tmp_path / "eval"),
                   "--mixed_precision", "no"])
    evaluated = json.loads((tmp_path / f"eval/evaluation_{data.name}_test.json").read_text())
    assert evaluated["accuracy"] == results["test_accuracy"]
    assert evaluated["loss"] == pytest.approx(results["test"]["loss"], abs=1e-5)

    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    predictor = AbsaPredictor.from_pretrained(out / "best_model", device="cpu", mixed_precision="no")
    assert predictor.input_format == input_format
    probabilities = predictor.predict_probabilities([r["text"] for r in rows], starts=[r["start"] for r in rows],
                                                    ends=[r["end"] for r in rows])
    gold = torch.tensor([predictor.label_names.index(r["label"]) for r in rows])
    accuracy = float((torch.as_tensor(probabilities).argmax(-1) == gold).float().mean())
    assert accuracy == pytest.approx(results["test_accuracy"])


def test_the_contrastive_check_set_pairs_opposite_aspects_in_both_orders():
    from collections import defaultdict
    from pathlib import Path

    from absa.data import read_absa_file

    rows = read_absa_file(Path(__file__).resolve().parents[1] / "data" / "contrastive" / "test.jsonl")
    by_text = defaultdict(list)
    for row in rows:
        by_text[row["text"]].append(row)
    assert len(rows) == 72 and all(len(aspects) == 2 for aspects in by_text.values())
    assert all({a["label"] for a in aspects} == {0, 2} for aspects in by_text.values())  # negative and positive
    orders = {tuple(a["aspect"].lower() for a in sorted(aspects, key=lambda a: a["start"])) for aspects in by_text.values()}
    assert all(pair[::-1] in orders for pair in orders)  # each pair of aspects in both orders
