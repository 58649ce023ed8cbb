"""Scale guide: parameters, training-state memory and GPU count per encoder. Runs offline.

    python bench/scale_guide.py --headroom 0.2

Each encoder is built from its real config.json dimensions on the meta device (no weights, no
download), so parameter counts are exact for the encoder as the scripts load it (AutoModel, pooler
dropped where the class has one; the classification head, hidden_size x labels, is left out).

Byte accounting (AdamW, per parameter):
* fp32:       4 weight + 4 grad + 8 AdamW (exp_avg, exp_avg_sq)             = 16 B.
* bf16 mixed: accelerate keeps fp32 master weights, fp32 grads and fp32 AdamW states (16 B) and
  computes in bf16. Single GPU / DDP (autocast): the bf16 weight copies autograd saves for
  backward add 2 B -> 18 B peak. FSDP2 (MixedPrecisionPolicy param/reduce dtype bf16; accelerate
  upcasts the sharded params to fp32): 16 B / N per GPU, plus the unsharded bf16 params and grads
  of the units in flight: the root unit (everything outside an encoder layer: embeddings, head) and
  two layers (current + prefetched) -> 4 B x (non-layer + 2 x layer params).
* Activations are NOT included; they depend on batch size and sequence length. Instead only
  (1 - headroom) of each GPU is counted as usable (default headroom 20 %: activations of short
  ABSA sequences, CUDA context, allocator fragmentation, NCCL buffers).
Memory is in GiB (2^30 B); GPUs are 40 / 80 / 141 GiB nominal.
"""

import argparse
import contextlib
import io
import math

import torch
from transformers import AutoConfig, AutoModel
from transformers.utils import logging as hf_logging

GIB = 2**30
GPUS = (40, 80, 141)

# DeBERTa-v2/v3 relative-attention settings, identical in all DeBERTa configs below.
_DEBERTA = dict(
    max_position_embeddings=512, type_vocab_size=0, relative_attention=True, position_buckets=256,
    max_relative_positions=-1, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
    share_att_key=True, position_biased_input=False, layer_norm_eps=1e-7,
)
# (hub id, model_type, config.json values). Sources, read via public copies:
MODELS = [
    # roberta-base / -large: huggingface.co/FacebookAI/roberta-base|roberta-large/blob/main/config.json
    # (read: huggingface.co/snibbles22/roberta-base "Duplicate from FacebookAI/roberta-base";
    #  huggingface.co/sentence-transformers/all-roberta-large-v1/blob/main/config.json, base roberta-large)
    ("roberta-base", "roberta", dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12,
     num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1)),
    ("roberta-large", "roberta", dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
     num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1)),
    # huggingface.co/FacebookAI/xlm-roberta-base/blob/77de1f7a7e5e737aead1cd880979d4f1b3af6668/config.json;
    # xlm-roberta-large: FacebookAI/xlm-roberta-large/blob/main/config.json (read: copy at
    # huggingface.co/Milanmg/xlm-roberta-large/blob/main/config.json; fairseq examples/xlmr/README.md:
    # "BERT-large architecture", 250k vocab)
    ("xlm-roberta-base", "xlm-roberta", dict(vocab_size=250002, hidden_size=768, num_hidden_layers=12,
     num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1)),
    ("xlm-roberta-large", "xlm-roberta", dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24,
     num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1)),
    # huggingface.co/facebook/xlm-roberta-xl/blame/main/config.json
    ("facebook/xlm-roberta-xl", "xlm-roberta-xl", dict(vocab_size=250880, hidden_size=2560,
     num_hidden_layers=36, num_attention_heads=32, intermediate_size=10240, max_position_embeddings=514,
     type_vocab_size=1)),
    # huggingface.co/facebook/xlm-roberta-xxl/blame/51b1d0c2ee16fb6e6e53548bd8f7d786a00fd360/config.json
    ("facebook/xlm-roberta-xxl", "xlm-roberta-xl", dict(vocab_size=250880, hidden_size=4096,
     num_hidden_layers=48, num_attention_heads=32, intermediate_size=16384, max_position_embeddings=514,
     type_vocab_size=1)),
    # github.com/microsoft/DeBERTa experiments/language_model/rtd_base.json, rtd_large.json
    # ("discriminator" = the released deberta-v3 model)
    ("microsoft/deberta-v3-base", "deberta-v2", dict(vocab_size=128100, hidden_size=768,
     num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, **_DEBERTA)),
    ("microsoft/deberta-v3-large", "deberta-v2", dict(vocab_size=128100, hidden_size=1024,
     num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, **_DEBERTA)),
    # github.com/microsoft/DeBERTa experiments/language_model/deberta_xlarge.json, xxlarge.json
    ("microsoft/deberta-v2-xlarge", "deberta-v2", dict(vocab_size=128100, hidden_size=1536,
     num_hidden_layers=24, num_attention_heads=24, intermediate_size=6144, conv_kernel_size=3,
     conv_act="gelu", **_DEBERTA)),
    ("microsoft/deberta-v2-xxlarge", "deberta-v2", dict(vocab_size=128100, hidden_size=1536,
     num_hidden_layers=48, num_attention_heads=24, intermediate_size=6144, conv_kernel_size=3,
     conv_act="gelu", **_DEBERTA)),
    # microsoft/mdeberta-v3-base/blob/main/config.json (read: fine-tunes that keep it verbatim, e.g.
    # huggingface.co/SiddharthaM/mdeberta-hate-final/blame/main/config.json): v3-base with a 251000 vocab
    ("microsoft/mdeberta-v3-base", "deberta-v2", dict(vocab_size=251000, hidden_size=768,
     num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, **_DEBERTA)),
]


def build_meta(config):
    """The encoder as the scripts load it (no pooler), on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        try:
            return AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:  # DeBERTa-v2, ELECTRA: no pooler argument (and no pooler)
            return AutoModel.from_config(config)


def count_params(config):
    """(total, one encoder layer) parameter counts of the encoder built from `config`."""
    model = build_meta(config)
    layer = model.encoder.layer[0]
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in layer.parameters())


def pick_config(params):
    if params < 0.3e9:
        return "base.yaml"
    if params < 0.8e9:
        return "large.yaml"
    return "xl.yaml" if params < 5e9 else "xxl.yaml"


def min_gpus(params, layer, layers, gib, headroom):
    """Smallest N with 16 B x params / N + in-flight bf16 units <= usable memory (FSDP full shard)."""
    transient = 4 * ((params - layers * layer) + 2 * layer)
    usable = gib * GIB * (1 - headroom) - transient
    return math.ceil(16 * params / usable) if usable > 0 else None


def rows(headroom):
    for name, model_type, values in MODELS:
        config = AutoConfig.for_model(model_type, **values)
        params, layer = count_params(config)
        gpus = [min_gpus(params, layer, config.num_hidden_layers, g, headroom) for g in GPUS]
        # One GPU without sharding keeps 18 B/param (bf16 mixed); offload moves the 16 B/param
        # fp32 state to host RAM.
        offload = [str(g) for g in GPUS if 18 * params > g * GIB * (1 - headroom)]
        yield (
            f"`{name}`", f"{params / 1e6:,.0f} M", f"{16 * params / GIB:.1f}", f"{18 * params / GIB:.1f}",
            pick_config(params), " / ".join(str(n) if n else "-" for n in gpus),
            f"yes on {', '.join(offload)} GiB (host RAM >= {16 * params / GIB:.0f} GiB)" if offload else "no",
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headroom", type=float, default=0.2, help="fraction of each GPU kept free")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    print(f"Command: `python bench/scale_guide.py --headroom {args.headroom}`\n")
    header = ("model", "params", "fp32 W+G+AdamW GiB (16 B/p)", "bf16-mixed peak GiB (18 B/p)", "config",
              f"min GPUs, FSDP full shard, {' / '.join(map(str, GPUS))} GiB",
              "CPU offload on 1 GPU")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' meta-init chatter
        for row in rows(args.headroom):
            print("| " + " | ".join(row) + " |")
    print(f"\nActivations not included; {args.headroom:.0%} of each GPU reserved for them and overheads. "
          "FSDP per GPU = 16 B x params / N + 4 B x (non-layer params + 2 layers) in flight.")


if __name__ == "__main__":
    main()
