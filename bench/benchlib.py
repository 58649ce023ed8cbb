"""Shared pieces of the benchmarks in bench/: environment report, matmul peaks, FLOP counts, data, the seed recipe.

Not a product module: the benchmarks import the product (absa/, finetune_absa.py) and put the seed tutorial's
Trainer recipe next to it, so both are measured on the same machine, data and model in one run.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

DATASET = str((ROOT / ".." / "shared" / "data" / "semeval2014_laptops").resolve())
MODEL = "embedded-minilm"
LABELS = ["negative", "neutral", "positive"]
SEED_PAD = 100  # the seed tutorial pads (and truncates) every text to 100 tokens


# --------------------------------------------------------------------------- environment


def command_line() -> str:
    """The exact command that ran this benchmark, to paste into a shell."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def cpu_line() -> str:
    """The CPU model and its bf16 features, printed with every table (the defaults must hold on each)."""
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    features = [name for name in ("avx512_bf16", "amx_bf16") if capabilities.get(name)]
    return f"{cpu_model()}, {os.cpu_count()} cores, bf16 features: {', '.join(features) or 'none (bf16 emulated)'}"


def environment() -> dict:
    import accelerate
    import datasets
    import transformers
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "avx512_bf16": bool(capabilities.get("avx512_bf16")), "amx_bf16": bool(capabilities.get("amx_bf16")),
        "load_average": os.getloadavg(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "accelerate": accelerate.__version__, "datasets": datasets.__version__,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_results(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- FLOPs and peaks


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 6, trials: int = 5) -> float:
    """Best observed GFLOP/s of `repeats` back-to-back [size x size] @ [size x size] products in `dtype`."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up: oneDNN / BLAS kernels picked and caches filled
    best = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b, out=out)
        best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - started) / 1e9)
    return best


def bf16_native() -> bool:
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def matmul_peaks() -> dict:
    """fp32 and bf16 matmul peaks. Where bf16 is emulated (no AVX512-BF16 / AMX) a 2048^3 bf16 product takes
    seconds, so it gets a short measurement on smaller products: enough to show how far below fp32 it is."""
    bf16 = matmul_peak(torch.bfloat16) if bf16_native() else matmul_peak(torch.bfloat16, size=512, repeats=1, trials=2)
    return {"fp32": matmul_peak(torch.float32), "bf16": bf16}


def encoder_dimensions(model) -> dict:
    """Layers, hidden size and non-embedding parameter count (encoder layers + head, no embedding tables)."""
    config = model.config
    non_embedding = sum(p.numel() for name, p in model.named_parameters() if ".embeddings." not in f".{name}")
    return {"layers": config.num_hidden_layers, "hidden": config.hidden_size,
            "intermediate": config.intermediate_size, "non_embedding_params": non_embedding,
            "params": sum(p.numel() for p in model.parameters())}


def step_shape_rate(dims: dict, tokens: int, dtype: torch.dtype, seconds: float = 1.5) -> float:
    """GFLOP/s of the matrix products one training step of this encoder makes, at its own shapes.

    One encoder layer's linear layers (query, key, value, attention output: hidden x hidden; the feed-forward pair:
    hidden x intermediate and back) on `tokens` rows (the padded tokens of a step's batch), forward (x W^T) and
    backward (the input's gradient dY W, the weight's gradient dY^T x), as `torch.nn.functional.linear` and autograd
    compute them. The best of a few timed passes over `seconds`: the honest ceiling of a step's matrix work here,
    often far below the 2048^3 peak because a step's products are thin (a few hundred rows)."""
    h, i = dims["hidden"], dims["intermediate"]
    shapes = [(h, h)] * 4 + [(h, i), (i, h)]  # (in, out) of each linear layer
    generator = torch.Generator().manual_seed(0)
    operands = [(torch.randn(tokens, n_in, generator=generator).to(dtype),
                 torch.randn(n_out, n_in, generator=generator).to(dtype),
                 torch.randn(tokens, n_out, generator=generator).to(dtype)) for n_in, n_out in shapes]

    def one_layer():
        for x, weight, grad_out in operands:
            torch.nn.functional.linear(x, weight)  # forward
            torch.matmul(grad_out, weight)  # the input's gradient
            torch.matmul(grad_out.t(), x)  # the weight's gradient
    flops = sum(3 * 2 * tokens * n_in * n_out for n_in, n_out in shapes)
    one_layer()  # warm-up: kernels chosen, caches filled
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:
        started = time.perf_counter()
        one_layer()
        best = max(best, flops / (time.perf_counter() - started) / 1e9)
        if time.perf_counter() > deadline:
            return best


def useful_flops(lengths, dims: dict, training: bool = True) -> float:
    """FLOPs on the real (non-pad) tokens of examples with these lengths.

    Per token: 2 x non-embedding params forward (6 x with backward). Attention scores and weighted sum: per layer
    and example of L tokens, QK^T and AV are 2 x L^2 x hidden multiply-adds -> 4 L^2 h FLOPs forward (x3 training).
    """
    factor = 3 if training else 1
    tokens = sum(lengths)
    squares = sum(length * length for length in lengths)
    return factor * (2 * dims["non_embedding_params"] * tokens + 4 * dims["layers"] * dims["hidden"] * squares)


# --------------------------------------------------------------------------- data


def quiet_libraries() -> None:
    import datasets
    import transformers
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()


def laptop_splits(seed: int = 42, validation_fraction: float = 0.1, select_on_test: bool = False):
    """Laptop14 as finetune_absa.py reads it: train / validation (carved from train) / test."""
    from absa.data import load_absa_splits
    return load_absa_splits(DATASET, label_names=LABELS, validation_fraction=validation_fraction, seed=seed,
                            select_on_test=select_on_test)


class FixedPadCollator:
    """The seed tutorial's padding: every example padded (and cut) to `length` tokens, whatever the batch holds.

    Produces the same keys as the product's AspectCollator (input_ids, attention_mask, aspect_mask, labels), so the
    same TD-BERT model (AbsaClassifier) can be fed by it.
    """

    def __init__(self, tokenizer, length: int = SEED_PAD):
        self.pad_id, self.length = tokenizer.pad_token_id, length

    def __call__(self, features: list[dict]) -> dict:
        n, width = len(features), self.length
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, width), dtype=torch.long)
        aspect_mask = torch.zeros((n, width), dtype=torch.bool)
        for row, feature in enumerate(features):
            ids = feature["input_ids"][:width]
            input_ids[row, :len(ids)] = torch.tensor(ids)
            attention_mask[row, :len(ids)] = 1
            aspect_mask[row, :len(ids)] = torch.tensor(feature["aspect_mask"][:width], dtype=torch.bool)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "aspect_mask": aspect_mask}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features])
        return batch


def seed_training_arguments(output_dir: str, *, bf16: bool, group_by_length: bool, seed: int = 42,
                            max_steps: int = -1, num_epochs: float = 8, evaluate_each_epoch: bool = False,
                            learning_rate: float = 1e-5):
    """TrainingArguments of the seed recipe (batch 16, lr 1e-5, wd 0.01, warm-up 100, 8 epochs) on the CPU.

    transformers 5.x names: `train_sampling_strategy="group_by_length"` (was `group_by_length=True`),
    `eval_strategy`, `use_cpu`. The optimizer is the Trainer's default (`adamw_torch_fused` with torch >= 2.8).
    """
    from transformers import TrainingArguments
    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=16, per_device_eval_batch_size=16,
        learning_rate=learning_rate, weight_decay=0.01, warmup_steps=100, num_train_epochs=num_epochs,
        max_steps=max_steps, bf16=bf16, use_cpu=True, seed=seed,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        eval_strategy="epoch" if evaluate_each_epoch else "no", save_strategy="no", report_to="none",
        dataloader_num_workers=0, remove_unused_columns=True)


class TrainerTdBert(torch.nn.Module):
    """The product's AbsaClassifier with the seed recipe's loss inside forward, as the Trainer expects.

    `accepts_loss_kwargs = False`: the Trainer would otherwise pass `num_items_in_batch` into forward.
    """

    accepts_loss_kwargs = False

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, input_ids, attention_mask, aspect_mask, labels=None):  # named: the Trainer keeps these columns
        from transformers.modeling_outputs import SequenceClassifierOutput
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, aspect_mask=aspect_mask)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def trainer_model(seed: int = 42, pooling: str = "max", model: str = MODEL):
    """The TD-BERT model of the seed recipe: the product's AbsaClassifier (aspect tokens max-pooled), loss inside."""
    from transformers import set_seed
    from absa.model import AbsaClassifier
    set_seed(seed)
    return TrainerTdBert(AbsaClassifier.from_encoder(model, LABELS, pooling))


# --------------------------------------------------------------------------- the product's own loop, observed


class StopRun(Exception):
    """Raised by a hook of `run_finetune_absa` to end the product's run once the benchmark has what it needs."""


def run_finetune_absa(settings, after_step, on_train_batch=None, patch=None) -> None:
    """`finetune_absa.main(settings)`, the product's own loop, with hooks and nothing else changed.

    `after_step(run, samples)` is called after every trained batch (from `RunState.batch_done`, i.e. after the
    optimizer step and the loop's bookkeeping) and may raise `StopRun`. `on_train_batch(batch)` sees every train
    batch as the collator builds it (accelerate's loader fetches one batch ahead; callers queue them).
    `patch(finetune_absa)` may change the script's module for a lever before the run (restored after).
    """
    import finetune_absa

    saved = dict(vars(finetune_absa))

    class ObservedRun(finetune_absa.RunState):
        def batch_done(self, loss, samples, epoch_examples=None):
            super().batch_done(loss, samples, epoch_examples)
            after_step(self, samples)

    def dataloaders(features, collator, settings, *args, **kwargs):
        loaders = saved["make_dataloaders"](features, collator, settings, *args, **kwargs)
        for split, loader in loaders.items():  # evaluation batches are not training steps
            loader.collate_fn = ObservedCollatorView(collator, train=split == "train")
        return loaders

    class ObservedCollatorView:
        def __init__(self, collator, train):
            self.collator, self.train = collator, train

        def __call__(self, features):
            batch = self.collator(features)
            if on_train_batch is not None and self.train:
                on_train_batch(batch)
            return batch

    finetune_absa.RunState = ObservedRun
    finetune_absa.make_dataloaders = dataloaders
    if patch is not None:
        patch(finetune_absa)
    try:
        finetune_absa.main(settings)
    except StopRun:
        pass
    finally:
        vars(finetune_absa).update(saved)
