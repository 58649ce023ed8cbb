"""Where one training step of the product's loop spends its time (torch.profiler, CPU), by operator.

    python bench/profile_step.py                         # bf16 autocast + fused AdamW (--mixed_precision auto here)
    python bench/profile_step.py --mixed-precision no    # fp32

The step is absa.training.fit's: forward under the accelerator's autocast, accelerator.backward, clip_grad_norm_ (1.0),
optimizer.step, scheduler.step, zero_grad(set_to_none=True); model, optimizer and scheduler come from the product's
functions, the batches from its length-grouped sampler (epoch 0, seed 42) on Laptop14 train. After --warmup steps,
--steps steps are profiled; the table groups operators into what they are for.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import torch  # noqa: E402

GROUPS = {  # operator -> what it is for
    "aten::mm": "matrix products", "aten::addmm": "matrix products", "aten::bmm": "matrix products",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "matrix products",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "matrix products",
    "aten::bernoulli_": "dropout masks (RNG)",
    "aten::_fused_adamw_": "AdamW update", "aten::_foreach_add_": "AdamW update",
    "aten::fill_": "zero-filling gradients (mostly the 30522 x 384 word-embedding gradient)",
    "aten::zero_": "zero-filling gradients (mostly the 30522 x 384 word-embedding gradient)",
    "aten::copy_": "dtype casts (autocast) and copies",
    "aten::linalg_vector_norm": "gradient clipping", "aten::_foreach_norm": "gradient clipping",
    "aten::embedding_dense_backward": "embedding backward", "aten::index_add_": "embedding backward",
    "aten::gelu": "GELU", "aten::gelu_backward": "GELU",
    "aten::native_layer_norm": "LayerNorm", "aten::native_layer_norm_backward": "LayerNorm",
    "aten::_softmax": "softmax", "aten::_softmax_backward_data": "softmax",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixed-precision", default="bf16", choices=("no", "bf16"))
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    benchlib.quiet_libraries()
    import finetune_absa
    from torch.profiler import ProfilerActivity, profile
    from absa.aspects import AspectCollator, encode_absa_splits
    from absa.batches import make_dataloaders
    from absa.training import make_accelerator, make_optimizer, make_scheduler
    from absa.model import AbsaClassifier, load_tokenizer

    command = benchlib.command_line()
    print(f"$ {command}\n{benchlib.cpu_model()}, {options.threads} threads, torch {torch.__version__}; "
          f"{benchlib.load_line()}", flush=True)
    settings = finetune_absa.Settings(model_name_or_path=benchlib.MODEL, dataset=benchlib.DATASET,
                                      output_dir="runs/bench_profile", mixed_precision=options.mixed_precision)
    accelerator = make_accelerator(settings)
    tokenizer = load_tokenizer(settings.model_name_or_path)
    features = encode_absa_splits(benchlib.laptop_splits(), tokenizer, settings.max_length)
    loaders = make_dataloaders({"train": features["train"]}, AspectCollator(tokenizer), settings)
    model = AbsaClassifier.from_encoder(settings.model_name_or_path, settings.label_names, settings.pooling)
    optimizer = make_optimizer(model, settings)
    train_loader = accelerator.prepare(loaders["train"])
    scheduler = make_scheduler(optimizer, settings, train_loader, accelerator)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    batches = iter(train_loader)

    def step():  # absa.training.fit's step (gradient accumulation 1)
        batch = next(batches)
        with accelerator.accumulate(model):
            labels = batch.pop("labels")
            loss = torch.nn.functional.cross_entropy(model(**batch).float(), labels)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        return batch["attention_mask"].numel(), int(batch["attention_mask"].sum())

    for _ in range(options.warmup):
        step()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        counts = [step() for _ in range(options.steps)]
    seconds = time.perf_counter() - started
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    grouped: dict[str, float] = {}
    for event in events:
        group = GROUPS.get(event.key, "everything else (small element-wise ops, autograd, Python)")
        grouped[group] = grouped.get(group, 0.0) + event.self_cpu_time_total
    padded, real = sum(c[0] for c in counts), sum(c[1] for c in counts)
    print(f"\n{options.steps} steps, {options.mixed_precision}: {1000 * seconds / options.steps:.0f} ms/step under the "
          f"profiler ({16 * options.steps / seconds:.1f} samples/s), {real / options.steps:.0f} real of "
          f"{padded / options.steps:.0f} padded tokens per batch")
    print(f"{'share':>6}  {'ms/step':>7}  what")
    for group, value in sorted(grouped.items(), key=lambda item: -item[1]):
        print(f"{value / total:6.1%}  {value / total * 1000 * seconds / options.steps:7.1f}  {group}")
    print("\nTop operators:")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=45))
    print(f"$ {command}")


if __name__ == "__main__":
    main()
