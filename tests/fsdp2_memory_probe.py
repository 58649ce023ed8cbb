"""Run by tests/test_fsdp2_memory.py through tests/fsdp2_on_cpu.py on 2 gloo processes (FSDP2 in effect, the
environment of accelerate_configs/xl.yaml); prints one JSON line per rank, starting with "probe ".

    python fsdp2_memory_probe.py MODEL_DIR SMALL_MODEL_DIR

With the Accelerator of absa.training.make_accelerator (gradient accumulation over 2 micro-batches):
* AbsaClassifier.from_encoder(MODEL_DIR) under fsdp_cpu_ram_efficient_loading: this rank's RSS before, its peak
  during the load and the sharding, whether its encoder parameters are on meta, and after accelerator.prepare
  whether its full weights equal the file;
* with SMALL_MODEL_DIR, micro-batches as the scripts run them, then with accelerate's default (no sync between
  micro-batches): the gradient elements held unsharded / sharded after each micro-batch.
"""

import json
import os
import resource
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from absa.model import AbsaClassifier
from absa.settings import TrainingSettings
from absa.training import make_accelerator

LABELS = ["negative", "neutral", "positive"]


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def gradient_elements(model) -> tuple[int, int]:
    """(unsharded, sharded) gradient elements this rank holds in the FSDP2 units of `model`."""
    from torch.distributed.fsdp import FSDPModule

    unsharded = sharded = 0
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        for group in module._get_fsdp_state()._fsdp_param_groups:
            for param in group.fsdp_params:
                full = param.unsharded_accumulated_grad
                if full is None and hasattr(param, "_unsharded_param"):
                    full = param._unsharded_param.grad
                unsharded += 0 if full is None else full.numel()
                grad = param.sharded_param.grad
                sharded += 0 if grad is None else grad.to_local().numel()
    return unsharded, sharded


def main(model_dir: str, small_model_dir: str) -> None:
    settings = TrainingSettings(gradient_accumulation_steps=2, output_dir=os.environ["PROBE_OUTPUT_DIR"])
    accelerator = make_accelerator(settings)  # fsdp2_on_cpu's FSDP2 Accelerator
    before = rss_mib()
    model = AbsaClassifier.from_encoder(model_dir, LABELS)
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    encoder_params = list(model.encoder.parameters())
    on_meta = sum(p.is_meta for p in encoder_params)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    prepared_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    full = {name: value.full_tensor() if hasattr(value, "full_tensor") else value
            for name, value in model.state_dict().items()}
    saved = load_file(Path(model_dir) / "model.safetensors")
    equal = all(torch.equal(full[f"encoder.{name}"], value.float()) for name, value in saved.items())
    compared = len(saved)
    del full, saved, model, optimizer
    accelerator.free_memory()

    model = AbsaClassifier.from_encoder(small_model_dir, LABELS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    total = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(accelerator.process_index)
    batch = {"input_ids": torch.randint(5, 90, (2, 12), generator=generator),
             "attention_mask": torch.ones(2, 12, dtype=torch.long),
             "aspect_mask": torch.zeros(2, 12, dtype=torch.long).index_fill_(1, torch.tensor([3, 4]), 1)}
    labels = torch.tensor([0, 2])

    def micro_batch():
        with accelerator.accumulate(model):
            loss = torch.nn.functional.cross_entropy(model(**batch).float(), labels)
            accelerator.backward(loss)
            counts = gradient_elements(model)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {"sync_step": accelerator.sync_gradients, "unsharded": counts[0], "sharded": counts[1]}

    scripts = [micro_batch(), micro_batch()]
    accelerator.gradient_state.plugin_kwargs["sync_each_batch"] = False  # accelerate's default
    default = [micro_batch(), micro_batch()]
    line = json.dumps({"rank": accelerator.process_index, "rss_before_mib": before, "rss_peak_load_mib": load_peak,
                       "rss_peak_prepared_mib": prepared_peak, "encoder_params": len(encoder_params),
                       "encoder_params_on_meta": on_meta, "weights_equal_file": equal, "compared": compared,
                       "mixed_precision": accelerator.mixed_precision, "total": total, "scripts": scripts,
                       "default": default})
    sys.stdout.write(f"probe {line}\n")  # one write: the ranks share stdout
    sys.stdout.flush()
    accelerator.end_training()


if __name__ == "__main__":
    main(*sys.argv[1:])
