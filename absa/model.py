"""One TD-BERT-style ABSA model for every encoder family (Gao et al. 2019).

encoder -> hidden states of the aspect's tokens pooled (max or mean) -> dropout -> linear -> logits.
The encoder is whatever `AutoModel` builds for the checkpoint (BERT, RoBERTa, XLM-R up to XXL, DeBERTa-v2/v3,
mDeBERTa, ELECTRA), so switching family is only a different `model_name_or_path`.

A saved model is an ordinary Hugging Face folder: config.json (the encoder's config plus `id2label`,
`label2id`, `absa_pooling` and the records of `from_encoder`), model.safetensors, and the tokenizer.
`AbsaClassifier.from_pretrained(folder)` reloads it.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from .encoders import load_pretrained, loading_error, make_fsdp_ready, resolve_model_path

WEIGHTS_NAME = "model.safetensors"
POOLINGS = ("max", "mean")


def label_names_of(config) -> list[str]:
    """The label names by label id (column order of the logits), whatever order config.json lists the ids in."""
    return [config.id2label[i] for i in range(config.num_labels)]


def layer_depth(parameter_name: str, num_layers: int) -> int:
    """Where a parameter of an AbsaClassifier sits from the input up: 0 the embeddings (and what the encoder shares
    across its layers, such as DeBERTa's and MPNet's relative positions), i + 1 encoder layer i, num_layers + 1 the
    classifier. Layer-wise learning-rate decay scales each parameter's rate by decay ** (num_layers + 1 - depth)."""
    if not parameter_name.startswith("encoder."):
        return num_layers + 1
    layer = re.search(r"\.layer\.(\d+)\.", parameter_name)
    return int(layer.group(1)) + 1 if layer else 0


def _encoder_kwargs(config) -> dict:
    # BERT-style encoders carry a pooler the ABSA head never uses; its parameters would get no gradient, which
    # DDP refuses. Families without a pooler (DeBERTa, ELECTRA) do not take the argument.
    encoder_class = MODEL_MAPPING[type(config)]
    takes_it = "add_pooling_layer" in inspect.signature(encoder_class.__init__).parameters
    return {"add_pooling_layer": False} if takes_it else {}


class AbsaClassifier(nn.Module):
    def __init__(self, encoder, pooling: str = "max", dropout: float | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        config = encoder.config
        self.encoder = encoder
        self.pooling = pooling
        config.absa_pooling = pooling
        if dropout is None:
            dropout = getattr(config, "classifier_dropout", None) or getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        make_fsdp_ready(self)  # FSDP's wrap classes: the encoder's layers, for any family

    @property
    def config(self):
        return self.encoder.config

    @classmethod
    def from_encoder(cls, name_or_path: str, label_names, pooling: str = "max", dropout: float | None = None,
                     max_length: int | None = None, input_format: str = "td_bert", validation_split: dict | None = None,
                     numeric_labels: str | None = None, mixed_precision: str | None = None,
                     **load_kwargs) -> "AbsaClassifier":
        """A new ABSA model around a pretrained encoder (Hub name, folder, or embedded short name), or around the
        encoder of a fine-tuned ABSA model folder (`save_pretrained`'s): a new classifier either way.

        `max_length` (the training length) and `input_format` (absa.aspects.INPUT_FORMATS) are recorded in the
        config as `absa_max_length` and `absa_input_format`, so that prediction builds its inputs as training did;
        `validation_split` (how validation was made, absa.splits.split_record) and `numeric_labels` (what whole-number
        labels meant, absa.files.LabelRule) as `absa_validation_split` and `absa_numeric_labels`, so that
        `use_absa.py evaluate` rebuilds the same splits and reads labels alike; `mixed_precision` (what training
        computed in: no, fp16, bf16) as `absa_mixed_precision`, the precision prediction uses by default.
        """
        path = resolve_model_path(name_or_path)
        id2label = dict(enumerate(label_names))
        try:
            config = AutoConfig.from_pretrained(path, id2label=id2label, label2id={v: k for k, v in id2label.items()})
            if hasattr(config, "absa_pooling"):
                # A fine-tuned ABSA model (a best_model folder, say of MAMS) as the start: its encoder goes on, under
                # a new classifier; its records (another dataset's split, labels, precision) are not this run's.
                for record in [key for key in vars(config) if key.startswith("absa_")]:
                    delattr(config, record)
                load_kwargs.setdefault("key_mapping", {r"^encoder\.": ""})  # AbsaClassifier's names -> encoder's
            encoder = load_pretrained(AutoModel, path, config, **_encoder_kwargs(config), **load_kwargs)
        except Exception as error:  # noqa: BLE001 - turned into a message that says what to do
            raise loading_error(name_or_path, error) from None
        model = cls(encoder, pooling=pooling, dropout=dropout)
        if max_length:
            model.config.absa_max_length = int(max_length)  # the encoder's config: the one saved
        model.config.absa_input_format = input_format
        if validation_split:
            model.config.absa_validation_split = validation_split
        if numeric_labels:
            model.config.absa_numeric_labels = numeric_labels
        if mixed_precision:
            model.config.absa_mixed_precision = mixed_precision
        nn.init.normal_(model.classifier.weight, std=getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(model.classifier.bias)
        return model

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None,
                        config=None) -> "AbsaClassifier":
        """Reload a folder written by `save_pretrained` (`config`: its `read_config`, when already read)."""
        config = config or cls.read_config(folder)
        encoder = AutoModel.from_config(config, **_encoder_kwargs(config))
        model = cls(encoder, pooling=config.absa_pooling, dropout=0.0)
        model.load_state_dict(load_file(Path(folder) / WEIGHTS_NAME), strict=True)
        return model.to(torch_dtype) if torch_dtype else model

    @staticmethod
    def read_config(folder: str | Path):
        """The config of an ABSA model folder (labels and the records of `from_encoder`), without the weights;
        anything else is a SystemExit with a one-line reason."""
        if not Path(folder).is_dir():
            raise SystemExit(f"{folder}: no such model folder (so not an ABSA model folder)")
        try:
            config = AutoConfig.from_pretrained(folder)
        except (OSError, ValueError):
            config = None
        if not hasattr(config, "absa_pooling"):
            raise SystemExit(f"{folder}: not an ABSA model folder (no config.json with 'absa_pooling'); "
                             "give the output of finetune_absa.py (its best_model folder)")
        return config

    def save_pretrained(self, folder: str | Path, state_dict: dict | None = None, is_main_process: bool = True):
        """config.json + model.safetensors. Under FSDP pass `accelerator.get_state_dict(model)` (a collective)."""
        if not is_main_process:
            return
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict() if state_dict is None else state_dict
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, folder / WEIGHTS_NAME,
                  metadata={"format": "pt"})
        self.config.architectures = [AbsaClassifier.__name__]  # not FSDP2's FSDPAbsaClassifier
        self.config.save_pretrained(folder)

    def get_input_embeddings(self):  # accelerate's FSDP2 gives the (large) word embedding its own unit
        return self.encoder.get_input_embeddings()

    def gradient_checkpointing_enable(self, **kwargs):
        self.encoder.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids, attention_mask, aspect_mask, sequence_index=None, **encoder_inputs) -> torch.Tensor:
        """Logits [aspects, labels]. The loss is the training script's (a visible line there, easy to change)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **encoder_inputs).last_hidden_state
        if sequence_index is not None:  # several aspects of one encoded sentence (AspectCollator(share_texts=True))
            hidden = hidden.index_select(0, sequence_index)
        mask = aspect_mask.unsqueeze(-1).bool()
        if self.pooling == "max":
            pooled = hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min).amax(dim=1)
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return self.classifier(self.dropout(pooled))
