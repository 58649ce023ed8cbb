"""`use_absa.py evaluate`: which split to read (rebuilt as training made it), the name its output files carry, the
scores of the model on it, and the printed report."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import accelerate
import torch
import transformers
from sklearn.metrics import classification_report

from .aspects import AspectSpan
from .data import load_absa_splits, read_absa_file
from .files import DataError
from .metrics import single_label_metrics
from .model import label_names_of
from .splits import check_rebuilt_split, rebuild_recipe


def evaluation_name(args) -> str:
    """What was evaluated, as the output files name it: a file by its folder and stem (`contrastive_test` for
    data/contrastive/test.jsonl), a folder or Hub dataset by its name and the split (`semeval2014_laptops_test`),
    a split carved from a train file by that file and the split (`sample_laptops_train_validation`)."""
    single = split_file(args)
    if single:
        return f"{Path(single).resolve().parent.name}_{Path(single).stem}"
    if not args.dataset:
        return f"data_{args.split}"
    dataset = Path(args.dataset)
    if dataset.is_file():
        return f"{dataset.resolve().parent.name}_{dataset.stem}_{args.split}"
    return f"{dataset.resolve().name}_{args.split}"


def split_file(args) -> str | None:
    """The one file that is the split to evaluate: --SPLIT_file, or --dataset FILE evaluated whole as the test split
    (with --split train / validation a --dataset FILE is what finetune_absa.py made of it: train and its carve)."""
    whole = bool(args.dataset) and Path(args.dataset).is_file() and args.split == "test"
    return getattr(args, f"{args.split}_file") or (args.dataset if whole else None)


def read_split(args, config) -> tuple[list[dict], str]:
    """Rows (text, aspect, start, end, label id) of the split to evaluate, and a description of where from.

    Labels are read as in training (the model's label names and `absa_numeric_labels`); a train or validation
    split is rebuilt as training made it (`absa_validation_split`) and checked against that record."""
    label_names = label_names_of(config)
    numeric_labels = args.numeric_labels or getattr(config, "absa_numeric_labels", None) or "auto"
    record = getattr(config, "absa_validation_split", None)
    model = ", ".join(map(str, args.model))  # the model folder (use_absa.py refuses train and validation for several)
    single = split_file(args)
    if single:
        # One file is the whole split. load_absa_splits would take it as a train split and carve a validation
        # share off it.
        rows = read_absa_file(single, label_names, numeric_labels)
        if getattr(args, f"{args.split}_file"):
            check_rebuilt_split(record, model, args.split, rows, single, carved=False)
        return rows, str(single)
    if not args.dataset:
        raise SystemExit(f"evaluate needs --dataset (a folder, file or Hub name) or --{args.split}_file")
    recipe = rebuild_recipe(record, model, args.split, args.validation_fraction, args.seed)
    splits = load_absa_splits(args.dataset, train_file=args.train_file, validation_file=args.validation_file,
                              test_file=args.test_file, label_names=label_names, numeric_labels=numeric_labels,
                              **recipe)
    if args.split not in splits:
        raise DataError(args.dataset, f"no {args.split} split (it has {', '.join(splits)}); choose one with --split "
                        f"or give --{args.split}_file")
    rows = splits[args.split].to_list()
    check_rebuilt_split(record, model, args.split, rows, args.dataset,
                        carved=splits.validation_split["made"] == "carved")
    return rows, f"{args.dataset} [{args.split}]"


def score(predictor, rows: list[dict], where: str) -> tuple[dict, list[int]]:
    """The model's metrics on these rows (every process predicts a share of the batches), how fast, and the
    predicted label ids."""
    spans = [AspectSpan(row["text"], row["start"], row["end"], spans=tuple(map(tuple, row["spans"])))
             for row in rows]  # offsets checked by absa.data
    features = predictor.encode(spans, source=where)  # a problem in the data shows before a large model loads
    predictor.model  # noqa: B018 - loaded before the clock starts
    accelerator, started = predictor.accelerator, time.perf_counter()
    logits = predictor.logits(features, shared=True)
    seconds = time.perf_counter() - started
    labels = [row["label"] for row in rows]
    results = {"data": where, "label_names": predictor.label_names,
               **single_label_metrics(logits, labels, predictor.label_names),
               "num_processes": accelerator.num_processes, "device": str(accelerator.device),
               "mixed_precision": predictor.mixed_precision, "examples": len(logits), "seconds": round(seconds, 3),
               "predictions_per_second": round(len(logits) / max(seconds, 1e-9), 1),
               "batch_size": predictor.batch_size, "max_length": predictor.max_length,
               "versions": {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__, "accelerate": accelerate.__version__}}
    return results, logits.argmax(axis=-1).tolist()


def report(results: dict, labels, predictions, precision: str) -> str:
    """The headline numbers, scikit-learn's per-class report, the confusion matrix, and the speed."""
    label_names = results["label_names"]
    width = max(12, *(len(name) + 2 for name in label_names))
    present = [label_names.index(name) for name in results["macro_classes"]]  # the classes averaged over
    absent = [name for i, name in enumerate(label_names) if i not in present]
    lines = [(f"accuracy {results['accuracy']:.4f}   macro-F1 {results['macro_f1']:.4f}   "
              f"(macro precision {results['macro_precision']:.4f}, recall {results['macro_recall']:.4f}; "
              f"loss {results['loss']:.4f})"),
             *([f"macro averages over {', '.join(results['macro_classes'])}: no example of {', '.join(absent)} and "
                "none predicted"] if absent else []), "",
             classification_report(labels, predictions, labels=present,
                                   target_names=[label_names[i] for i in present], digits=4, zero_division=0),
             "confusion matrix (rows: true label, columns: predicted)",
             f"{'':{width}}" + "".join(f"{name[:width - 1]:>{width}}" for name in label_names)]
    for name, counts in zip(label_names, results["confusion_matrix"]):
        lines.append(f"{name:{width}}" + "".join(f"{count:>{width}d}" for count in counts))
    speed = results["predictions_per_second"]
    lines.append(f"{results['examples']} predictions in {results['seconds']:.2f} s ({speed:.1f} "
                 f"predictions/s, tokenized beforehand) with {results['num_processes']} process(es) on "
                 f"{results['device']}, {precision}")
    return "\n".join(lines)
