"""Fine-tune an encoder for sequence classification: binary, multi-class, multi-label, or sentence-pair regression.

    python finetune_seqcls.py --model_name_or_path embedded-minilm --dataset ../shared/data/trec
    python finetune_seqcls.py --dataset glue --dataset_config sst2 --output_dir runs/sst2
    python finetune_seqcls.py --train_file ttc4900.csv --text_columns text --label_column category
    python finetune_seqcls.py --dataset ../shared/data/semeval2018_ec --label_columns anger joy ... --tune_threshold
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 finetune_seqcls.py ...   # several CPU processes (gloo)

Reads top to bottom like finetune_absa.py: settings, data (the task is read from the labels, see
absa/seqcls_data.py, or forced with --task), model, optimizer and schedule, `accelerator.prepare`, the training
loop (the loss by task, backward, clipping, step; evaluation, best model, early stopping, checkpoints), one test
evaluation, results and the test predictions. OUTPUT/best_model is an ordinary AutoModelForSequenceClassification
folder: predict with `transformers.pipeline("text-classification", model="OUTPUT/best_model")` (README.md).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, DataCollatorWithPadding

from absa.batches import make_dataloaders
from absa.checkpoints import (BEST_MODEL, check_parameter_groups, check_resume, clear_output_dir, load_best_weights,
                              prepare_output_dir, resume_message, save_best_model, save_checkpoint)
from absa.encoders import load_pretrained, load_tokenizer, loading_error, make_fsdp_ready, resolve_model_path
from absa.files import NUMERIC_LABELS, NUMERIC_LABELS_HELP, DataError, write_atomically
from absa.metrics import (best_threshold, is_better, multi_label_metrics, regression_metrics, scalar_metrics,
                          single_label_metrics)
from absa.reports import plot_confusion_matrix, plot_curves, report_evaluation, run_summary, write_json, write_jsonl
from absa.seqcls_data import PROBLEM_TYPES, TASKS, encode_text_splits, labelled_prediction_rows, load_text_data
from absa.settings import TrainingSettings, parse_settings
from absa.training import RunState, finish_run, linear_schedule, make_accelerator, optimizer_steps, run_for_seeds

# What --metric_for_best_model may select, per task.
TASK_METRICS = {"single_label": ("loss", "accuracy", "macro_f1", "macro_precision", "macro_recall"),
                "multi_label": ("loss", "micro_f1", "macro_f1", "roc_auc", "subset_accuracy"),
                "regression": ("loss", "pearson", "spearman", "mse", "rmse", "mae")}
ALL_METRICS = tuple(dict.fromkeys(m for metrics in TASK_METRICS.values() for m in metrics))
# What the last line prints and the curves show, per task; results.json has every metric.
HEADLINE = {"single_label": ("accuracy", "macro_f1"),
            "multi_label": ("micro_f1", "macro_f1", "roc_auc", "subset_accuracy"),
            "regression": ("pearson", "spearman", "mse", "rmse", "mae")}
CURVES = {"single_label": ("loss", "accuracy", "macro_f1"), "multi_label": ("loss", "micro_f1", "macro_f1"),
          "regression": ("loss", "pearson", "spearman")}
# Metrics that move with the multi-label threshold, so --tune_threshold can maximise them.
THRESHOLD_METRICS = ("micro_f1", "macro_f1", "subset_accuracy")
SEED_KEYS = ("test_accuracy", "test_macro_f1", "test_micro_f1", "test_pearson", "test_spearman")


@dataclass
class Settings(TrainingSettings):
    # Prediction moved to transformers' pipeline: these say so instead of "unknown setting".
    REMOVED_SETTINGS = {name: "predict with transformers.pipeline(\"text-classification\", "
                        "model=\"OUTPUT/best_model\") (README.md, the pipeline snippet)"
                        for name in ("do_train", "predict_file", "text", "text_pair", "predictions_file")}
    # The text-classification recipe; every value can be overridden on the command line.
    model_name_or_path: str = "bert-base-uncased"
    dataset: str | None = field(default="imdb", metadata={"help": "Hub name (imdb, glue, sem_eval_2018_task_1, "
                                "...) or a local folder of train / validation / test files (JSONL, JSON, CSV, TSV, "
                                "Parquet, tab-separated .txt)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub configuration, e.g. sst2 / stsb / mrpc "
                                                                       "for glue, subtask5.english for E-c."})
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    text_columns: list[str] = field(default_factory=list, metadata={"help": "One column, or two for sentence pairs "
                                    "(default: sentence1+sentence2, question1+question2, ..., else text / sentence / "
                                    "Tweet)."})
    label_column: str | None = field(default=None, metadata={"help": "Column of class names / ids, scores, or label "
                                     "lists (default: label, labels or score)."})
    label_columns: list[str] = field(default_factory=list, metadata={"help": "Multi-label data with one 0/1 column "
                                     "per label, e.g. anger joy sadness."})
    label_names: list[str] = field(default_factory=list, metadata={"help": "Class names in id order (default: "
                                   "sorted from the train data; for whole-number labels 0..K-1 these name the ids)."})
    numeric_labels: str = field(default="auto", metadata={"choices": NUMERIC_LABELS, "help": NUMERIC_LABELS_HELP})
    task: str | None = field(default=None, metadata={"choices": TASKS, "help": "Force the task; default: read from "
                             "the labels (floats: regression, except whole ones with --label_names; lists or several "
                             "columns: multi_label)."})
    metric_for_best_model: str = field(default="loss", metadata={"choices": ALL_METRICS})
    threshold: float = field(default=0.5, metadata={"help": "Multi-label: a label is predicted when its sigmoid "
                                                            "reaches this."})
    tune_threshold: bool = field(default=False, metadata={"help": "Multi-label: after training, pick the threshold "
                                 "that maximises the selection metric (micro-F1 unless an F1 / subset accuracy is "
                                 "selected) on VALIDATION, and use it on test and in the saved model."})
    allow_empty_labels: bool = field(default=True, metadata={"help": "Multi-label: keep rows with no label at all "
                                     "(SemEval-2018 E-c has 204 such train tweets); false refuses them."})
    max_train_samples: int = field(default=0, metadata={"help": "Use a seeded subset of train (0: all), taken "
                                   "before validation is carved from train. For CPU runs."})
    output_dir: str = "runs/seqcls"
    per_device_batch_size: int = 32
    max_length: int = field(default=128, metadata={"help": "Longer texts (pairs: the longer text first) are cut; "
                            "saved as the tokenizer's model_max_length, so pipeline(truncation=True) cuts alike."})


@torch.no_grad()  # not inference_mode: that breaks the first forward of a freshly sharded FSDP2 model
def evaluate(accelerator, model, loader) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every example of `loader` in loader order, gathered from all processes, each once."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        labels = batch.pop("labels")
        logits, labels = accelerator.gather_for_metrics((model(**batch).logits.float(), labels))
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    model.train()
    return torch.cat(all_logits).numpy(), torch.cat(all_labels).numpy()


def main(settings: Settings) -> dict:
    started = time.time()
    if settings.task:
        check_metric(settings, settings.task)
    accelerator = make_accelerator(settings)
    output_dir, checkpoint = prepare_output_dir(accelerator, settings)  # refuses to overwrite a run
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()  # the "classifier newly initialized" load report is expected
    transformers.logging.disable_progress_bar()  # one "Loading weights" bar per load and save is noise

    # Data: text (and text_pair) with labels; the task comes from the labels. Bad rows stop the run here.
    data = load_text_data(settings.dataset, dataset_config=settings.dataset_config, train_file=settings.train_file,
                          validation_file=settings.validation_file, test_file=settings.test_file,
                          text_columns=settings.text_columns, label_column=settings.label_column,
                          label_columns=settings.label_columns, label_names=settings.label_names, task=settings.task,
                          allow_empty_labels=settings.allow_empty_labels, max_train_samples=settings.max_train_samples,
                          validation_fraction=settings.validation_fraction, seed=settings.seed,
                          select_on_test=settings.select_on_test, numeric_labels=settings.numeric_labels)
    check_metric(settings, data.task)  # now that the task is known, before any model is loaded
    if settings.tune_threshold and data.task != "multi_label":
        raise SystemExit(f"--tune_threshold is for multi-label data; this is {data.task}")
    test_split = "test" if "test" in data.splits else "validation"
    if test_split == "validation":
        accelerator.print("no test split: the final evaluation is on validation, which also selected the model")

    tokenizer = load_tokenizer(settings.model_name_or_path)
    # Saved with the model, so a pipeline user's truncation=True cuts where training did.
    tokenizer.model_max_length = min(tokenizer.model_max_length, settings.max_length)
    splits, features = encode_text_splits(data.splits, tokenizer, tokenizer.model_max_length)
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=settings.pad_to_multiple_of)
    loaders = make_dataloaders(features, collator, settings, accelerator.num_processes)  # evaluation: `splits`' order
    accelerator.print(f"task {data.task}, {len(data.label_names)} label(s), texts {'+'.join(data.text_columns)}; "
                      f"{ {split: len(rows) for split, rows in splits.items()} }")
    train_order = loaders["train"].sampler  # the epoch's seeded order; a resumed run starts inside it
    check_resume(checkpoint, settings, train_order)  # another seed or other data: refused
    clear_output_dir(accelerator, output_dir, checkpoint)

    # Model, optimizer (no weight decay on biases and LayerNorm weights) and schedule.
    model = build_model(settings.model_name_or_path, data, settings.threshold)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if settings.freeze_word_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in trained if p.ndim >= 2]},
                                   {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0}],
                                  lr=settings.learning_rate, weight_decay=settings.weight_decay,
                                  fused=settings.fused_adamw or None)
    train_loader, validation_loader, test_loader = accelerator.prepare(
        loaders["train"], loaders["validation"], loaders[test_split])
    model, optimizer = accelerator.prepare(model, optimizer)
    # The loss by task (the ones transformers picks from problem_type): cross-entropy, BCE, MSE.
    loss_function = {"single_label": torch.nn.functional.cross_entropy,
                     "multi_label": torch.nn.functional.binary_cross_entropy_with_logits,
                     "regression": lambda logits, scores: torch.nn.functional.mse_loss(logits.squeeze(-1), scores),
                     }[data.task]

    def compute_metrics(logits, labels, threshold=settings.threshold):
        if data.task == "single_label":
            return single_label_metrics(logits, labels, data.label_names)
        if data.task == "multi_label":
            return multi_label_metrics(logits, labels, data.label_names, threshold)
        return regression_metrics(logits[:, 0], labels)

    # Where the run is; saved with every checkpoint. On as many processes and the same batch size a resumed run
    # continues exactly (the same batches too); on others it continues from the example where it stopped.
    run = RunState(seed=settings.seed, train_data=train_order.fingerprint)
    accelerator.register_for_checkpointing(run)
    if checkpoint:
        check_parameter_groups(checkpoint, optimizer)  # frozen embeddings now, not then, say: refused
        accelerator.load_state(checkpoint)
        accelerator.step = 0  # checkpoints end an accumulation window; the saved count is per process
        accelerator.print(resume_message(accelerator, settings, run, checkpoint, len(train_order.lengths)))
    run.num_processes, run.per_device_batch_size = accelerator.num_processes, settings.per_device_batch_size
    run.parameter_groups = [len(group["params"]) for group in optimizer.param_groups]
    run.selection = [settings.metric_for_best_model, settings.select_on_test]  # what `run.best` is a value of
    # The schedule counts global optimizer steps (stepped once per step below), so it continues on any number of
    # processes; a prepared scheduler would count steps times processes.
    total_steps = optimizer_steps(settings, len(train_order.lengths), accelerator.num_processes, run)
    scheduler = linear_schedule(optimizer, settings.learning_rate, settings.warmup_steps, total_steps, run)
    if settings.report_to:
        accelerator.init_trackers("finetune_seqcls", config={k: str(v) for k, v in asdict(settings).items()})

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
                logits = model(**batch).logits
                loss = loss_function(logits.float(), labels)
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
                metrics = compute_metrics(*evaluate(accelerator, model, validation_loader))
                # A new best? The main process decides for all: the answer gates a collective (the save).
                metric = settings.metric_for_best_model
                is_best, value = broadcast_object_list([is_better(metric, metrics[metric], run.best), metrics[metric]])
                if is_best:
                    run.best, run.best_step, run.evaluations_without_improvement = value, run.step, 0
                    save_best_model(accelerator, model, tokenizer, output_dir / BEST_MODEL)
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

    # Test: the best weights back into the prepared model; a multi-label threshold tuned on validation only.
    best_dir = output_dir / BEST_MODEL
    load_best_weights(accelerator, model, best_dir)
    threshold, tuned = settings.threshold, None
    if settings.tune_threshold:
        logits, labels = evaluate(accelerator, model, validation_loader)
        metric = settings.metric_for_best_model if settings.metric_for_best_model in THRESHOLD_METRICS else "micro_f1"
        threshold = best_threshold(logits, labels, data.label_names, metric)
        tuned = compute_metrics(logits, labels, threshold)
        if accelerator.is_main_process:
            save_threshold(best_dir, threshold)
        at_default = next(row for row in run.history if row["step"] == run.best_step)[metric]
        accelerator.print(f"threshold tuned on validation for {metric}: {threshold} ({metric} {tuned[metric]:.4f}; "
                          f"at {settings.threshold}: {at_default:.4f})")
    logits, labels = evaluate(accelerator, model, test_loader)
    test = compute_metrics(logits, labels, threshold)

    results = {
        "task": data.task, "problem_type": PROBLEM_TYPES[data.task], "label_names": data.label_names,
        "text_columns": data.text_columns, "label_columns": data.label_columns, "sources": data.sources,
        "split_sizes": {split: len(rows) for split, rows in splits.items()}, "validation_split": data.validation_split,
        "test_split": test_split, **{f"test_{k}": v for k, v in scalar_metrics(test).items()}, "test": test,
        **({"threshold": threshold, "threshold_tuned": bool(settings.tune_threshold), "validation_at_threshold": tuned}
           if data.task == "multi_label" else {}),
        **run_summary(accelerator, run, settings, started, checkpoint),
    }
    if accelerator.is_main_process:
        write_json(output_dir / "results.json", results)
        # One row per test example, in the order of splits[test_split], for error analysis and for checking.
        write_jsonl(output_dir / "test_predictions.jsonl",
                    labelled_prediction_rows(data, splits[test_split], logits, threshold))
        if data.task == "single_label":
            plot_confusion_matrix(test["confusion_matrix"], data.label_names, output_dir / "confusion_matrix.png")
        plot_curves(run.history, output_dir / "curves.png", metrics=CURVES[data.task])
        shown = ", ".join(f"{k} {test[k]:.4f}" for k in HEADLINE[data.task])
        print(f"test ({test_split}): {shown}; best epoch {results['best_epoch']}; "
              f"{results['train_samples_per_second']:.1f} samples/s; results in {output_dir / 'results.json'}")
    finish_run(accelerator)
    return results


def check_metric(settings: Settings, task: str) -> None:
    if settings.metric_for_best_model not in TASK_METRICS[task]:
        raise SystemExit(f"--metric_for_best_model {settings.metric_for_best_model!r} is not one of "
                         f"{', '.join(TASK_METRICS[task])} ({task})")


def build_model(name_or_path: str, data, threshold: float):
    """AutoModelForSequenceClassification with the labels, problem type and inputs of `data` in its config.

    problem_type picks the function the text-classification pipeline applies (softmax, sigmoid, none). Every
    parameter of these heads takes part in the loss (BERT's pooler feeds its classifier; RoBERTa / XLM-R build no
    pooler; DeBERTa's ContextPooler and ELECTRA's head are used), so DDP needs no find_unused_parameters.
    """
    path = resolve_model_path(name_or_path)
    id2label = dict(enumerate(data.label_names))
    try:
        config = AutoConfig.from_pretrained(path, num_labels=len(id2label), id2label=id2label,
                                            label2id={name: i for i, name in id2label.items()},
                                            problem_type=PROBLEM_TYPES[data.task])
        # Recorded in config.json for readers of the folder (single texts or pairs?); transformers ignores them.
        config.text_columns = list(data.text_columns)
        if data.validation_split:  # how validation was made (absa.splits.split_record)
            config.validation_split = data.validation_split
        if data.numeric_labels:
            config.numeric_labels = data.numeric_labels
        if data.task == "multi_label":
            config.multi_label_threshold = threshold
        model = load_pretrained(AutoModelForSequenceClassification, path, config)  # FSDP: read on rank 0 only
    except Exception as error:  # noqa: BLE001 - turned into a message that says what to do
        raise loading_error(name_or_path, error) from None
    return make_fsdp_ready(model)  # FSDP's wrap classes: the encoder's layers


def save_threshold(model_dir, threshold: float) -> None:
    """Record the tuned threshold in the model's config.json, written whole beside it and renamed over it: a crash
    leaves the previous file, not a truncated one (and a hard link to the old file keeps its contents)."""
    config = AutoConfig.from_pretrained(model_dir)
    config.multi_label_threshold = threshold
    write_atomically(Path(model_dir) / "config.json", config.to_json_string())


if __name__ == "__main__":
    try:
        settings = parse_settings(Settings)
        run_for_seeds(main, settings, keys=SEED_KEYS)
    except DataError as error:  # the message names the file, row and field; a traceback would add nothing
        raise SystemExit(f"data error: {error}") from None
