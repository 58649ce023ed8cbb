"""Offline, deterministic tiny encoder fixtures (random weights, tokenizers trained on a local corpus).

Every folder written here loads with ``AutoTokenizer.from_pretrained(folder)`` / ``AutoModel.from_pretrained(folder)``
without touching the Hugging Face Hub. Models have 2 layers, hidden size 32, 4 heads, intermediate size 64.

Notes on transformers 5.x tokenizers (checked against 5.23.0):

* There are no separate ``...TokenizerFast`` classes any more: ``BertTokenizer``, ``RobertaTokenizer``,
  ``XLMRobertaTokenizer``, ``DebertaV2Tokenizer`` are all ``TokenizersBackend`` subclasses (``is_fast`` is True) and
  ``BertTokenizerFast`` etc. are plain aliases. ``AutoTokenizer.from_pretrained`` silently ignores ``use_fast=False``.
* Model-specific classes rebuild their normalizer / pre-tokenizer in ``__init__`` and take only the vocab (and
  merges / post-processor) from ``tokenizer.json``. So the pipeline in a saved tokenizer.json is *not* what gets
  loaded; what matters is the trained vocabulary plus the class and its init kwargs in ``tokenizer_config.json``.
  That is why the builders below train a vocabulary with ``tokenizers`` and then hand it to the transformers class.
* ``XLMRobertaTokenizer`` hard-codes ``unk_id=3``, so its vocab must start ``<s> <pad> </s> <unk>``.
* "Slow" tokenizers still exist as ``PythonBackend`` (alias ``PreTrainedTokenizer``) subclasses, ``is_fast`` False.
  Of the families here only BERT has one: ``BertTokenizerLegacy`` (WordPiece in pure Python, reads ``vocab.txt``).
  ``AutoTokenizer`` returns it when ``tokenizer_config.json`` names ``"tokenizer_class": "BertTokenizerLegacy"``
  (see :func:`build_slow_tokenizer_folder`). Its encodings' ``char_to_token`` raises ``ValueError``, and
  ``return_offsets_mapping=True`` is silently ignored (no ``offset_mapping`` key; transformers 4 raised
  ``NotImplementedError``), so callers must check ``tokenizer.is_fast`` themselves.
* A folder with only a sentencepiece model (``spm.model`` for DeBERTa-v2, ``sentencepiece.bpe.model`` for XLM-R)
  still loads as a *fast* tokenizer: ``TokenizersBackend`` parses the proto (sentencepiece's bundled protobuf
  module) and builds a ``tokenizers`` Unigram model from its pieces (see :func:`build_sentencepiece_only_folder`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

FAMILIES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "electra")

CORPUS = Path(__file__).resolve().parent / "fixtures" / "corpus.txt"
MAX_LENGTH = 128  # tokenizer model_max_length
VOCAB_SIZE = 1000  # target; Unigram stops earlier on this small corpus
HIDDEN = 32
SEED = 0

_WORD_START = "\u2581"  # "▁"
_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# DeBERTa-v3 order: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3.
_DEBERTA_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
# fairseq order used by RoBERTa and required by XLMRobertaTokenizer (unk_id=3): <s>=0 <pad>=1 </s>=2 <unk>=3.
_ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def corpus_lines() -> list[str]:
    return [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- tokenizers


def _train_wordpiece() -> transformers.BertTokenizer:
    # tokenizers' WordPieceTrainer is not deterministic: it numbers "##x" pieces in hash-map order, which changes
    # tie-breaking between merges and hence the vocabulary from run to run. Its BpeTrainer is deterministic, so we
    # run that (it is what WordPieceTrainer wraps) with word starts marked by "▁" instead of continuations
    # marked by "##", then rename pieces into WordPiece form.
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    # Same normalisation as BertTokenizer(do_lower_case=True): lowercase + strip accents.
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Metaspace(replacement=_WORD_START, split=False)]
    )
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=_BERT_SPECIALS, show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer)

    vocab: dict[str, int] = {}
    for piece, _ in sorted(tok.get_vocab().items(), key=lambda item: item[1]):
        if piece in _BERT_SPECIALS:
            names = [piece]
        elif piece.startswith(_WORD_START):
            names = [piece[1:]] if len(piece) > 1 else []
        elif len(piece) == 1:
            names = [piece, "##" + piece]  # single characters: usable at word start and inside words
        else:
            names = ["##" + piece]
        for name in names:
            vocab.setdefault(name, len(vocab))
    # BertTokenizer builds the BERT normalizer, pre-tokenizer and [CLS] $A [SEP] post-processor around the vocab.
    return transformers.BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=MAX_LENGTH)


def _train_byte_level_bpe() -> transformers.RobertaTokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=_ROBERTA_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no <unk> for "日本"
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # RoBERTa defaults: add_prefix_space=False, trim_offsets=True (offsets of "Ġbattery" exclude the space).
    return transformers.RobertaTokenizer(
        vocab=model["vocab"], merges=merges, add_prefix_space=False, trim_offsets=True, model_max_length=MAX_LENGTH
    )


def _train_unigram(specials: list[str], unk: str) -> list[tuple[str, float]]:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_WORD_START, prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, unk_token=unk, show_progress=False
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    # The trainer is not deterministic in the last digits: scores carry float noise from parallel EM, and the
    # characters it appends at the end get scores 1e-4 apart in hash-map order. Round scores to 2 decimals and
    # order pieces by (score, piece) after the special tokens so ids and scores are the same on every run.
    vocab = [(piece, round(score, 2)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    head, rest = vocab[: len(specials)], vocab[len(specials) :]
    return head + sorted(rest, key=lambda item: (-item[1], item[0]))


def _train_xlm_roberta() -> transformers.XLMRobertaTokenizer:
    vocab = _train_unigram(_ROBERTA_SPECIALS, "<unk>")
    return transformers.XLMRobertaTokenizer(vocab=vocab, model_max_length=MAX_LENGTH)


def _train_deberta_v2() -> transformers.DebertaV2Tokenizer:
    vocab = _train_unigram(_DEBERTA_SPECIALS, "[UNK]")
    return transformers.DebertaV2Tokenizer(vocab=vocab, model_max_length=MAX_LENGTH)


# --------------------------------------------------------------------------- models


def _config(family: str, vocab_size: int, pad_token_id: int) -> transformers.PreTrainedConfig:
    common = {
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": MAX_LENGTH,
        "pad_token_id": pad_token_id,
    }
    if family == "bert":
        return transformers.BertConfig(**common)
    if family == "electra":
        # embedding_size < hidden_size exercises ELECTRA's embeddings_project, as in electra-small.
        return transformers.ElectraConfig(embedding_size=16, **common)
    if family in ("roberta", "xlm-roberta"):
        # Position ids start at padding_idx + 1 = 2, so 128 tokens need 130 positions (like 514 for roberta-base).
        common.update(max_position_embeddings=MAX_LENGTH + 2, type_vocab_size=1, bos_token_id=0, eos_token_id=2)
        cls = transformers.RobertaConfig if family == "roberta" else transformers.XLMRobertaConfig
        return cls(**common)
    if family == "deberta-v2":
        # DeBERTa-v3-style disentangled attention with relative positions only.
        return transformers.DebertaV2Config(
            **common,
            type_vocab_size=0,
            relative_attention=True,
            position_biased_input=False,
            pos_att_type=["p2c", "c2p"],
            max_relative_positions=-1,
            position_buckets=32,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
        )
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def _save_random_model(family: str, folder: Path, vocab_size: int, pad_token_id: int) -> None:
    config = _config(family, vocab_size, pad_token_id)
    # Fixed seed for reproducible weights, without disturbing the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = transformers.AutoModel.from_config(config)
    model.save_pretrained(folder)  # config.json (with model_type) + model.safetensors


_TOKENIZER_BUILDERS = {
    "bert": _train_wordpiece,
    "electra": _train_wordpiece,
    "roberta": _train_byte_level_bpe,
    "xlm-roberta": _train_xlm_roberta,
    "deberta-v2": _train_deberta_v2,
}


def build_tiny_encoder(family: str, folder: Path) -> Path:
    """Write a complete model folder for ``family`` (one of FAMILIES) into ``folder`` and return it."""
    if family not in _TOKENIZER_BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _TOKENIZER_BUILDERS[family]()
    tokenizer.save_pretrained(folder)
    _save_random_model(family, folder, len(tokenizer), tokenizer.pad_token_id)
    return folder


# --------------------------------------------------------------------------- sentencepiece-only and slow


def _train_sentencepiece(path: Path, **special_ids) -> None:
    import sentencepiece as spm

    spm.set_random_generator_seed(SEED)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=buffer,
        model_type="unigram",
        vocab_size=800,
        hard_vocab_limit=False,  # the corpus is too small to guarantee an exact size
        character_coverage=1.0,  # keep é, ß, 日 as pieces instead of <unk>
        num_threads=1,
        minloglevel=2,
        **special_ids,
    )
    path.write_bytes(buffer.getvalue())


def build_sentencepiece_only_folder(folder: Path, family: str = "deberta-v2") -> Path:
    """A model folder whose tokenizer is only a sentencepiece model file (no tokenizer.json / tokenizer_config.json).

    ``family="deberta-v2"`` writes ``spm.model`` (pieces [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3, like DeBERTa-v3);
    ``family="xlm-roberta"`` writes ``sentencepiece.bpe.model`` (sentencepiece defaults <unk>=0 <s>=1 </s>=2, which
    transformers re-maps to the fairseq order and appends <mask>, like the real XLM-R checkpoint).

    transformers 5.23 still loads these with ``AutoTokenizer``: the model type picks DebertaV2Tokenizer /
    XLMRobertaTokenizer (both ``TokenizersBackend``), whose ``convert_to_native_format`` finds the ``.model`` file,
    reads it with ``SentencePieceExtractor`` (protobuf via ``sentencepiece.sentencepiece_model_pb2``) and builds a
    fast Unigram tokenizer. The sentencepiece normalizer (precompiled charsmap) is dropped for DeBERTa-v2 and used by
    XLM-R. DeBERTa-v2 gets [MASK] appended as an added token since it is not in the sentencepiece vocab.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if family == "deberta-v2":
        _train_sentencepiece(
            folder / "spm.model",
            pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]",
            eos_id=2, eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]",
        )  # fmt: skip
    elif family == "xlm-roberta":
        _train_sentencepiece(folder / "sentencepiece.bpe.model")
    else:
        raise ValueError("sentencepiece-only folders exist for 'deberta-v2' and 'xlm-roberta' only")
    # The vocabulary size (including tokens transformers adds) is only known after the conversion.
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, config=_config(family, 8, 0))
    _save_random_model(family, folder, len(tokenizer), tokenizer.pad_token_id)
    return folder


def build_slow_tokenizer_folder(folder: Path) -> Path:
    """A BERT model folder whose tokenizer loads as a *slow* (pure-Python) tokenizer, ``is_fast`` False.

    transformers 5.23 has no ``use_fast=False`` any more (AutoTokenizer ignores it), but ``PythonBackend``
    tokenizers remain. For BERT that is ``BertTokenizerLegacy``; naming it in ``tokenizer_config.json`` next to a
    ``vocab.txt`` makes ``AutoTokenizer.from_pretrained(folder)`` return it. ``return_offsets_mapping=True`` is
    silently ignored and ``encoding.char_to_token`` raises ``ValueError``, which is why the product must refuse it.
    The folder also holds a random tiny ``BertModel`` so whole loaders can be pointed at it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast = _train_wordpiece()
    vocab = sorted(fast.get_vocab().items(), key=lambda item: item[1])
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")
    slow_config = {"tokenizer_class": "BertTokenizerLegacy", "do_lower_case": True, "model_max_length": MAX_LENGTH}
    (folder / "tokenizer_config.json").write_text(json.dumps(slow_config, indent=2), encoding="utf-8")
    _save_random_model("bert", folder, len(vocab), fast.pad_token_id)
    return folder


def load_slow_tokenizer(folder: Path) -> transformers.PreTrainedTokenizer:
    """Load the folder from :func:`build_slow_tokenizer_folder` the way the product would (AutoTokenizer)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert not tokenizer.is_fast, type(tokenizer)
    return tokenizer
