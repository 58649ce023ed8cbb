"""Aspect masks, windows around the aspect and padding (absa/aspects.py) for every encoder family."""

from __future__ import annotations

import json
import re
import unicodedata

import datasets
import pytest
import tiny_models
import torch
from transformers import AutoTokenizer

from absa.aspects import AspectCollator, encode_absa_splits, encode_aspect_batch, window_around_aspect
from absa.data import read_absa_file
from absa.encoders import require_fast_tokenizer
from absa.files import DataError
from absa.encoders import load_tokenizer

FAMILIES = tiny_models.FAMILIES


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dirs, sentencepiece_model_dir) -> dict:
    """family -> fast tokenizer, loaded once per module; "spm-only" is the sentencepiece-only DeBERTa-v2 folder."""
    loaded = {family: AutoTokenizer.from_pretrained(folder) for family, folder in tiny_model_dirs.items()}
    loaded["spm-only"] = AutoTokenizer.from_pretrained(sentencepiece_model_dir)
    return loaded


def simplify(text: str) -> str:
    """Case-, accent- and space-insensitive form: BERT's uncased tokenizer lowercases and strips accents."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c) and not c.isspace())


def encode_one(tokenizer, text: str, aspect: str, start: int | None = None, max_length: int = 128) -> dict:
    start = text.index(aspect) if start is None else start
    assert text[start:start + len(aspect)] == aspect
    out = encode_aspect_batch({"text": [text], "aspect": [aspect], "start": [start], "end": [start + len(aspect)],
                               "label": [1]}, [0], tokenizer, max_length)
    return {key: value[0] for key, value in out.items()}


def masked_ids(encoded: dict) -> list[int]:
    return [i for i, m in zip(encoded["input_ids"], encoded["aspect_mask"]) if m]


def overlapping_tokens(tokenizer, text: str, start: int, end: int) -> list[int]:
    """Independent expectation: positions of the tokens whose character span overlaps [start, end)."""
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    return [t for t, (a, b) in enumerate(offsets) if a < b and a < end and b > start]


def assert_mask_is_the_aspect(tokenizer, encoded: dict, aspect: str):
    mask = encoded["aspect_mask"]
    assert len(mask) == len(encoded["input_ids"]) == len(encoded["attention_mask"])
    positions = [t for t, m in enumerate(mask) if m]
    assert positions, "empty aspect mask"
    assert positions == list(range(positions[0], positions[-1] + 1)), "aspect mask is not contiguous"
    special = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    assert not {encoded["input_ids"][t] for t in positions} & special, "special token under the aspect mask"
    # The masked tokens decode back to the aspect; an unknown token stands for whatever characters it covers.
    decoded = simplify(tokenizer.decode(masked_ids(encoded)))
    pattern = ".+".join(re.escape(part) for part in decoded.split(simplify(tokenizer.unk_token)))
    assert re.fullmatch(pattern, simplify(aspect)), (decoded, aspect)


CASES = {
    "multi-token": ("The operating system came with far too much preinstalled software.", "operating system"),
    "parenthesis-comma": ("Nice screen, decent speakers (keyboard), and a quiet fan.", "keyboard"),
    "comma": ("Great screen, decent speakers, terrible trackpad.", "screen"),
    "sentence-start": ("Keyboard, trackpad and fan are all fine.", "Keyboard"),
    "sentence-end": ("Everything is fine except the battery.", "battery"),
    "café": ("The café on the corner serves the best croissants in town.", "café"),
    "Größe": ("The Größe of the portions surprised us: huge plates, tiny prices.", "Größe"),
    "日本": ("We ordered the 日本 set menu, which came with miso soup.", "日本"),
    "quotes": ('Then I had to call the "sales" team, which was useless.', '"sales" team'),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family", FAMILIES + ("spm-only",))
def test_aspect_mask_covers_exactly_the_aspect(tokenizers, family, case):
    tokenizer = tokenizers[family]
    text, aspect = CASES[case]
    start = text.index(aspect)
    encoded = encode_one(tokenizer, text, aspect)
    assert_mask_is_the_aspect(tokenizer, encoded, aspect)
    assert [t for t, m in enumerate(encoded["aspect_mask"]) if m] == \
        overlapping_tokens(tokenizer, text, start, start + len(aspect))
    assert encoded["input_ids"] == tokenizer(text)["input_ids"]  # short texts are not changed
    assert encoded["labels"] == 1


def test_bert_masks_by_hand(tokenizers):
    """Hand-checked: the tiny uncased WordPiece vocabulary knows these words whole."""
    tokenizer = tokenizers["bert"]
    for text, aspect, tokens in [
        (CASES["multi-token"][0], "operating system", ["operating", "system"]),
        (CASES["parenthesis-comma"][0], "keyboard", ["keyboard"]),
        (CASES["comma"][0], "screen", ["screen"]),
        (CASES["café"][0], "café", ["cafe"]),
    ]:
        encoded = encode_one(tokenizer, text, aspect)
        assert tokenizer.convert_ids_to_tokens(masked_ids(encoded)) == tokens


@pytest.mark.parametrize("family", ["xlm-roberta", "deberta-v2"])
def test_tokens_that_share_characters_are_all_masked(tokenizers, family):
    """The tiny Unigram vocabularies have no capital K: "Keyboard" is "▁" + unk + "e" + "y" + "board", and the
    first two both cover the "K". Both belong under the mask (char_to_token would return only one of them)."""
    tokenizer = tokenizers[family]
    encoded = encode_one(tokenizer, *CASES["sentence-start"])
    assert tokenizer.convert_ids_to_tokens(masked_ids(encoded)) == ["▁", tokenizer.unk_token, "e", "y", "board"]


@pytest.mark.parametrize("family", FAMILIES)
def test_offsets_pick_the_right_occurrence(tokenizers, family):
    tokenizer = tokenizers[family]
    text = "The battery is bad but the battery life is great."
    first, second = text.index("battery"), text.index("battery", 5)
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    for start in (first, second):
        encoded = encode_one(tokenizer, text, "battery", start=start)
        assert_mask_is_the_aspect(tokenizer, encoded, "battery")
        covered = [offsets[t] for t, m in enumerate(encoded["aspect_mask"]) if m]
        assert all(start <= b and a < start + len("battery") for a, b in covered), (start, covered)
    masks = [encode_one(tokenizer, text, "battery", start=s)["aspect_mask"] for s in (first, second)]
    assert masks[0] != masks[1]


# --------------------------------------------------------------------------- long texts


FILLER = "the laptop arrived on time and the box was fine".split()


def long_text(aspect: str, where: str, words: int = 300) -> str:
    filler = [FILLER[i % len(FILLER)] for i in range(words)]
    if where == "start":
        return aspect.capitalize() + " " + " ".join(filler) + "."
    if where == "middle":
        return " ".join(filler[:words // 2]) + " " + aspect + " " + " ".join(filler[words // 2:]) + "."
    return " ".join(filler) + " and the " + aspect


@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("family", FAMILIES)
def test_long_text_keeps_the_aspect_inside_the_window(tokenizers, family, where):
    tokenizer = tokenizers[family]
    aspect = "operating system"
    text = long_text(aspect, where)
    aspect = aspect.capitalize() if where == "start" else aspect
    start = text.index(aspect)
    assert len(tokenizer(text)["input_ids"]) > 300
    for max_length in (16, 32):
        encoded = encode_one(tokenizer, text, aspect, start=start, max_length=max_length)
        assert max_length - 4 <= len(encoded["input_ids"]) <= max_length  # a window, not a stub
        assert_mask_is_the_aspect(tokenizer, encoded, aspect)
        assert encoded["input_ids"][0] == tokenizer(text)["input_ids"][0]  # special tokens kept
        assert encoded["input_ids"][-1] == tokenizer(text)["input_ids"][-1]
        # the window is a piece of the original text around the aspect
        window, spans = window_around_aspect(tokenizer, text, [(start, start + len(aspect))], max_length)
        [(w_start, w_end)] = spans
        assert window in text and window[w_start:w_end] == aspect
        if where == "middle":  # centred: context on both sides
            assert w_start > 0 and w_end < len(window)


@pytest.mark.parametrize("family", FAMILIES)
def test_aspect_longer_than_the_window_is_an_error(tokenizers, family):
    tokenizer = tokenizers[family]
    aspect = "battery life of the operating system and the keyboard and the screen"
    text = long_text(aspect, "middle", words=40)
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"text": "The screen is fine.", "aspect": "screen", "start": 4,
                                              "end": 10, "label": 1}] * 2),
        "validation": datasets.Dataset.from_list([
            {"text": "The screen is fine.", "aspect": "screen", "start": 4, "end": 10, "label": 1},
            {"text": text, "aspect": aspect, "start": text.index(aspect), "end": text.index(aspect) + len(aspect),
             "label": 0}]),
    })
    with pytest.raises(DataError) as info:
        encode_absa_splits(splits, tokenizer, max_length=8)
    message = str(info.value)
    assert message.startswith("validation, row 2, field 'aspect'"), message
    assert "max_length=8" in message and aspect in message


@pytest.mark.parametrize("words", [3, 200], ids=["short", "windowed"])
def test_aspect_that_maps_to_no_token_is_an_error(tokenizers, words):
    text = " ".join(FILLER[i % len(FILLER)] for i in range(words)) + " \u200b " + " ".join(FILLER)
    start = text.index("\u200b")  # a zero-width space: not blank for str.strip, but no token covers it
    with pytest.raises(DataError) as info:
        encode_aspect_batch({"text": [text], "start": [start], "end": [start + 1]}, [6], tokenizers["bert"], 32,
                            split="test")
    assert str(info.value).startswith("test, row 7, field 'aspect'") and "maps to no token" in str(info.value)


# --------------------------------------------------------------------------- whole splits and padding


def tiny_split(texts_and_aspects) -> datasets.Dataset:
    rows = []
    for i, (text, aspect) in enumerate(texts_and_aspects):
        start = text.index(aspect)
        rows.append({"text": text, "aspect": aspect, "start": start, "end": start + len(aspect), "label": i % 3})
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_absa_splits_and_collator(tokenizers, family):
    tokenizer = tokenizers[family]
    data = tiny_split([CASES["comma"], CASES["multi-token"], ("Bad fan.", "fan"), CASES["Größe"]])
    splits = encode_absa_splits(datasets.DatasetDict({"train": data, "test": data}), tokenizer, max_length=64)
    assert set(splits) == {"train", "test"}
    assert set(splits["train"].column_names) == {"input_ids", "attention_mask", "aspect_mask", "labels"}
    encoded = encode_absa_splits(data, tokenizer, max_length=64)  # one Dataset works too
    features = [encoded[i] for i in range(len(encoded))]
    lengths = [len(f["input_ids"]) for f in features]
    assert len(set(lengths)) > 1

    batch = AspectCollator(tokenizer)(features)
    width = max(lengths)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["aspect_mask"].shape == (4, width)
    assert batch["aspect_mask"].dtype == torch.bool
    assert batch["labels"].tolist() == [0, 1, 2, 0]
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == feature["input_ids"]
        assert batch["aspect_mask"][row, :n].tolist() == [bool(m) for m in feature["aspect_mask"]]
        assert not batch["aspect_mask"][row, n:].any()
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert batch["attention_mask"][row].sum() == n

    batch8 = AspectCollator(tokenizer, pad_to_multiple_of=8)(features)
    assert batch8["input_ids"].shape[1] % 8 == 0 and batch8["input_ids"].shape[1] >= width
    assert batch8["aspect_mask"].shape == batch8["input_ids"].shape
    assert batch8["aspect_mask"].sum() == batch["aspect_mask"].sum()
    assert not batch8["aspect_mask"][:, width:].any()


@pytest.mark.parametrize("family", FAMILIES)
def test_collator_encodes_a_shared_text_once(tokenizers, family):
    tokenizer = tokenizers[family]
    text = CASES["comma"][0]
    data = tiny_split([(text, "screen"), ("Bad fan.", "fan"), (text, "trackpad")])
    encoded = encode_absa_splits(data, tokenizer, max_length=64)
    features = [encoded[i] for i in range(3)]
    shared = AspectCollator(tokenizer)(features)
    separate = AspectCollator(tokenizer, share_texts=False)(features)
    assert shared["input_ids"].shape[0] == 2 and separate["input_ids"].shape[0] == 3
    assert shared["sequence_index"].tolist() == [0, 1, 0] and "sequence_index" not in separate
    # every example sees exactly the input it would have had alone, with its own aspect mask and label
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(shared[key][shared["sequence_index"]], separate[key])
    assert torch.equal(shared["aspect_mask"], separate["aspect_mask"])
    assert not torch.equal(shared["aspect_mask"][0], shared["aspect_mask"][2])
    assert shared["labels"].tolist() == separate["labels"].tolist() == [0, 1, 2]


def test_collator_left_padding(tokenizers, tiny_model_dirs):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dirs["bert"], padding_side="left")
    data = tiny_split([CASES["comma"], ("Bad fan.", "fan")])
    encoded = encode_absa_splits(data, tokenizer, max_length=64)
    features = [encoded[i] for i in range(2)]
    batch = AspectCollator(tokenizer)(features)
    short = features[1]
    n, width = len(short["input_ids"]), batch["input_ids"].shape[1]
    assert batch["input_ids"][1, width - n:].tolist() == short["input_ids"]
    assert batch["aspect_mask"][1, width - n:].tolist() == [bool(m) for m in short["aspect_mask"]]
    assert not batch["aspect_mask"][1, :width - n].any()


# --------------------------------------------------------------------------- tokenizers


def test_slow_tokenizer_is_refused(slow_tokenizer, slow_tokenizer_dir):
    with pytest.raises(ValueError, match="fast"):
        require_fast_tokenizer(slow_tokenizer)
    with pytest.raises(ValueError) as info:
        encode_one(slow_tokenizer, *CASES["comma"])
    assert "slow" in str(info.value) and "use_fast=True" in str(info.value)
    with pytest.raises(ValueError) as info:
        load_tokenizer(str(slow_tokenizer_dir))
    message = str(info.value)
    assert message.startswith(str(slow_tokenizer_dir)) and "fast (Rust) tokenizer is needed" in message


def test_sentencepiece_only_folder_works(sentencepiece_model_dir):
    assert not (sentencepiece_model_dir / "tokenizer.json").exists()
    tokenizer = load_tokenizer(str(sentencepiece_model_dir))
    assert tokenizer.is_fast
    text, aspect = CASES["Größe"]
    assert_mask_is_the_aspect(tokenizer, encode_one(tokenizer, text, aspect), aspect)
    text = long_text("battery life", "middle")
    encoded = encode_one(tokenizer, text, "battery life", max_length=24)
    assert len(encoded["input_ids"]) <= 24
    assert_mask_is_the_aspect(tokenizer, encoded, "battery life")


# --------------------------------------------------------------------------- a target named several times


TWEET = "lady gaga has brought back the female rapper . - really ? lady gaga is not back , she never left"


def runs(mask) -> list[list[int]]:
    """The masked positions as runs of consecutive tokens."""
    found = []
    for t, m in enumerate(mask):
        if m:
            if found and found[-1][-1] == t - 1:
                found[-1].append(t)
            else:
                found.append([t])
    return found


@pytest.mark.parametrize("family", ["bert", "xlm-roberta", "deberta-v2"])
def test_every_span_of_a_doubled_target_is_masked(tokenizers, family):
    tokenizer = tokenizers[family]
    spans = [[m.start(), m.end()] for m in re.finditer("lady gaga", TWEET)]
    assert len(spans) == 2
    out = encode_aspect_batch({"text": [TWEET], "start": [spans[0][0]], "end": [spans[0][1]], "spans": [spans],
                               "label": [0]}, [0], tokenizer, 128)
    mask = out["aspect_mask"][0]
    expected = sorted({t for start, end in spans for t in overlapping_tokens(tokenizer, TWEET, start, end)})
    assert [t for t, m in enumerate(mask) if m] == expected
    assert len(runs(mask)) == 2  # two separate places, each decoding to the target
    for run in runs(mask):
        assert simplify(tokenizer.decode([out["input_ids"][0][t] for t in run])) == simplify("lady gaga")
    # without `spans` (the predict path), start / end alone: the first place only
    first = encode_one(tokenizer, TWEET, "lady gaga")
    assert [t for t, m in enumerate(first["aspect_mask"]) if m] == runs(mask)[0]


@pytest.mark.parametrize("family", ["bert", "deberta-v2"])
def test_window_keeps_every_span_that_fits_else_the_first(tokenizers, family):
    tokenizer = tokenizers[family]
    filler = " ".join(FILLER[i % len(FILLER)] for i in range(200))
    near = f"{filler} the keyboard is bad and the keyboard is loud {filler}"
    spans = [[m.start(), m.end()] for m in re.finditer("keyboard", near)]
    window, kept = window_around_aspect(tokenizer, near, spans, 24)
    assert len(kept) == 2 and all(window[a:b] == "keyboard" for a, b in kept)
    far = f"the keyboard is bad {filler} the keyboard is loud {filler}"
    spans = [[m.start(), m.end()] for m in re.finditer("keyboard", far)]
    window, kept = window_around_aspect(tokenizer, far, spans, 24)
    assert len(kept) == 1 and window[kept[0][0]:kept[0][1]] == "keyboard"
    assert window.startswith("the keyboard is bad")  # around the first span
    for text in (near, far):  # and through encode_aspect_batch: the mask has as many places as were kept
        spans = [[m.start(), m.end()] for m in re.finditer("keyboard", text)]
        out = encode_aspect_batch({"text": [text], "start": [spans[0][0]], "end": [spans[0][1]], "spans": [spans]},
                                  [0], tokenizer, 24)
        assert len(out["input_ids"][0]) <= 24
        assert len(runs(out["aspect_mask"][0])) == (2 if text is near else 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_offsets_with_a_space_beside_the_aspect_pool_the_aspect_alone(tokenizers, family, tmp_path):
    # Predict kept such offsets as given: with DeBERTa-v2 (offsets that hold the leading space) "battery " pooled
    # "▁las" too, with RoBERTa a trailing no-break space pooled its byte pieces. Placed by the one rule, never.
    tokenizer = tokenizers[family]
    for text, aspect, start, end in (("The battery lasts", "battery", 4, 12),
                                     ("I can't uninstall\u00a0 some programs", "uninstall\u00a0", 8, 18)):
        path = tmp_path / "train.jsonl"
        row = {"text": text, "aspect": aspect, "start": start, "end": end, "label": "positive"}
        path.write_text(json.dumps(row) + "\n", encoding="utf-8")
        row = read_absa_file(path)[0]
        encoded = encode_aspect_batch({key: [value] for key, value in row.items()}, [0], tokenizer, 64)
        assert (row["start"], row["end"]) == (start, start + len(aspect.strip()))
        assert masked_ids({key: value[0] for key, value in encoded.items()}) == masked_ids(
            encode_one(tokenizer, text, aspect.strip()))
