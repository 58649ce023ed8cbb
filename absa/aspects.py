"""Tokenizing ABSA examples: aspect masks from character spans, windows around the aspect, padding.

The aspect mask marks every sub-token that overlaps the aspect's characters (the offsets of a fast
tokenizer), so multi-token aspects ("battery life", "Größe") are pooled whole; an aspect named at several places
(the `spans` of a `$T$` record with two targets) is marked at each. A text longer than `max_length` is cut to a
window of tokens that contains the aspect, instead of losing the aspect.
"""

from __future__ import annotations

import logging

import torch
from transformers import DataCollatorWithPadding

from .encoders import require_fast_tokenizer
from .files import DataError

logger = logging.getLogger(__name__)


# What the encoder is shown (recorded in a saved model's config as `absa_input_format`):
#   td_bert         the sentence alone (Gao et al. 2019, the seed's model); its aspects share one encoder pass.
#   aspect_markers  the sentence with the aspect bracketed, "The [ battery ] lasts": the encoder knows which aspect.
#   sentence_pair   the sentence, then the aspect as the second segment (BERT-SPC style, "sentence [SEP] aspect").
# Every format pools the aspect's tokens in the sentence.
INPUT_FORMATS = ("td_bert", "aspect_markers", "sentence_pair")
MARKER_OPEN, MARKER_CLOSE = "[ ", " ]"  # punctuation every tokenizer has: no new, untrained embeddings


def format_input(text: str, spans, input_format: str = "td_bert"):
    """(text, spans in it, second segment or None) as the encoder is shown them."""
    if input_format == "td_bert":
        return text, spans, None
    if input_format == "sentence_pair":
        start, end = spans[0]
        return text, spans, text[start:end]
    if input_format != "aspect_markers":
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
    pieces, moved, position = [], [], 0
    for start, end in sorted(spans):
        pieces += [text[position:start], MARKER_OPEN]
        shift = sum(map(len, pieces)) - start
        moved.append((start + shift, end + shift))
        pieces += [text[start:end], MARKER_CLOSE]
        position = end
    pieces.append(text[position:])
    return "".join(pieces), moved, None


def encode_aspect_batch(batch: dict, indices: list[int], tokenizer, max_length: int, split: str = "data",
                        input_format: str = "td_bert") -> dict:
    """`datasets.map(batched=True, with_indices=True)` function: input_ids, attention_mask, aspect_mask, labels
    (and token_type_ids for sentence pairs, where the tokenizer uses them).

    The aspect is at every [start, end] of the batch's `spans` column, or at start:end when it has none; the input
    is built as `input_format` says (INPUT_FORMATS). Errors name the split and the 1-based row within it.
    """
    require_fast_tokenizer(tokenizer)
    all_spans = batch["spans"] if "spans" in batch else [[(s, e)] for s, e in zip(batch["start"], batch["end"])]
    shown = [format_input(text, spans, input_format) for text, spans in zip(batch["text"], all_spans)]
    pairs = [pair for _, _, pair in shown] if input_format == "sentence_pair" else None
    encoded = tokenizer([text for text, _, _ in shown], pairs, truncation=False)
    types = input_format == "sentence_pair" and "token_type_ids" in tokenizer.model_input_names
    columns = {"input_ids": [], "attention_mask": [], "aspect_mask": [], **({"token_type_ids": []} if types else {})}
    for i, (text, spans, pair) in enumerate(shown):
        encoding = encoded[i]
        if len(encoding.ids) > max_length:
            reserved = len(encoding.ids) - len(tokenizer(text, add_special_tokens=False)["input_ids"]) \
                - tokenizer.num_special_tokens_to_add(pair=False)  # the second segment and its special tokens
            text, spans = window_around_aspect(tokenizer, text, spans, max_length - reserved, split, indices[i] + 1)
            encoding = tokenizer(text, pair, truncation=False)[0]
        mask = [0] * len(encoding.ids)
        for start, end in spans:
            # Offsets, not char_to_token: that returns one token per character, and SentencePiece / byte-level
            # tokenizers give several tokens the same characters ("▁" + "[UNK]", byte pieces of one character).
            tokens = [t for t, (a, b) in enumerate(encoding.offsets)
                      if a < b and a < end and b > start and encoding.sequence_ids[t] == 0]
            if not tokens:
                raise DataError(split, f"the aspect {text[start:end]!r} maps to no token", row=indices[i] + 1,
                                field="aspect")
            for t in tokens:
                mask[t] = 1
        columns["input_ids"].append(encoding.ids)
        columns["attention_mask"].append(encoding.attention_mask)
        columns["aspect_mask"].append(mask)
        if types:
            columns["token_type_ids"].append(encoding.type_ids)
    if "label" in batch:
        columns["labels"] = batch["label"]
    return columns


def window_around_aspect(tokenizer, text: str, spans, max_length: int, file="data", row=None):
    """Cut `text` to the longest window of whole tokens around the aspect's [start, end) spans that fits max_length.

    The window is centred on all the spans when they fit in it together, else on the first span alone; the spans
    wholly inside the window are kept. Returns the new (text, spans). A span that alone is longer than the window
    is an error rather than silently cut in part.
    """
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    inside = [[t for t, (a, b) in enumerate(offsets) if a < end and b > start] for start, end in spans]
    if [] in inside:
        start, end = spans[inside.index([])]
        raise DataError(file, f"the aspect {text[start:end]!r} maps to no token", row=row, field="aspect")
    first, last = inside[0][0], max(tokens[-1] for tokens in inside)
    if last - first + 1 > budget:  # the spans do not fit together: the first one alone
        (start, end), last = spans[0], inside[0][-1]
        if last - first + 1 > budget:
            raise DataError(file, f"the aspect {text[start:end]!r} needs {last - first + 1} tokens, more than "
                            f"max_length={max_length} leaves; raise --max_length", row=row, field="aspect")
    while True:  # re-tokenizing a cut text can shift a token boundary; shrink until it fits
        left = max(0, min(first - (budget - (last - first + 1)) // 2, len(offsets) - budget))
        right = min(len(offsets), left + budget)
        window_start, window_end = offsets[left][0], offsets[right - 1][1]
        window = text[window_start:window_end]
        if len(tokenizer(window, truncation=False)["input_ids"]) <= max_length or budget <= last - first + 1:
            return window, [(start - window_start, end - window_start) for start, end in spans
                            if window_start <= start and end <= window_end]
        budget -= 1


class AspectCollator:
    """Dynamic padding (optionally to a multiple of N) for input_ids / attention_mask / aspect_mask.

    TD-BERT encodes the sentence without the aspect, so the aspects of one sentence need one encoder pass, not
    one each: with `share_texts`, identical inputs in a batch are padded once and `sequence_index` tells the
    model which encoded row each example (aspect mask, label) pools from. SemEval sentences carry about 1.6
    aspects, so that is about 1.6x fewer tokens through the encoder; the samplers keep them in one batch.
    """

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None, share_texts: bool = True):
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
        self.padding_side = tokenizer.padding_side
        self.share_texts = share_texts

    def __call__(self, features: list[dict]) -> dict:
        rows, texts, sequence_index = {}, [], []  # rows: input -> its row in the padded batch
        for i, feature in enumerate(features):
            key = tuple(feature["input_ids"]) if self.share_texts else i
            if key not in rows:
                rows[key] = len(texts)
                texts.append({k: v for k, v in feature.items() if k not in ("aspect_mask", "labels")})
            sequence_index.append(rows[key])
        batch = self.pad(texts)
        width = batch["input_ids"].shape[1]
        masks = [list(f["aspect_mask"]) for f in features]
        padded = [[0] * (width - len(m)) + m if self.padding_side == "left" else m + [0] * (width - len(m))
                  for m in masks]
        batch["aspect_mask"] = torch.tensor(padded, dtype=torch.bool)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        if self.share_texts:
            batch["sequence_index"] = torch.tensor(sequence_index)
        return batch


def encode_absa_splits(splits, tokenizer, max_length: int, input_format: str = "td_bert"):
    """Every split of a `DatasetDict` (or one `Dataset`) tokenized with aspect masks; the text columns dropped."""
    def encode(dataset, split):
        return dataset.map(encode_aspect_batch, batched=True, with_indices=True, remove_columns=dataset.column_names,
                           fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "split": split,
                                      "input_format": input_format},
                           desc=f"tokenizing {split}")
    if hasattr(splits, "keys"):
        return type(splits)({split: encode(dataset, split) for split, dataset in splits.items()})
    return encode(splits, "data")
