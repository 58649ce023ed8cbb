"""An aspect in its text: placed by one rule for training, evaluation and prediction (`resolve_aspect`: offsets,
`[B-ASP]` markers, search), then encoded: the mask marks every sub-token overlapping the aspect's characters, at each
of its places, and a text longer than `max_length` is cut to a window around the aspect rather than losing it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch
from transformers import DataCollatorWithPadding

from .encoders import require_fast_tokenizer
from .files import DataError, is_missing, whole_number

MARK_START, MARK_END = "[B-ASP]", "[E-ASP]"  # an aspect marked in its text, as use_absa.py predict reads it
_MARKERS = re.compile(f"({re.escape(MARK_START)}|{re.escape(MARK_END)})")  # kept by re.split


class AspectError(ValueError):
    """An aspect that cannot be placed; `field` names the input that is wrong (text, aspect, start, ...)."""

    def __init__(self, message: str, field: str = "aspect"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class AspectSpan:
    """An aspect placed in its text (the text without markers). `ambiguous`: it occurs `occurrences` times and none
    was asked for, so the first was taken (worth a note)."""

    text: str
    start: int
    end: int
    occurrences: int = 1
    ambiguous: bool = False
    spans: tuple = ()  # every place the mask covers (a $T$ record naming its target twice); default start:end

    @property
    def aspect(self) -> str:
        return self.text[self.start:self.end]


def parse_marked_text(text: str) -> tuple[str, list[tuple[int, int]]]:
    """`"The [B-ASP] battery[E-ASP] lasts"` -> `("The  battery lasts", [(5, 12)])`: spaces just inside the markers
    are not the aspect. Unbalanced, nested or empty markers are an AspectError."""
    clean, spans, opened = "", [], None
    for piece in _MARKERS.split(text):
        if piece == MARK_START:
            if opened is not None:
                raise AspectError(f"{MARK_START} inside a marked aspect (missing {MARK_END}) in {_shorten(text)!r}",
                                  "text")
            opened = len(clean)
        elif piece == MARK_END:
            if opened is None:
                raise AspectError(f"{MARK_END} without {MARK_START} in {_shorten(text)!r}", "text")
            if not clean[opened:].strip():
                raise AspectError(f"an empty marked aspect in {_shorten(text)!r}", "text")
            spans.append(_without_spaces(clean[opened:], opened, len(clean)))
            opened = None
        else:
            clean += piece
    if opened is not None:
        raise AspectError(f"{MARK_START} without {MARK_END} in {_shorten(text)!r}", "text")
    return clean, spans


def resolve_aspect(text: str, aspect: str | None = None, start=None, end=None,
                   occurrence: int | None = None, spans=None) -> AspectSpan:
    """Place one aspect: by `spans` or start/end, else by markers, else by search (the `occurrence`-th, 1-based).

    Several marked aspects need the aspect to say which. `spans` places an aspect named at several places; start/end,
    if given too, must be one of them. Raises an AspectError naming the wrong field.
    """
    if is_missing(text, text=True):
        raise AspectError("the text is missing or empty", "text")
    for value, field in ((text, "text"), (aspect, "aspect")):
        if not (isinstance(value, str) or is_missing(value, text=True)):  # not str(): a list would become "['a']"
            raise AspectError(f"the {field} must be a string, got {type(value).__name__} {value!r:.80}", field)
    clean, marked = parse_marked_text(text)
    aspect = None if is_missing(aspect, text=True) else aspect.strip()
    occurrence = None if is_missing(occurrence) else _whole_number(occurrence, "occurrence")
    if occurrence is not None and occurrence < 1:
        raise AspectError(f"occurrence counts from 1, got {occurrence}", "occurrence")
    offsets = not (is_missing(start) and is_missing(end))
    if (offsets or not is_missing(spans)) and marked:
        raise AspectError("give the aspect either with [B-ASP]...[E-ASP] markers or with start/end, not both",
                          "start" if offsets else "spans")
    if not is_missing(spans):
        pairs = _span_pairs(spans)
        if pairs is None:
            raise AspectError(f"must be a non-empty list of [start, end] pairs, got {spans!r:.80}", "spans")
        placed = sorted({place_offsets(clean, aspect, *pair, field="spans") for pair in pairs})
        if offsets and place_offsets(clean, aspect, start, end) not in placed:
            raise AspectError(f"start/end {start}:{end} is not one of the spans {[list(s) for s in placed]}", "start")
        return AspectSpan(clean, *placed[0], spans=tuple(placed))
    if offsets:
        return AspectSpan(clean, *place_offsets(clean, aspect, start, end))
    if marked:
        if aspect is None:
            if len(marked) > 1:
                raise AspectError(f"{len(marked)} aspects are marked; say which one with the aspect, or give one "
                                  "marked aspect per text", "aspect")
            return AspectSpan(clean, *marked[0])
        chosen = [span for span in marked if clean[span[0]:span[1]].lower() == aspect.lower()]  # as the search
        if not chosen:
            raise AspectError(f"the aspect {aspect!r} is not one of the marked aspects "
                              f"({', '.join(repr(clean[s:e]) for s, e in marked)})")
        return AspectSpan(clean, *_nth(chosen, occurrence, aspect), len(chosen), len(chosen) > 1 and not occurrence)
    if aspect is None:
        raise AspectError("no aspect: give the aspect, or mark it in the text with [B-ASP]...[E-ASP]")
    found = find_occurrences(clean, aspect)
    if not found:
        raise AspectError(f"the aspect {aspect!r} does not occur in the text {_shorten(clean)!r}")
    return AspectSpan(clean, *_nth(found, occurrence, aspect), len(found), len(found) > 1 and not occurrence)


def place_offsets(text: str, aspect: str | None, start, end, field: str | None = None) -> tuple[int, int]:
    """start:end checked against the text and the (stripped) aspect, then narrowed to the aspect's own characters.

    Offsets that take in a space beside the aspect (a hand-made file's off-by-one) place it exactly where offsets
    without the space do: the mask, the bracketed and the paired inputs do not depend on how the file counted.
    `field` names a `spans` entry in errors; else the wrong offset is named.
    """
    start, end = _whole_number(start, "start", field), _whole_number(end, "end", field)
    for wrong, problem, name in (
            (start < 0, f"start {start} is negative", "start"),
            (start >= end, f"start {start} is {'after' if start > end else 'equal to'} end {end}", "start"),
            (end > len(text), f"end {end} is past the end of the text ({len(text)} characters)", "end")):
        if wrong:
            raise AspectError(problem, field or name)
    given = text[start:end]
    if not given.strip() or (aspect is not None and given.strip() != aspect):
        raise AspectError(f"the offsets {start}:{end} give {given!r}, not "
                          f"{'the aspect ' + repr(aspect) if aspect is not None else 'an aspect'}", field or "start")
    return _without_spaces(given, start, end)


def _without_spaces(piece: str, start: int, end: int) -> tuple[int, int]:
    """The (start, end) of `piece` (text[start:end]) without the white space around it."""
    return start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())


def _whole_number(value, name: str, field: str | None = None) -> int:
    number = whole_number(value)
    if number is None:  # only one of start / end can be missing here: with neither, the aspect is searched for
        raise AspectError("missing: give both start and end, or neither to search for the aspect"
                          if is_missing(value) and field is None else f"{name} must be a whole number, got {value!r}",
                          field or name)
    return number


def _span_pairs(value) -> list[tuple] | None:
    """[start, end] pairs from a list (JSONL, Parquet's numpy arrays) or its JSON text (a CSV cell, as use_absa.py
    writes one); None when the value is not a non-empty list of pairs."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    value = getattr(value, "tolist", lambda: value)()
    pair = (lambda span: hasattr(span, "__len__") and not isinstance(span, (str, dict)) and len(span) == 2)
    if not isinstance(value, (list, tuple)) or not value or not all(map(pair, value)):
        return None
    return [tuple(span) for span in value]


def find_occurrences(text: str, aspect: str, ignore_case: bool = True) -> list[tuple[int, int]]:
    """Every (start, end) of `aspect` in text order: whole words (in any case unless `ignore_case` is false), or,
    when there are none, parts of words ("screen" in "touchscreen", or text without spaces)."""
    aspect = aspect.strip()
    if not aspect:
        return []
    escaped = re.escape(aspect)
    for pattern in (rf"(?<!\w){escaped}(?!\w)", escaped):
        found = [match.span() for match in re.finditer(pattern, text, re.IGNORECASE if ignore_case else 0)]
        if found:
            return found
    return []


def _nth(spans, occurrence, aspect):
    number = int(occurrence or 1)
    if number > len(spans):
        raise AspectError(f"the aspect {aspect!r} occurs {len(spans)} time(s) in the text; there is no "
                          f"occurrence {number}", "occurrence")
    return spans[number - 1]


def _shorten(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


# --------------------------------------------------------------------------- encoding an aspect

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
    """A `datasets.map(batched=True, with_indices=True)` function; the aspect is at every pair of `spans` (else at
    start:end). Errors name the split and the 1-based row."""
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
    """(text, spans) cut to the longest window of whole tokens that fits, centred on all the spans, else on the first
    (the others inside it are kept). An aspect longer than the window is an error, never cut in part."""
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
    """Dynamic padding of input_ids / attention_mask / aspect_mask. TD-BERT's input is the sentence alone, so with
    `share_texts` the aspects of one sentence (about 1.6 in SemEval; the samplers batch them together) share one
    encoded row, which `sequence_index` names for each example: about 1.6x fewer tokens through the encoder."""

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
    """Every split of a `DatasetDict` (or one `Dataset`) tokenized with aspect masks, the text columns dropped."""
    def encode(dataset, split):
        return dataset.map(encode_aspect_batch, batched=True, with_indices=True, remove_columns=dataset.column_names,
                           fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "split": split,
                                      "input_format": input_format},
                           desc=f"tokenizing {split}")
    if hasattr(splits, "keys"):
        return type(splits)({split: encode(dataset, split) for split, dataset in splits.items()})
    return encode(splits, "data")
