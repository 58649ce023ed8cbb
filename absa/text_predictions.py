"""Predictions of a fine-tuned sequence-classification folder (finetune_seqcls.py's best_model), through
`transformers.pipeline("text-classification")`: exactly what any user of the saved folder gets.

The same record format serves the script's test predictions (`test_prediction_rows`) and pipeline predictions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import transformers
from torch.utils.data import DataLoader
from transformers import AutoConfig, DataCollatorWithPadding

from .encoders import resolve_model_path
from .files import write_atomically
from .reports import write_jsonl
from .text_data import LABELS, PROBLEM_TYPES, TEXT, TEXT_PAIR, TextData, read_inputs


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


def task_scores(task: str, logits: np.ndarray) -> np.ndarray:
    """What the text-classification pipeline applies by problem type: softmax, sigmoid, or none (regression)."""
    logits = torch.as_tensor(logits, dtype=torch.float32)
    return {"single_label": lambda: torch.softmax(logits, -1), "multi_label": lambda: torch.sigmoid(logits),
            "regression": lambda: logits}[task]().numpy()


def labelled_prediction_rows(data: TextData, split, logits: np.ndarray, threshold: float) -> list[dict]:
    """One row per example of `split` (its text, gold label and prediction); `logits` in the same order."""
    if len(split) != len(logits):
        raise RuntimeError(f"{len(logits)} predictions for {len(split)} test rows")
    scores = task_scores(data.task, logits)
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


def prediction_inputs(settings, text_columns) -> list[tuple[str, list[str]]]:
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


PREDICTION_TYPES = (".jsonl", ".csv")


def predictions_path(settings, inputs) -> Path | None:
    """Where the predictions go, checked before any work: --predictions_file; else, for --predict_file rows,
    OUTPUT/predictions.jsonl after training, and predictions_INPUT.jsonl beside the model folder with --do_train
    false (not a folder relative to the working directory); None: --text only, printed. An existing file is
    refused unless --overwrite_output_dir."""
    if settings.predictions_file:
        path = Path(settings.predictions_file)
    elif not any(not row.startswith("--text") for row, _ in inputs):
        return None
    elif settings.do_train:
        path = Path(settings.output_dir) / "predictions.jsonl"
    else:
        model_dir = Path(resolve_model_path(settings.model_name_or_path)).resolve()
        path = model_dir.parent / f"predictions_{Path(settings.predict_file).stem}.jsonl"
    if path.suffix.lower() not in PREDICTION_TYPES:
        raise SystemExit(f"--predictions_file {path}: unknown type '{path.suffix}' (expected "
                         f"{' or '.join(PREDICTION_TYPES)})")
    if path.is_dir():
        raise SystemExit(f"--predictions_file {path} is a folder; give a file name")
    if path.exists() and not settings.overwrite_output_dir:
        raise SystemExit(f"{path} already exists; pass --overwrite_output_dir to replace it, or choose another "
                         "--predictions_file")
    return path


def prediction_loader(inputs, tokenizer, batch_size: int) -> DataLoader:
    """`inputs` encoded as the pipeline encodes them (truncated to the tokenizer's model_max_length), shortest first
    so batches pad little; each example's label is its position in `inputs`, to put the outputs back in order."""
    features = [{**tokenizer(*texts, truncation=True), "labels": position}
                for position, (_, texts) in enumerate(inputs)]
    features.sort(key=lambda feature: len(feature["input_ids"]))
    return DataLoader(features, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))


def prediction_records(task: str, label_names, inputs, logits: np.ndarray, positions: np.ndarray,
                       threshold: float) -> list[dict]:
    """One record per input, in the order of `inputs`, from the logits of `prediction_loader`'s batches (the
    pipeline's record format)."""
    if sorted(positions.tolist()) != list(range(len(inputs))):
        raise RuntimeError(f"{len(positions)} predictions for {len(inputs)} inputs")
    in_order = np.empty_like(logits)
    in_order[positions] = logits
    return [{"row": row, TEXT: texts[0], **({TEXT_PAIR: texts[1]} if len(texts) == 2 else {}),
             **format_prediction(task, label_names, scores, threshold)}
            for (row, texts), scores in zip(inputs, task_scores(task, in_order))]


def write_predictions(settings, records: list[dict], path: Path | None) -> list[dict]:
    """Write `records` to `path` (`predictions_path`), or print them when there is none."""
    from_file = [r for r in records if not r["row"].startswith("--text")]
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


def predict_only(settings) -> list[dict]:
    """--do_train false: run a fine-tuned folder on --predict_file / --text; no data, no training."""
    model_dir = resolve_model_path(settings.model_name_or_path)
    if not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"--do_train false needs a fine-tuned model folder as --model_name_or_path (e.g. "
                         f"runs/seqcls/best_model); {settings.model_name_or_path} is not one")
    config = AutoConfig.from_pretrained(model_dir)
    inputs = prediction_inputs(settings, getattr(config, "text_columns", None) or [])
    if not inputs:
        raise SystemExit("--do_train false: nothing to do; give --predict_file FILE and / or --text TEXT")
    path = predictions_path(settings, inputs)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return write_predictions(settings, pipeline_predictions(model_dir, inputs, device, settings.eval_batch_size), path)
