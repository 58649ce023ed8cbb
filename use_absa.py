"""Evaluate a fine-tuned ABSA model on a labelled split, or predict aspect sentiment with it, up to corpus scale.

    python use_absa.py evaluate runs/laptops/best_model --dataset ../shared/data/semeval2014_laptops
    python use_absa.py evaluate runs/laptops/seed_*/best_model --dataset ...    # an ensemble: mean probabilities
    python use_absa.py predict runs/laptops/best_model --input reviews.jsonl --output predictions.csv [--resume]
    python use_absa.py predict runs/laptops/best_model --text "The battery lasts but the screen is dim" \\
        --aspect battery --aspect screen
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 use_absa.py predict ...      # several CPU processes
    accelerate launch --config_file accelerate_configs/base.yaml --num_processes 4 use_absa.py evaluate ...

Reads top to bottom: the arguments, then each mode as data -> model -> predict -> write. One engine
(absa/predictor.py) opens the model folder and runs the batches; `evaluate` shares the batches of a split between
the processes, `predict --input` streams the file in chunks (absa/corpus.py), `predict --text` runs on the main
process. What concerns every process (is the input good, what is left to do) is decided once and handed to all.
Several model folders are one ensemble (absa.predictor.AbsaEnsemble): the same modes, on the mean of their
probabilities.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import datasets
import transformers
from accelerate import Accelerator

from absa.aspects import MARK_END, MARK_START, AspectError, AspectSpan, parse_marked_text, resolve_aspect
from absa.corpus import OUTPUT_TYPES, check_output, check_tsv_cells, predict_corpus, prediction_row, table_bytes
from absa.evaluation import evaluation_name, read_split, report, score
from absa.files import NUMERIC_LABELS, NUMERIC_LABELS_HELP, DataError, write_atomically
from absa.launch import MIXED_PRECISIONS, check_distributed_setup, decided_by_main, end_run
from absa.predictor import AbsaPredictor, open_predictor, refuse_disagreement, softmax
from absa.reports import plot_confusion_matrix, write_json

PREDICT_HELP = f"""Predict the sentiment towards each aspect.

--input FILE (JSONL, JSON, CSV, TSV, Parquet): one row per (text, aspect): a `text` and an `aspect` column;
optional `start`/`end` offsets or an `occurrence` column (1-based); or the aspect marked as {MARK_START}...{MARK_END}.
--output FILE (.jsonl, .csv, .tsv, .parquet) gets one row per input row, in input order: the input columns, then
predicted_label and prob_LABEL for every class; its text, aspect, start and end say what was classified (an output
reads back as an input). TSV has no quoting: a cell with a tab or line break is refused.
Every row is checked before the model loads; then --chunk_size rows at a time go to OUTPUT.partial/, and OUTPUT
appears whole at the end. After a crash, the same command with --resume continues (the same bytes); --overwrite
starts again. Any number of processes gives the same output. Use JSONL for large inputs (.json is read whole).

--text TEXT: each aspect marked in it ({MARK_START}...{MARK_END}), or each --aspect (the first occurrence, or the
N-th with --occurrence N). Prints one line per aspect."""


def parse_arguments(argv=None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter  # descriptions and examples keep their lines
    parser = argparse.ArgumentParser(
        prog="use_absa.py", formatter_class=formatter, description="Evaluate or use an aspect-based sentiment model "
        "written by finetune_absa.py (its best_model folder), on one process or many.",
        epilog="examples:\n  use_absa.py evaluate runs/laptops/best_model --dataset data/sample_laptops\n"
               "  use_absa.py predict runs/laptops/best_model --input reviews.jsonl --output predictions.csv\n"
               "  use_absa.py evaluate runs/laptops/seed_1/best_model runs/laptops/seed_2/best_model --dataset "
               "data/sample_laptops\n"
               f"  use_absa.py predict runs/laptops/best_model --text \"The {MARK_START}battery{MARK_END} lasts\"\n"
               "`use_absa.py evaluate --help` and `use_absa.py predict --help` list each mode's options.")
    modes = parser.add_subparsers(dest="mode", required=True, metavar="{evaluate,predict}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("model", metavar="MODEL_DIR", nargs="+",
                        help="a model folder written by finetune_absa.py; several (the seeds of a recipe) are an "
                             "ensemble that averages their probabilities")
    common.add_argument("--batch_size", type=int, default=64, help="inputs per batch and process (default: 64)")
    common.add_argument("--mixed_precision", choices=MIXED_PRECISIONS, default=None,
                        help="no (fp32), fp16 or bf16 autocast, auto (bf16 where native). Default: the precision the "
                             "model was trained in (recorded; fp32 where bf16 is not native), else auto")
    common.add_argument("--max_length", type=int, default=None,
                        help="longer texts are cut around the aspect (default: the model's training length)")
    common.add_argument("--overwrite", action="store_true", help="replace output files that already exist")

    evaluate = modes.add_parser(
        "evaluate", parents=[common], formatter_class=formatter, help="scores and confusion matrix on a labelled split",
        description="Prints accuracy, macro-F1, the per-class report and the confusion matrix; writes them to\n"
                    "OUTPUT_DIR/evaluation_NAME.json and _confusion_matrix.png, NAME being a file's folder and name\n"
                    "(contrastive_test), else the dataset's name and the split (semeval2014_laptops_test).")
    evaluate.add_argument("--dataset", default=None, help="a folder of split files, one file, or a Hub dataset name")
    evaluate.add_argument("--split", default="test", choices=("train", "validation", "test"),
                          help="train and validation are rebuilt as training made them (absa_validation_split); "
                               "with several MODEL_DIRs only test")
    for split in ("train", "validation", "test"):
        evaluate.add_argument(f"--{split}_file", default=None, help=f"a file to use as the {split} split")
    evaluate.add_argument("--validation_fraction", type=float, default=None,
                          help="of a carved validation split (default: the model's; another value is refused)")
    evaluate.add_argument("--seed", type=int, default=None,
                          help="of a carved validation split (default: the model's; another value is refused)")
    evaluate.add_argument("--numeric_labels", default=None, choices=NUMERIC_LABELS,
                          help="default: as in the model's training. " + NUMERIC_LABELS_HELP.split(". ", 1)[1])
    evaluate.add_argument("--output_dir", default=None,
                          help="default: the folder that holds MODEL_DIR (several: the one that holds them all)")

    predict = modes.add_parser("predict", parents=[common], formatter_class=formatter, description=PREDICT_HELP,
                               help="the sentiment of each aspect, from a file or from the command line")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", default=None, help="a file of (text, aspect) rows")
    source.add_argument("--text", action="append", default=None, help="a sentence (repeat for several)")
    predict.add_argument("--aspect", action="append", default=[], help="an aspect of each unmarked --text")
    predict.add_argument("--occurrence", type=int, default=None, help="the N-th occurrence of each --aspect")
    predict.add_argument("--output", default=None, help=f"{', '.join(OUTPUT_TYPES)}; required with --input")
    predict.add_argument("--chunk_size", type=int, default=16384,
                         help="rows a process takes at once, and what --resume continues from (default: 16384)")
    predict.add_argument("--resume", action="store_true", help="continue an interrupted --input run")

    args = parser.parse_args(argv)
    for name, least in (("batch_size", 1), ("max_length", 8), ("chunk_size", 1), ("occurrence", 1)):
        if getattr(args, name, None) is not None and getattr(args, name) < least:
            parser.error(f"--{name} must be at least {least}, got {getattr(args, name)}")
    if args.mode == "predict":
        if args.input and not args.output:
            parser.error(f"--input needs --output (a {', '.join(OUTPUT_TYPES)} file)")
        if args.input and (args.aspect or args.occurrence):
            parser.error("--aspect and --occurrence go with --text; in a file, use the aspect / occurrence columns")
        if args.text and args.occurrence and not args.aspect:
            parser.error("--occurrence goes with --aspect (the N-th occurrence of each --aspect in an unmarked --text)")
        if args.resume and not args.input:
            parser.error("--resume continues an --input run")
    return args


def main(argv=None) -> None:
    args = parse_arguments(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no Rust thread pool fighting torch's threads
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    # Made before anything asks accelerate about the processes (a PartialState made earlier fixes the run to one
    # process under torchrun). Precision is the predictor's, so that an accelerate config cannot change the numbers.
    accelerator = Accelerator(mixed_precision="no")
    check_distributed_setup(accelerator)  # torchrun without ACCELERATE_USE_CPU would run N independent copies
    # Problems with the user's input end as one line naming the file / row / field, not as a traceback. Every
    # process meets the same problem (the decisions are shared); the main process says it.
    try:
        if args.mode == "evaluate" and len(args.model) > 1 and args.split != "test":
            raise SystemExit(f"--split {args.split} with {len(args.model)} model folders: each seed carved its own "
                             "validation split from train (rows the others trained on); evaluate on --split test, or "
                             "give a file with --test_file")
        try:  # each model folder, opened once: config, tokenizer, max_length, input format, labels, precision
            predictor = open_predictor(args.model, batch_size=args.batch_size, mixed_precision=args.mixed_precision,
                                       max_length=args.max_length, accelerator=accelerator)
        except ValueError as error:  # a --max_length or --mixed_precision a model or this machine cannot take
            raise SystemExit(str(error)) from None
        if predictor.note:
            accelerator.print(predictor.note, file=sys.stderr)
        if args.mode == "evaluate":
            evaluate(args, predictor)
        elif args.input:
            predict_corpus(predictor, args.input, args.output, args.chunk_size, args.resume, args.overwrite)
        else:
            decided_by_main(accelerator, predict_texts, args, predictor)  # a handful: the main process alone
        end_run()
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


def evaluate(args, predictor: AbsaPredictor) -> None:
    # Outputs and data first (a problem shows before a large model loads), labels in the model's order.
    accelerator = predictor.accelerator
    output = (Path(args.output_dir) if args.output_dir
              else Path(os.path.commonpath([Path(model).resolve().parent for model in args.model])))
    # An ensemble's results are named apart: the folder that holds its members may hold one member's own results.
    name = ("ensemble_" if len(args.model) > 1 else "") + evaluation_name(args)
    json_path, png_path = (output / f"evaluation_{name}.json", output / f"evaluation_{name}_confusion_matrix.png")
    decided_by_main(accelerator, check_output, [json_path, png_path], args.overwrite)
    if args.numeric_labels is None:  # the labels are read by the members' rule: one rule
        rules = [getattr(member.config, "absa_numeric_labels", None) or "auto" for member in predictor.members]
        refuse_disagreement(args.model, rules, "absa_numeric_labels", "; choose one with --numeric_labels")
    rows, where = read_split(args, predictor.config)
    accelerator.print(f"evaluating {', '.join(args.model)} on {where}: {len(rows)} examples, "
                      f"max_length {predictor.max_length}")
    results, predictions = score(predictor, rows, where)

    if accelerator.is_main_process:
        print(report(results, [row["label"] for row in rows], predictions, predictor.describe()))
        model = args.model[0] if len(args.model) == 1 else args.model  # one folder: a string, as before
        write_json(json_path, {"model": model, "split": args.split, **results})  # makes the folder
        plot_confusion_matrix(results["confusion_matrix"], predictor.label_names, png_path,
                              title=f"Confusion matrix ({name}, {len(rows)} examples)")
        print(f"wrote {json_path} and {png_path}")


def predict_texts(args, predictor: AbsaPredictor) -> None:
    output = check_output(args.output, args.overwrite, OUTPUT_TYPES) if args.output else None
    spans = spans_of_command_line(args.text, args.aspect, args.occurrence)
    if output and output.suffix.lower() == ".tsv":
        check_tsv_cells([(f"prediction {n}", {"text": s.text}) for n, s in enumerate(spans, start=1)], output)
    features = predictor.encode(spans)

    started = time.perf_counter()
    predictor.model  # noqa: B018 - loaded here, to be timed apart
    loaded = time.perf_counter()
    probabilities = softmax(predictor.logits(features))
    seconds = time.perf_counter() - loaded

    results, names = [], predictor.label_names  # printed, and written with --output
    for span, row in zip(spans, probabilities):
        label = names[int(row.argmax())]
        others = ", ".join(f"{name} {p:.2f}" for name, p in zip(names, row) if name != label)
        print(f"{span.aspect}: {label} {row.max():.2f} ({others})  |  "
              f"{span.text[:span.start]}[{span.aspect}]{span.text[span.end:]}")
        results.append(prediction_row({"text": span.text, "aspect": span.aspect}, span, names, row))
    if output:
        write_atomically(output, table_bytes(results, output.suffix.lower()))
        print(f"wrote {output}")
    print(f"{len(spans)} predictions in {seconds:.2f} s ({len(spans) / max(seconds, 1e-9):.1f} predictions/s; "
          f"model loaded in {loaded - started:.1f} s) on {predictor.device}, {predictor.describe()}")


def spans_of_command_line(texts: list[str], aspects: list[str], occurrence: int | None) -> list[AspectSpan]:
    """(text, aspect) pairs: every marked aspect of a marked --text, every --aspect in an unmarked one."""
    spans, marked_only = [], True
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
                spans.append(resolve_aspect(clean, aspect, occurrence=occurrence))
                if spans[-1].ambiguous:
                    print(f"note: {aspect!r} occurs {spans[-1].occurrences} times in {where}; classifying the first "
                          f"(choose with --occurrence N, or mark it as {MARK_START}{aspect}{MARK_END})",
                          file=sys.stderr)
        except AspectError as error:
            raise SystemExit(f"{where}: {error}") from None
    if aspects and marked_only:
        raise SystemExit(f"--aspect is not used: every --text marks its aspects with {MARK_START}...{MARK_END}; "
                         "drop --aspect or the markers")
    return spans


if __name__ == "__main__":
    main()
