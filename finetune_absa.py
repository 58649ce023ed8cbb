"""Fine-tune an encoder for aspect-based sentiment classification (TD-BERT: pool the aspect's tokens).

    python finetune_absa.py --model_name_or_path embedded-minilm --dataset data/sample_laptops
    python finetune_absa.py --dataset ../shared/data/semeval2014_laptops --output_dir runs/laptops
    accelerate launch --config_file accelerate_configs/large.yaml finetune_absa.py --model_name_or_path roberta-large
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 finetune_absa.py ...   # several CPU processes (gloo)

Reads top to bottom: settings, data, model, optimizer, loop (absa/training.py), test, results.
`python finetune_absa.py --help` lists every setting; a single YAML / JSON file of settings works too.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import datasets
import transformers

import torch

from absa.aspects import AspectCollator, encode_absa_splits
from absa.batches import make_dataloaders
from absa.data import DEFAULT_LABELS, load_absa_splits
from absa.training import (BEST_MODEL, LoopSettings, check_settings, clear_output_dir, end_run, fit,
                       make_accelerator, make_optimizer, make_scheduler, parse_settings, predict,
                       prepare_output_dir, run_for_seeds, run_summary)
from absa.metrics import single_label_metrics
from absa.model import POOLINGS, AbsaClassifier, load_tokenizer
from absa.reports import plot_confusion_matrix, plot_curves, write_json

METRICS = ("loss", "accuracy", "macro_f1", "macro_precision", "macro_recall")


@dataclass
class Settings(LoopSettings):
    # The seed tutorial's recipe; every value can be overridden on the command line.
    model_name_or_path: str = "roberta-base"
    dataset: str = field(default="yqzheng/semeval2014_laptops", metadata={"help": "Hub name or local folder "
                         "(train / test files: JSONL, CSV, Parquet, SemEval XML or $T$ format)."})
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    label_names: list[str] = field(default_factory=lambda: list(DEFAULT_LABELS), metadata={"help": "Class "
                                   "names in label-id order, e.g. against neither 'in favor' for stance."})
    pooling: str = field(default="max", metadata={"help": f"How the aspect's token states are pooled: {POOLINGS}."})
    output_dir: str = "runs/absa"
    learning_rate: float = 1e-5
    per_device_batch_size: int = 16
    weight_decay: float = 0.01
    warmup_steps: int = 100
    num_epochs: int = 8
    early_stopping_patience: int = 3
    metric_for_best_model: str = "loss"
    max_length: int = 128
    # bf16 autocast where the hardware computes bf16 natively (an accelerate config's choice wins): the same
    # validation loss as fp32 on Laptop14, 1.24x faster on a CPU with AVX512-BF16 (bench/README.md).
    mixed_precision: str | None = field(default="auto",
                                        metadata=LoopSettings.__dataclass_fields__["mixed_precision"].metadata)


def main(settings: Settings) -> dict:
    started = time.time()
    check_settings(settings, METRICS)
    output_dir = prepare_output_dir(settings)
    accelerator = make_accelerator(settings)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()  # the "unused pooler weights" load report is expected

    # Data: train / validation / test with text, aspect, start, end, label; validation carved from train if absent.
    splits = load_absa_splits(settings.dataset, train_file=settings.train_file,
                              validation_file=settings.validation_file, test_file=settings.test_file,
                              label_names=settings.label_names, validation_fraction=settings.validation_fraction,
                              seed=settings.seed, select_on_test=settings.select_on_test)
    tokenizer = load_tokenizer(settings.model_name_or_path)
    features = encode_absa_splits(splits, tokenizer, settings.max_length)
    loaders = make_dataloaders(features, AspectCollator(tokenizer, settings.pad_to_multiple_of), settings)
    accelerator.print({split: len(rows) for split, rows in splits.items()})
    clear_output_dir(accelerator, output_dir, resuming=bool(settings.resume_from_checkpoint))

    # Model and optimizer.
    model = AbsaClassifier.from_encoder(settings.model_name_or_path, settings.label_names, settings.pooling,
                                        max_length=settings.max_length)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = make_optimizer(model, settings)
    train_loader, validation_loader, test_loader = accelerator.prepare(
        loaders["train"], loaders["validation"], loaders.get("test", loaders["validation"]))
    scheduler = make_scheduler(optimizer, settings, train_loader, accelerator)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if settings.report_to:
        accelerator.init_trackers("finetune_absa", config={k: str(v) for k, v in dataclasses.asdict(settings).items()})

    # The loop: train, evaluate on validation, keep the best model, checkpoint, stop early.
    def compute_metrics(logits, labels):
        return single_label_metrics(logits, labels, settings.label_names)

    state = fit(accelerator, model, optimizer, scheduler, train_loader, validation_loader, compute_metrics,
                settings, tokenizer, compute_loss=lambda logits, labels: torch.nn.functional.cross_entropy(logits.float(), labels))

    # Test: reload the best model and evaluate it once.
    del model, optimizer
    accelerator.free_memory()
    best_model = accelerator.prepare(AbsaClassifier.from_pretrained(output_dir / BEST_MODEL))
    test_split = "test" if "test" in loaders else "validation"
    test = compute_metrics(*predict(accelerator, best_model, test_loader))

    results = {"test_split": test_split, "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
               "test": test, **run_summary(accelerator, state, settings, started)}
    if accelerator.is_main_process:
        write_json(output_dir / "results.json", results)
        plot_confusion_matrix(test["confusion_matrix"], settings.label_names, output_dir / "confusion_matrix.png")
        plot_curves(state.history, output_dir / "curves.png")
        accelerator.print(f"test ({test_split}): accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}; "
                          f"best epoch {results['best_epoch']}; {results['train_samples_per_second']:.1f} "
                          f"samples/s; results in {output_dir / 'results.json'}")
    end_run(accelerator)
    return results


if __name__ == "__main__":
    run_for_seeds(main, parse_settings(Settings), keys=("test_accuracy", "test_macro_f1"))
