"""The TD-BERT-style ABSA model (absa/model.py) on every encoder family, with both poolings."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import datasets
import pytest
import tiny_models
import torch
from safetensors.torch import load_file

from absa.aspects import AspectCollator, encode_absa_splits
from absa.data import DEFAULT_LABELS
from absa.model import POOLINGS, WEIGHTS_NAME, AbsaClassifier
from absa.encoders import load_tokenizer, resolve_model_path

FAMILIES = tiny_models.FAMILIES
EXAMPLES = [
    ("The screen is gorgeous, but the battery dies fast.", "battery", 0),
    ("The operating system boots in under ten seconds.", "operating system", 2),
    ("Bad fan.", "fan", 0),
    ("The Größe of the portions surprised us.", "Größe", 1),
]


@pytest.fixture(scope="module")
def batches(tiny_model_dirs) -> dict[str, dict]:
    """family -> one padded batch of EXAMPLES, built by the real pipeline (encode_absa_splits + AspectCollator)."""
    rows = [{"text": t, "aspect": a, "start": t.index(a), "end": t.index(a) + len(a), "label": y}
            for t, a, y in EXAMPLES]
    result = {}
    for family, folder in tiny_model_dirs.items():
        tokenizer = load_tokenizer(str(folder))
        encoded = encode_absa_splits(datasets.Dataset.from_list(rows), tokenizer, max_length=64)
        result[family] = AspectCollator(tokenizer)([encoded[i] for i in range(len(encoded))])
    return result


def new_model(folder, pooling="max", labels=DEFAULT_LABELS) -> AbsaClassifier:
    torch.manual_seed(0)
    return AbsaClassifier.from_encoder(str(folder), labels, pooling=pooling)


@pytest.fixture(scope="module")
def loaded(tiny_model_dirs) -> dict[str, AbsaClassifier]:
    """family -> a model from from_encoder, loaded once; tests take copies (loading is most of their time)."""
    return {family: new_model(folder) for family, folder in tiny_model_dirs.items()}


def copy_of(loaded, family, pooling="max") -> AbsaClassifier:
    model = copy.deepcopy(loaded[family])
    model.pooling = model.config.absa_pooling = pooling
    return model


def forward(model, batch):
    """(logits, cross-entropy loss) the way finetune_absa.py computes them: the model returns logits."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs)
    return logits, torch.nn.functional.cross_entropy(logits.float(), batch["labels"])


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_backward_every_parameter_gets_a_gradient(loaded, batches, family, pooling):
    model = copy_of(loaded, family, pooling)
    model.train()
    batch = batches[family]
    assert model.pooling == pooling and model.config.absa_pooling == pooling
    logits, loss = forward(model, batch)
    assert logits.shape == (len(EXAMPLES), 3)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    names = [name for name, _ in model.named_parameters()]
    assert not [n for n in names if "pooler" in n], "the unused pooler would get no gradient (DDP refuses that)"
    without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without == [], f"parameters without gradient: {without}"
    assert all(p.requires_grad for p in model.parameters())
    grads = dict(model.named_parameters())
    assert grads["classifier.weight"].grad.abs().sum() > 0 and grads["classifier.bias"].grad.abs().sum() > 0
    encoder_grads = [p.grad.abs().sum() for n, p in model.named_parameters() if n.startswith("encoder.")]
    assert len(encoder_grads) > 10 and sum(g > 0 for g in encoder_grads) > len(encoder_grads) // 2
    # the word embeddings of the aspect tokens do get a gradient
    embeddings = model.encoder.get_input_embeddings().weight.grad
    aspect_ids = batch["input_ids"][batch["aspect_mask"]].unique()
    assert embeddings[aspect_ids].abs().sum(dim=1).gt(0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_shared_text_gives_the_logits_and_gradients_of_separate_passes(tiny_model_dirs, loaded, family):
    text = EXAMPLES[0][0]
    rows = [{"text": t, "aspect": a, "start": t.index(a), "end": t.index(a) + len(a), "label": y}
            for t, a, y in [(text, "screen", 2), ("Bad fan.", "fan", 0), (text, "battery", 0)]]
    tokenizer = load_tokenizer(str(tiny_model_dirs[family]))
    encoded = encode_absa_splits(datasets.Dataset.from_list(rows), tokenizer, max_length=64)
    features = [encoded[i] for i in range(len(encoded))]
    model = copy_of(loaded, family).eval()  # no dropout: both ways compute the same function
    outputs = {}
    for share in (True, False):
        batch = AspectCollator(tokenizer, share_texts=share)(features)
        assert batch["input_ids"].shape[0] == (2 if share else 3)
        model.zero_grad()
        logits, loss = forward(model, batch)
        loss.backward()
        outputs[share] = logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.testing.assert_close(outputs[True][0], outputs[False][0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(outputs[True][0][0], outputs[True][0][2])  # two aspects, two answers
    for name, grad in outputs[True][1].items():
        torch.testing.assert_close(grad, outputs[False][1][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_pooling_is_max_or_mean_over_the_aspect_tokens(loaded, batches, family):
    model = copy_of(loaded, family, "max").eval()
    batch = batches[family]
    with torch.no_grad():
        hidden = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        logits_max = forward(model, batch)[0]
        model.pooling = "mean"
        logits_mean = forward(model, batch)[0]
    mask = batch["aspect_mask"]
    expected_max = torch.stack([hidden[i][mask[i]].max(dim=0).values for i in range(len(mask))])
    expected_mean = torch.stack([hidden[i][mask[i]].mean(dim=0) for i in range(len(mask))])
    torch.testing.assert_close(logits_max, model.classifier(expected_max))
    torch.testing.assert_close(logits_mean, model.classifier(expected_mean))
    assert not torch.allclose(logits_max, logits_mean, atol=1e-4)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_pooling_really_uses_the_aspect(loaded, batches, family, pooling):
    model = copy_of(loaded, family, pooling).eval()
    batch = dict(batches[family])
    with torch.no_grad():
        before = forward(model, batch)[0]
        other = torch.zeros_like(batch["aspect_mask"])
        other[:, 1] = True  # the first real token instead of the aspect; nothing else changes
        assert not torch.equal(other, batch["aspect_mask"])
        after = forward(model, {**batch, "aspect_mask": other})[0]
    changed = [not torch.allclose(before[i], after[i], atol=1e-5) for i in range(len(EXAMPLES))]
    assert all(changed), changed


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_gives_identical_logits(loaded, batches, tmp_path, family, pooling):
    model = copy_of(loaded, family, pooling).eval()
    batch = batches[family]
    with torch.no_grad():
        logits = forward(model, batch)[0]
    folder = tmp_path / "best_model"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}
    assert config["absa_pooling"] == pooling
    assert config["architectures"] == ["AbsaClassifier"]
    assert config["model_type"] == family
    reloaded = AbsaClassifier.from_pretrained(folder).eval()
    assert reloaded.pooling == pooling and reloaded.config.id2label == dict(enumerate(DEFAULT_LABELS))
    with torch.no_grad():
        again = forward(reloaded, batch)[0]
    assert torch.equal(logits, again)
    assert not [k for k in load_file(folder / WEIGHTS_NAME) if "pooler" in k]


def test_custom_labels_and_pooling_survive_a_reload(tiny_model_dirs, batches, tmp_path):
    labels = ("against", "neither", "in favor", "off topic")
    model = new_model(tiny_model_dirs["deberta-v2"], "mean", labels=labels).eval()
    assert model.config.absa_pooling == "mean" and model.config.num_labels == 4
    with torch.no_grad():
        logits = model(**{k: v for k, v in batches["deberta-v2"].items() if k != "labels"})
    assert logits.shape == (len(EXAMPLES), 4)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["id2label"] == {"0": "against", "1": "neither", "2": "in favor", "3": "off topic"}
    assert config["label2id"] == {"against": 0, "neither": 1, "in favor": 2, "off topic": 3}
    assert config["absa_pooling"] == "mean"
    reloaded = AbsaClassifier.from_pretrained(tmp_path).eval()
    assert reloaded.pooling == "mean"
    with torch.no_grad():
        assert torch.equal(reloaded(**{k: v for k, v in batches["deberta-v2"].items() if k != "labels"}),
                           logits)


def test_save_pretrained_options(loaded, batches, tmp_path):
    model = copy_of(loaded, "bert").eval()
    model.save_pretrained(tmp_path / "not_main", is_main_process=False)
    assert not (tmp_path / "not_main").exists()
    # an explicit state dict (what FSDP's accelerator.get_state_dict returns) is what gets written
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["classifier.bias"] = torch.tensor([1.0, 2.0, 3.0])
    model.save_pretrained(tmp_path / "explicit", state_dict=state)
    reloaded = AbsaClassifier.from_pretrained(tmp_path / "explicit")
    assert reloaded.classifier.bias.tolist() == [1.0, 2.0, 3.0]
    half = AbsaClassifier.from_pretrained(tmp_path / "explicit", torch_dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_from_pretrained_of_a_plain_encoder_folder(tiny_model_dirs, tmp_path):
    with pytest.raises(SystemExit) as info:
        AbsaClassifier.from_pretrained(tiny_model_dirs["bert"])
    message = str(info.value)
    assert str(tiny_model_dirs["bert"]) in message and "not an ABSA model" in message
    with pytest.raises(SystemExit, match="not an ABSA model"):
        AbsaClassifier.from_pretrained(tmp_path / "does-not-exist")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_fine_tuned_absa_folder_starts_a_new_model_with_its_encoder(tiny_model_dirs, loaded, tmp_path, family):
    # Fine-tune on one dataset (MAMS, say), then start the next (Laptop14) from its best_model: the encoder's trained
    # weights go on (not random ones, which a plain AutoModel load of the folder gives: its names have "encoder."
    # in front), the classifier is new for the new labels, and the first run's records do not carry over.
    first = copy_of(loaded, family)
    with torch.no_grad():
        for parameter in first.parameters():
            parameter.add_(torch.randn_like(parameter))
    first.config.absa_validation_split = {"made": "given"}
    first.config.absa_numeric_labels = "-1,0,1"
    first.config.absa_mixed_precision = "bf16"
    shutil.copytree(tiny_model_dirs[family], tmp_path / "mams")  # the tokenizer, as in a best_model folder
    first.save_pretrained(tmp_path / "mams")
    second = AbsaClassifier.from_encoder(str(tmp_path / "mams"), ("bad", "good"), max_length=64, mixed_precision="no")
    trained = first.encoder.state_dict()
    assert {k: v.dtype for k, v in second.encoder.state_dict().items()} == {k: v.dtype for k, v in trained.items()}
    assert all(torch.equal(v, trained[k]) for k, v in second.encoder.state_dict().items())
    assert second.classifier.weight.shape == (2, first.config.hidden_size)
    assert not torch.equal(second.classifier.weight[:2], first.classifier.weight[:2])
    assert second.config.id2label == {0: "bad", 1: "good"}
    records = {k: v for k, v in second.config.to_dict().items() if k.startswith("absa_")}
    assert records == {"absa_pooling": "max", "absa_max_length": 64, "absa_input_format": "td_bert",
                       "absa_mixed_precision": "no"}


def test_an_encoder_saved_in_half_precision_trains_in_fp32(tiny_model_dirs, tmp_path):
    # transformers 5 loads a checkpoint in the dtype it was saved in; the optimizer must update fp32 weights
    from transformers import AutoModel
    encoder = AutoModel.from_pretrained(tiny_model_dirs["roberta"], dtype=torch.bfloat16)
    shutil.copytree(tiny_model_dirs["roberta"], tmp_path, dirs_exist_ok=True)
    encoder.save_pretrained(tmp_path)
    model = AbsaClassifier.from_encoder(str(tmp_path), DEFAULT_LABELS)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    saved = load_file(tmp_path / WEIGHTS_NAME)
    assert saved["embeddings.word_embeddings.weight"].dtype == torch.bfloat16
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, saved["embeddings.word_embeddings.weight"].float())


def test_a_folder_without_the_encoders_weights_is_refused_not_started_random(tiny_model_dirs, tmp_path):
    from safetensors.torch import save_file
    shutil.copytree(tiny_model_dirs["bert"], tmp_path, dirs_exist_ok=True)
    weights = load_file(tmp_path / WEIGHTS_NAME)
    del weights["encoder.layer.1.output.dense.weight"]
    save_file(weights, tmp_path / WEIGHTS_NAME, metadata={"format": "pt"})
    with pytest.raises(SystemExit) as info:
        AbsaClassifier.from_encoder(str(tmp_path), DEFAULT_LABELS)
    message = str(info.value)
    assert message.startswith(str(tmp_path)) and "1 weights of the BertModel" in message
    assert "encoder.layer.1.output.dense.weight" in message and "start random" in message


@pytest.mark.parametrize("name", ["no-such-org/no-such-model", "/no/such/model/folder"])
def test_unknown_model_path(name):
    for load in (lambda: AbsaClassifier.from_encoder(name, DEFAULT_LABELS), lambda: load_tokenizer(name)):
        with pytest.raises(SystemExit) as info:
            load()
        message = str(info.value)
        assert message.startswith(name) and "not a local folder" in message and "Hugging Face Hub" in message
        assert "Offline?" in message and "embedded-minilm" in message


def test_folder_that_holds_no_model(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(SystemExit) as info:
        AbsaClassifier.from_encoder(str(tmp_path), DEFAULT_LABELS)
    assert str(info.value).startswith(str(tmp_path)) and "cannot load a model from this folder" in str(info.value)
    with pytest.raises(SystemExit, match="cannot load a model from this folder"):
        load_tokenizer(str(tmp_path))


def test_bad_pooling(tiny_model_dirs):
    with pytest.raises(ValueError, match="pooling must be one of"):
        AbsaClassifier.from_encoder(str(tiny_model_dirs["bert"]), DEFAULT_LABELS, pooling="cls")


def test_resolve_model_path():
    folder = Path(resolve_model_path("embedded-minilm"))
    assert folder.is_dir() and (folder / "config.json").is_file()
    assert resolve_model_path("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model_path("/some/folder") == "/some/folder"


@pytest.mark.parametrize("family", FAMILIES)
def test_no_split_modules_name_the_encoder_layers(loaded, family):
    """FSDP's transformer auto-wrap reads _no_split_modules; every family must name classes that exist."""
    model = copy_of(loaded, family)
    classes = {type(module).__name__ for module in model.modules()}
    assert model._no_split_modules
    assert set(model._no_split_modules) <= classes
    layer_class = type(model.encoder.encoder.layer[0]).__name__
    assert layer_class in model._no_split_modules


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing(loaded, batches, family):
    model = copy_of(loaded, family, "mean")
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    forward(model, batches[family])[1].backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_real_embedded_minilm():
    tokenizer = load_tokenizer("embedded-minilm")
    model = AbsaClassifier.from_encoder("embedded-minilm", DEFAULT_LABELS, pooling="max").eval()
    assert model.config.model_type == "bert" and model.config.hidden_size == 384
    rows = [{"text": t, "aspect": a, "start": t.index(a), "end": t.index(a) + len(a), "label": y}
            for t, a, y in EXAMPLES[:2]]
    encoded = encode_absa_splits(datasets.Dataset.from_list(rows), tokenizer, max_length=128)
    batch = AspectCollator(tokenizer, pad_to_multiple_of=8)([encoded[0], encoded[1]])
    assert tokenizer.convert_ids_to_tokens(batch["input_ids"][1][batch["aspect_mask"][1]]) == ["operating", "system"]
    with torch.no_grad():
        logits, loss = forward(model, batch)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all() and torch.isfinite(loss)
