"""Using a fine-tuned ABSA model: find the aspect in a text, batch the inputs, run the model fast.

Python API (one process; `use_absa.py` adds evaluation, files and several processes on top):

    from absa.predict import AbsaPredictor
    predictor = AbsaPredictor.from_pretrained("runs/laptops/best_model")
    predictor.predict(["The battery lasts forever but the screen is dim"] * 2, ["battery", "screen"])
    # [{"label": "positive", "probabilities": {"negative": 0.03, "neutral": 0.05, "positive": 0.92},
    #   "aspect": "battery", "start": 4, "end": 11}, {...}]
    predictor.predict(["The [B-ASP]screen[E-ASP] is dim"])          # the aspect marked in the text
    predictor.predict_probabilities(texts, aspects)                 # numpy [N, classes], columns = label_names

How an aspect is found in its text (`resolve_aspect`): character offsets when given; else the aspect marked with
`[B-ASP]...[E-ASP]` (the PyABSA convention); else a search for the aspect's words, taking the N-th occurrence
(`occurrence`, 1-based, default the first). The search counts whole words in any case, in text order ("Screen is
bright, but the screen hinge..." has two occurrences of "screen", the first is "Screen"), and parts of words only when
no whole word matches ("screen" inside "touchscreen"; texts without spaces, e.g. Chinese). Results name the aspect as
it is in the text (`text[start:end]`, "Screen"), in the text without markers.

Speed: `torch.inference_mode`, inputs sorted by length (longest first) so each batch pads little, and bf16
autocast where the hardware computes bf16 natively (see `resolve_dtype`). Results always come back in input order.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .aspects import AspectCollator, AspectError, AspectSpan, encode_aspect_batch, resolve_aspect
from .batches import text_groups
from .encoders import load_tokenizer
from .launch import bf16_is_native
from .model import AbsaClassifier

DTYPES = ("auto", "fp32", "bf16")


# --------------------------------------------------------------------------- running the model


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """The compute dtype for `--dtype auto|fp32|bf16` (None = auto) on `device`.

    auto is bf16 on CUDA GPUs with native bf16 (Ampere and newer) and on CPUs with native bf16 arithmetic
    (AVX512-BF16 or AMX-BF16, as `torch.cpu.get_capabilities()` reports); fp32 elsewhere. Without native support bf16
    is emulated and slower than fp32, so an explicit bf16 there (GPU or CPU) is refused. bf16 runs under autocast:
    weights stay fp32, matrix products run in bf16, softmax and layer norms in fp32, so probabilities move by about
    1e-2 at most against fp32.
    """
    device = torch.device(device)
    if isinstance(dtype, torch.dtype):
        dtype = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
    dtype = {"float32": "fp32", "bfloat16": "bf16", None: "auto"}.get(dtype, dtype)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        return torch.bfloat16 if bf16_is_native(device) else torch.float32
    if dtype == "bf16" and not bf16_is_native(device):
        what = (f"this GPU ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                else f"this {device.type.upper()}{' (no AVX512-BF16 or AMX)' if device.type == 'cpu' else ''}")
        raise ValueError(f"{what} has no native bf16 (emulated, it is slower than fp32); use dtype fp32")
    return torch.bfloat16 if dtype == "bf16" else torch.float32


def autocast(device: torch.device | str, dtype: torch.dtype):
    """bf16 autocast on `device` when dtype is bf16, a no-op context for fp32."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


def default_max_length(tokenizer, trained: int | None = None) -> int:
    """The length the model was trained with (`absa_max_length` in its config, written by finetune_absa.py), so that
    long texts are cut as in training; for older folders the tokenizer's own limit, 512 when it declares none (some
    set a huge placeholder)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(trained) if trained else int(limit) if limit and limit <= 100_000 else 512


# Families that number positions from pad_token_id + 1, as RoBERTa does: 514 positions hold 512 tokens.
ROBERTA_STYLE_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                           "data2vec-text", "longformer", "xmod", "ibert", "luke", "mpnet")


def position_limit(config: dict) -> int | None:
    """The most tokens the encoder's position embeddings hold (a config.json as a dict); None when it has no absolute
    positions (DeBERTa-v2/v3 with `position_biased_input` false) or does not say."""
    size = config.get("max_position_embeddings")
    if not size or config.get("position_biased_input") is False:
        return None
    offset = int(config.get("pad_token_id") or 0) + 1 if config.get("model_type") in ROBERTA_STYLE_POSITIONS else 0
    return int(size) - offset


def check_max_length(max_length: int, config: dict) -> int:
    """`max_length` when the encoder can take that many tokens; a ValueError before any work when it cannot."""
    limit = position_limit(config)
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length {max_length} is more tokens than this encoder has positions for ({limit}); "
                         f"use at most {limit}")
    return max_length


def encode_spans(tokenizer, spans: Sequence[AspectSpan], max_length: int, labels=None, source: str = "input",
                 input_format: str = "td_bert") -> list[dict]:
    """Collator features (input_ids, attention_mask, aspect_mask, token_type_ids for a sentence-pair format) for each
    span, built as the model was trained (`input_format`), with `labels` riding along.

    `labels` defaults to the position of each span: the loops pop "labels" before the model sees a batch, so
    carrying the input position there tells which output belongs to which input, however the batches were sorted.
    """
    features = []
    for first in range(0, len(spans), 1024):  # tokenized in chunks: one fast-tokenizer call per chunk
        chunk = spans[first:first + 1024]
        columns = encode_aspect_batch({"text": [s.text for s in chunk], "start": [s.start for s in chunk],
                                       "end": [s.end for s in chunk],
                                       "spans": [s.spans or ((s.start, s.end),) for s in chunk]},
                                      list(range(first, first + len(chunk))), tokenizer, max_length, split=source,
                                      input_format=input_format)
        for i in range(len(chunk)):
            features.append({**{key: values[i] for key, values in columns.items()},
                             "labels": first + i if labels is None else int(labels[first + i])})
    return features


def length_sorted_loader(features: list[dict], collator, batch_size: int) -> DataLoader:
    """Batches of similar length, longest first (so running out of memory shows at once), padded per batch.

    The aspects of one text stay side by side, so the collator encodes that text once. No shuffling: a loader
    prepared by Accelerate hands whole batches to the processes in turn and `gather_for_metrics` puts them back
    in this order, dropping the padding copies of the last batches.
    """
    groups = sorted(text_groups(f["input_ids"] for f in features),
                    key=lambda group: -len(features[group[0]]["input_ids"]))
    return DataLoader([features[i] for group in groups for i in group], batch_size=batch_size, collate_fn=collator,
                      shuffle=False)


def in_input_order(logits: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rows of `logits` moved back to the input positions carried through the run; each must come exactly once."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) != len(logits) or not np.array_equal(np.sort(positions), np.arange(len(positions))):
        raise RuntimeError(f"expected each of the {len(positions)} inputs exactly once back from the processes, "
                           f"got positions {np.sort(positions)[:20].tolist()}...")
    ordered = np.empty_like(logits)
    ordered[positions] = logits
    return ordered


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1).numpy()


def label_names_of(model) -> list[str]:
    config = model.config
    return [config.id2label[i] for i in range(config.num_labels)]


def read_absa_config(folder: str | Path) -> dict:
    """The config.json of an ABSA model folder (label names, `absa_max_length`), to check data before the weights
    load. Anything else ends in SystemExit with a one-line reason."""
    config_file = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise SystemExit(f"{folder}: no such model folder")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if "absa_pooling" not in config or "id2label" not in config:
        raise SystemExit(f"{folder}: not an ABSA model folder (no config.json with 'absa_pooling' and 'id2label'); "
                         "give the output of finetune_absa.py (its best_model folder)")
    return config


def read_label_names(folder: str | Path) -> list[str]:
    """The class names of an ABSA model folder, in label-id order, from its config.json alone."""
    id2label = read_absa_config(folder)["id2label"]
    return [id2label[str(i)] for i in range(len(id2label))]


def load_absa_model(folder: str | Path) -> tuple[AbsaClassifier, object]:
    """An ABSA model folder (finetune_absa.py's best_model) -> (model in eval mode, fast tokenizer).

    Anything that is not such a folder ends in SystemExit with a one-line reason.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"{folder}: no such model folder")
    try:
        model = AbsaClassifier.from_pretrained(folder)
    except SystemExit:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged folder: say so in one line
        raise SystemExit(f"{folder}: cannot load the ABSA model ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    tokenizer = load_tokenizer(str(folder))
    return model.eval().requires_grad_(False), tokenizer


class AbsaPredictor:
    """A loaded ABSA model that classifies (text, aspect) pairs on one device.

    `predict` returns one dict per input, in input order: `{"label": name, "probabilities": {name: p, ...},
    "text": the text without markers, "aspect": text[start:end], "start": start, "end": end}`; `predict_probabilities`
    returns the numpy array [N, len(label_names)] instead. Inputs pair up by position (lists, arrays, pandas Series
    whatever their index). An aspect found more than once without `occurrence` is a warning.
    """

    def __init__(self, model, tokenizer, device=None, batch_size: int = 64, dtype=None, max_length: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_length = check_max_length(max_length or default_max_length(
            tokenizer, getattr(model.config, "absa_max_length", None)), model.config.to_dict())
        self.label_names = label_names_of(model)
        self.input_format = getattr(model.config, "absa_input_format", "td_bert")  # as it was trained
        self.collator = AspectCollator(tokenizer)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device=None, batch_size: int = 64, dtype=None,
                        max_length: int | None = None) -> AbsaPredictor:
        """Load model and tokenizer once; device None = CUDA when available; dtype None = "auto"; max_length None = the
        length the model was trained with (see `default_max_length`)."""
        model, tokenizer = load_absa_model(folder)
        return cls(model, tokenizer, device=device, batch_size=batch_size, dtype=dtype, max_length=max_length)

    def spans(self, texts, aspects=None, starts=None, ends=None, occurrence: int | None = None) -> list[AspectSpan]:
        """Each input placed in its text (see `resolve_aspect`); errors name the 1-based input number."""
        columns = {"texts": texts, "aspects": aspects, "starts": starts, "ends": ends}
        for name, values in columns.items():
            if isinstance(values, str):
                raise TypeError(f"{name} must be a list (got one string)")
        # By position, whatever the container: a pandas Series after sort_values or a filter keeps its old index
        # labels, and Series[i] would look one up by label, pairing a text with another row's aspect.
        texts, aspects, starts, ends = (None if values is None else list(values) for values in columns.values())
        for name, values in (("aspects", aspects), ("starts", starts), ("ends", ends)):
            if values is not None and len(values) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(values)} {name}")
        spans = []
        for i, text in enumerate(texts):
            try:
                spans.append(resolve_aspect(text, aspects[i] if aspects is not None else None,
                                            starts[i] if starts is not None else None,
                                            ends[i] if ends is not None else None, occurrence))
            except AspectError as error:
                raise AspectError(f"input {i + 1}: {error}", error.field) from None
        ambiguous = [i + 1 for i, span in enumerate(spans) if span.ambiguous]
        if ambiguous:
            warnings.warn(f"in {len(ambiguous)} input(s) (first: input {ambiguous[0]}) the aspect occurs more than "
                          "once; the first occurrence was used (give starts/ends or occurrence, or mark the aspect)",
                          stacklevel=3)
        return spans

    def predict_probabilities(self, texts, aspects=None, starts=None, ends=None,
                              occurrence: int | None = None) -> np.ndarray:
        return softmax(self._logits(self.spans(texts, aspects, starts, ends, occurrence)))

    def predict(self, texts, aspects=None, starts=None, ends=None, occurrence: int | None = None) -> list[dict]:
        spans = self.spans(texts, aspects, starts, ends, occurrence)
        probabilities = softmax(self._logits(spans))
        return [{"label": self.label_names[int(row.argmax())],
                 "probabilities": {name: float(p) for name, p in zip(self.label_names, row)},
                 "text": span.text, "aspect": span.aspect, "start": span.start, "end": span.end}
                for span, row in zip(spans, probabilities)]

    @torch.inference_mode()
    def _logits(self, spans: list[AspectSpan]) -> np.ndarray:
        if not spans:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        loader = length_sorted_loader(encode_spans(self.tokenizer, spans, self.max_length,
                                                   input_format=self.input_format), self.collator, self.batch_size)
        all_logits, all_positions = [], []
        with autocast(self.device, self.dtype):
            for batch in loader:
                all_positions.append(batch.pop("labels"))
                batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
                all_logits.append(self.model(**batch).float().cpu())
        return in_input_order(torch.cat(all_logits).numpy(), torch.cat(all_positions).numpy())
