"""Evaluate a fine-tuned ABSA model on a labelled split, or predict aspect sentiment with it.

    python use_absa.py evaluate runs/laptops/best_model --dataset ../shared/data/semeval2014_laptops
    python use_absa.py predict runs/laptops/best_model --input reviews.jsonl --output predictions.csv
    python use_absa.py predict runs/laptops/best_model --text "The battery lasts forever but the screen is dim" \\
        --aspect battery --aspect screen
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 use_absa.py predict ...      # several CPU processes
    accelerate launch --config_file accelerate_configs/base.yaml --num_processes 4 use_absa.py evaluate ...

Reads top to bottom: arguments, then each mode as data -> model -> predict -> write (input problems show before a
model loads). `evaluate` and `predict
--input` share the inputs between processes through a prepared DataLoader and collect the outputs with
`gather_for_metrics` (absa.training.predict), so N inputs give exactly N outputs in input order on any number of
processes; only the main process prints and writes. `predict --text` is a handful of inputs: it runs on the main
process alone, through the Python API (absa.predict.AbsaPredictor).
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import textwrap
import time
from pathlib import Path

import accelerate
import datasets
import numpy as np
import pandas as pd
import torch
import transformers
from accelerate import Accelerator, PartialState

from absa.aspects import AspectCollator
from absa.data import read_absa_file, load_absa_splits
from absa.files import DataError, read_rows
from absa.launch import check_distributed_setup
from absa.training import end_run, predict as gather_logits
from absa.metrics import single_label_metrics
from absa.predict import (DTYPES, MARK_END, MARK_START, AbsaPredictor, AspectError, AspectSpan, autocast,
                          default_max_length, encode_spans, in_input_order, label_names_of, length_sorted_loader,
                          load_absa_model, parse_marked_text, read_label_names, resolve_aspect, resolve_dtype,
                          softmax)
from absa.reports import plot_confusion_matrix, write_atomically, write_json, write_jsonl

OUTPUT_TYPES = (".jsonl", ".csv", ".tsv")


# --------------------------------------------------------------------------- arguments


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description on its own; paragraphs with indented lines (examples) stay as written."""

    def _fill_text(self, text, width, indent):
        return "\n\n".join(paragraph if "\n " in paragraph else
                            textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                          subsequent_indent=indent)
                            for paragraph in text.split("\n\n"))


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="use_absa.py", formatter_class=HelpFormatter,
        description="Evaluate or use an aspect-based sentiment model written by finetune_absa.py (its best_model "
                    "folder), on one process or many (accelerate launch / torchrun).",
        epilog="examples:\n"
               "  use_absa.py evaluate runs/laptops/best_model --dataset ../shared/data/semeval2014_laptops\n"
               "  use_absa.py predict runs/laptops/best_model --input reviews.jsonl --output predictions.csv\n"
               "  use_absa.py predict runs/laptops/best_model --text \"The battery lasts but the screen is dim\" "
               "--aspect battery --aspect screen\n"
               f"  use_absa.py predict runs/laptops/best_model --text \"The {MARK_START}battery{MARK_END} lasts\"\n\n"
               "`use_absa.py evaluate --help` and `use_absa.py predict --help` list each mode's options.")
    modes = parser.add_subparsers(dest="mode", required=True, metavar="{evaluate,predict}")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", metavar="MODEL_DIR", help="an ABSA model folder written by finetune_absa.py "
                        "(OUTPUT/best_model: config.json with the labels, model.safetensors, tokenizer)")
    common.add_argument("--batch_size", type=int, default=64, help="inputs per batch and process (default: 64)")
    common.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="compute precision. auto: bf16 autocast on CUDA GPUs with bf16 and on CPUs with native "
                             "bf16 (AVX512-BF16 / AMX), fp32 elsewhere. fp32 reproduces finetune_absa.py's own test "
                             "scores when it ran without mixed precision (default: auto)")
    common.add_argument("--max_length", type=int, default=None, help="longer texts are cut to a window around "
                        "the aspect (default: the tokenizer's limit, 512 if it has none)")
    common.add_argument("--overwrite", action="store_true", help="replace output files that already exist")

    evaluate = modes.add_parser(
        "evaluate", parents=[common], formatter_class=HelpFormatter,
        help="accuracy, macro-F1, per-class report and confusion matrix on a labelled split",
        description="Score the model on a labelled split. Prints accuracy, macro-F1, the per-class report and the "
                    "confusion matrix, and writes them to OUTPUT_DIR/evaluation_SPLIT.json and "
                    "OUTPUT_DIR/evaluation_SPLIT_confusion_matrix.png.")
    evaluate.add_argument("--dataset", default=None, help="a folder (train/test files: JSONL, CSV, Parquet, "
                          "SemEval XML, $T$ format), one such file (evaluated whole), or a Hub dataset name")
    evaluate.add_argument("--split", default="test", choices=("train", "validation", "test"),
                          help="which split of --dataset (default: test). A dataset without a validation split "
                               "gets the one finetune_absa.py carved from train (same --validation_fraction/--seed)")
    for split in ("train", "validation", "test"):
        evaluate.add_argument(f"--{split}_file", default=None,
                              help=f"a file to use as the {split} split (read whole; overrides --dataset)")
    evaluate.add_argument("--validation_fraction", type=float, default=0.1,
                          help="share of train held out as validation when the data has none (default: 0.1)")
    evaluate.add_argument("--seed", type=int, default=42, help="seed of that split (default: 42)")
    evaluate.add_argument("--output_dir", default=None,
                          help="where the JSON and PNG go (default: the folder that holds MODEL_DIR)")

    predict = modes.add_parser(
        "predict", parents=[common], formatter_class=HelpFormatter,
        help="the sentiment of each aspect, from a file or from the command line",
        description="Predict the sentiment towards each aspect.\n\n"
                    "--input FILE (JSONL, JSON, CSV, TSV, Parquet): one row per (text, aspect) with a `text` column "
                    "and an `aspect` column; optional `start`/`end` character offsets, or an `occurrence` column "
                    f"(1-based) when the aspect occurs more than once; or the aspect marked in the text as "
                    f"{MARK_START}...{MARK_END}. --output FILE gets one row per input row, in input order: the input "
                    "columns, start/end (in the text without markers), predicted_label and prob_LABEL for every "
                    "class. .jsonl, .csv or .tsv, by extension.\n\n"
                    f"--text TEXT: each aspect marked in it ({MARK_START}...{MARK_END}, several allowed), or each "
                    "--aspect (the first occurrence, or the N-th with --occurrence N). Prints one line per aspect.")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", default=None, help="a file of (text, aspect) rows")
    source.add_argument("--text", action="append", default=None,
                        help="a sentence (repeat for several); mark aspects in it or give --aspect")
    predict.add_argument("--aspect", action="append", default=[],
                         help="an aspect of each --text without markers (repeat for several)")
    predict.add_argument("--occurrence", type=int, default=None,
                         help="classify the N-th occurrence (1-based) of each --aspect in its text")
    predict.add_argument("--output", default=None, help=f"where predictions go ({', '.join(OUTPUT_TYPES)}); "
                         "required with --input, optional with --text")

    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.max_length is not None and args.max_length < 8:
        parser.error(f"--max_length must be at least 8, got {args.max_length}")
    if args.mode == "predict":
        if args.input and not args.output:
            parser.error("--input needs --output (a .jsonl, .csv or .tsv file)")
        if args.input and (args.aspect or args.occurrence):
            parser.error("--aspect and --occurrence go with --text; in a file, use the aspect / occurrence columns")
        if args.occurrence is not None and args.occurrence < 1:
            parser.error(f"--occurrence counts from 1, got {args.occurrence}")
    return args


def main(argv=None) -> None:
    args = parse_arguments(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no Rust thread pool fighting torch's threads
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    # Problems with the user's input end as one line naming the file / row / field, not as a traceback.
    try:
        if args.mode == "evaluate":
            evaluate(args)
        elif args.input:
            predict_file(args)
        else:
            predict_command_line(args)
    except (DataError, AspectError) as error:
        raise SystemExit(str(error)) from None


def check_output(path: Path, overwrite: bool, types=None) -> Path:
    """Refuse an unknown output type or an existing file before any work is done."""
    if types and path.suffix.lower() not in types:
        raise SystemExit(f"{path}: unknown output type '{path.suffix}' (expected {', '.join(types)})")
    if path.exists() and not overwrite:
        raise SystemExit(f"{path} already exists; pass --overwrite to replace it")
    return path


def make_accelerator() -> Accelerator:
    # Precision is our own autocast (--dtype), so a bf16 accelerate config does not silently change the numbers.
    accelerator = Accelerator(mixed_precision="no")
    check_distributed_setup(accelerator)  # torchrun without ACCELERATE_USE_CPU would run N independent copies
    return accelerator


def load_for_accelerator(args, accelerator: Accelerator):
    """Model (replicated on every process), tokenizer, label names, compute dtype and max_length."""
    model, tokenizer = load_absa_model(args.model)
    label_names = label_names_of(model)  # read before prepare: a wrapped model hides its config
    try:
        dtype = resolve_dtype(args.dtype, accelerator.device)
    except ValueError as error:
        raise SystemExit(f"--dtype {args.dtype}: {error}") from None
    # evaluation_mode: placement only. Inference has no gradients to synchronise, so no DDP wrapper (which would
    # also broadcast the buffers before every batch); every process holds the whole model.
    model = accelerator.prepare_model(model, evaluation_mode=True)
    return model, tokenizer, label_names, dtype, args.max_length or default_max_length(tokenizer)


def run_sharded(accelerator: Accelerator, model, tokenizer, features: list[dict], batch_size: int, dtype):
    """Logits of all features (gathered from every process) and what each feature carried under "labels"."""
    loader = accelerator.prepare(length_sorted_loader(features, AspectCollator(tokenizer), batch_size))
    with autocast(accelerator.device, dtype):
        return gather_logits(accelerator, model, loader)


def run_facts(accelerator: Accelerator, dtype, count: int, seconds: float) -> dict:
    return {"num_processes": accelerator.num_processes, "device": str(accelerator.device),
            "dtype": "bf16" if dtype == torch.bfloat16 else "fp32", "examples": count,
            "seconds": round(seconds, 3), "predictions_per_second": round(count / max(seconds, 1e-9), 1)}


def speed_line(facts: dict) -> str:
    return (f"{facts['examples']} predictions in {facts['seconds']:.2f} s ({facts['predictions_per_second']:.1f} "
            f"predictions/s, tokenizing included) with {facts['num_processes']} process(es) on {facts['device']}, "
            f"{facts['dtype']}")


# --------------------------------------------------------------------------- evaluate


def evaluate(args) -> dict:
    output_dir = Path(args.output_dir) if args.output_dir else Path(args.model).resolve().parent
    split_name = Path(args.dataset).stem if args.dataset and Path(args.dataset).is_file() else args.split
    json_path = check_output(output_dir / f"evaluation_{split_name}.json", args.overwrite)
    png_path = check_output(output_dir / f"evaluation_{split_name}_confusion_matrix.png", args.overwrite)

    # Data first, so that a problem in it shows before a large model loads; label ids in the model's order.
    label_names = read_label_names(args.model)
    rows, where = read_split(args, label_names)

    accelerator = make_accelerator()
    model, tokenizer, label_names, dtype, max_length = load_for_accelerator(args, accelerator)
    accelerator.print(f"evaluating {args.model} on {where}: {len(rows)} examples")

    # Predict: every process tokenizes all rows (cheap) and runs its share of the batches.
    started = time.perf_counter()
    spans = [AspectSpan(row["text"], row["start"], row["end"]) for row in rows]  # offsets checked by absa.data
    features = encode_spans(tokenizer, spans, max_length, labels=[row["label"] for row in rows], source=where)
    logits, labels = run_sharded(accelerator, model, tokenizer, features, args.batch_size, dtype)
    facts = run_facts(accelerator, dtype, len(logits), time.perf_counter() - started)

    # Write: metrics are computed from the gathered outputs of all processes, on the main process.
    metrics = single_label_metrics(logits, labels, label_names)
    results = {"model": str(args.model), "data": where, "split": split_name, "label_names": label_names,
               **metrics, **facts,
               "batch_size": args.batch_size, "max_length": max_length,
               "versions": {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__, "accelerate": accelerate.__version__}}
    if accelerator.is_main_process:
        print(metrics_report(metrics, label_names))
        write_json(json_path, results)
        plot_confusion_matrix(metrics["confusion_matrix"], label_names, png_path,
                              title=f"Confusion matrix ({split_name}, {len(logits)} examples)")
        print(speed_line(facts))
        print(f"wrote {json_path} and {png_path}")
    end_run(accelerator)
    return results


def read_split(args, label_names) -> tuple[list[dict], str]:
    """Rows (text, aspect, start, end, label id) of the split to evaluate, and a description of where from."""
    single = getattr(args, f"{args.split}_file") or (args.dataset if args.dataset and Path(args.dataset).is_file()
                                                     else None)
    if single:
        # One file is the whole split. load_absa_splits would take it as a train split and carve a validation
        # share off it (absa.data has no public one-file reader yet).
        return read_absa_file(single, label_names), str(single)
    if not args.dataset:
        raise SystemExit(f"evaluate needs --dataset (a folder, file or Hub name) or --{args.split}_file")
    splits = load_absa_splits(args.dataset, train_file=args.train_file, validation_file=args.validation_file,
                              test_file=args.test_file, label_names=label_names,
                              validation_fraction=args.validation_fraction, seed=args.seed)
    if args.split not in splits:
        raise DataError(args.dataset, f"no {args.split} split (it has {', '.join(splits)}); choose one with --split "
                        f"or give --{args.split}_file")
    return splits[args.split].to_list(), f"{args.dataset} [{args.split}]"


def metrics_report(metrics: dict, label_names) -> str:
    width = max(12, *(len(name) + 2 for name in label_names))
    lines = [(f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   "
              f"(macro precision {metrics['macro_precision']:.4f}, recall {metrics['macro_recall']:.4f}; "
              f"loss {metrics['loss']:.4f})"), "",
             f"{'':{width}}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}"]
    for name in label_names:
        row = metrics["per_class"][name]
        lines.append(f"{name:{width}}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1-score']:>10.4f}"
                     f"{int(row['support']):>10d}")
    lines += ["", "confusion matrix (rows: true label, columns: predicted)",
              f"{'':{width}}" + "".join(f"{name[:width - 1]:>{width}}" for name in label_names)]
    for name, counts in zip(label_names, metrics["confusion_matrix"]):
        lines.append(f"{name:{width}}" + "".join(f"{count:>{width}d}" for count in counts))
    return "\n".join(lines)


# --------------------------------------------------------------------------- predict


def predict_file(args) -> list[dict]:
    output = check_output(Path(args.output), args.overwrite, OUTPUT_TYPES)
    rows = read_rows(args.input)  # DataError for a missing, empty or unreadable file, before the model loads
    spans = spans_of_rows(rows, args.input)
    accelerator = make_accelerator()

    model, tokenizer, label_names, dtype, max_length = load_for_accelerator(args, accelerator)

    # Predict: each input carries its position through sorting and sharding, so outputs return in input order.
    started = time.perf_counter()
    features = encode_spans(tokenizer, spans, max_length, source=str(args.input))
    logits, positions = run_sharded(accelerator, model, tokenizer, features, args.batch_size, dtype)
    probabilities = softmax(in_input_order(logits, positions))
    facts = run_facts(accelerator, dtype, len(probabilities), time.perf_counter() - started)

    results = [prediction_row(row, span, label_names, p) for (_, row), span, p in zip(rows, spans, probabilities)]
    if accelerator.is_main_process:
        write_table(output, results)
        counts = collections.Counter(row["predicted_label"] for row in results)
        print("predicted: " + ", ".join(f"{name} {counts[name]}" for name in label_names))
        print(f"{speed_line(facts)}; wrote {output}")
    end_run(accelerator)
    return results


def spans_of_rows(rows, file) -> list:
    """Each file row's aspect placed in its text; a row that cannot be placed is a DataError naming it."""
    if not any("text" in row for _, row in rows):
        raise DataError(file, f"no 'text' column (columns: {', '.join(rows[0][1])})")
    spans, ambiguous = [], []
    for label, row in rows:
        try:
            span = resolve_aspect(row.get("text"), row.get("aspect"), row.get("start"), row.get("end"),
                                  row.get("occurrence"))
        except AspectError as error:
            raise DataError(file, str(error), row=label, field=error.field) from None
        if span.ambiguous:
            ambiguous.append(label)
        spans.append(span)
    if ambiguous and PartialState().is_main_process:
        print(f"note: {file}: in {len(ambiguous)} row(s) (first: {ambiguous[0]}) the aspect occurs more than once; "
              "the first occurrence was used (add start/end or an `occurrence` column, or mark the aspect)",
              file=sys.stderr)
    return spans


def prediction_row(row: dict, span, label_names, probabilities) -> dict:
    """The input row, then where the aspect is, the predicted label and every class's probability."""
    result = dict(row)
    result.setdefault("aspect", span.aspect)
    result.update(start=span.start, end=span.end, predicted_label=label_names[int(np.argmax(probabilities))])
    result.update({f"prob_{name}": round(float(p), 6) for name, p in zip(label_names, probabilities)})
    return result


def write_table(path: Path, rows: list[dict]) -> None:
    """JSONL, CSV or TSV by extension, written whole or not at all."""
    if path.suffix.lower() == ".jsonl":
        write_jsonl(path, rows)
    else:
        write_atomically(path, pd.DataFrame(rows).to_csv(index=False, sep="\t" if path.suffix.lower() == ".tsv"
                                                          else ","))


def predict_command_line(args) -> list[dict]:
    output = check_output(Path(args.output), args.overwrite, OUTPUT_TYPES) if args.output else None
    spans = spans_of_command_line(args.text, args.aspect, args.occurrence)
    if not PartialState().is_main_process:
        return []  # a few sentences: the main process does them alone, the others have nothing to do

    started = time.perf_counter()
    try:
        predictor = AbsaPredictor.from_pretrained(args.model, device=PartialState().device,
                                                  batch_size=args.batch_size, dtype=args.dtype,
                                                  max_length=args.max_length)
    except ValueError as error:
        raise SystemExit(f"--dtype {args.dtype}: {error}") from None
    loaded = time.perf_counter()
    probabilities = predictor.predict_probabilities([s.text for s in spans], starts=[s.start for s in spans],
                                                    ends=[s.end for s in spans])
    seconds = time.perf_counter() - loaded

    names = predictor.label_names
    results = []
    for span, row in zip(spans, probabilities):
        label = names[int(row.argmax())]
        others = ", ".join(f"{name} {p:.2f}" for name, p in zip(names, row) if name != label)
        shown = f"{span.text[:span.start]}[{span.aspect}]{span.text[span.end:]}"
        print(f"{span.aspect}: {label} {row.max():.2f} ({others})  |  {shown}")
        results.append(prediction_row({"text": span.text, "aspect": span.aspect}, span, names, row))
    if output:
        write_table(output, results)
        print(f"wrote {output}")
    print(f"{len(spans)} predictions in {seconds:.2f} s ({len(spans) / max(seconds, 1e-9):.1f} predictions/s; "
          f"model loaded in {loaded - started:.1f} s) on {predictor.device}, "
          f"{'bf16' if predictor.dtype == torch.bfloat16 else 'fp32'}")
    return results


def spans_of_command_line(texts: list[str], aspects: list[str], occurrence: int | None) -> list:
    """(text, aspect) pairs: every marked aspect of a marked --text, every --aspect in an unmarked one."""
    spans = []
    marked_only = True
    for number, text in enumerate(texts, start=1):
        where = f"--text {number}" if len(texts) > 1 else "--text"
        try:
            clean, marked = parse_marked_text(text)
            if marked:
                spans += [AspectSpan(clean, start, end) for start, end in marked]
                continue
            marked_only = False
            if not aspects:
                raise AspectError(f"no aspect: give --aspect, or mark aspects as {MARK_START}...{MARK_END}")
            for aspect in aspects:
                span = resolve_aspect(clean, aspect, occurrence=occurrence)
                if span.ambiguous:
                    print(f"note: {aspect!r} occurs {span.occurrences} times in {where}; classifying the first "
                          f"(choose with --occurrence N, or mark it as {MARK_START}{aspect}{MARK_END})",
                          file=sys.stderr)
                spans.append(span)
        except AspectError as error:
            raise SystemExit(f"{where}: {error}") from None
    if aspects and marked_only:
        raise SystemExit("--aspect is not used: every --text marks its aspects with "
                         f"{MARK_START}...{MARK_END}; drop --aspect or the markers")
    return spans


if __name__ == "__main__":
    main()
