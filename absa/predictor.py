"""The one way into a fine-tuned ABSA model: `AbsaPredictor` opens its folder once and turns aspects into
probabilities, on one process (the Python API) or under an Accelerator on many (`use_absa.py`).

    from absa.predictor import AbsaPredictor
    predictor = AbsaPredictor.from_pretrained("runs/laptops/best_model")
    predictor.predict(["The battery lasts forever but the screen is dim"] * 2, ["battery", "screen"])
    # [{"label": "positive", "probabilities": {"negative": 0.03, "neutral": 0.05, "positive": 0.92},
    #   "text": ..., "aspect": "battery", "start": 4, "end": 11}, {...}]
    predictor.predict(["The [B-ASP]screen[E-ASP] is dim"])          # the aspect marked in the text
    predictor.predict_probabilities(texts, aspects)                 # numpy [N, classes], columns = label_names
    ensemble = open_predictor(["runs/s1/best_model", "runs/s2/best_model"])  # the seeds' mean probabilities

An aspect is placed in its text by `absa.aspects.resolve_aspect`: offsets, else `[B-ASP]...[E-ASP]` markers, else the
N-th whole-word occurrence in any case (`occurrence`, default the first; parts of words only when no whole word
matches). Results name the aspect as it is in the text (`text[start:end]`), in the text without markers.

The folder's config.json says how the model was trained, and prediction does the same by default: its input format,
its max_length (long texts cut where training cut them) and its precision (`absa_mixed_precision`; folders without
the record: auto = bf16 where bf16 is native, else fp32). The weights load on first use, so that input can be checked
first. Batches are sorted by length (little padding); results always come back in input order.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader

from . import launch
from .aspects import AspectCollator, AspectError, AspectSpan, encode_aspect_batch, resolve_aspect
from .batches import text_groups
from .encoders import load_tokenizer
from .files import DataError
from .model import AbsaClassifier, label_names_of

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Families that number positions from pad_token_id + 1, as RoBERTa does: 514 positions hold 512 tokens.
ROBERTA_STYLE_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                           "data2vec-text", "longformer", "xmod", "ibert", "luke", "mpnet")


class AbsaPredictor:
    """An ABSA model folder (finetune_absa.py's best_model), opened once.

    `predict` returns one dict per input, in input order (label, probabilities, text, aspect, start, end);
    `predict_probabilities` the numpy array [N, len(label_names)]. Inputs pair up by position (lists, arrays, pandas
    Series whatever their index). An aspect found more than once without `occurrence` is a warning.

    device None: the accelerator's, else CUDA when available. mixed_precision None: what the model was trained in.
    With an `accelerator` (every process opens the folder), the main process chooses the precision for all, the
    model is placed by the accelerator, and `logits(features, shared=True)` splits the batches between its
    processes. Settings this model or machine cannot take are a ValueError; a folder that is no ABSA model a one-line
    SystemExit.
    """

    def __init__(self, folder: str | Path, device=None, batch_size: int = 64, mixed_precision: str | None = None,
                 max_length: int | None = None, accelerator=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.folder, self.batch_size, self.accelerator = Path(folder), batch_size, accelerator
        self.config = AbsaClassifier.read_config(self.folder)  # first: says so if it is no ABSA model folder
        self.tokenizer = load_tokenizer(str(self.folder))
        self.collator = AspectCollator(self.tokenizer)
        self.label_names = label_names_of(self.config)
        self.input_format = getattr(self.config, "absa_input_format", "td_bert")  # as it was trained
        self.max_length = checked_max_length(max_length or default_max_length(
            self.tokenizer, getattr(self.config, "absa_max_length", None)), self.config.to_dict())
        self.device = torch.device(accelerator.device if accelerator else device or
                                   ("cuda" if torch.cuda.is_available() else "cpu"))
        recorded, decision = getattr(self.config, "absa_mixed_precision", None), [None, None, None]
        if accelerator is None or accelerator.is_main_process:
            try:
                decision = [*resolve_precision(mixed_precision, recorded, self.device), None]
            except ValueError as error:
                decision = [None, None, str(error)]
        if accelerator is not None and accelerator.num_processes > 1:
            broadcast_object_list(decision)  # the main process's, so that every process computes alike
        self.mixed_precision, self.note, refusal = decision
        if refusal:
            raise ValueError(refusal)
        if self.note and accelerator is None:
            warnings.warn(self.note, stacklevel=2)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **settings) -> AbsaPredictor:
        """The Hugging Face spelling of `AbsaPredictor(folder, ...)`."""
        return cls(folder, **settings)

    @property
    def members(self) -> list[AbsaPredictor]:
        """The model folders that predict (an ensemble has several)."""
        return [self]

    @cached_property
    def model(self) -> AbsaClassifier:
        """The weights, loaded on first use, in eval mode, on this process's device (whole on every process)."""
        try:
            model = AbsaClassifier.from_pretrained(self.folder, config=self.config).eval().requires_grad_(False)
        except Exception as error:  # noqa: BLE001 - a damaged folder: say so in one line
            raise SystemExit(f"{self.folder}: cannot load the ABSA model ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''})") from None
        if self.accelerator is None:
            return model.to(self.device)
        # evaluation_mode: placement only. Inference has no gradients to synchronise, so no DDP wrapper.
        return self.accelerator.prepare_model(model, evaluation_mode=True)

    def spans(self, texts, aspects=None, starts=None, ends=None, occurrence: int | None = None) -> list[AspectSpan]:
        """Each input placed in its text; errors name the 1-based input number."""
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
                spans.append(resolve_aspect(text, *(None if values is None else values[i]
                                                     for values in (aspects, starts, ends)), occurrence))
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
        return softmax(self.logits(self.encode(self.spans(texts, aspects, starts, ends, occurrence))))

    def predict(self, texts, aspects=None, starts=None, ends=None, occurrence: int | None = None) -> list[dict]:
        spans = self.spans(texts, aspects, starts, ends, occurrence)
        return [{"label": self.label_names[int(row.argmax())],
                 "probabilities": {name: float(p) for name, p in zip(self.label_names, row)},
                 "text": span.text, "aspect": span.aspect, "start": span.start, "end": span.end}
                for span, row in zip(spans, softmax(self.logits(self.encode(spans))))]

    def encode(self, spans: Sequence[AspectSpan], source: str = "input") -> list[dict]:
        """Collator features of `spans`, built as the model was trained; a DataError names the span (from 1) that
        cannot be encoded. The span's position rides along in "labels": the loop pops it before the model sees a batch
        and puts each output back in its place."""
        features = []
        for first in range(0, len(spans), 1024):  # tokenized in chunks: one fast-tokenizer call per chunk
            chunk = spans[first:first + 1024]
            columns = encode_aspect_batch({"text": [s.text for s in chunk], "start": [s.start for s in chunk],
                                           "end": [s.end for s in chunk],
                                           "spans": [s.spans or ((s.start, s.end),) for s in chunk]},
                                          list(range(first, first + len(chunk))), self.tokenizer, self.max_length,
                                          split=source, input_format=self.input_format)
            features += [{**{key: values[i] for key, values in columns.items()}, "labels": first + i}
                         for i in range(len(chunk))]
        return features

    def check_fit(self, spans: Sequence[AspectSpan], labels, file) -> None:
        """An aspect that maps to no token, or that alone does not fit max_length, is a DataError naming its row
        (`labels`: the rows' names in `file`).

        Tokenizing every text twice would cost what the model costs on a GPU. But a letter or digit always ends up in
        a token (normalizers drop only spaces, control and format characters and accents), and no span needs more
        tokens than its UTF-8 bytes: only the other aspects are tokenized in their text, as prediction will.
        """
        # A sentence pair shows the aspect twice; markers add a token on each side.
        special = self.tokenizer.num_special_tokens_to_add(pair=self.input_format == "sentence_pair")
        budget = ((self.max_length - special) // 2 if self.input_format == "sentence_pair"
                  else self.max_length - special - 2 * (self.input_format != "td_bert"))
        doubtful = [i for i, span in enumerate(spans) if not any(character.isalnum() for character in span.aspect)
                    or len(span.aspect.encode("utf-8")) + 2 > budget]
        try:
            self.encode([spans[i] for i in doubtful])
        except DataError as error:  # encode counts its spans from 1: name the file's own row instead
            raise DataError(file, error.problem, row=labels[doubtful[error.row - 1]], field=error.field) from None

    def logits(self, features: list[dict], shared: bool = False, progress=None) -> np.ndarray:
        """Logits of encoded spans, in input order. shared: every process of the accelerator passes the same
        features, takes its share of the batches, and gets every logit back (`gather_for_metrics`: each once)."""
        if not features:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        model = self.model
        loader = length_sorted_loader(features, self.collator, self.batch_size)
        if shared:
            loader = self.accelerator.prepare_data_loader(loader)
        all_logits, all_positions = [], []
        precision = AUTOCAST_DTYPES.get(self.mixed_precision)
        # no_grad, not inference_mode: a model prepared by accelerate may be sharded, and FSDP2 fails under the latter.
        with torch.no_grad(), torch.autocast(self.device.type, dtype=precision, enabled=precision is not None):
            for batch in loader:
                positions = batch.pop("labels")  # the input positions (encode)
                logits = model(**{key: value.to(self.device) for key, value in batch.items()}).float()
                if shared:
                    logits, positions = self.accelerator.gather_for_metrics((logits, positions))
                all_logits.append(logits.cpu())
                all_positions.append(positions.cpu())
                if progress is not None:
                    progress.update(len(positions))
        return in_input_order(torch.cat(all_logits).numpy(), torch.cat(all_positions).numpy())

    def describe(self) -> str:
        return "fp32" if self.mixed_precision == "no" else f"{self.mixed_precision} autocast"


class AbsaEnsemble(AbsaPredictor):
    """Several ABSA model folders (the seeds of a recipe) used as one model: the mean of their probabilities.

    Used as an AbsaPredictor is (the same `predict`, `predict_probabilities`, `encode`, `logits`...). Each member
    keeps its own tokenizer, input format, max_length and precision; the settings given apply to each. `logits` are
    log(mean of the members' softmax), so that softmax gives the mean probabilities and cross-entropy is the
    ensemble's negative log-likelihood. Members whose label names differ are refused before anything loads.
    """

    def __init__(self, folders: Sequence[str | Path], **settings):
        if isinstance(folders, (str, Path)):
            raise TypeError("folders must be a list of model folders (got one)")
        folders = list(folders)
        if not folders:
            raise ValueError("no model folder given")
        configs = [AbsaClassifier.read_config(Path(folder)) for folder in folders]  # before tokenizers and weights
        refuse_disagreement(folders, [label_names_of(config) for config in configs], "label names (by label id)")
        self._members = [opened(folder, **settings) for folder in folders]
        first = self._members[0]
        self.config, self.label_names, self.accelerator = first.config, first.label_names, first.accelerator
        self.device, self.batch_size = first.device, first.batch_size
        # A single value when the members agree (as for one model), else one per member.
        self.max_length, self.input_format, self.mixed_precision = (
            agreed([getattr(member, name) for member in self.members])
            for name in ("max_length", "input_format", "mixed_precision"))
        self.note = "\n".join(f"{member.folder}: {member.note}" for member in self.members if member.note) or None

    @property
    def members(self) -> list[AbsaPredictor]:
        return self._members

    @property
    def model(self) -> list[AbsaClassifier]:
        return [member.model for member in self.members]

    def encode(self, spans: Sequence[AspectSpan], source: str = "input") -> list[tuple]:
        """One row per span: each member's own features."""
        return list(zip(*(member.encode(spans, source) for member in self.members)))

    def check_fit(self, spans: Sequence[AspectSpan], labels, file) -> None:
        for member in self.members:
            member.check_fit(spans, labels, file)

    def logits(self, features: list[tuple], shared: bool = False, progress=None) -> np.ndarray:
        """log(mean of the members' probabilities), each member's from its own batch loop."""
        last = len(self.members) - 1
        log_probabilities = torch.stack([  # the progress counts each row once: the last member's
            torch.log_softmax(torch.as_tensor(member.logits([row[k] for row in features], shared,
                                                            progress if k == last else None)), dim=-1)
            for k, member in enumerate(self.members)])
        return (torch.logsumexp(log_probabilities, dim=0) - math.log(len(self.members))).numpy()

    def describe(self) -> str:
        return f"an ensemble of {len(self.members)} models (mean probabilities): " + ", ".join(
            f"{Path(*member.folder.parts[-2:])} {member.describe()}" for member in self.members)


def open_predictor(folders: str | Path | Sequence[str | Path], **settings) -> AbsaPredictor:
    """An AbsaPredictor for one model folder, an AbsaEnsemble for several; settings a folder cannot take are a
    ValueError that names it."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    return opened(folders[0], **settings) if len(folders) == 1 else AbsaEnsemble(folders, **settings)


def opened(folder: str | Path, **settings) -> AbsaPredictor:
    try:
        return AbsaPredictor(folder, **settings)
    except ValueError as error:
        raise ValueError(f"{folder}: {error}") from None


def refuse_disagreement(folders: Sequence, values: list, field: str, remedy: str = "") -> None:
    """A one-line SystemExit naming the first folder whose `field` differs from the first folder's."""
    for folder, value in zip(folders[1:], values[1:]):
        if value != values[0]:
            raise SystemExit(f"{folders[0]} and {folder} cannot form an ensemble: their {field} differ "
                             f"({values[0]} vs {value}){remedy}")


def agreed(values: list):
    """The members' one value, else the list of them."""
    return values[0] if all(value == values[0] for value in values) else values


def resolve_precision(choice: str | None, recorded: str | None, device) -> tuple[str, str | None]:
    """(mixed precision to predict in, a note or None). None: the recorded one, else auto. A recorded precision this
    device computes only by emulation falls back to fp32 with a note; an explicit one is a ValueError."""
    device, given = torch.device(device), choice is not None
    choice = choice or (recorded if recorded in launch.MIXED_PRECISIONS else "auto")
    precision = launch.resolve_mixed_precision(choice, device)
    native = device.type == "cuda" if precision == "fp16" else precision != "bf16" or launch.bf16_is_native(device)
    if native:
        return precision, None
    missing = " (no AVX512-BF16 or AMX)" if (device.type, precision) == ("cpu", "bf16") else ""  # fp16: none has it
    what = (f"this GPU ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
            else f"this {device.type.upper()}{missing}")
    if given:
        raise ValueError(f"mixed_precision {precision}: {what} has no native {precision} (emulated, it is slower than "
                         "fp32); use mixed_precision no")
    return "no", f"note: the model was trained in {precision}, which {what} only emulates; predicting in fp32"


def default_max_length(tokenizer, trained: int | None = None) -> int:
    """The length the model was trained with (`absa_max_length`); for older folders the tokenizer's own limit, 512
    when it declares none (some set a huge placeholder)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(trained) if trained else int(limit) if limit and limit <= 100_000 else 512


def checked_max_length(max_length: int, config: dict) -> int:
    """`max_length` when the encoder's position embeddings hold that many tokens (DeBERTa-v2/v3 without absolute
    positions: any); a ValueError when they do not."""
    size = config.get("max_position_embeddings")
    if not size or config.get("position_biased_input") is False:
        return max_length
    limit = int(size) - (int(config.get("pad_token_id") or 0) + 1 if config.get("model_type") in
                         ROBERTA_STYLE_POSITIONS else 0)
    if max_length > limit:
        raise ValueError(f"max_length {max_length} is more tokens than this encoder has positions for ({limit}); "
                         f"use at most {limit}")
    return max_length


def length_sorted_loader(features: list[dict], collator, batch_size: int) -> DataLoader:
    """Batches of similar length, longest first (running out of memory shows at once), padded per batch; the aspects
    of one text side by side, so the collator encodes that text once."""
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
