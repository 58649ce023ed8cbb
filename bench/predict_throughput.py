"""Prediction throughput: the Python API's predictor (absa.predictor.AbsaPredictor; use_absa.py runs the same one)
against the seed's way of predicting. At corpus scale (files of 100k to 10M rows): bench/predict_scale.py.

    python bench/predict_throughput.py                                  # a fresh (untrained) MiniLM ABSA model
    python bench/predict_throughput.py --model runs/laptops/best_model  # a fine-tuned one (also reports accuracy)

Input: the SemEval-2014 Laptop14 test set (638 texts with aspect offsets). Both sides start from the raw texts and
offsets and end with one predicted label per input, so tokenization is inside the timing for both.
  seed       every input padded to 100 tokens, fp32, batch 16, one forward per batch under torch.no_grad (no
             inference_mode), in file order; argmax of the logits.
  product    AbsaPredictor.from_pretrained(model).predict(texts, starts=..., ends=...): batches sorted by length
             and padded per batch, the aspects of one text encoded once (Laptop14 test: 638 aspects in 411
             texts), torch.no_grad, mixed precision as the model recorded it, else "auto" (bf16 autocast where the
             CPU computes bf16 natively, else fp32); at batch 16 (aspects per batch), at its default batch 64 and at larger batches.
Contenders alternate for --rounds rounds in this one process (same threads); each round predicts the whole test set
once per contender. Reported: predictions/s (total over the rounds), the spread over rounds, the ratio to the seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def read_test(limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (Path(benchlib.DATASET) / "test.jsonl").read_text().splitlines() if line]
    return rows[:limit] if limit else rows


def fresh_model_folder(folder: str) -> str:
    """An ABSA model folder as finetune_absa.py writes it, around the embedded MiniLM (head untrained)."""
    from absa.model import AbsaClassifier
    from absa.encoders import load_tokenizer
    model = AbsaClassifier.from_encoder(benchlib.MODEL, benchlib.LABELS)
    model.save_pretrained(folder)
    load_tokenizer(benchlib.MODEL).save_pretrained(folder)
    return folder


class SeedPredictor:
    """The seed's prediction: pad to 100, fp32, batch 16, a forward per batch under no_grad, in input order."""

    def __init__(self, folder: str):
        from absa.model import AbsaClassifier
        from absa.encoders import load_tokenizer
        self.model = AbsaClassifier.from_pretrained(folder).eval()
        self.tokenizer = load_tokenizer(folder)
        self.collator = benchlib.FixedPadCollator(self.tokenizer, benchlib.SEED_PAD)

    def predict(self, texts, starts, ends) -> np.ndarray:
        from absa.aspects import encode_aspect_batch
        columns = encode_aspect_batch({"text": texts, "start": starts, "end": ends}, list(range(len(texts))),
                                      self.tokenizer, benchlib.SEED_PAD, split="test")
        features = [{"input_ids": ids, "aspect_mask": mask} for ids, mask in
                    zip(columns["input_ids"], columns["aspect_mask"])]
        labels = []
        with torch.no_grad():
            for first in range(0, len(features), 16):
                batch = self.collator(features[first:first + 16])
                labels.append(self.model(**batch).argmax(dim=-1))
        return torch.cat(labels).numpy()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="An ABSA model folder (default: a fresh MiniLM one).")
    parser.add_argument("--batch-sizes", default="16,64,256", help="The product's batch sizes to measure.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--output", default=str(benchlib.ROOT / "bench" / "results" / "predict.json"))
    return parser.parse_args()


def main() -> None:
    options = parse_args()
    torch.set_num_threads(options.threads)
    benchlib.quiet_libraries()
    from absa.predictor import AbsaPredictor
    command = benchlib.command_line()
    print(f"$ {command}", flush=True)
    env = benchlib.environment()
    print(f"{env['cpu']}, {env['cores']} cores, {options.threads} threads; torch {env['torch']}, transformers "
          f"{env['transformers']}; {benchlib.load_line()}", flush=True)

    rows = read_test()
    texts = [row["text"] for row in rows]
    starts = [row["start"] for row in rows]
    ends = [row["end"] for row in rows]
    gold = np.array([int(row["label"]) + 1 for row in rows])  # file labels -1/0/1 -> negative/neutral/positive
    with tempfile.TemporaryDirectory() as scratch:
        folder = options.model or fresh_model_folder(scratch)
        seed = SeedPredictor(folder)
        contenders = {"seed (pad 100, fp32, batch 16, no_grad)": lambda: seed.predict(texts, starts, ends)}
        predictors = {}
        for batch_size in [int(b) for b in options.batch_sizes.split(",")]:
            predictor = AbsaPredictor.from_pretrained(folder, device="cpu", batch_size=batch_size)
            predictors[batch_size] = predictor
            name = f"product (AbsaPredictor, {predictor.describe()}, batch {batch_size})"
            contenders[name] = (lambda p: lambda: np.array([p.label_names.index(r["label"]) for r in
                                                            p.predict(texts, starts=starts, ends=ends)]))(predictor)
        labels = {}
        for name, run in contenders.items():  # warm-up: one pass each
            labels[name] = run()
        times = {name: [] for name in contenders}
        names = list(contenders)
        for round_index in range(options.rounds):
            for name in names[round_index % len(names):] + names[:round_index % len(names)]:
                started = time.perf_counter()
                contenders[name]()
                times[name].append(time.perf_counter() - started)
            print(f"round {round_index + 1}/{options.rounds}: " + ", ".join(
                f"{len(texts) / times[n][-1]:.0f}" for n in names) + f" predictions/s  [{benchlib.load_line()}]",
                flush=True)

    seed_name = names[0]
    results = {}
    for name in names:
        rate = len(texts) * len(times[name]) / sum(times[name])
        results[name] = {"predictions_per_s": rate, "round_rates": [len(texts) / t for t in times[name]],
                         "vs_seed": rate / (len(texts) * len(times[seed_name]) / sum(times[seed_name])),
                         "accuracy": float((labels[name] == gold).mean()),
                         "agreement_with_seed": float((labels[name] == labels[seed_name]).mean())}
    print(f"\n{len(texts)} test inputs x {options.rounds} rounds; model {options.model or 'fresh MiniLM (untrained head)'}")
    print(f"{'contender':52} {'pred/s':>8} {'min-max':>11} {'x seed':>7} {'acc':>6} {'agree':>6}")
    for name, row in results.items():
        spread = f"{min(row['round_rates']):.0f}-{max(row['round_rates']):.0f}"
        print(f"{name:52} {row['predictions_per_s']:8.0f} {spread:>11} {row['vs_seed']:7.2f} "
              f"{row['accuracy']:6.3f} {row['agreement_with_seed']:6.3f}")
    print(f"\n$ {command}")
    benchlib.write_results(Path(options.output), {"command": command, "environment": env, "model": options.model,
                                                  "inputs": len(texts), "rounds": options.rounds, "results": results})
    print(f"results in {os.path.relpath(options.output)}")


if __name__ == "__main__":
    main()
