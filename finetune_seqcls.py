"""Fine-tune an encoder for sequence classification: binary, multi-class, multi-label, or sentence-pair regression.

    python finetune_seqcls.py --model_name_or_path embedded-minilm --dataset ../shared/data/trec
    python finetune_seqcls.py --dataset glue --dataset_config sst2 --output_dir runs/sst2
    python finetune_seqcls.py --train_file ttc4900.csv --text_columns text --label_column category
    python finetune_seqcls.py --dataset ../shared/data/semeval2018_ec --label_columns anger joy ... --tune_threshold
    python finetune_seqcls.py --do_train false --model_name_or_path runs/seqcls/best_model --text "what a film"
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 finetune_seqcls.py ...   # several CPU processes (gloo)

The task is read from the labels (see absa/text_data.py) or forced with --task. Reads top to bottom: settings,
data, model, optimizer, loop (absa/training.py, shared with finetune_absa.py), test, results, predictions.
OUTPUT/best_model is an ordinary AutoModelForSequenceClassification folder (id2label, label2id, problem_type set):
`transformers.pipeline("text-classification", model="OUTPUT/best_model")` loads it, and --predict_file / --text
predict through exactly that pipeline.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification, DataCollatorWithPadding

from absa.batches import make_dataloaders
from absa.files import DataError
from absa.launch import fsdp_wrap_classes
from absa.training import (BEST_MODEL, LoopSettings, check_settings, clear_output_dir, end_run, fit,
                       make_accelerator, make_optimizer, make_scheduler, parse_settings, predict,
                       prepare_output_dir, run_for_seeds, run_summary)
from absa.metrics import best_threshold, multi_label_metrics, regression_metrics, scalar_metrics, single_label_metrics
from absa.model import loading_error, load_tokenizer, resolve_model_path
from absa.reports import plot_confusion_matrix, plot_curves, write_atomically, write_json, write_jsonl
from absa.text_data import (ALL_METRICS, LABELS, PROBLEM_TYPES, TASK_METRICS, TASKS, TEXT, TEXT_PAIR, TextData,
                            encode_text_splits, load_text_data, read_inputs)

# What the last line prints and the curves show, per task; results.json has every metric.
HEADLINE = {"single_label": ("accuracy", "macro_f1"),
            "multi_label": ("micro_f1", "macro_f1", "roc_auc", "subset_accuracy"),
            "regression": ("pearson", "spearman", "mse", "rmse", "mae")}
CURVES = {"single_label": ("loss", "accuracy", "macro_f1"), "multi_label": ("loss", "micro_f1", "macro_f1"),
          "regression": ("loss", "pearson", "spearman")}
# Metrics that move with the multi-label threshold, so --tune_threshold can maximise them.
THRESHOLD_METRICS = ("micro_f1", "macro_f1", "subset_accuracy")
SEED_KEYS = ("test_accuracy", "test_macro_f1", "test_micro_f1", "test_pearson", "test_spearman")
REPEATABLE = ("--text", "--text_pair")


@dataclass
class Settings(LoopSettings):
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
    task: str | None = field(default=None, metadata={"choices": list(TASKS), "help": "Force the task; default: "
                             "read from the labels (floats: regression, lists or several columns: multi_label)."})
    threshold: float = field(default=0.5, metadata={"help": "Multi-label: a label is predicted when its sigmoid "
                                                            "reaches this."})
    tune_threshold: bool = field(default=False, metadata={"help": "Multi-label: after training, pick the threshold "
                                 "that maximises the selection metric (micro-F1 unless an F1 / subset accuracy is "
                                 "selected) on VALIDATION, and use it on test and in the saved model."})
    allow_empty_labels: bool = field(default=True, metadata={"help": "Multi-label: keep rows with no label at all "
                                     "(SemEval-2018 E-c has 204 such train tweets); false refuses them."})
    max_train_samples: int = field(default=0, metadata={"help": "Use a seeded subset of train (0: all), taken "
                                   "before validation is carved from train. For CPU runs."})
    do_train: bool = field(default=True, metadata={"help": "false: only predict --predict_file / --text with the "
                           "fine-tuned folder --model_name_or_path."})
    predict_file: str | None = field(default=None, metadata={"help": "After training (or with --do_train false), "
                                     "predict this file's texts through transformers.pipeline."})
    text: list[str] = field(default_factory=list, metadata={"help": "Texts to predict (repeatable); printed."})
    text_pair: list[str] = field(default_factory=list, metadata={"help": "Second sentences for --text (repeatable, "
                                                                         "same count)."})
    predictions_file: str | None = field(default=None, metadata={"help": "Where predictions go (.jsonl or .csv; "
                                         "default: OUTPUT/predictions.jsonl for --predict_file, stdout for --text)."})
    output_dir: str = "runs/seqcls"
    learning_rate: float = 2e-5
    per_device_batch_size: int = 32
    weight_decay: float = 0.01
    warmup_steps: int = 100
    num_epochs: int = 3
    early_stopping_patience: int = 3
    metric_for_best_model: str = "loss"
    max_length: int = field(default=128, metadata={"help": "Longer texts (pairs: the longer text first) are cut; "
                            "saved as the tokenizer's model_max_length, so pipeline(truncation=True) cuts alike."})


def main(settings: Settings) -> dict:
    started = time.time()
    if not settings.do_train:
        return predict_only(settings)
    check_settings(settings, TASK_METRICS[settings.task] if settings.task else ALL_METRICS)
    output_dir = prepare_output_dir(settings)
    accelerator = make_accelerator(settings)
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
                          select_on_test=settings.select_on_test)
    check_settings(settings, TASK_METRICS[data.task])  # now that the task is known, before any model is loaded
    if settings.tune_threshold and data.task != "multi_label":
        raise SystemExit(f"--tune_threshold is for multi-label data; this is {data.task}")
    inputs = prediction_inputs(settings, data.text_columns)  # a bad --predict_file fails now, not after training

    tokenizer = load_tokenizer(settings.model_name_or_path)
    # Saved with the model, so a pipeline user's truncation=True cuts where training did.
    tokenizer.model_max_length = min(tokenizer.model_max_length, settings.max_length)
    splits, features = encode_text_splits(data.splits, tokenizer, tokenizer.model_max_length)
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=settings.pad_to_multiple_of)
    loaders = make_dataloaders(features, collator, settings)
    accelerator.print(f"task {data.task}, {len(data.label_names)} label(s), texts {'+'.join(data.text_columns)}; "
                      f"{ {split: len(rows) for split, rows in splits.items()} }")
    clear_output_dir(accelerator, output_dir, resuming=bool(settings.resume_from_checkpoint))

    # Model and optimizer.
    model = build_model(settings.model_name_or_path, data, settings.threshold)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = make_optimizer(model, settings)
    train_loader, validation_loader, test_loader = accelerator.prepare(
        loaders["train"], loaders["validation"], loaders.get("test", loaders["validation"]))
    scheduler = make_scheduler(optimizer, settings, train_loader, accelerator)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if settings.report_to:
        accelerator.init_trackers("finetune_seqcls",
                                  config={k: str(v) for k, v in dataclasses.asdict(settings).items()})

    # The loop: train, evaluate on validation, keep the best model, checkpoint, stop early.
    def compute_metrics(logits, labels, threshold=settings.threshold):
        if data.task == "single_label":
            return single_label_metrics(logits, labels, data.label_names)
        if data.task == "multi_label":
            return multi_label_metrics(logits, labels, data.label_names, threshold)
        return regression_metrics(logits[:, 0], labels)

    def compute_loss(output, labels):  # temporary: the model's own loss (problem_type)
        return {"single_label": lambda: torch.nn.functional.cross_entropy(output.logits.float(), labels),
                "multi_label": lambda: torch.nn.functional.binary_cross_entropy_with_logits(output.logits.float(),
                                                                                            labels.float()),
                "regression": lambda: torch.nn.functional.mse_loss(output.logits.float().squeeze(-1),
                                                                   labels.float())}[data.task]()

    state = fit(accelerator, model, optimizer, scheduler, train_loader, validation_loader, compute_metrics,
                settings, tokenizer, compute_loss)

    # Test: reload the best model (a plain from_pretrained, as any user would) and evaluate it once.
    del model, optimizer
    accelerator.free_memory()
    best_dir = output_dir / BEST_MODEL
    best_model = accelerator.prepare(AutoModelForSequenceClassification.from_pretrained(best_dir))
    threshold, tuned = settings.threshold, None
    if settings.tune_threshold:  # on validation only: test stays untouched until the one evaluation below
        logits, labels = predict(accelerator, best_model, validation_loader)
        metric = settings.metric_for_best_model if settings.metric_for_best_model in THRESHOLD_METRICS else "micro_f1"
        threshold = best_threshold(logits, labels, data.label_names, metric)
        tuned = compute_metrics(logits, labels, threshold)
        if accelerator.is_main_process:
            save_threshold(best_dir, threshold)
        at_default = next(row for row in state.history if row["step"] == state.stopping["best_step"])[metric]
        accelerator.print(f"threshold tuned on validation for {metric}: {threshold} ({metric} {tuned[metric]:.4f}; "
                          f"at {settings.threshold}: {at_default:.4f})")
    test_split = "test" if "test" in loaders else "validation"
    if test_split == "validation":
        accelerator.print("no test split: the final evaluation is on validation, which also selected the model")
    logits, labels = predict(accelerator, best_model, test_loader)
    test = compute_metrics(logits, labels, threshold)

    results = {
        "task": data.task, "problem_type": PROBLEM_TYPES[data.task], "label_names": data.label_names,
        "text_columns": data.text_columns, "label_columns": data.label_columns, "sources": data.sources,
        "split_sizes": {split: len(rows) for split, rows in splits.items()},
        "test_split": test_split, **{f"test_{k}": v for k, v in scalar_metrics(test).items()}, "test": test,
        **({"threshold": threshold, "threshold_tuned": bool(settings.tune_threshold), "validation_at_threshold": tuned}
           if data.task == "multi_label" else {}),
        **run_summary(accelerator, state, settings, started),
    }
    if accelerator.is_main_process:
        write_json(output_dir / "results.json", results)
        # One row per test example, in the order of splits[test_split], for error analysis and for checking.
        write_jsonl(output_dir / "test_predictions.jsonl",
                    test_prediction_rows(data, splits[test_split], logits, threshold))
        if data.task == "single_label":
            plot_confusion_matrix(test["confusion_matrix"], data.label_names, output_dir / "confusion_matrix.png")
        plot_curves(state.history, output_dir / "curves.png", metrics=CURVES[data.task])
        shown = ", ".join(f"{k} {test[k]:.4f}" for k in HEADLINE[data.task])
        accelerator.print(f"test ({test_split}): {shown}; best epoch {results['best_epoch']}; "
                          f"{results['train_samples_per_second']:.1f} samples/s; "
                          f"results in {output_dir / 'results.json'}")
        if inputs:
            write_predictions(settings, best_dir, inputs, accelerator.device)
    end_run(accelerator)
    return results


# ----------------------------------------------------------------------------------------------- model


def build_model(name_or_path: str, data: TextData, threshold: float):
    """AutoModelForSequenceClassification with the labels, problem type and inputs of `data` in its config.

    problem_type picks the loss inside the model (cross-entropy, BCE-with-logits, MSE on num_labels=1) and the
    function the text-classification pipeline applies (softmax, sigmoid, none). Every parameter of these heads
    takes part in the loss (BERT's pooler feeds its classifier; RoBERTa / XLM-R build no pooler; DeBERTa's
    ContextPooler and ELECTRA's head are used), so DDP needs no find_unused_parameters.
    """
    path = resolve_model_path(name_or_path)
    id2label = dict(enumerate(data.label_names))
    try:
        config = AutoConfig.from_pretrained(path, num_labels=len(id2label), id2label=id2label,
                                            label2id={name: i for i, name in id2label.items()},
                                            problem_type=PROBLEM_TYPES[data.task])
        # Recorded in config.json for --predict_file and for readers of the folder; transformers ignores them.
        config.text_columns = list(data.text_columns)
        if data.task == "multi_label":
            config.multi_label_threshold = threshold
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config)
    except Exception as error:  # noqa: BLE001 - turned into a message that says what to do
        raise loading_error(name_or_path, error) from None
    # FSDP's transformer-layer auto-wrap reads this; transformers leaves it empty for DeBERTa-v2 and ELECTRA.
    model._no_split_modules = fsdp_wrap_classes(model)
    return model


def save_threshold(model_dir: Path, threshold: float) -> None:
    config = AutoConfig.from_pretrained(model_dir)
    config.multi_label_threshold = threshold
    config.save_pretrained(model_dir)


# ----------------------------------------------------------------------------------------------- predictions


def format_prediction(task: str, label_names, scores, threshold: float) -> dict:
    """The same record for the script's test predictions and for pipeline predictions.

    `scores` are probabilities per label (softmax for single-label, sigmoid for multi-label) or the raw score.
    """
    scores = [float(s) for s in np.atleast_1d(scores)]
    if task == "regression":
        return {"prediction": scores[0]}
    by_label = dict(zip(label_names, scores))
    if task == "multi_label":
        return {"prediction": [name for name, p in by_label.items() if p >= threshold], "scores": by_label}
    best = int(np.argmax(scores))
    return {"prediction": label_names[best], "score": scores[best], "scores": by_label}


def test_prediction_rows(data: TextData, split, logits: np.ndarray, threshold: float) -> list[dict]:
    if len(split) != len(logits):  # the loop keeps sorted evaluation splits in order; say so if that changes
        raise RuntimeError(f"{len(logits)} predictions for {len(split)} test rows")
    logits_t = torch.as_tensor(logits, dtype=torch.float32)
    scores = {"single_label": lambda: torch.softmax(logits_t, -1), "multi_label": lambda: torch.sigmoid(logits_t),
              "regression": lambda: logits_t}[data.task]().numpy()
    rows = []
    for record, row_scores in zip(split, scores):
        gold = record[LABELS]
        if data.task == "single_label":
            gold = data.label_names[gold]
        elif data.task == "multi_label":
            gold = [name for name, value in zip(data.label_names, gold) if value]
        texts = {TEXT: record[TEXT], **({TEXT_PAIR: record[TEXT_PAIR]} if data.is_pair else {})}
        rows.append({"row": record["row"], **texts, "label": gold,
                     **format_prediction(data.task, data.label_names, row_scores, threshold)})
    return rows


def prediction_inputs(settings: Settings, text_columns) -> list[tuple[str, list[str]]]:
    """(row label, [text] or [text, text_pair]) from --predict_file and --text / --text_pair, checked."""
    inputs = []
    if settings.predict_file:
        _, rows = read_inputs(settings.predict_file, settings.text_columns or text_columns)
        inputs += rows
    if settings.text_pair and len(settings.text_pair) != len(settings.text):
        raise SystemExit(f"--text_pair: {len(settings.text_pair)} given for {len(settings.text)} --text")
    if settings.text and text_columns and len(text_columns) == 2 and not settings.text_pair:
        raise SystemExit("this model reads sentence pairs: give a --text_pair for each --text")
    if settings.text_pair and text_columns and len(text_columns) == 1:
        raise SystemExit("this model reads single texts: --text_pair has no place to go")
    for i, text in enumerate(settings.text):
        inputs.append((f"--text {i + 1}", [text, settings.text_pair[i]] if settings.text_pair else [text]))
    return inputs


def pipeline_predictions(model_dir, inputs, device=None, batch_size: int = 32) -> list[dict]:
    """Predict through `transformers.pipeline("text-classification")`: what a user of the saved folder gets."""
    classifier = transformers.pipeline("text-classification", model=str(model_dir), device=device)
    config = classifier.model.config
    task = {problem: task for task, problem in PROBLEM_TYPES.items()}.get(config.problem_type)
    if task is None:
        raise SystemExit(f"{model_dir}: not a fine-tuned sequence-classification folder (config.json has "
                         f"problem_type {config.problem_type!r}); give the best_model folder of a training run")
    label_names = [config.id2label[i] for i in range(config.num_labels)]
    queries = [texts[0] if len(texts) == 1 else {"text": texts[0], "text_pair": texts[1]} for _, texts in inputs]
    # top_k=None: every label's score, with the pipeline's own softmax / sigmoid / none chosen by problem_type.
    outputs = classifier(queries, top_k=None, batch_size=batch_size, truncation=True)
    threshold = getattr(config, "multi_label_threshold", 0.5)
    records = []
    for (row, texts), output in zip(inputs, outputs):
        scores = {item["label"]: item["score"] for item in output}
        records.append({"row": row, TEXT: texts[0], **({TEXT_PAIR: texts[1]} if len(texts) == 2 else {}),
                        **format_prediction(task, label_names, [scores[name] for name in label_names], threshold)})
    return records


def write_predictions(settings: Settings, model_dir, inputs, device=None) -> list[dict]:
    records = pipeline_predictions(model_dir, inputs, device, settings.eval_batch_size)
    from_file = [r for r in records if not r["row"].startswith("--text")]
    path = settings.predictions_file or (Path(settings.output_dir) / "predictions.jsonl" if from_file else None)
    if path is None:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
        return records
    path = Path(path)
    if path.suffix.lower() == ".csv":  # flat: one score column per label, multi-label predictions joined by ';'
        flat = [{**{k: (";".join(v) if isinstance(v, list) else v) for k, v in r.items() if k != "scores"},
                 **{f"score_{name}": p for name, p in r.get("scores", {}).items()}} for r in records]
        write_atomically(path, pd.DataFrame(flat).to_csv(index=False))
    else:
        write_jsonl(path, records)
    for record in records[len(from_file):] if not settings.predictions_file else []:
        print(json.dumps(record, ensure_ascii=False))
    print(f"{len(records)} predictions in {path}")
    return records


def predict_only(settings: Settings) -> list[dict]:
    """--do_train false: run a fine-tuned folder on --predict_file / --text; no data, no training."""
    model_dir = resolve_model_path(settings.model_name_or_path)
    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"--do_train false needs a fine-tuned model folder as --model_name_or_path (e.g. "
                         f"runs/seqcls/best_model); {settings.model_name_or_path} is not one")
    config = AutoConfig.from_pretrained(model_dir)
    inputs = prediction_inputs(settings, getattr(config, "text_columns", None) or [])
    if not inputs:
        raise SystemExit("--do_train false: nothing to do; give --predict_file FILE and / or --text TEXT")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return write_predictions(settings, model_dir, inputs, "cuda" if torch.cuda.is_available() else "cpu")


def merge_repeated_flags(args: list[str], flags=REPEATABLE) -> list[str]:
    """`--text a --text b` -> `--text a b`: argparse would keep only the last of a repeated list flag."""
    merged, values = [], {}
    i = 0
    while i < len(args):
        if args[i] in flags:
            name = args[i]
            i += 1
            while i < len(args) and not args[i].startswith("--"):
                values.setdefault(name, []).append(args[i])
                i += 1
        else:
            merged.append(args[i])
            i += 1
    for name, items in values.items():
        merged += [name, *items]
    return merged


if __name__ == "__main__":
    try:
        run_for_seeds(main, parse_settings(Settings, merge_repeated_flags(sys.argv[1:])), keys=SEED_KEYS)
    except DataError as error:  # the file, row and field are in the message; a traceback adds nothing
        raise SystemExit(f"data error: {error}") from None
