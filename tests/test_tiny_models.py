"""The offline tiny-model fixtures behave like the real checkpoints the product is used with."""

import pytest
import tiny_models
import torch
import transformers

MODEL_CLASSES = {
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "xlm-roberta": "XLMRobertaModel",
    "deberta-v2": "DebertaV2Model",
    "electra": "ElectraModel",
}


def load_tokenizer(folder):
    return transformers.AutoTokenizer.from_pretrained(folder)


def tokens_for(tokenizer, text, span_text):
    """Token indices covering the characters of ``span_text`` (first occurrence) in ``text``."""
    encoding = tokenizer(text)
    start = text.index(span_text)
    indices = {encoding.char_to_token(i) for i in range(start, start + len(span_text))}
    indices.discard(None)
    return encoding, sorted(indices)


def test_fast_tokenizer_and_model_class(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    assert tokenizer.is_fast
    assert tokenizer.model_max_length == tiny_models.MAX_LENGTH
    config = transformers.AutoConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == tiny_model_dir.name
    assert config.vocab_size == len(tokenizer)
    assert config.hidden_size == 32 and config.num_hidden_layers == 2


def test_char_to_token_single_word(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    text = "The battery, however, lasts."
    encoding, indices = tokens_for(tokenizer, text, "battery")
    assert indices
    special = set(tokenizer.all_special_ids)
    assert all(encoding["input_ids"][i] not in special for i in indices)
    # Offsets of the aspect's tokens stay on the word (DeBERTa-v2 offsets may include the leading space).
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    covered = "".join(text[offsets[i][0] : offsets[i][1]] for i in indices)
    assert covered.strip() == "battery"


def test_multi_token_aspect(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    _, indices = tokens_for(tokenizer, "The operating system is slow.", "operating system")
    assert len(indices) >= 2
    assert indices == list(range(indices[0], indices[-1] + 1))  # contiguous


def test_non_ascii_word_maps_to_known_tokens(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    text = "The café was great."
    encoding, indices = tokens_for(tokenizer, text, "café")
    assert indices
    assert all(encoding["input_ids"][i] != tokenizer.unk_token_id for i in indices)
    start = text.index("café")
    assert all(encoding.char_to_token(i) is not None for i in range(start, start + 4))


def test_model_forward_batch(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    model = transformers.AutoModel.from_pretrained(tiny_model_dir).eval()
    assert type(model).__name__ == MODEL_CLASSES[tiny_model_dir.name]
    batch = tokenizer(["The screen is great.", "Service was slow, but the food (pasta) was good."],
                      padding=True, return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], 32)
    assert torch.isfinite(hidden).all()


def test_model_accepts_max_length_input(tiny_model_dir):
    # Catches a wrong max_position_embeddings (RoBERTa / XLM-R need 2 extra positions for the padding offset).
    tokenizer = load_tokenizer(tiny_model_dir)
    model = transformers.AutoModel.from_pretrained(tiny_model_dir).eval()
    batch = tokenizer("the battery lasts long " * 100, truncation=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] == tiny_models.MAX_LENGTH
    with torch.no_grad():
        assert model(**batch).last_hidden_state.shape == (1, tiny_models.MAX_LENGTH, 32)


def test_builds_are_deterministic(tiny_model_dirs, tmp_path):
    for family, folder in tiny_model_dirs.items():
        rebuilt = tiny_models.build_tiny_encoder(family, tmp_path / family)
        for path in sorted(folder.iterdir()):
            assert (rebuilt / path.name).read_bytes() == path.read_bytes(), (family, path.name)


@pytest.mark.parametrize("family", ["deberta-v2", "xlm-roberta"])
def test_sentencepiece_only_folder_loads_fast(family, sentencepiece_model_dir, tmp_path):
    folder = (
        sentencepiece_model_dir
        if family == "deberta-v2"
        else tiny_models.build_sentencepiece_only_folder(tmp_path / family, family=family)
    )
    assert not (folder / "tokenizer.json").exists()
    assert any(path.suffix == ".model" for path in folder.iterdir())
    tokenizer = load_tokenizer(folder)
    assert tokenizer.is_fast
    _, indices = tokens_for(tokenizer, "The battery, however, lasts.", "battery")
    assert indices
    model = transformers.AutoModel.from_pretrained(folder).eval()
    assert type(model).__name__ == MODEL_CLASSES[family]
    with torch.no_grad():
        hidden = model(**tokenizer(["The café is cozy."], return_tensors="pt")).last_hidden_state
    assert hidden.shape[-1] == 32


def test_slow_tokenizer(slow_tokenizer, slow_tokenizer_dir):
    assert slow_tokenizer.is_fast is False
    assert slow_tokenizer.tokenize("The battery") == ["the", "battery"]
    # What the product has to guard against: no char alignment on slow tokenizers.
    with pytest.raises(ValueError):
        slow_tokenizer("The battery").char_to_token(4)
    assert "offset_mapping" not in slow_tokenizer("The battery", return_offsets_mapping=True)  # silently dropped
    # The folder also carries a loadable BERT model, so a full loader can be pointed at it.
    assert type(transformers.AutoModel.from_pretrained(slow_tokenizer_dir)).__name__ == "BertModel"
