"""Fine-tune an encoder for aspect-based sentiment classification (TD-BERT: pool the aspect's tokens).

    python finetune_absa.py --model_name_or_path embedded-minilm --dataset data/sample_laptops
    python finetune_absa.py --dataset ../shared/data/semeval2014_laptops --output_dir runs/laptops
    accelerate launch --config_file accelerate_configs/large.yaml --num_processes 1 finetune_absa.py \
        --model_name_or_path roberta-large
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 finetune_absa.py ...   # several CPU processes (gloo)

Reads top to bottom: settings, data, model, optimizer and schedule, `accelerator.prepare`, the training loop
(loss, backward, clipping, step; evaluation, best model, early stopping, checkpoints), one test evaluation,
results. To change the loss or the step, edit the loop below; `absa/` holds only what surrounds it.
`python finetune_absa.py --help` lists every setting; a single YAML / JSON file of settings works too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import datasets
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from absa.aspects import INPUT_FORMATS, AspectCollator, encode_absa_splits
from absa.batches import make_dataloaders
from absa.checkpoints import (BEST_MODEL, check_parameter_groups, check_resume, clear_output_dir, load_best_weights,
                              prepare_output_dir, resume_message, save_best_model, save_checkpoint)
from absa.data import DEFAULT_LABELS, load_absa_splits
from absa.encoders import load_tokenizer
from absa.files import NUMERIC_LABELS, NUMERIC_LABELS_HELP, DataError
from absa.metrics import is_better, scalar_metrics, single_label_metrics
from absa.model import POOLINGS, AbsaClassifier, layer_depth
from absa.reports import plot_confusion_matrix, plot_curves, report_evaluation, run_summary, write_json
from absa.settings import TrainingSettings, parse_settings
from absa.training import (RunState, average_weights, averaged_weights, finish_run, linear_schedule, make_accelerator,
                           make_room_for_the_average, optimizer_steps, run_for_seeds)

METRICS = ("loss", "accuracy", "macro_f1", "macro_precision", "macro_recall")


@dataclass
class Settings(TrainingSettings):
    # The seed tutorial's recipe (with the shared defaults); every value can be overridden on the command line.
    dataset: str = field(default="yqzheng/semeval2014_laptops", metadata={"help": "Hub name or local folder "
                         "(train / test files: JSONL, CSV, Parquet, SemEval XML or $T$ format)."})
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    label_names: list[str] = field(default_factory=lambda: list(DEFAULT_LABELS), metadata={"help": "Class "
                                   "names in label-id order, e.g. against neither 'in favor' for stance."})
    numeric_labels: str = field(default="auto", metadata={"choices": NUMERIC_LABELS, "help": NUMERIC_LABELS_HELP})
    input_format: str = field(default="td_bert", metadata={"choices": INPUT_FORMATS, "help": "What the encoder is "
                              "shown: td_bert, the sentence alone (the seed's model; a sentence's aspects share one "
                              "encoder pass); aspect_markers, the sentence with the aspect bracketed; sentence_pair, "
                              "the sentence and the aspect as a second segment. Recorded in the saved model."})
    pooling: str = field(default="max", metadata={"choices": POOLINGS, "help": "How the aspect's token states "
                                                                                 "are pooled."})
    # The epoch is chosen by the metric reported: validation loss turns up epochs before macro-F1 stops rising
    # (MiniLM on Laptop14: +4.2 points of test macro-F1, paired over 5 seeds; bench/README.md).
    metric_for_best_model: str = field(default="macro_f1", metadata={"choices": METRICS})
    output_dir: str = "runs/absa"
    # For base-size encoders such as the default roberta-base: 3e-5 beat the seed's 1e-5 on validation macro-F1 on
    # each of 3 seeds (MPNet-base on Laptop14). Small encoders (MiniLM): 5e-5; large and larger: 1e-5 (bench/README.md).
    learning_rate: float = 3e-5
    layer_lr_decay: float = field(default=1.0, metadata={"help": "Layer-wise learning-rate decay: each encoder "
                                  "layer's rate is this times the rate of the layer above it (1: one rate for all)."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the training loss (the "
                                   "validation loss that may select the epoch is plain cross-entropy)."})
    ema_decay: float = field(default=0.0, metadata={"help": "Evaluate, keep and test the exponential moving "
                             "average of the weights, updated after each optimizer step with this decay (0.999: "
                             "about the last 1000 steps); 0: the trained weights themselves."})
    num_epochs: int = 8
    max_length: int = 128
    # bf16 autocast where the hardware computes bf16 natively (an accelerate config's choice wins): the same
    # validation loss as fp32 on Laptop14 (bench/README.md).
    mixed_precision: str | None = "auto"


@torch.no_grad()  # not inference_mode: that breaks the first forward of a freshly sharded FSDP2 model
def evaluate(accelerator, model, loader) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every example of `loader`, gathered from all processes, each example exactly once."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        labels = batch.pop("labels")
        logits, labels = accelerator.gather_for_metrics((model(**batch).float(), labels))
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    model.train()
    return torch.cat(all_logits).numpy(), torch.cat(all_labels).numpy()


def main(settings: Settings) -> dict:
    started = time.time()
    accelerator = make_accelerator(settings)
    output_dir, checkpoint = prepare_output_dir(accelerator, settings)  # refuses to overwrite a run
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()  # the "unused pooler weights" load report is expected

    # Data: text, aspect, start, end, label; a validation split is carved from train when there is none.
    splits = load_absa_splits(settings.dataset, train_file=settings.train_file,
                              validation_file=settings.validation_file, test_file=settings.test_file,
                              label_names=settings.label_names, validation_fraction=settings.validation_fraction,
                              seed=settings.seed, select_on_test=settings.select_on_test,
                              numeric_labels=settings.numeric_labels)
    test_split = "test" if "test" in splits else "validation"
    tokenizer = load_tokenizer(settings.model_name_or_path)
    features = encode_absa_splits(splits, tokenizer, settings.max_length, settings.input_format)
    # The aspects of one sentence share a batch, and the collator encodes that sentence once.
    loaders = make_dataloaders(features, AspectCollator(tokenizer, settings.pad_to_multiple_of), settings,
                               accelerator.num_processes, keep_identical_inputs_together=True)
    accelerator.print({split: len(rows) for split, rows in splits.items()})
    train_order = loaders["train"].sampler  # the epoch's seeded order; a resumed run starts inside it
    check_resume(checkpoint, settings, train_order)  # another seed or other data: refused
    clear_output_dir(accelerator, output_dir, checkpoint)

    # Model, optimizer (no weight decay on biases and LayerNorm weights) and schedule.
    # The model records how validation was made and what numeric labels meant: evaluate rebuilds and reads alike.
    model = AbsaClassifier.from_encoder(settings.model_name_or_path, settings.label_names, settings.pooling,
                                        max_length=settings.max_length, input_format=settings.input_format,
                                        validation_split=splits.validation_split,
                                        numeric_labels=splits.numeric_labels,
                                        mixed_precision=accelerator.mixed_precision)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if settings.freeze_word_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    # Parameter groups: no weight decay on biases and LayerNorm weights; with --layer_lr_decay d < 1 each encoder
    # layer learns d times as fast as the layer above it (the classifier at the full rate, the embeddings slowest).
    groups = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            depth_from_top = model.config.num_hidden_layers + 1 - layer_depth(name, model.config.num_hidden_layers)
            rate = settings.learning_rate * settings.layer_lr_decay ** depth_from_top
            groups.setdefault((rate, parameter.ndim >= 2), []).append(parameter)
    optimizer = torch.optim.AdamW([{"params": params, "lr": rate, "weight_decay": settings.weight_decay * decays}
                                   for (rate, decays), params in groups.items()], fused=settings.fused_adamw or None)
    peak_learning_rates = [group["lr"] for group in optimizer.param_groups]  # a resumed optimizer has decayed ones
    train_loader, validation_loader, test_loader = accelerator.prepare(
        loaders["train"], loaders["validation"], loaders[test_split])
    model, optimizer = accelerator.prepare(model, optimizer)

    # Where the run is; saved with every checkpoint. On as many processes and the same batch size a resumed run
    # continues exactly (the same batches too); on others it continues from the example where it stopped.
    run = RunState(seed=settings.seed, train_data=train_order.fingerprint)
    accelerator.register_for_checkpointing(run)
    if checkpoint:
        check_parameter_groups(checkpoint, optimizer)  # another --layer_lr_decay, say: refused, not a traceback
        if settings.ema_decay:
            make_room_for_the_average(optimizer)  # or FSDP2's sharded load leaves it out
        accelerator.load_state(checkpoint)
        accelerator.step = 0  # checkpoints end an accumulation window; the saved count is per process
        accelerator.print(resume_message(accelerator, settings, run, checkpoint, len(train_order.lengths)))
    run.num_processes, run.per_device_batch_size = accelerator.num_processes, settings.per_device_batch_size
    run.parameter_groups = [len(group["params"]) for group in optimizer.param_groups]
    run.selection = [settings.metric_for_best_model, settings.select_on_test]  # what `run.best` is a value of
    run.ema_decay = settings.ema_decay
    # The schedule counts global optimizer steps (stepped once per step below), so it continues on any number of
    # processes; a prepared scheduler would count steps times processes.
    total_steps = optimizer_steps(settings, len(train_order.lengths), accelerator.num_processes, run)
    scheduler = linear_schedule(optimizer, peak_learning_rates, settings.warmup_steps, total_steps, run)
    if settings.report_to:
        accelerator.init_trackers("finetune_absa", config={k: str(v) for k, v in asdict(settings).items()})

    progress = tqdm(total=total_steps, initial=run.step, desc="training", disable=not accelerator.is_main_process)
    # A resumed run that had stopped (early, or at --max_steps) stays stopped unless given more patience or steps.
    stop = 0 < settings.max_steps <= run.step or run.evaluations_without_improvement >= settings.early_stopping_patience
    window_examples = 0  # this process's examples in the current accumulation window
    while run.epoch < settings.num_epochs and not stop:
        # The epoch's seeded order from the first example not yet trained on, counted over all processes (0 unless
        # resumed); an epoch begun with another batch size keeps the length grouping it began with.
        if not run.examples_in_epoch:
            run.epoch_grouping = [settings.per_device_batch_size, settings.group_by_length]
        train_order.batch_size, train_order.group_by_length = run.epoch_grouping
        train_order.start = run.examples_in_epoch
        train_loader.set_epoch(run.epoch)
        model.train()
        run.restart_clock()
        for batch in train_loader:
            with accelerator.accumulate(model):
                labels = batch.pop("labels")
                logits = model(**batch)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=settings.label_smoothing)
                accelerator.backward(loss * len(labels))  # summed over the batch; a mean over the window below
                window_examples += len(labels)
                if accelerator.sync_gradients:
                    # The mean over the window's examples, however many batches it had (an epoch's last window can
                    # be short): accelerator.backward divided every batch by gradient_accumulation_steps.
                    for parameter in model.parameters():
                        if parameter.grad is not None:
                            parameter.grad *= settings.gradient_accumulation_steps / window_examples
                    window_examples = 0
                    if settings.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:  # also after a step fp16's scaler skipped: the schedule is where
                    scheduler.step()  # run.step is, as a resumed run rebuilds it
                    if settings.ema_decay and not accelerator.optimizer_step_was_skipped:
                        average_weights(optimizer, settings.ema_decay, run)
                optimizer.zero_grad(set_to_none=True)
            run.batch_done(loss, len(labels) * accelerator.num_processes, len(train_order.lengths))
            if not accelerator.sync_gradients:
                continue
            run.step += 1
            progress.update()
            end_of_epoch = run.examples_in_epoch >= len(train_order.lengths)
            last_step = run.step == settings.max_steps or (end_of_epoch and run.epoch + 1 == settings.num_epochs)

            # Evaluate every epoch, or every --eval_every_steps, and at the last step.
            every = settings.eval_every_steps
            if last_step or (run.step % every == 0 if every else end_of_epoch):
                # With --ema_decay the moving average is the model evaluated and kept as the best.
                with averaged_weights(model, optimizer, use=settings.ema_decay > 0):
                    logits, labels = evaluate(accelerator, model, validation_loader)
                    metrics = single_label_metrics(logits, labels, settings.label_names)
                    # A new best? The main process decides for all: the answer gates a collective (the save).
                    metric = settings.metric_for_best_model
                    is_best, value = broadcast_object_list([is_better(metric, metrics[metric], run.best),
                                                            metrics[metric]])
                    if is_best:
                        save_best_model(accelerator, model, tokenizer, output_dir / BEST_MODEL)
                if is_best:
                    run.best, run.best_step, run.evaluations_without_improvement = value, run.step, 0
                else:
                    run.evaluations_without_improvement += 1
                run.history.append({"epoch": run.epoch + 1, "step": run.step, **scalar_metrics(metrics),
                                    "train_loss": run.take_train_loss(), "is_best": is_best})
                report_evaluation(accelerator, run.history, output_dir)
                # Early stopping: the main process decides, and every process stops at this step.
                if accelerator.is_main_process and \
                        run.evaluations_without_improvement >= settings.early_stopping_patience:
                    accelerator.set_trigger()
                stop = accelerator.check_trigger() or last_step
            if end_of_epoch:
                run.epoch, run.examples_in_epoch = run.epoch + 1, 0
            # Checkpoint every epoch, or every --checkpoint_every_steps, and where the run stops.
            every = settings.checkpoint_every_steps
            if settings.keep_checkpoints and (end_of_epoch or stop or (every and run.step % every == 0)):
                save_checkpoint(accelerator, output_dir, run.step, settings.keep_checkpoints)
            run.restart_clock()  # evaluation and checkpoint time is not training time
            if stop:
                break
    progress.close()

    # Test: the best weights back into the prepared model, then one evaluation.
    load_best_weights(accelerator, model, output_dir / BEST_MODEL)
    logits, labels = evaluate(accelerator, model, test_loader)
    test = single_label_metrics(logits, labels, settings.label_names)

    results = {"test_split": test_split, "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
               "test": test, "validation_split": splits.validation_split,
               **run_summary(accelerator, run, settings, started, checkpoint)}
    if accelerator.is_main_process:
        write_json(output_dir / "results.json", results)
        plot_confusion_matrix(test["confusion_matrix"], settings.label_names, output_dir / "confusion_matrix.png")
        plot_curves(run.history, output_dir / "curves.png")
        print(f"test ({test_split}): accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}; best epoch "
              f"{results['best_epoch']}; {results['train_samples_per_second']:.1f} samples/s; results in "
              f"{output_dir / 'results.json'}")
    finish_run(accelerator)
    return results


if __name__ == "__main__":
    try:
        run_for_seeds(main, parse_settings(Settings), keys=("test_accuracy", "test_macro_f1"))
    except DataError as error:  # the message names the file, row and field; a traceback would add nothing
        raise SystemExit(f"data error: {error}") from None
