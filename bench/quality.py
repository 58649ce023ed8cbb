"""Quality and wall time: the seed recipe against finetune_absa.py on Laptop14 (embedded MiniLM), several seeds.

    python bench/quality.py                               # compare: the two below, seed recipe rows reused
    python bench/quality.py seed --seeds 42 1 2          # Trainer, pad 100, fp32, best epoch chosen ON TEST
    python bench/quality.py product --seeds 42 1 2       # finetune_absa.py (defaults; selects on validation)
    python bench/quality.py product --seeds 42 1 2 -- --learning_rate 5e-5   # extra finetune_absa.py flags
    python bench/quality.py sweep --values 1e-5 3e-5 1e-4 --flag learning_rate   # choose on VALIDATION, seed 42
    python bench/quality.py formats --seeds 42 1 2 3 4   # each --input_format on Laptop14 and MAMS, paired to td_bert
    python bench/quality.py table                         # mean and range of every group measured so far
    python bench/quality.py recipes --models minilm mpnet=/path/to/mpnet --datasets laptop14 \
        --recipes today metric_for_best_model=macro_f1 --seeds 42 1 2 3 4   # recipes x encoders x data sets
    python bench/quality.py ensembles --models minilm --datasets laptop14 --recipes select_f1 --seeds 42 1 2 3 4
        # the seeds' best models of a recipe as one ensemble (use_absa.py, mean probabilities), on test

recipes: each recipe is today's recipe for that encoder (TODAY: the script's defaults before tuning, pinned;
--learning_rate 5e-5 for MiniLM) plus its own flags: a preset name of RECIPES, or FLAG=VALUE[,FLAG=VALUE...] of
finetune_absa.py settings.
Every finished seed is appended to the results file at once; a run that is already there (same encoder, data set,
recipe and seed) is not run again, so an interrupted sweep continues with the same command. The table: per encoder,
data set and recipe, test macro-F1 and accuracy mean±sd (range) over the seeds, the paired macro-F1 difference to
today's recipe on the same seeds, the mean best validation loss and validation macro-F1 (what a choice may look at),
the wall minutes, the README sentences right and the precision the runs used (finetune_absa.py's default is bf16
where the CPU computes it natively, fp32 elsewhere, so one sweep over two machines can mix them; the paired
difference, here and in the formats table, leaves out a seed whose two runs differ in precision;
--mixed_precision no|bf16 pins it).

compare (the default): finetune_absa.py with its defaults and the learning rate chosen for small encoders on
validation (--learning_rate 5e-5, see bench/README.md), 3 seeds; then the seed recipe for the same seeds, reusing
rows already in the results file for the same library versions (it is the fixed measuring stick and takes about
20 minutes a seed; --rerun-seed-recipe measures it again); then both groups side by side.

seed: the tutorial's recipe as published: transformers.Trainer on all 2328 train rows (no validation split), every
text padded to 100 tokens, fp32, lr 1e-5, batch 16, weight decay 0.01, 100 warm-up steps, 8 epochs, the TD-BERT model
(the product's AbsaClassifier, max pooling); it evaluates on TEST after every epoch and reports the epoch with the
best test macro-F1 (the most favourable choice for the seed on the target metric).
product: `python finetune_absa.py --model_name_or_path embedded-minilm --dataset <Laptop14> --seeds ...` in a
subprocess, exactly as a user runs it; it carves 10 % of train for validation, selects the epoch on validation
(macro-F1 by default), and tests once. Its results.json gives test accuracy / macro-F1 and wall_seconds.
Wall time: from the start of `main` (data loading) to the final test evaluation, for both (interpreter start-up and
imports not included for either).
Every run appends a line to bench/results/quality.jsonl (group, seed, test accuracy, test macro-F1, wall seconds,
epochs, the exact command); `table` summarises that file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = benchlib.ROOT / "bench" / "results" / "quality.jsonl"


COMPARE_FLAGS = ["--learning_rate", "5e-5"]  # chosen on validation loss for MiniLM (bench/README.md)
DATASETS = {"laptop14": benchlib.DATASET,
            "mams": str((benchlib.ROOT / ".." / "shared" / "data" / "mams_atsa").resolve())}
# MAMS has 11186 train aspects (4.8x Laptop14) and its own validation split: fewer epochs reach its best.
DATASET_FLAGS = {"laptop14": [], "mams": ["--num_epochs", "4", "--early_stopping_patience", "2"]}
# Today's recipe per encoder: finetune_absa.py's defaults before the recipe was tuned (the epoch chosen by validation
# loss, 8 epochs, patience 3, lr 1e-5), pinned so that `today` keeps its meaning; small encoders such as MiniLM at
# lr 5e-5.
BEFORE_TUNING = ["--metric_for_best_model", "loss", "--num_epochs", "8", "--early_stopping_patience", "3",
                 "--learning_rate", "1e-5"]
TODAY = {"minilm": [*BEFORE_TUNING, "--learning_rate", "5e-5"]}
# Named levers, added to today's recipe (later flags win).
RECIPES = {"today": [],
           "select_f1": ["--metric_for_best_model", "macro_f1"],
           "select_f1_long": ["--metric_for_best_model", "macro_f1", "--num_epochs", "15",
                              "--early_stopping_patience", "5"]}
CONTRASTIVE = benchlib.ROOT / "data" / "contrastive" / "test.jsonl"
# The README's example sentences (text, aspect, occurrence, the right answer).
README_EXAMPLES = [
    ("The battery lasts forever but the screen is dim.", "battery", None, "positive"),
    ("The battery lasts forever but the screen is dim.", "screen", None, "negative"),
    ("Great keyboard, awful trackpad.", "keyboard", None, "positive"),
    ("Great keyboard, awful trackpad.", "trackpad", None, "negative"),
    ("The battery lasts, the screen is dim", "battery", None, "positive"),
    ("The battery lasts, the screen is dim", "screen", None, "negative"),
    ("Good screen, but the screen hinge broke", "screen", 2, "negative"),
    ("The battery life is great but the screen is dim.", "battery life", None, "positive"),
    ("The battery life is great but the screen is dim.", "screen", None, "negative"),
]


def read_rows() -> list[dict]:
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()] if RESULTS.exists() else []


def append(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)


def run_seed_recipe(seed: int, epochs: float, output_dir: str, group: str, threads: int, max_steps: int = -1) -> dict:
    """One run of the seed recipe; returns the best-on-test epoch's metrics and the wall time."""
    import torch
    torch.set_num_threads(threads)
    from transformers import Trainer

    from absa.aspects import encode_absa_splits
    from absa.encoders import load_tokenizer
    from absa.metrics import single_label_metrics

    started = time.time()
    benchlib.quiet_libraries()
    splits = benchlib.laptop_splits(seed=seed, select_on_test=True)  # all 2328 train rows; "validation" = test
    tokenizer = load_tokenizer(benchlib.MODEL)
    features = encode_absa_splits(splits, tokenizer, benchlib.SEED_PAD)
    model = benchlib.trainer_model(seed)

    def compute_metrics(prediction):
        metrics = single_label_metrics(prediction.predictions, prediction.label_ids, benchlib.LABELS)
        return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}

    args = benchlib.seed_training_arguments(output_dir, bf16=False, group_by_length=False, seed=seed,
                                            num_epochs=epochs, evaluate_each_epoch=True, max_steps=max_steps)
    trainer = Trainer(model=model, args=args, train_dataset=features["train"], eval_dataset=features["test"],
                      data_collator=benchlib.FixedPadCollator(tokenizer, benchlib.SEED_PAD),
                      compute_metrics=compute_metrics)
    output = trainer.train()
    history = [{"epoch": row["epoch"], "test_accuracy": row["eval_accuracy"], "test_macro_f1": row["eval_macro_f1"]}
               for row in trainer.state.log_history if "eval_macro_f1" in row]
    best = max(history, key=lambda row: row["test_macro_f1"])
    return {"group": group, "seed": seed, "test_accuracy": best["test_accuracy"],
            "test_macro_f1": best["test_macro_f1"], "best_epoch": best["epoch"], "epochs": epochs,
            "wall_seconds": time.time() - started,
            "train_samples_per_second": output.metrics.get("train_samples_per_second"), "history": history,
            "selection": "best epoch on TEST by macro-F1 (as published)", "train_rows": len(features["train"])}


def run_product(seed: int, extra: list[str], output_root: str, group: str, dataset: str = benchlib.DATASET,
                model: str = benchlib.MODEL) -> dict:
    output_dir = Path(output_root) / f"seed_{seed}"
    command = [sys.executable, "finetune_absa.py", "--model_name_or_path", model, "--dataset",
               os.path.relpath(dataset, benchlib.ROOT), "--output_dir", str(output_dir), "--seed", str(seed),
               "--overwrite_output_dir", *extra]
    print("$ python " + " ".join(command[1:]), flush=True)
    started = time.time()
    subprocess.run(command, cwd=benchlib.ROOT, check=True)
    process_seconds = time.time() - started
    results = json.loads((benchlib.ROOT / output_dir / "results.json").read_text())
    return {"group": group, "seed": seed, "test_accuracy": results["test_accuracy"],
            "test_macro_f1": results["test_macro_f1"], "best_epoch": results["best_epoch"],
            "epochs": results["epochs_run"], "wall_seconds": results["wall_seconds"],
            "process_seconds": process_seconds, "train_samples_per_second": results["train_samples_per_second"],
            "best_validation": {k: results["best_validation"].get(k) for k in ("loss", "accuracy", "macro_f1")},
            "mixed_precision": results["mixed_precision"], "output_dir": str(output_dir),
            "selection": f"validation {results['settings']['metric_for_best_model']} (validation split of the data, "
                         "else 10 % of train by sentence)",
            "command": "python " + " ".join(command[1:]),
            "history": [{k: row.get(k) for k in ("epoch", "loss", "accuracy", "macro_f1")}
                        for row in results["validation_history"]]}


def run_format(seed: int, dataset: str, input_format: str, extra: list[str], output_root: str) -> dict:
    """One product run with an input format, then its best model on the contrastive check set and on the README's
    example sentences."""
    group = f"formats {dataset} {input_format}"
    flags = ["--input_format", input_format, *COMPARE_FLAGS, *DATASET_FLAGS[dataset], *extra]
    row = run_product(seed, flags, f"{output_root}/formats_{dataset}_{input_format}", group, DATASETS[dataset])
    model = benchlib.ROOT / row["output_dir"] / "best_model"
    evaluation = benchlib.ROOT / row["output_dir"] / "contrastive"
    subprocess.run([sys.executable, "use_absa.py", "evaluate", str(model), "--test_file", str(CONTRASTIVE),
                    "--output_dir", str(evaluation), "--overwrite"], cwd=benchlib.ROOT, check=True,
                   capture_output=True)
    contrastive = json.loads((evaluation / f"evaluation_{CONTRASTIVE.parent.name}_{CONTRASTIVE.stem}.json").read_text())
    return {**row, "dataset": dataset, "input_format": input_format,
            "contrastive_accuracy": contrastive["accuracy"], "contrastive_macro_f1": contrastive["macro_f1"],
            "readme_examples": readme_examples(model)}


def readme_examples(model_dir) -> dict:
    """The README's example sentences: how many the model gets right, and what it says."""
    from absa.predictor import AbsaPredictor
    predictor = AbsaPredictor.from_pretrained(model_dir, device="cpu")
    said = []
    for text, aspect, occurrence, expected in README_EXAMPLES:
        prediction = predictor.predict([text], [aspect], occurrence=occurrence)[0]
        said.append({"text": text, "aspect": aspect, "expected": expected, "predicted": prediction["label"],
                     "probability": round(prediction["probabilities"][prediction["label"]], 3)})
    return {"correct": sum(s["expected"] == s["predicted"] for s in said), "total": len(said), "predictions": said}


def stat(values, scale=100.0) -> str:
    """mean ± sd (min-max) of a metric over seeds, in points."""
    values = np.array(values) * scale
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.1f}±{spread:.1f} ({values.min():.1f}-{values.max():.1f})"


def precision(row: dict) -> str:
    return {"no": "fp32"}.get(row["mixed_precision"], row["mixed_precision"])


def paired_differences(members: list[dict], base: dict[int, dict]) -> tuple[list[float], list[int]]:
    """Test macro-F1 minus the baseline's on the same seed, over the seeds where both ran in the same precision (bf16
    against fp32 would mix a precision change into the difference); and the seeds left out for that."""
    pairs = [(row, base[row["seed"]]) for row in members if row["seed"] in base]
    paired = [row["test_macro_f1"] - other["test_macro_f1"] for row, other in pairs
              if precision(row) == precision(other)]
    return paired, [row["seed"] for row, other in pairs if precision(row) != precision(other)]


def print_left_out(unpaired: list[int], baseline: str, indent: int = 42) -> None:
    if unpaired:
        print(f"{'':{indent}}   (paired dF1 leaves out seed {', '.join(map(str, unpaired))}: another precision "
              f"than {baseline}'s run)")


def summarize_formats(rows: list[dict], seeds) -> None:
    """Per dataset and format: mean ± sd and range over seeds, and the paired difference to TD-BERT (same seeds, same
    precision)."""
    latest = {}
    for row in rows:
        if row["group"].startswith("formats ") and row["seed"] in seeds:
            latest[row["dataset"], row["input_format"], row["seed"]] = row
    for dataset in dict.fromkeys(key[0] for key in latest):
        print(f"\n{dataset}: {'format':15} {'seeds':>5} {'test macro-F1':>20} {'test accuracy':>20} {'val loss':>14} "
              f"{'contrastive acc':>16} {'README':>7} {'samples/s':>9}  paired macro-F1 - td_bert")
        base = {seed: row for (d, f, seed), row in latest.items() if d == dataset and f == "td_bert"}
        for input_format in dict.fromkeys(key[1] for key in latest if key[0] == dataset):
            members = [row for (d, f, _), row in latest.items() if d == dataset and f == input_format]
            paired, unpaired = paired_differences(members, base)
            shown = stat(paired) if paired and input_format != "td_bert" else "-"
            readme = sum(r["readme_examples"]["correct"] for r in members) / len(members)
            print(f"{'':10}{input_format:15} {len(members):>5} {stat([r['test_macro_f1'] for r in members]):>20} "
                  f"{stat([r['test_accuracy'] for r in members]):>20} "
                  f"{np.mean([r['best_validation']['loss'] for r in members]):>14.4f} "
                  f"{100 * np.mean([r['contrastive_accuracy'] for r in members]):>16.1f} "
                  f"{readme:>4.1f}/{members[0]['readme_examples']['total']} "
                  f"{np.mean([r['train_samples_per_second'] for r in members]):>9.1f}  {shown}")
            if input_format != "td_bert":
                print_left_out(unpaired, "td_bert")


def recipe_flags(recipe: str) -> list[str]:
    """A preset's flags, or FLAG=VALUE[,FLAG=VALUE...] as finetune_absa.py flags."""
    if recipe in RECIPES:
        return list(RECIPES[recipe])
    return [part for pair in recipe.split(",") for part in (f"--{pair.split('=', 1)[0]}", pair.split("=", 1)[1])]


def run_recipe(seed: int, model: str, path: str, dataset: str, recipe: str, output_root: str,
               mixed_precision: str | None = None) -> dict:
    """One seed of a recipe; the README sentences asked of its best model."""
    flags = [*TODAY.get(model, BEFORE_TUNING), *DATASET_FLAGS[dataset], *recipe_flags(recipe),
             *(["--mixed_precision", mixed_precision] if mixed_precision else [])]
    row = run_product(seed, flags, f"{output_root}/recipes/{model}_{dataset}_{slug(recipe)}",
                      recipe_group(model, dataset, recipe), DATASETS[dataset], path)
    best = benchlib.ROOT / row["output_dir"] / "best_model"
    return {**row, "model": model, "dataset": dataset, "recipe": recipe, "readme_examples": readme_examples(best)}


def run_ensemble(model: str, dataset: str, recipe: str, seeds, runs_root: Path) -> dict:
    """The best models of a recipe's seeds as one ensemble (`use_absa.py evaluate` with every folder) on test, next
    to the members' own test scores."""
    latest = {row["seed"]: row for row in read_rows() if row["group"] == recipe_group(model, dataset, recipe)}
    members = [latest[seed] for seed in seeds if seed in latest and (runs_root / latest[seed]["output_dir"]
                                                                      / "best_model").is_dir()]
    if len(members) < 2:
        raise SystemExit(f"{recipe_group(model, dataset, recipe)}: fewer than 2 of seeds {seeds} have a best model "
                         f"under {runs_root}")
    folders = [str(runs_root / row["output_dir"] / "best_model") for row in members]
    output = runs_root / "runs" / "quality" / "ensembles" / slug(f"{model}_{dataset}_{recipe}")
    command = [sys.executable, "use_absa.py", "evaluate", *folders, "--dataset", DATASETS[dataset], "--split", "test",
               "--output_dir", str(output), "--overwrite"]
    print("$ python " + " ".join(command[1:]), flush=True)
    started = time.time()
    subprocess.run(command, cwd=benchlib.ROOT, check=True)
    results = json.loads(next(output.glob("evaluation_ensemble_*.json")).read_text())
    return {"group": f"ensemble {model} {dataset} {recipe}", "seed": "+".join(str(row["seed"]) for row in members),
            "model": model, "dataset": dataset, "recipe": recipe, "members": [row["seed"] for row in members],
            "test_accuracy": results["accuracy"], "test_macro_f1": results["macro_f1"],
            "members_test_macro_f1": [row["test_macro_f1"] for row in members],
            "members_test_accuracy": [row["test_accuracy"] for row in members],
            "wall_seconds": time.time() - started, "command": "python " + " ".join(command[1:])}


def summarize_ensembles(rows: list[dict]) -> None:
    ensembles = [row for row in rows if row["group"].startswith("ensemble ")]
    if ensembles:
        print(f"\n{'ensemble (mean probabilities)':48} {'seeds':>10} {'test macro-F1':>13} {'members mean':>12} "
              f"{'best member':>11} {'test acc':>8} {'members acc':>11}")
    for row in ensembles:
        print(f"{row['group'][9:]:48} {row['seed']:>10} {100 * row['test_macro_f1']:>13.1f} "
              f"{100 * np.mean(row['members_test_macro_f1']):>12.1f} {100 * max(row['members_test_macro_f1']):>11.1f} "
              f"{100 * row['test_accuracy']:>8.1f} {100 * np.mean(row['members_test_accuracy']):>11.1f}")


def recipe_group(model: str, dataset: str, recipe: str) -> str:
    return f"recipe {model} {dataset} {recipe}"


def summarize_recipes(rows: list[dict], seeds) -> None:
    """Per encoder and data set: each recipe over the seeds, the precisions they ran in, and its paired difference
    to today's recipe over the seeds where both ran in the same precision (bf16 against fp32 would mix a precision
    change into the recipe's)."""
    latest = {}
    for row in rows:
        if row["group"].startswith("recipe ") and row["seed"] in seeds:
            latest[row["model"], row["dataset"], row["recipe"], row["seed"]] = row
    for model, dataset in dict.fromkeys(key[:2] for key in latest):
        recipes = list(dict.fromkeys(key[2] for key in latest if key[:2] == (model, dataset)))
        width = max(42, *map(len, recipes))  # whole names: screened recipes share long prefixes
        print(f"\n{model} on {dataset}:\n{'recipe':{width}} {'seeds':>5} {'test macro-F1':>19} {'test accuracy':>19} "
              f"{'paired dF1':>16} {'val loss':>8} {'val F1':>6} {'min':>5} {'README':>6}  precision")
        today = {key[3]: row for key, row in latest.items() if key[:3] == (model, dataset, "today")}
        for recipe in recipes:
            members = [row for key, row in latest.items() if key[:3] == (model, dataset, recipe)]
            paired, unpaired = paired_differences(members, today)
            precisions = Counter(precision(row) for row in members)
            print(f"{recipe:{width}} {len(members):>5} {stat([r['test_macro_f1'] for r in members]):>19} "
                  f"{stat([r['test_accuracy'] for r in members]):>19} "
                  f"{stat(paired) if paired and recipe != 'today' else '-':>16} "
                  f"{np.mean([r['best_validation']['loss'] for r in members]):>8.4f} "
                  f"{100 * np.mean([r['best_validation']['macro_f1'] for r in members]):>6.1f} "
                  f"{np.mean([r['wall_seconds'] for r in members]) / 60:>5.1f} "
                  f"{np.mean([r['readme_examples']['correct'] for r in members]):>4.1f}/9  "
                  + (" ".join(f"{name} {count}" for name, count in precisions.items()) if len(precisions) > 1
                     else next(iter(precisions))))
            if recipe != "today":
                print_left_out(unpaired, "today", width)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)[:80]


def summarize(rows: list[dict]) -> None:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    print(f"{'group':44} {'seeds':>10} {'macro-F1 mean (range)':>24} {'accuracy mean (range)':>24} {'wall min':>9} "
          f"{'val loss':>8}")
    for group, members in groups.items():
        def mean_range(key, scale=100.0):
            values = np.array([m[key] for m in members]) * scale
            return f"{values.mean():.1f} ({values.min():.1f}-{values.max():.1f})"
        seeds = ",".join(str(m["seed"]) for m in members)
        wall = np.mean([m["wall_seconds"] for m in members]) / 60
        losses = [m["best_validation"]["loss"] for m in members if m.get("best_validation")]
        loss = f"{np.mean(losses):.4f}" if losses else "(test)"  # the seed recipe has no validation split
        print(f"{group:44} {seeds:>10} {mean_range('test_macro_f1'):>24} {mean_range('test_accuracy'):>24} "
              f"{wall:9.1f} {loss:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="compare",
                        choices=("compare", "seed", "product", "sweep", "formats", "recipes", "ensembles", "table"))
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS),
                        help="formats: the data sets")
    parser.add_argument("--formats", nargs="+", default=["td_bert", "aspect_markers", "sentence_pair"],
                        help="formats: the input formats (finetune_absa.py --input_format)")
    parser.add_argument("--models", nargs="+", default=["minilm"], help="recipes: encoders, `minilm` (the embedded "
                        "MiniLM) or NAME=PATH (e.g. mpnet=/models/mpnet from ../shared/tools/get-mpnet-base)")
    parser.add_argument("--recipes", nargs="+", default=["today"], help="recipes: presets (" + ", ".join(RECIPES)
                        + ") or FLAG=VALUE[,FLAG=VALUE...]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--mixed_precision", choices=["no", "bf16"], default=None,
                        help="recipes: pin finetune_absa.py's precision (default: its own, bf16 where the CPU has "
                        "native bf16, else fp32), to pair with rows measured on another CPU; a seed whose row ran in "
                        "another precision is run again")
    parser.add_argument("--epochs", type=float, default=8, help="seed recipe epochs (8 as published)")
    parser.add_argument("--max-steps", type=int, default=-1, help="seed: stop after N steps (smoke tests only)")
    parser.add_argument("--group", default=None, help="Name of this group of runs in the results file.")
    parser.add_argument("--flag", default="learning_rate", help="sweep: the finetune_absa.py setting to vary")
    parser.add_argument("--values", nargs="+", default=["1e-5", "3e-5", "1e-4"], help="sweep: its values")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--output-root", default="runs/quality")
    parser.add_argument("--runs-root", default=str(benchlib.ROOT), help="ensembles: the checkout whose runs/ holds "
                        "the recipes' best models (the runs' output_dir is relative to it)")
    parser.add_argument("--results", default=None, help="the JSONL file runs are appended to (default: "
                        "bench/results/quality.jsonl)")
    parser.add_argument("--rerun-seed-recipe", action="store_true", help="compare: measure the seed recipe again")
    parser.add_argument("--again", action="store_true", help="recipes: run seeds the results file already has (the "
                        "newest row counts), e.g. to have their best models on disk for `ensembles`")
    options, extra = parser.parse_known_args()
    global RESULTS
    RESULTS = Path(options.results) if options.results else RESULTS
    extra = [a for a in extra if a != "--"]
    command = benchlib.command_line()
    if options.mode == "table":
        summarize([row for row in read_rows() if not row["group"].startswith(("formats ", "ensemble "))])
        summarize_formats(read_rows(), options.seeds)
        summarize_recipes(read_rows(), options.seeds)
        summarize_ensembles(read_rows())
        return
    env = benchlib.environment()
    print(f"$ {command}\n{env['cpu']}, {env['cores']} cores; torch {env['torch']}, transformers "
          f"{env['transformers']}, accelerate {env['accelerate']}; {benchlib.load_line()}", flush=True)
    context = {"bench_command": command, "cpu": env["cpu"], "date": env["date"],
               "versions": {k: env[k] for k in ("torch", "transformers", "accelerate", "datasets")}}
    seed_group = options.group or f"seed recipe ({options.epochs:g} epochs, best epoch on test)"

    def record(run, *args) -> None:  # one run, appended with the context and the load around it
        load = os.getloadavg()[0]
        append({**run(*args), **context, "load_average_start": load, "load_average_end": os.getloadavg()[0]})

    def products(group: str, flags: list[str]) -> None:
        for seed in options.seeds:
            record(run_product, seed, flags, f"{options.output_root}/product_{slug(group)}", group)

    def seed_recipes(seeds) -> None:
        for seed in seeds:
            record(run_seed_recipe, seed, options.epochs, f"{options.output_root}/seed_recipe/seed_{seed}",
                   seed_group, options.threads, options.max_steps)

    if options.mode == "compare":
        extra = extra or COMPARE_FLAGS
        product_group = ("finetune_absa.py " + " ".join(extra)).strip()
        measured = {row["seed"] for row in read_rows() if row["group"] == seed_group and
                    row.get("versions") == context["versions"]}
        products(product_group, extra)
        reused = [] if options.rerun_seed_recipe else [seed for seed in options.seeds if seed in measured]
        for seed in reused:
            print(f"seed recipe, seed {seed}: reusing the row in {os.path.relpath(RESULTS)}")
        seed_recipes([seed for seed in options.seeds if seed not in reused])
        latest = {}
        for row in read_rows():  # the newest row of each (group, seed)
            if row["group"] in (product_group, seed_group) and row["seed"] in options.seeds:
                latest[row["group"], row["seed"]] = row
        summarize(sorted(latest.values(), key=lambda row: row["group"] != product_group))
        print(f"\n$ {command}")
    elif options.mode == "formats":  # every format, same seeds, on each data set; then the paired table
        for dataset in options.datasets:
            for input_format in options.formats:
                for seed in options.seeds:
                    record(run_format, seed, dataset, input_format, extra, options.output_root)
        summarize_formats(read_rows(), options.seeds)
        print(f"\n$ {command}")
    elif options.mode == "recipes":  # resumable: a (group, seed) already in the results file is not run again
        models = dict(("minilm", benchlib.MODEL) if spec == "minilm" else spec.split("=", 1) for spec in options.models)
        done = {(row["group"], row["seed"]): row["mixed_precision"] for row in read_rows()
                if row["group"].startswith("recipe ")}
        for dataset in options.datasets:
            for seed in options.seeds:  # seed-major: an interrupted sweep has every recipe on the first seeds
                for model, path in models.items():
                    for recipe in options.recipes:
                        precision_done = done.get((recipe_group(model, dataset, recipe), seed))
                        if precision_done and options.mixed_precision in (None, precision_done) and not options.again:
                            continue
                        record(run_recipe, seed, model, path, dataset, recipe, options.output_root,
                               options.mixed_precision)
        summarize_recipes(read_rows(), options.seeds)
        print(f"\n$ {command}")
    elif options.mode == "ensembles":  # the seeds' best models of each recipe as one model, on test
        models = [spec.split("=", 1)[0] for spec in options.models]
        for dataset in options.datasets:
            for model in models:
                for recipe in options.recipes:
                    record(run_ensemble, model, dataset, recipe, options.seeds, Path(options.runs_root).resolve())
        summarize_ensembles(read_rows())
        print(f"\n$ {command}")
    elif options.mode == "seed":
        seed_recipes(options.seeds)
    elif options.mode == "product":
        products(options.group or ("finetune_absa.py " + " ".join(extra)).strip(), extra)
    else:  # sweep on validation, one seed: the choice never looks at test
        for value in options.values:
            group = (f"sweep {options.flag}={value} " + " ".join(extra)).strip()
            record(run_product, options.seeds[0], [f"--{options.flag}", value, *extra],
                   f"{options.output_root}/sweep_{options.flag}_{value}", group)
        print("choose by best_validation (loss, then macro-F1); test numbers of a sweep are not used for the choice")

if __name__ == "__main__":
    main()
