"""Where one training step of finetune_absa.py's own loop spends its time (torch.profiler, CPU), by operator.

    python bench/profile_step.py                         # the product's defaults (bf16 autocast where native)
    python bench/profile_step.py --mixed-precision no    # fp32
    python bench/profile_step.py --set freeze_word_embeddings=true   # any finetune_absa.py setting
    python bench/profile_step.py --model /path/to/mpnet --steps 10     # any local encoder

The steps are those of `finetune_absa.main` itself on Laptop14 train with --model (default: the embedded MiniLM; batch 16): after
--warmup steps, --steps steps are profiled, then the run stops. The table groups operators by what they are for.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import torch  # noqa: E402

GROUPS = {  # operator -> what it is for
    "aten::mm": "matrix products", "aten::addmm": "matrix products", "aten::bmm": "matrix products",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "matrix products (attention)",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "matrix products (attention)",
    "aten::bernoulli_": "dropout masks (RNG)", "aten::native_dropout": "dropout masks (RNG)",
    "aten::_fused_adamw_": "AdamW update", "aten::_foreach_add_": "AdamW update",
    "aten::fill_": "zero-filling (mostly the word-embedding gradient)",
    "aten::zero_": "zero-filling (mostly the word-embedding gradient)",
    "aten::copy_": "dtype casts (autocast) and copies", "aten::_to_copy": "dtype casts (autocast) and copies",
    "aten::linalg_vector_norm": "gradient clipping", "aten::_foreach_norm": "gradient clipping",
    "aten::embedding_dense_backward": "embedding backward", "aten::index_add_": "embedding backward",
    "aten::gelu": "GELU", "aten::gelu_backward": "GELU",
    "aten::native_layer_norm": "LayerNorm", "aten::native_layer_norm_backward": "LayerNorm",
    "aten::_softmax": "softmax", "aten::_softmax_backward_data": "softmax",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=benchlib.MODEL, help="A local model folder (default: the embedded MiniLM).")
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16"))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="another finetune_absa.py setting, e.g. freeze_word_embeddings=true")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--top", type=int, default=15)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    benchlib.quiet_libraries()
    import finetune_absa
    from absa.settings import parse_settings
    from torch.profiler import ProfilerActivity, profile

    command = benchlib.command_line()
    print(f"$ {command}\n{benchlib.cpu_line()}, {options.threads} threads, torch {torch.__version__}; "
          f"{benchlib.load_line()}", flush=True)
    workdir = tempfile.mkdtemp(prefix="bench_profile_")
    flags = [f"--{item.split('=', 1)[0]}={item.split('=', 1)[1]}" for item in options.set]
    settings = parse_settings(finetune_absa.Settings, [
        "--model_name_or_path", options.model, "--dataset", benchlib.DATASET, "--output_dir", workdir,
        "--mixed_precision", options.mixed_precision, *flags])
    state = {"steps": 0, "tokens": [], "profiler": None, "started": None}

    def after_step(run, samples):
        state["steps"] += 1
        if state["steps"] == options.warmup:
            state["profiler"] = profile(activities=[ProfilerActivity.CPU])
            state["profiler"].__enter__()
            state["started"] = time.perf_counter()
        elif state["steps"] == options.warmup + options.steps:
            state["seconds"] = time.perf_counter() - state["started"]
            state["profiler"].__exit__(None, None, None)
            raise benchlib.StopRun

    def on_train_batch(batch):
        if state["profiler"] is not None:
            state["tokens"].append((batch["attention_mask"].numel(), int(batch["attention_mask"].sum())))

    benchlib.run_finetune_absa(settings, after_step, on_train_batch)
    events = state["profiler"].key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    grouped: dict[str, float] = {}
    for event in events:
        group = GROUPS.get(event.key, "everything else (small element-wise ops, autograd, Python)")
        grouped[group] = grouped.get(group, 0.0) + event.self_cpu_time_total
    seconds, counts = state["seconds"], state["tokens"][:options.steps]
    padded, real = sum(c[0] for c in counts), sum(c[1] for c in counts)
    print(f"\n{options.steps} steps, mixed precision {options.mixed_precision} {' '.join(flags)}: "
          f"{1000 * seconds / options.steps:.0f} ms/step under the profiler ({16 * options.steps / seconds:.1f} "
          f"samples/s), {real / len(counts):.0f} real of {padded / len(counts):.0f} padded tokens encoded per batch")
    print(f"{'share':>6}  {'ms/step':>7}  what")
    for group, value in sorted(grouped.items(), key=lambda item: -item[1]):
        print(f"{value / total:6.1%}  {value / total * 1000 * seconds / options.steps:7.1f}  {group}")
    print("\nTop operators:")
    print(events.table(sort_by="self_cpu_time_total", row_limit=options.top, max_name_column_width=45))
    print(f"$ {command}")


if __name__ == "__main__":
    main()
