"""Scale guide: parameters, training-state memory and GPU count per encoder. Runs offline.

    python bench/scale_guide.py --headroom 0.2

Each encoder is built from its real config.json dimensions on the meta device (no weights, no
download), so parameter counts are exact for the encoder as the scripts load it (AutoModel, pooler
dropped where the class has one; the classification head, hidden_size x labels, is left out).

Byte accounting (AdamW, per parameter), each figure computed from those counts:
* fp32 state: 4 weight + 4 grad + 8 AdamW (exp_avg, exp_avg_sq)                  = 16 B.
* One GPU, bf16 autocast: the fp32 state + the bf16 weight copies autograd keeps for backward = 18 B.
* DDP (base.yaml, large.yaml): + DDP's fp32 gradient buckets (accelerate leaves gradient_as_bucket_view
  off, so the reducer holds a second copy of every gradient)                        = 22 B.
* FSDP2 full shard (xl.yaml, xxl.yaml; MixedPrecisionPolicy bf16, fp32 master weights): 16 B x the
  elements of one rank's shard (every parameter split along dim 0 in N chunks, padded to the largest,
  as fully_shard stores it), plus the unsharded bf16 params and grads of the units in flight: the root
  unit (everything outside an encoder layer) and two layers (current + prefetched) = 4 B x (non-layer
  + 2 x layer params).
* Gradient accumulation under FSDP2: the scripts reduce-scatter every micro-batch
  (absa.training.make_accelerator), so it adds nothing. accelerate's default (no_sync between
  micro-batches) would keep the whole model's bf16 gradient unsharded on every GPU: + 2 B x params per
  GPU; shown for comparison.
* A full checkpoint gather (FULL_STATE_DICT) holds what is saved: fp32 weights + AdamW states = 12 B
  (gradients are not saved). The configs save SHARDED_STATE_DICT and gather only the weights (4 B).
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
STATE_BYTES = 16  # fp32 weight + grad + AdamW exp_avg + exp_avg_sq
ONE_GPU_BYTES = STATE_BYTES + 2  # + bf16 autocast weight copies saved for backward
DDP_BYTES = ONE_GPU_BYTES + 4  # + DDP's fp32 gradient buckets
CHECKPOINT_BYTES = 12  # what a full checkpoint holds: fp32 weights + AdamW states (no gradients)
UNSHARDED_GRAD_BYTES = 2  # bf16 gradient of every parameter, kept unsharded by FSDP2 under no_sync
IN_FLIGHT_BYTES = 4  # bf16 params + bf16 grads of the unsharded units
MAX_GPUS = 1024


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


def parameter_shapes(config) -> list[torch.Size]:
    return [p.shape for p in build_meta(config).parameters()]


def shard_elements(shapes, gpus: int) -> int:
    """Elements one rank stores under FSDP2 full shard on `gpus` ranks: every parameter is split along dim 0 into
    `gpus` chunks, each padded to the largest (torch's fully_shard; tests check it against fully_shard itself)."""
    return sum(math.ceil(shape[0] / gpus) * math.prod(shape[1:]) for shape in shapes)


def fsdp_bytes_per_gpu(shapes, params, layer, layers, gpus, unsharded_accumulation=False) -> int:
    """One GPU's training state under FSDP2 full shard (activations excluded): the sharded fp32 state, the bf16
    params and grads of the units in flight, and with accelerate's no_sync accumulation the whole bf16 gradient."""
    in_flight = IN_FLIGHT_BYTES * ((params - layers * layer) + 2 * layer)
    unsharded = UNSHARDED_GRAD_BYTES * params if unsharded_accumulation else 0
    return STATE_BYTES * shard_elements(shapes, gpus) + in_flight + unsharded


def min_gpus(shapes, params, layer, layers, gib, headroom, unsharded_accumulation=False):
    """Smallest number of `gib` GPUs whose usable memory holds the FSDP2 state; None if no count up to MAX_GPUS."""
    usable = gib * GIB * (1 - headroom)
    return next((n for n in range(1, MAX_GPUS + 1)
                 if fsdp_bytes_per_gpu(shapes, params, layer, layers, n, unsharded_accumulation) <= usable), None)


def pick_config(params):
    if params < 0.3e9:
        return "base.yaml"
    if params < 0.8e9:
        return "large.yaml"
    return "xl.yaml" if params < 5e9 else "xxl.yaml"


def gib(n_bytes) -> str:
    return f"{n_bytes / GIB:.1f}"


def rows(headroom):
    for name, model_type, values in MODELS:
        config = AutoConfig.for_model(model_type, **values)
        params, layer = count_params(config)
        shapes = parameter_shapes(config)
        layers = config.num_hidden_layers
        sharded = [min_gpus(shapes, params, layer, layers, g, headroom) for g in GPUS]
        unsharded = [min_gpus(shapes, params, layer, layers, g, headroom, unsharded_accumulation=True) for g in GPUS]
        # Too big for one GPU even sharded over one: offload params, grads and AdamW states to host RAM.
        offload = [str(g) for g, n in zip(GPUS, sharded) if n != 1]
        host_ram = f"host RAM >= {STATE_BYTES * params / GIB:.0f} GiB"
        yield {
            "model": f"`{name}`", "params": f"{params / 1e6:,.0f} M", "config": pick_config(params),
            "fp32 W+G+AdamW GiB (16 B/p)": gib(STATE_BYTES * params),
            "1 GPU bf16 GiB (18 B/p)": gib(ONE_GPU_BYTES * params),
            "DDP per GPU GiB (22 B/p)": gib(DDP_BYTES * params),
            f"FSDP2 min GPUs {' / '.join(map(str, GPUS))} GiB, with or without accumulation":
                " / ".join(str(n) if n else "-" for n in sharded),
            "same, if accumulation kept gradients unsharded (accelerate's default)":
                " / ".join(str(n) if n else "-" for n in unsharded),
            "+ GiB per GPU that would cost": gib(UNSHARDED_GRAD_BYTES * params),
            "full checkpoint GiB (12 B/p)": gib(CHECKPOINT_BYTES * params),
            "CPU offload on 1 GPU": f"yes on {', '.join(offload)} GiB ({host_ram})" if offload else "no",
        }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--headroom", type=float, default=0.2, help="fraction of each GPU kept free")
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()
    print(f"Command: `python bench/scale_guide.py --headroom {args.headroom}`\n")
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' meta-init chatter
        table = list(rows(args.headroom))
    print("| " + " | ".join(table[0]) + " |")
    print("|" + "---|" * len(table[0]))
    for row in table:
        print("| " + " | ".join(row.values()) + " |")
    print(f"\nActivations not included; {args.headroom:.0%} of each GPU reserved for them and overheads. FSDP2 per "
          "GPU = 16 B x one rank's shard + 4 B x (non-layer params + 2 layers) in flight (+ 2 B x params with "
          "unsharded accumulation).")


if __name__ == "__main__":
    main()
