"""Evaluate a fine-tuned ABSA model on a labelled split, or predict aspect sentiment with it, up to corpus scale.

    python use_absa.py evaluate runs/laptops/best_model --dataset ../shared/data/semeval2014_laptops
    python use_absa.py predict runs/laptops/best_model --input reviews.jsonl --output predictions.csv
    python use_absa.py predict runs/laptops/best_model --input tweets.csv --output labels.parquet --resume
    python use_absa.py predict runs/laptops/best_model --text "The battery lasts forever but the screen is dim" \\
        --aspect battery --aspect screen
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 use_absa.py predict ...      # several CPU processes
    accelerate launch --config_file accelerate_configs/base.yaml --num_processes 4 use_absa.py evaluate ...

Reads top to bottom: arguments and the Accelerator, then each mode as data -> model -> predict -> write (input
problems show before a model loads). What concerns every process (is the input good, what is left to do) is decided
once and handed to all, so every process stops with the same one-line error or none does.

`evaluate` shares the batches of a split between the processes through a prepared DataLoader and gathers the logits
with `gather_for_metrics`. `predict --input` streams: it reads the file in chunks of --chunk_size rows, each process
predicts whole chunks in turn, and the main process writes each chunk as a file in OUTPUT.partial/, joined into
OUTPUT at the end (absa/streaming.py). Memory stays flat, a killed run continues with --resume, and the numbers do
not depend on the number of processes (a chunk's batches are the same on any). `predict --text` is a handful of
inputs: the main process does them alone.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import time
from pathlib import Path

import accelerate
import datasets
import numpy as np
import pyarrow as pa
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from sklearn.metrics import classification_report
from tqdm import tqdm

from absa.aspects import (MARK_END, MARK_START, AspectCollator, AspectError, AspectSpan, parse_marked_text,
                          resolve_aspect)
from absa.data import load_absa_splits, read_absa_file
from absa.encoders import load_tokenizer
from absa.files import NUMERIC_LABELS, NUMERIC_LABELS_HELP, DataError, write_atomically
from absa.launch import check_distributed_setup, end_run
from absa.metrics import macro_classes, single_label_metrics
from absa.model import WEIGHTS_NAME
from absa.predict import (DTYPES, autocast, check_max_length, default_max_length, encode_spans, in_input_order,
                          label_names_of, length_sorted_loader, load_absa_model, read_absa_config, resolve_dtype,
                          softmax)
from absa.reports import plot_confusion_matrix, write_json
from absa.splits import check_rebuilt_split, rebuild_recipe
from absa.streaming import (OUTPUT_TYPES, PartialOutput, check_tsv_cells, infer_schema, read_chunks, table_bytes,
                            unify_schemas)

# --------------------------------------------------------------------------- arguments

PREDICT_HELP = f"""Predict the sentiment towards each aspect.

--input FILE (JSONL, JSON, CSV, TSV, Parquet): one row per (text, aspect) with a `text` column and an
`aspect` column; optional `start`/`end` character offsets, or an `occurrence` column (1-based) when the
aspect occurs more than once; or the aspect marked in the text as {MARK_START}...{MARK_END}.
--output FILE (.jsonl, .csv, .tsv or .parquet, by extension) gets one row per input row, in input order:
the input columns, then predicted_label and prob_LABEL for every class. Its text (without markers), aspect
(as it is in the text), start and end say exactly what was classified: an output reads back as an input.
TSV has no quoting: a cell with a tab or line break is refused (write .csv, .jsonl or .parquet).

Large files stream: every row is checked first (one-line error naming the row, before the model loads),
then the file is predicted --chunk_size rows at a time; each finished chunk is a file in OUTPUT.partial/,
and OUTPUT appears, whole, when the last one is done. After a crash or kill, the same command with
--resume continues from the chunks done and writes the same bytes as an uninterrupted run. Without
--resume an unfinished OUTPUT.partial/ is refused (--overwrite starts again). Several processes
(torchrun, accelerate launch, also on several machines) take whole chunks in turn; the output is the same
on any number of them. JSON lists (.json) are read whole: use JSONL for large inputs.

--text TEXT: each aspect marked in it ({MARK_START}...{MARK_END}, several allowed), or each --aspect (the
first occurrence, or the N-th with --occurrence N). Prints one line per aspect."""


def parse_arguments(argv=None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter  # descriptions and examples keep their lines
    parser = argparse.ArgumentParser(
        prog="use_absa.py", formatter_class=formatter,
        description="Evaluate or use an aspect-based sentiment model written by finetune_absa.py (its best_model\n"
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
                        help="compute precision. auto: bf16 autocast on CUDA GPUs with native bf16 and on CPUs with "
                             "native bf16 (AVX512-BF16 / AMX), fp32 elsewhere; bf16 needs native bf16. Use the "
                             "precision the model was trained in (finetune_absa.py --mixed_precision: auto chooses the "
                             "same way, 'no' is fp32) to reproduce its test scores (default: auto)")
    common.add_argument("--max_length", type=int, default=None, help="longer texts are cut to a window around "
                        "the aspect (default: the length the model was trained with, as finetune_absa.py recorded "
                        "it; for older model folders the tokenizer's limit, 512 if it has none)")
    common.add_argument("--overwrite", action="store_true", help="replace output files that already exist")

    evaluate = modes.add_parser(
        "evaluate", parents=[common], formatter_class=formatter,
        help="accuracy, macro-F1, per-class report and confusion matrix on a labelled split",
        description="Score the model on a labelled split. Prints accuracy, macro-F1, the per-class report and the\n"
                    "confusion matrix, and writes them to OUTPUT_DIR/evaluation_NAME.json and\n"
                    "OUTPUT_DIR/evaluation_NAME_confusion_matrix.png, NAME saying what was evaluated: a file's\n"
                    "folder and name (data/contrastive/test.jsonl: contrastive_test), else the dataset's name\n"
                    "and the split (--dataset ../shared/data/semeval2014_laptops: semeval2014_laptops_test).")
    evaluate.add_argument("--dataset", default=None, help="a folder (train/test files: JSONL, CSV, Parquet, "
                          "SemEval XML, $T$ format), one such file (evaluated whole; with --split train or "
                          "validation, the train file of training), or a Hub dataset name")
    evaluate.add_argument("--split", default="test", choices=("train", "validation", "test"),
                          help="which split of --dataset (default: test). train and validation are rebuilt as the "
                               "model's training made them: its config.json records how (absa_validation_split: "
                               "carved from train with its --validation_fraction and --seed, a given file, or the "
                               "test split); a split that does not match that record is refused or noted")
    for split in ("train", "validation", "test"):
        evaluate.add_argument(f"--{split}_file", default=None,
                              help=f"a file to use as the {split} split (read whole; overrides --dataset)")
    evaluate.add_argument("--validation_fraction", type=float, default=None,
                          help="share of train held out as validation when the data has none (default: the "
                               "model's; 0.1 for model folders that do not record it). Another value than the "
                               "model's is refused")
    evaluate.add_argument("--seed", type=int, default=None, help="seed of that split (default: the model's; 42 for "
                          "model folders that do not record it). Another seed than the model's is refused")
    evaluate.add_argument("--numeric_labels", default=None, choices=NUMERIC_LABELS,
                          help="what whole-number labels in the data mean (default: what they meant in the model's "
                               "training data, absa_numeric_labels; else auto). "
                               + NUMERIC_LABELS_HELP.split(". ", 1)[1])
    evaluate.add_argument("--output_dir", default=None,
                          help="where the JSON and PNG go (default: the folder that holds MODEL_DIR)")

    predict = modes.add_parser("predict", parents=[common], formatter_class=formatter, description=PREDICT_HELP,
                               help="the sentiment of each aspect, from a file or from the command line")
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
    predict.add_argument("--chunk_size", type=int, default=16384,
                         help="rows read, predicted and written at a time with --input: what a process takes at "
                              "once, and what --resume continues from. Batches are sorted by length within a chunk: "
                              "smaller chunks pad more (default: 16384)")
    predict.add_argument("--resume", action="store_true",
                         help="continue the interrupted --input run of the same command from its finished chunks")

    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.max_length is not None and args.max_length < 8:
        parser.error(f"--max_length must be at least 8, got {args.max_length}")
    if args.mode == "predict":
        if args.input and not args.output:
            parser.error(f"--input needs --output (a {', '.join(OUTPUT_TYPES)} file)")
        if args.input and (args.aspect or args.occurrence):
            parser.error("--aspect and --occurrence go with --text; in a file, use the aspect / occurrence columns")
        if args.occurrence is not None and args.occurrence < 1:
            parser.error(f"--occurrence counts from 1, got {args.occurrence}")
        if args.chunk_size < 1:
            parser.error(f"--chunk_size must be at least 1, got {args.chunk_size}")
        if args.resume and not args.input:
            parser.error("--resume continues an --input run")
    return args


def main(argv=None) -> None:
    args = parse_arguments(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no Rust thread pool fighting torch's threads
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    accelerator = make_accelerator()
    # Problems with the user's input end as one line naming the file / row / field, not as a traceback. Every
    # process meets the same problem (the decisions are shared); the main process says it.
    try:
        if args.mode == "evaluate":
            evaluate(args, accelerator)
        elif args.input:
            predict_file(args, accelerator)
        else:
            predict_command_line(args, accelerator)
    except (DataError, AspectError, SystemExit) as error:
        message = error.code if isinstance(error, SystemExit) else str(error)
        if not isinstance(message, str):
            raise
        if accelerator.num_processes == 1:
            raise SystemExit(message) from None
        if accelerator.is_main_process:  # now: the launcher stops every process once the first one has exited
            print(message, file=sys.stderr, flush=True)
        end_run()  # all together: a process that exits with its gloo group up aborts
        raise SystemExit(1) from None


def make_accelerator() -> Accelerator:
    """The Accelerator, before anything asks accelerate about the processes: a PartialState made earlier
    (`PartialState().is_main_process`, accelerate's `get_logger`) fixes the run to one process per launch under
    `ACCELERATE_USE_CPU=true torchrun`, and the launch is then refused."""
    # Precision is our own autocast (--dtype), so a bf16 accelerate config does not silently change the numbers.
    accelerator = Accelerator(mixed_precision="no")
    check_distributed_setup(accelerator)  # torchrun without ACCELERATE_USE_CPU would run N independent copies
    return accelerator


def decided_by_main(accelerator: Accelerator, decide):
    """`decide()` on the main process only; its result, or its one-line error, handed to every process."""
    outcome = [None, None]
    if accelerator.is_main_process:
        try:
            outcome = [decide(), None]
        except (DataError, AspectError) as error:
            outcome = [None, str(error)]
        except SystemExit as error:
            outcome = [None, error.code]
    broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise SystemExit(outcome[1])
    return outcome[0]


def check_output(path: Path, overwrite: bool, types=None) -> Path:
    """Refuse, before any work is done, an unknown output type, a folder in the output's place, a file or a folder
    without write permission on its way, and an existing file (unless `overwrite`)."""
    if types and path.suffix.lower() not in types:
        raise SystemExit(f"{path}: unknown output type '{path.suffix}' (expected {', '.join(types)})")
    if path.is_dir():
        raise SystemExit(f"{path} is a folder; name a file to write")
    folder = next(folder for folder in path.absolute().parents if folder.exists())  # the missing ones are made
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise SystemExit(f"{path}: cannot write in {folder} ({'a file' if not folder.is_dir() else 'no permission'})")
    if path.exists() and not overwrite:
        raise SystemExit(f"{path} already exists; pass --overwrite to replace it")
    return path


def load_tokenizer_of(args) -> tuple[object, int, str]:
    """The model folder's tokenizer (the weights load later), max_length and input format. max_length: --max_length,
    else the length the model was trained with, so that long texts are cut where training cut them; the input format
    is the one it was trained on (absa.aspects.INPUT_FORMATS)."""
    config = read_absa_config(args.model)  # first: says so if it is no ABSA model folder
    tokenizer = load_tokenizer(args.model)
    max_length = args.max_length or default_max_length(tokenizer, config.get("absa_max_length"))
    try:
        check_max_length(max_length, config)
    except ValueError as error:
        raise SystemExit(f"{'--max_length' if args.max_length else args.model}: {error}") from None
    return tokenizer, max_length, config.get("absa_input_format", "td_bert")


def compute_dtype(args, accelerator: Accelerator) -> torch.dtype:
    try:
        return resolve_dtype(args.dtype, accelerator.device)
    except ValueError as error:
        raise SystemExit(f"--dtype {args.dtype}: {error}") from None


def load_model(args, accelerator: Accelerator):
    """The model, placed on this process's device (whole on every process), and its label names."""
    model, _ = load_absa_model(args.model)
    label_names = label_names_of(model)  # read before prepare: a wrapped model hides its config
    # evaluation_mode: placement only. Inference has no gradients to synchronise, so no DDP wrapper (which would
    # also broadcast the buffers before every batch); every process holds the whole model.
    return accelerator.prepare_model(model, evaluation_mode=True), label_names


def dtype_name(dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def chunk_logits(accelerator: Accelerator, model, tokenizer, spans, max_length: int, input_format: str,
                 batch_size: int, dtype, progress=None) -> np.ndarray:
    """Logits of these spans on this process, in input order: batches sorted by length and padded per batch."""
    features = encode_spans(tokenizer, spans, max_length, input_format=input_format)
    logits, positions = [], []
    # no_grad, not inference_mode: a model prepared by accelerate may be sharded, and FSDP2 fails under the latter.
    with torch.no_grad(), autocast(accelerator.device, dtype):
        for batch in length_sorted_loader(features, AspectCollator(tokenizer), batch_size):
            positions.append(batch.pop("labels"))  # the input positions (encode_spans)
            logits.append(model(**{k: v.to(accelerator.device) for k, v in batch.items()}).float().cpu())
            if progress is not None:
                progress.update(len(positions[-1]))
    return in_input_order(torch.cat(logits).numpy(), torch.cat(positions).numpy())


# --------------------------------------------------------------------------- evaluate


def evaluate(args, accelerator: Accelerator) -> dict:
    output_dir = Path(args.output_dir) if args.output_dir else Path(args.model).resolve().parent
    name = evaluation_name(args)
    json_path, png_path = decided_by_main(accelerator, lambda: [
        check_output(output_dir / f"evaluation_{name}.json", args.overwrite),
        check_output(output_dir / f"evaluation_{name}_confusion_matrix.png", args.overwrite)])

    # Data first, so that a problem in it shows before a large model loads; label ids in the model's order.
    rows, where = read_split(args, read_absa_config(args.model))
    tokenizer, max_length, input_format = load_tokenizer_of(args)
    spans = [AspectSpan(row["text"], row["start"], row["end"], spans=tuple(map(tuple, row["spans"])))
             for row in rows]  # offsets checked by absa.data
    features = encode_spans(tokenizer, spans, max_length, labels=[row["label"] for row in rows], source=where,
                            input_format=input_format)
    dtype = compute_dtype(args, accelerator)

    model, label_names = load_model(args, accelerator)
    accelerator.print(f"evaluating {args.model} on {where}: {len(rows)} examples, max_length {max_length}")

    # Predict: the processes share the length-sorted batches; gather_for_metrics returns every example once.
    started = time.perf_counter()
    loader = accelerator.prepare_data_loader(length_sorted_loader(features, AspectCollator(tokenizer),
                                                                  args.batch_size))
    all_logits, all_labels = [], []
    with torch.no_grad(), autocast(accelerator.device, dtype):  # no_grad: see chunk_logits
        for batch in loader:
            labels = batch.pop("labels")
            logits, labels = accelerator.gather_for_metrics((model(**batch).float(), labels))
            all_logits.append(logits.cpu())
            all_labels.append(labels.cpu())
    logits, labels = torch.cat(all_logits).numpy(), torch.cat(all_labels).numpy()
    facts = run_facts(accelerator, dtype, len(logits), time.perf_counter() - started)

    # Write: metrics are computed from the gathered outputs of all processes, on the main process.
    metrics = single_label_metrics(logits, labels, label_names)
    results = {"model": str(args.model), "data": where, "split": args.split, "label_names": label_names,
               **metrics, **facts,
               "batch_size": args.batch_size, "max_length": max_length,
               "versions": {"python": platform.python_version(), "torch": torch.__version__,
                            "transformers": transformers.__version__, "accelerate": accelerate.__version__}}
    if accelerator.is_main_process:
        print(metrics_report(metrics, labels, logits.argmax(axis=-1), label_names))
        write_json(json_path, results)
        plot_confusion_matrix(metrics["confusion_matrix"], label_names, png_path,
                              title=f"Confusion matrix ({name}, {len(logits)} examples)")
        print(speed_line(facts))
        print(f"wrote {json_path} and {png_path}")
    end_run()
    return results


def whole_file_dataset(args) -> bool:
    """--dataset FILE is evaluated whole as the test split; with --split train / validation it is what
    finetune_absa.py --dataset FILE made of it: train, and the validation split carved from it."""
    return bool(args.dataset) and Path(args.dataset).is_file() and args.split == "test"


def split_file(args) -> str | None:
    """The one file that is the split to evaluate (--SPLIT_file, or a --dataset file evaluated whole), None for a
    split of a folder, of a Hub dataset, or carved from a train file."""
    return getattr(args, f"{args.split}_file") or (args.dataset if whole_file_dataset(args) else None)


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


def read_split(args, config: dict) -> tuple[list[dict], str]:
    """Rows (text, aspect, start, end, label id) of the split to evaluate, and a description of where from.

    Labels are read as in training (the model's label names and `absa_numeric_labels`); a train or validation
    split is rebuilt as training made it (`absa_validation_split`) and checked against that record."""
    label_names = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    numeric_labels = args.numeric_labels or config.get("absa_numeric_labels") or "auto"
    record = config.get("absa_validation_split")
    single = split_file(args)
    if single:
        # One file is the whole split. load_absa_splits would take it as a train split and carve a validation
        # share off it.
        rows = read_absa_file(single, label_names, numeric_labels)
        if getattr(args, f"{args.split}_file"):
            check_rebuilt_split(record, args.model, args.split, rows, single, carved=False)
        return rows, str(single)
    if not args.dataset:
        raise SystemExit(f"evaluate needs --dataset (a folder, file or Hub name) or --{args.split}_file")
    recipe = rebuild_recipe(record, args.model, args.split, args.validation_fraction, args.seed)
    splits = load_absa_splits(args.dataset, train_file=args.train_file, validation_file=args.validation_file,
                              test_file=args.test_file, label_names=label_names, numeric_labels=numeric_labels,
                              **recipe)
    if args.split not in splits:
        raise DataError(args.dataset, f"no {args.split} split (it has {', '.join(splits)}); choose one with --split "
                        f"or give --{args.split}_file")
    rows = splits[args.split].to_list()
    check_rebuilt_split(record, args.model, args.split, rows, args.dataset,
                        carved=splits.validation_split["made"] == "carved")
    return rows, f"{args.dataset} [{args.split}]"


def run_facts(accelerator: Accelerator, dtype, count: int, seconds: float) -> dict:
    return {"num_processes": accelerator.num_processes, "device": str(accelerator.device), "dtype": dtype_name(dtype),
            "examples": count, "seconds": round(seconds, 3),
            "predictions_per_second": round(count / max(seconds, 1e-9), 1)}


def speed_line(facts: dict) -> str:
    return (f"{facts['examples']} predictions in {facts['seconds']:.2f} s ({facts['predictions_per_second']:.1f} "
            f"predictions/s, tokenizing included) with {facts['num_processes']} process(es) on {facts['device']}, "
            f"{facts['dtype']}")


def metrics_report(metrics: dict, labels, predictions, label_names) -> str:
    """The headline numbers, scikit-learn's per-class report, and the confusion matrix."""
    width = max(12, *(len(name) + 2 for name in label_names))
    present = macro_classes(labels, predictions, len(label_names))  # the classes the macro averages are over
    absent = [name for i, name in enumerate(label_names) if i not in present]
    lines = [(f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   "
              f"(macro precision {metrics['macro_precision']:.4f}, recall {metrics['macro_recall']:.4f}; "
              f"loss {metrics['loss']:.4f})"),
             *([f"macro averages over {', '.join(metrics['macro_classes'])}: no example of {', '.join(absent)} and "
                "none predicted"] if absent else []), "",
             classification_report(labels, predictions, labels=present,
                                   target_names=[label_names[i] for i in present], digits=4, zero_division=0),
             "confusion matrix (rows: true label, columns: predicted)",
             f"{'':{width}}" + "".join(f"{name[:width - 1]:>{width}}" for name in label_names)]
    for name, counts in zip(label_names, metrics["confusion_matrix"]):
        lines.append(f"{name:{width}}" + "".join(f"{count:>{width}d}" for count in counts))
    return "\n".join(lines)


# --------------------------------------------------------------------------- predict --input


def predict_file(args, accelerator: Accelerator) -> None:
    output, partial = Path(args.output), PartialOutput(args.output)
    decided_by_main(accelerator, lambda: check_file_output(args, output, partial))

    # Data: every row checked before the model loads (each process checks some of the chunks).
    tokenizer, max_length, input_format = load_tokenizer_of(args)
    survey = survey_input(args, accelerator, tokenizer, max_length, input_format, partial.suffix)
    if survey["ambiguous"] and accelerator.is_main_process:
        print(f"note: {args.input}: in {survey['ambiguous']} row(s) (first: {survey['first_ambiguous']}) the aspect "
              "occurs more than once; the first occurrence was used (add start/end or an `occurrence` column, or "
              "mark the aspect)", file=sys.stderr)

    # What is left to do: every chunk, or with --resume those the interrupted run did not finish.
    dtype = compute_dtype(args, accelerator)
    todo = decided_by_main(accelerator, lambda: chunks_to_do(
        args, partial, describe_run(args, max_length, input_format, dtype, survey)))

    model, label_names = load_model(args, accelerator)
    columns = output_columns(survey["columns"], label_names)
    schema = output_schema(survey["schema"], columns) if partial.suffix == ".parquet" else None

    # Predict: round after round, process p takes the p-th of the next chunks to do and the main process writes
    # them all; only this process's own chunk is kept in memory.
    def rows_in(index):
        return min(args.chunk_size, survey["rows"] - index * args.chunk_size)

    remaining = sum(rows_in(index) for index in todo)
    progress = tqdm(total=survey["rows"], initial=survey["rows"] - remaining, unit=" rows", desc="predicting",
                    disable=not accelerator.is_main_process, dynamic_ncols=True)
    counts = collections.Counter()
    started = time.perf_counter()
    for chunks in rounds(read_chunks(args.input, args.chunk_size), todo, accelerator):
        done, chunk = [], []
        if accelerator.process_index < len(chunks):
            index, chunk = chunks[accelerator.process_index]
            spans = spans_of_chunk(chunk, args.input)
            probabilities = softmax(chunk_logits(accelerator, model, tokenizer, spans, max_length, input_format,
                                                 args.batch_size, dtype, progress))
            results = [prediction_row(row, span, label_names, p)
                       for (_, row), span, p in zip(chunk, spans, probabilities)]
            done.append((index, table_bytes(results, partial.suffix, columns, schema, header=index == 0),
                         collections.Counter(row["predicted_label"] for row in results)))
        for index, data, chunk_counts in collect_on_main(accelerator, done):
            partial.write_chunk(index, data)
            counts.update(chunk_counts)
        progress.update(sum(rows_in(index) for index, _ in chunks) - len(chunk))  # the other processes' chunks
    progress.close()
    seconds = time.perf_counter() - started

    # Write: the chunk files joined into OUTPUT, which appears whole.
    if accelerator.is_main_process:
        partial.finish(survey["chunks"])
        resumed = remaining < survey["rows"]
        print(f"predicted{' (this run)' if resumed else ''}: " + ", ".join(f"{name} {counts[name]}"
                                                                          for name in label_names))
        kept = f"; {survey['rows'] - remaining} rows came from the interrupted run" if resumed else ""
        print(f"{remaining} rows in {seconds:.2f} s ({remaining / max(seconds, 1e-9):.1f} rows/s, tokenizing included) "
              f"with {accelerator.num_processes} process(es) on {accelerator.device}, {dtype_name(dtype)}{kept}; "
              f"wrote {output} ({survey['rows']} rows)")
    end_run()


def check_file_output(args, output: Path, partial: PartialOutput) -> None:
    """A known output type, no finished output in the way, and an unfinished one only with --resume or --overwrite."""
    check_output(output, args.overwrite, OUTPUT_TYPES)
    if output.exists() and output.resolve() == Path(args.input).resolve():
        raise SystemExit(f"{output} is the input; write the predictions to another file")
    if partial.folder.exists() and not partial.folder.is_dir():
        raise SystemExit(f"{partial.folder} is in the way of the chunk folder; move it")
    if partial.folder.exists() and not (args.resume or args.overwrite):
        started = partial.started_run() or {}
        raise SystemExit(f"{partial.folder} holds an unfinished run ({len(partial.done_chunks())} of "
                         f"{started.get('chunks', '?')} chunks done): continue it with the same command and --resume, "
                         "or start again with --overwrite")


def survey_input(args, accelerator: Accelerator, tokenizer, max_length: int, input_format: str,
                 output_suffix: str) -> dict:
    """Every row placed in its text and its aspect checked against the tokenizer (chunk i by process i mod N); one
    verdict for all.

    Returns the number of rows and chunks, the input columns (first seen first), the Arrow schema of the rows (for a
    Parquet output), and how many rows have an aspect that occurs more than once. The first bad row of the file (for a
    TSV output also a cell with a tab or line break) is a DataError on every process.
    """
    parquet = output_suffix == ".parquet"
    mine = {"rows": 0, "chunks": 0, "columns": {}, "schemas": {}, "ambiguous": [], "error": None}
    try:
        for index, chunk in enumerate(read_chunks(args.input, args.chunk_size)):
            if index % accelerator.num_processes == accelerator.process_index:
                labels = [label for label, _ in chunk]
                spans = spans_of_chunk(chunk, args.input)
                check_tokens(tokenizer, spans, labels, max_length, input_format, args.input)
                if output_suffix == ".tsv":
                    check_tsv_cells(chunk, args.input)
                mine["columns"][index] = list(dict.fromkeys(key for _, row in chunk for key in row))
                ambiguous = [label for label, span in zip(labels, spans) if span.ambiguous]
                if ambiguous:
                    mine["ambiguous"].append((index, len(ambiguous), ambiguous[0]))
                if parquet:
                    mine["schemas"][index] = infer_schema([row for _, row in chunk], args.input)
            mine["rows"] += len(chunk)
            mine["chunks"] += 1
    except DataError as error:
        mine["error"] = (mine["chunks"], str(error))  # the index of the chunk it is in
    reports = gather_object([mine])
    errors = [report["error"] for report in reports if report["error"]]
    if errors:
        raise SystemExit(min(errors)[1])
    columns = {index: keys for report in reports for index, keys in report["columns"].items()}
    schemas = {index: schema for report in reports for index, schema in report["schemas"].items()}
    ambiguous = sorted(entry for report in reports for entry in report["ambiguous"])
    return {"rows": reports[0]["rows"], "chunks": reports[0]["chunks"],
            "columns": list(dict.fromkeys(key for index in sorted(columns) for key in columns[index])),
            "schema": unify_schemas([schemas[index] for index in sorted(schemas)], args.input) if parquet else None,
            "ambiguous": sum(count for _, count, _ in ambiguous),
            "first_ambiguous": ambiguous[0][2] if ambiguous else None}


def spans_of_chunk(chunk, file) -> list[AspectSpan]:
    """Each row's aspect placed in its text; a row that cannot be placed is a DataError naming it."""
    if not any("text" in row for _, row in chunk):
        raise DataError(file, f"no 'text' column (columns: {', '.join(chunk[0][1])})")
    spans = []
    for label, row in chunk:
        try:
            spans.append(resolve_aspect(row.get("text"), row.get("aspect"), row.get("start"), row.get("end"),
                                        row.get("occurrence"), row.get("spans")))
        except AspectError as error:
            raise DataError(file, str(error), row=label, field=error.field) from None
    return spans


def check_tokens(tokenizer, spans, labels, max_length: int, input_format: str, file) -> None:
    """An aspect that maps to no token, or that alone does not fit max_length, is a DataError naming its row.

    Tokenizing every text twice would cost what the model costs on a GPU. But a letter or digit always ends up in a
    token (normalizers drop only spaces, control and format characters and accents), and no span needs more tokens
    than its UTF-8 bytes: only the other aspects are tokenized in their text, as prediction will.
    """
    # A sentence pair shows the aspect twice; markers add a token on each side.
    budget = ((max_length - tokenizer.num_special_tokens_to_add(pair=True)) // 2 if input_format == "sentence_pair"
              else max_length - tokenizer.num_special_tokens_to_add(pair=False) - 2 * (input_format != "td_bert"))
    doubtful = [i for i, span in enumerate(spans) if not any(character.isalnum() for character in span.aspect)
                or len(span.aspect.encode("utf-8")) + 2 > budget]
    try:
        encode_spans(tokenizer, [spans[i] for i in doubtful], max_length, input_format=input_format)
    except DataError as error:  # encode_spans counts its spans from 1: name the file's own row instead
        raise DataError(file, error.problem, row=labels[doubtful[error.row - 1]], field=error.field) from None


def describe_run(args, max_length: int, input_format: str, dtype, survey: dict) -> dict:
    """What the output's bytes depend on: a resumed run must match the interrupted one in all of it (the number of
    processes may differ)."""
    source, weights = Path(args.input).resolve(), Path(args.model).resolve() / WEIGHTS_NAME
    return {"input": str(source), "input_bytes": source.stat().st_size, "input_modified_ns": source.stat().st_mtime_ns,
            "model": str(weights.parent), "model_modified_ns": weights.stat().st_mtime_ns,
            "chunk_size": args.chunk_size, "batch_size": args.batch_size, "max_length": max_length,
            "input_format": input_format, "dtype": dtype_name(dtype), "rows": survey["rows"], "chunks": survey["chunks"]}


def chunks_to_do(args, partial: PartialOutput, run: dict) -> list[int]:
    """Every chunk, in a fresh OUTPUT.partial/; with --resume, the chunks the interrupted run did not finish."""
    started = partial.started_run() if args.resume else None
    if started is None:  # nothing to resume (or --overwrite): start again
        partial.start(run)
        return list(range(run["chunks"]))
    changed = [f"{key} {started.get(key)} -> {value}" for key, value in run.items() if started.get(key) != value]
    if changed:
        raise SystemExit(f"{partial.folder}: cannot resume, the run differs from the interrupted one "
                         f"({'; '.join(changed)}); resume with the same command and files, or start again with "
                         "--overwrite")
    done = partial.done_chunks()
    return [index for index in range(run["chunks"]) if index not in done]


def rounds(chunks, todo: list[int], accelerator: Accelerator):
    """The chunks to do, in input order, one per process at a time: lists of (index, rows), with None for the rows
    of the other processes' chunks (read past, not kept)."""
    wanted, batch = set(todo), []
    for index, chunk in enumerate(chunks):
        if index in wanted:
            batch.append((index, chunk if len(batch) == accelerator.process_index else None))
            if len(batch) == accelerator.num_processes:
                yield batch
                batch = []
    if batch:
        yield batch


def collect_on_main(accelerator: Accelerator, items: list) -> list:
    """Every process's items, in process order, on the main process ([] on the others). torch's gather_object:
    accelerate's sends everything to every process."""
    if accelerator.num_processes == 1:
        return items
    gathered = [None] * accelerator.num_processes if accelerator.is_main_process else None
    torch.distributed.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if accelerator.is_main_process else []


def output_columns(input_columns: list[str], label_names) -> list[str]:
    """The input's columns, then where the aspect is (when the input did not say), the label and the probabilities."""
    return list(dict.fromkeys([*input_columns, "aspect", "start", "end", "predicted_label",
                               *(f"prob_{name}" for name in label_names)]))


def output_schema(input_schema: pa.Schema, columns: list[str]) -> pa.Schema:
    """The Parquet schema of the output: the input's column types, and those of what prediction_row adds."""
    def type_of(column):
        if column in ("start", "end"):
            return pa.int64()
        if column in ("text", "aspect", "predicted_label"):
            return pa.string()
        if column.startswith("prob_"):
            return pa.float64()
        return input_schema.field(column).type if column in input_schema.names else pa.string()
    return pa.schema([(column, type_of(column)) for column in columns])


def prediction_row(row: dict, span, label_names, probabilities) -> dict:
    """The input row, then where the aspect is, the predicted label and every class's probability.

    `text`, `aspect`, `start` and `end` say exactly what was classified, so that the row can be read back as input:
    the text without markers, the aspect as it is in the text (`text[start:end]`, "Screen" for an input "screen").
    """
    result = dict(row)
    result.update(text=span.text, aspect=span.aspect, start=span.start, end=span.end,
                  predicted_label=label_names[int(np.argmax(probabilities))])
    result.update({f"prob_{name}": round(float(p), 6) for name, p in zip(label_names, probabilities)})
    return result


# --------------------------------------------------------------------------- predict --text


def predict_command_line(args, accelerator: Accelerator) -> None:
    # A handful of inputs: the main process does them alone; the others wait for its outcome (and its error).
    decided_by_main(accelerator, lambda: predict_texts(args, accelerator))
    end_run()


def predict_texts(args, accelerator: Accelerator) -> None:
    output = check_output(Path(args.output), args.overwrite, OUTPUT_TYPES) if args.output else None
    spans = spans_of_command_line(args.text, args.aspect, args.occurrence)
    if output and output.suffix.lower() == ".tsv":
        check_tsv_cells([(f"prediction {n}", {"text": s.text}) for n, s in enumerate(spans, start=1)], output)
    tokenizer, max_length, input_format = load_tokenizer_of(args)
    dtype = compute_dtype(args, accelerator)

    started = time.perf_counter()
    model, names = load_model(args, accelerator)
    loaded = time.perf_counter()
    probabilities = softmax(chunk_logits(accelerator, model, tokenizer, spans, max_length, input_format,
                                         args.batch_size, dtype))
    seconds = time.perf_counter() - loaded

    results = []  # printed, and written with --output
    for span, row in zip(spans, probabilities):
        label = names[int(row.argmax())]
        others = ", ".join(f"{name} {p:.2f}" for name, p in zip(names, row) if name != label)
        shown = f"{span.text[:span.start]}[{span.aspect}]{span.text[span.end:]}"
        print(f"{span.aspect}: {label} {row.max():.2f} ({others})  |  {shown}")
        results.append(prediction_row({"text": span.text, "aspect": span.aspect}, span, names, row))
    if output:
        write_atomically(output, table_bytes(results, output.suffix.lower()))
        print(f"wrote {output}")
    print(f"{len(spans)} predictions in {seconds:.2f} s ({len(spans) / max(seconds, 1e-9):.1f} predictions/s; "
          f"model loaded in {loaded - started:.1f} s) on {accelerator.device}, {dtype_name(dtype)}")


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
