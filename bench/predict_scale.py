"""Prediction at corpus scale: rows/s and peak memory of `use_absa.py predict --input` at 100k, 1M and 10M rows.

    python bench/predict_scale.py --model runs/minilm_laptops/best_model     # the table of bench/README.md
    python bench/predict_scale.py --sizes 2000 --in-memory-rows 2000 --tiny-rows 20000   # a smoke test (minutes)

A fine-tuned MiniLM, made with
    python finetune_absa.py --model_name_or_path embedded-minilm --dataset ../shared/data/semeval2014_laptops \\
        --learning_rate 5e-5 --output_dir runs/minilm_laptops
(without --model: a fresh MiniLM ABSA model, untrained head; speed and memory are the same, the labels are not).

Input: JSONL rows of distinct texts made from the Laptop14 sentences (train + test, 2966 aspect rows with offsets):
row i is Laptop14 row i mod 2966 with " (#i)" appended to its text, so no two texts are the same (no sentence is
encoded once for several aspects) and the lengths stay those of Laptop14. Output: CSV. Written in a temporary
folder under /tmp, removed at the end.

Measured, each in its own process started by this one, one after the other (peak RSS from os.wait4 on that process):
  streaming    this checkout's `use_absa.py predict` (chunks of --chunk-size rows) on --sizes rows, with --model.
  in-memory    the previous use_absa.py (read whole, predicted whole, written at the end), from the git revision
               --in-memory-rev (unpacked with `git archive` into the temporary folder), on --in-memory-rows rows.
  tiny model   the streaming path on --tiny-rows rows with a tiny random model (1 layer, hidden 32) on MiniLM's
               tokenizer: how memory grows with the rows does not depend on the model's size, and 10M rows with
               MiniLM take hours on 2 cores. Its rows/s is not a number to quote.
rows/s is end to end (rows / wall time of the process: start-up, checking every row, model load, predicting,
writing); "own rows/s" is the script's summary line (the prediction loop alone). Both paths run with the same
--max_length (128, what finetune_absa.py trains with) and the default precision (the model's, else auto).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

SCRIPT = benchlib.ROOT / "use_absa.py"


def laptop_rows() -> list[dict]:
    folder = Path(benchlib.DATASET)
    return [json.loads(line) for name in ("train.jsonl", "test.jsonl")
            for line in (folder / name).read_text().splitlines() if line]


def write_input(path: Path, count: int) -> Path:
    """`count` JSONL rows of distinct texts (Laptop14 row i mod N, " (#i)" appended), written a block at a time."""
    rows = laptop_rows()
    with path.open("w", encoding="utf-8") as handle:
        for first in range(0, count, 100_000):
            handle.write("".join(
                json.dumps({"id": i, "text": f"{rows[i % len(rows)]['text']} (#{i})",
                            "aspect": rows[i % len(rows)]["aspect"], "start": rows[i % len(rows)]["start"],
                            "end": rows[i % len(rows)]["end"]}) + "\n"
                for i in range(first, min(count, first + 100_000))))
    return path


def fresh_minilm(folder: Path) -> Path:
    """An ABSA model folder as finetune_absa.py writes it, around the embedded MiniLM (head untrained)."""
    from absa.model import AbsaClassifier
    from absa.encoders import load_tokenizer
    model = AbsaClassifier.from_encoder(benchlib.MODEL, benchlib.LABELS, max_length=128)
    model.save_pretrained(folder)
    load_tokenizer(benchlib.MODEL).save_pretrained(folder)
    return folder


def tiny_model(folder: Path) -> Path:
    """A random 1-layer, hidden-32 BERT with MiniLM's tokenizer (same vocabulary), as an ABSA model folder."""
    import torch
    from transformers import BertConfig, BertModel
    from absa.model import AbsaClassifier
    from absa.encoders import load_tokenizer
    tokenizer = load_tokenizer(benchlib.MODEL)
    torch.manual_seed(0)
    encoder = folder.with_name(folder.name + "_encoder")
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    model = AbsaClassifier.from_encoder(str(encoder), benchlib.LABELS, max_length=128)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def measure(name: str, command: list[str], rows: int, model: str, threads: int | None) -> dict:
    """Run `command` as a child process; its wall time, peak RSS (os.wait4) and the rate its summary line reports."""
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    print(f"[{name}] {rows} rows: $ {'OMP_NUM_THREADS=' + str(threads) + ' ' if threads else ''}{' '.join(command)}",
          flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(command, cwd=benchlib.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                 text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0)
        printed = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"[{name}] failed:\n{printed[-3000:]}")
    own = re.findall(r"\(([\d.]+) (?:rows|predictions)/s", printed)
    result = {"name": name, "rows": rows, "model": model, "wall_s": round(wall, 1), "rows_per_s": rows / wall,
              "own_rows_per_s": float(own[-1]) if own else None, "peak_rss_mib": usage.ru_maxrss / 1024,
              "command": " ".join(command)}
    print(f"[{name}] {wall:.1f} s, {result['rows_per_s']:.0f} rows/s end to end, own {result['own_rows_per_s']} "
          f"rows/s, peak RSS {result['peak_rss_mib']:.0f} MiB  [{benchlib.load_line()}]", flush=True)
    return result


def predict_command(script: Path, model: Path, source: Path, output: Path, chunk_size: int | None) -> list[str]:
    command = [sys.executable, str(script), "predict", str(model), "--input", str(source), "--output", str(output),
               "--max_length", "128"]
    return command + (["--chunk_size", str(chunk_size)] if chunk_size else [])


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a fine-tuned ABSA model folder (default: a fresh MiniLM)")
    parser.add_argument("--sizes", default="100000,1000000", help="rows for the streaming path with --model")
    parser.add_argument("--in-memory-rows", type=int, default=100_000, help="rows for git HEAD's in-memory path "
                        "(0: skip)")
    parser.add_argument("--in-memory-rev", default="HEAD", help="the git revision whose use_absa.py is the "
                        "in-memory path (default: HEAD; once the streaming version is committed, the commit before)")
    parser.add_argument("--tiny-rows", type=int, default=10_000_000, help="rows for the tiny model (0: skip)")
    parser.add_argument("--chunk-size", type=int, default=None, help="--chunk_size of the streaming path "
                        "(default: the script's)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the measured processes "
                        "(default: torch's own choice, every core)")
    parser.add_argument("--scratch", default="/tmp", help="where the temporary folder goes (inputs, outputs)")
    parser.add_argument("--output", default=str(benchlib.ROOT / "bench" / "results" / "predict_scale.json"))
    return parser.parse_args()


def main() -> None:
    options = parse_args()
    benchlib.quiet_libraries()
    command = benchlib.command_line()
    env = benchlib.environment()
    print(f"$ {command}\n{env['cpu']}, {env['cores']} cores, avx512_bf16 {env['avx512_bf16']}, amx_bf16 "
          f"{env['amx_bf16']}; torch {env['torch']}, transformers {env['transformers']}; {benchlib.load_line()}",
          flush=True)
    sizes = [int(size) for size in options.sizes.split(",") if size]
    results = []
    with tempfile.TemporaryDirectory(dir=options.scratch, prefix="predict_scale_") as scratch:
        scratch = Path(scratch)
        model = Path(options.model) if options.model else fresh_minilm(scratch / "minilm")
        model_name = options.model or "fresh MiniLM (untrained head)"
        def run(name, script, model_folder, source, rows, what, chunk_size):
            output = scratch / "out.csv"
            results.append(measure(name, predict_command(script, model_folder, source, output, chunk_size), rows,
                                   what, options.threads))
            output.unlink()

        for rows in sorted(set(sizes + ([options.in_memory_rows] if options.in_memory_rows else []))):
            source = write_input(scratch / f"input_{rows}.jsonl", rows)
            if rows in sizes:
                run("streaming", SCRIPT, model, source, rows, model_name, options.chunk_size)
            if rows == options.in_memory_rows:
                old = scratch / "in_memory"  # that revision's tree, unpacked (git archive: no worktree, no checkout)
                old.mkdir()
                archive = subprocess.run(["git", "archive", options.in_memory_rev], cwd=benchlib.ROOT,
                                         capture_output=True, check=True).stdout
                subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
                run(f"in-memory ({options.in_memory_rev})", old / "use_absa.py", model, source, rows, model_name, None)
            source.unlink()
        if options.tiny_rows:
            source = write_input(scratch / "input_tiny.jsonl", options.tiny_rows)
            run("streaming, tiny model", SCRIPT, tiny_model(scratch / "tiny"), source, options.tiny_rows,
                "tiny random BERT (1 layer, hidden 32), MiniLM tokenizer", options.chunk_size)

    print(f"\n{env['cpu']}, {env['cores']} cores, avx512_bf16 {env['avx512_bf16']}, amx_bf16 {env['amx_bf16']}, "
          f"torch {env['torch']}; {benchlib.load_line()}")
    print("| path | rows | model | wall s | rows/s end to end | own rows/s | peak RSS MiB |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for row in results:
        tiny = "tiny" in row["name"]  # its speed says nothing about a real model
        print(f"| {row['name']} | {row['rows']:,} | {row['model']} | {row['wall_s']:.0f} | "
              f"{'-' if tiny else format(row['rows_per_s'], '.0f')} | "
              f"{'-' if tiny or row['own_rows_per_s'] is None else format(row['own_rows_per_s'], '.0f')} | "
              f"{row['peak_rss_mib']:.0f} |")
    print(f"\n$ {command}")
    benchlib.write_results(Path(options.output), {"command": command, "environment": env, "results": results})
    print(f"results in {os.path.relpath(options.output)}")


if __name__ == "__main__":
    main()
