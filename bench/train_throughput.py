"""Training throughput: finetune_absa.py's own loop against the seed tutorial's Trainer recipe, side by side, one run.

    python bench/train_throughput.py                      # (a) product vs (b) seed recipe vs (c) best-practice Trainer
    python bench/train_throughput.py --set defaults       # what each speed default of the product is worth here
    python bench/train_throughput.py --set levers         # the levers measured for issue 14
    python bench/train_throughput.py --set contenders --rounds 30 --steps-per-round 4 --warmup-steps 10
    python bench/train_throughput.py --model /path/to/mpnet --only a,c_fp32,b --rounds 10   # any local encoder

Model: --model, a local folder or the embedded MiniLM (BERT, 6 layers, hidden 384; the default); data: SemEval-2014
Laptop14 train (what finetune_absa.py keeps after carving validation, tokenized by the product, max_length 128);
batch 16 aspects; --learning_rate 5e-5 (the learning rate does not change the work a step does).

Contenders (each in its own process, started one after the other; all use the same thread count):
  a       `finetune_absa.main` itself, with its defaults: the script's loop, model, optimizer, loaders. The bench
          only observes it (benchlib.run_finetune_absa: a hook after each trained batch, which pauses the loop
          between measuring rounds, and a look at each train batch for token counts) and stops it after the last
          round. A lever is a finetune_absa.py setting or a named patch of the script's module (PATCHES).
  a_fp32  a with --mixed_precision no.
  b       the seed recipe: transformers.Trainer, every text padded to 100 tokens, fp32, random order, the same
          TD-BERT model (AbsaClassifier) fed by a fixed-padding collator.
  c       the best-practice Trainer: per-batch padding, train_sampling_strategy="group_by_length", bf16=True.
  c_fp32  c in fp32.

Protocol: every contender first runs --warmup-steps optimizer steps and then waits. The parent then runs --rounds
short rounds; in each, the contenders take turns (the order rotates every round) to run --steps-per-round optimizer
steps while the others sleep. A window is timed from the end of one optimizer step to the end of the k-th next, so
it holds everything the loop does per step. Ratios are reported as the MEDIAN of the per-round ratios (two
contenders in the same round share the machine's state) with their interquartile range and extremes; when the
interquartile range is wider than --max-ratio-spread of the median the ratio is flagged as unreadable. For every
window the parent reads /proc/stat and subtracts the contender's own CPU time, which gives the cores other processes
used meanwhile; rounds in which that passed --max-other-cores in any window are left out (all kept if none is clean).

Reported per contender: samples/s, real (non-pad) tokens/s, peak RSS of its process, and useful-MFU = FLOPs on the
real tokens through the encoder (6 x non-embedding params per token + attention) per second / the matmul peak of
the precision it computes in (fp32 or bf16), measured in this run by large torch.matmul products. Every table is
printed with the CPU model and its bf16 features.

Shape limit: after the rounds, the matrix products of one encoder layer's training step (forward, and both gradients
of the backward) are timed at each contender's own shapes (its mean padded tokens per step x the model's hidden and
intermediate sizes) in the precision it computes in (benchlib.step_shape_rate). "shape %" is the contender's useful
FLOP rate over that rate: how close the whole step gets to the matrix products it cannot avoid, at the sizes it has.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (sets HF_HUB_OFFLINE and the import path of the product)
import numpy as np  # noqa: E402
import torch  # noqa: E402

# ----------------------------------------------------------------------------- contenders

TRAINER_B = {"kind": "trainer", "pad": benchlib.SEED_PAD, "bf16": False, "group": False}
TRAINER_C = {"kind": "trainer", "pad": None, "bf16": True, "group": True}
TRAINER_C_FP32 = {"kind": "trainer", "pad": None, "bf16": False, "group": True}
SETTINGS = ("mixed_precision", "pad_to_multiple_of", "num_workers", "fused_adamw")  # finetune_absa.py settings


def product(**changes) -> dict:
    """A product run: finetune_absa.py's defaults (whatever they are now) with `changes`: finetune_absa.py settings,
    or `patches` (names in PATCHES), `threads`, `env` (environment of the contender's process)."""
    spec = {"kind": "product", "settings": {}, "patches": []}
    for key, value in changes.items():
        if key in ("patches", "threads", "env"):
            spec[key] = value
        else:
            spec["settings"][key] = value
    return spec


def _unshared_collator(script):
    """One encoder pass per aspect, as before the shared-encoding default."""
    class OnePassPerAspect(script.AspectCollator):
        def __init__(self, tokenizer, pad_to_multiple_of=None, share_texts=True):
            super().__init__(tokenizer, pad_to_multiple_of, share_texts=False)
    script.AspectCollator = OnePassPerAspect


def _eager_attention(script):
    original = script.AbsaClassifier.from_encoder

    class Eager(script.AbsaClassifier):
        @classmethod
        def from_encoder(cls, *args, **kwargs):
            return original(*args, attn_implementation="eager", **kwargs)
    script.AbsaClassifier = Eager


def _keep_gradient_buffers(script):
    """zero_grad(set_to_none=False): gradients zeroed in place instead of allocated anew by every backward."""
    class KeepBuffers(torch.optim.AdamW):
        def zero_grad(self, set_to_none=True):
            super().zero_grad(set_to_none=False)
    script.torch.optim.AdamW = KeepBuffers


def _mmap_for_large_blocks(script):
    """Undo the product's keep_freed_memory (glibc's own allocator settings)."""
    import absa.training
    absa.training.keep_freed_memory = lambda: False


PATCHES = {"one pass per aspect": _unshared_collator, "eager attention": _eager_attention,
           "keep gradient buffers": _keep_gradient_buffers, "glibc defaults": _mmap_for_large_blocks}
# accelerate's own torch.compile (TorchDynamoPlugin from the environment): one compile per encoder layer class.
REGIONAL_COMPILE = {"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR", "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION": "True",
                    "ACCELERATE_DYNAMO_USE_DYNAMIC": "True"}

PRODUCT = product()
SETS = {
    "contenders": {"a": PRODUCT, "a_fp32": product(mixed_precision="no"), "b": TRAINER_B, "c": TRAINER_C,
                   "c_fp32": TRAINER_C_FP32},
    "defaults": {  # what each of the product's speed defaults is worth now: the defaults, then one thing undone
        "product defaults": PRODUCT,
        "- shared sentence encoding": product(patches=["one pass per aspect"]),
        "- bf16 autocast (fp32)": product(mixed_precision="no"),
        "- fused AdamW (for-loop)": product(fused_adamw=False),
        "- freed memory kept (glibc defaults)": product(patches=["glibc defaults"]),
    },
    "formats": {  # finetune_absa.py --input_format: only TD-BERT shares a sentence's encoder pass among its aspects
        "td_bert (default)": PRODUCT,
        "aspect_markers": product(input_format="aspect_markers"),
        "sentence_pair": product(input_format="sentence_pair"),
    },
    "levers": {
        "product defaults": PRODUCT,
        "+ frozen word embeddings": product(freeze_word_embeddings=True),
        "fp32": product(mixed_precision="no"),
        "fp32 + frozen word embeddings": product(mixed_precision="no", freeze_word_embeddings=True),
        "+ regional torch.compile": product(env=REGIONAL_COMPILE),
        "+ gradients zeroed in place": product(patches=["keep gradient buffers"]),
    },
    "levers_fp32": {  # where the step goes in fp32 (bf16 emulated, or --mixed_precision no): what each lever is worth
        "product defaults": PRODUCT,
        "- shared sentence encoding": product(patches=["one pass per aspect"]),
        "- freed memory kept (glibc defaults)": product(patches=["glibc defaults"]),
        "+ frozen word embeddings": product(freeze_word_embeddings=True),
        "+ regional torch.compile": product(env=REGIONAL_COMPILE),
    },
}


# ----------------------------------------------------------------------------- measuring inside a worker


def process_cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (/proc/stat), to see what other processes took."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Pacer:
    """Counts optimizer steps; at round boundaries reports the window just timed and waits for the parent."""

    def __init__(self, conn, warmup: int, per_round: int, rounds: int):
        self.conn, self.warmup, self.per_round, self.rounds = conn, warmup, per_round, rounds
        self.completed = 0
        self.dims = None
        self.pending = collections.deque()  # token counts of batches built but not yet trained on
        self._reset()

    def _reset(self):
        self.lengths, self.encoded, self.padded = [], [], 0
        self.started, self.cpu = time.perf_counter(), process_cpu_seconds()

    def batch(self, batch) -> None:
        """Record a train batch as it is built (accelerate's loader builds one ahead; `step_done` takes them in order).

        lengths: every example's real tokens (what an encoder pass per example computes, comparable across
        contenders); encoded: the real tokens that went through the encoder (fewer when a sentence's aspects
        share one pass), which the FLOPs and MFU count."""
        mask = batch["attention_mask"]
        rows = batch["sequence_index"] if "sequence_index" in batch else torch.arange(len(mask))
        encoded = mask.sum(dim=1)
        self.pending.append((encoded[rows].tolist(), encoded.tolist(), mask.numel()))

    def step_done(self) -> None:
        """Called after each optimizer step (and the loop's bookkeeping for it)."""
        lengths, encoded, padded = self.pending.popleft()
        self.lengths += lengths
        self.encoded += encoded
        self.padded += padded
        self.completed += 1
        counted = self.completed - self.warmup
        if counted < 0 or counted % self.per_round:
            return
        if counted == 0:
            self.conn.send({"kind": "ready", "rss_mib": benchlib.peak_rss_mib()})
        else:
            seconds = time.perf_counter() - self.started
            self.conn.send({"kind": "window", "seconds": seconds, "samples": len(self.lengths),
                            "own_cpu_seconds": process_cpu_seconds() - self.cpu,
                            "tokens": sum(self.lengths), "encoded_tokens": sum(self.encoded),
                            "padded_tokens": self.padded, "flops": benchlib.useful_flops(self.encoded, self.dims),
                            "rss_mib": benchlib.peak_rss_mib()})
        if self.conn.recv() == "finish":  # "go" for the next window, "finish" after the last one
            raise benchlib.StopRun
        self._reset()

    @property
    def total_steps(self) -> int:
        return self.warmup + self.per_round * self.rounds


def run_product(spec: dict, pacer: Pacer, workdir: str, model_path: str) -> dict:
    """`finetune_absa.main` itself (benchlib.run_finetune_absa), paced after every step, stopped after the last round."""
    import finetune_absa

    settings = finetune_absa.Settings(model_name_or_path=model_path, dataset=benchlib.DATASET,
                                      output_dir=workdir, overwrite_output_dir=True, learning_rate=5e-5,
                                      **spec["settings"])
    seen = {}

    def patch(script):
        for name in spec["patches"]:
            PATCHES[name](script)
        build = script.AbsaClassifier.from_encoder

        def from_encoder(*args, **kwargs):  # the model's size, for the FLOP count
            seen["model"] = model = build(*args, **kwargs)
            pacer.dims = benchlib.encoder_dimensions(model)
            return model
        script.AbsaClassifier = type("Counted", (script.AbsaClassifier,), {"from_encoder": staticmethod(from_encoder)})
        make = script.make_accelerator

        def make_accelerator(settings):  # the precision it computes in, for the MFU
            seen["accelerator"] = accelerator = make(settings)
            return accelerator
        script.make_accelerator = make_accelerator

    benchlib.run_finetune_absa(settings, lambda run, samples: pacer.step_done(), pacer.batch, patch)
    model = seen["model"]
    return {"precision": "bf16" if seen["accelerator"].mixed_precision == "bf16" else "fp32",
            "attention": model.config._attn_implementation,
            "optimizer": "fused AdamW" if settings.fused_adamw else "AdamW (default implementation)",
            "settings": {key: getattr(settings, key) for key in ("learning_rate", "per_device_batch_size",
                                                                 "mixed_precision", "pad_to_multiple_of",
                                                                 "group_by_length", "num_workers", "max_length")},
            "patches": spec["patches"]}


def run_trainer(spec: dict, pacer: Pacer, workdir: str, model_path: str) -> dict:
    """The seed recipe (b) or the best-practice Trainer (c) on the same train rows and model."""
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from absa.aspects import AspectCollator, encode_absa_splits
    from absa.encoders import load_tokenizer

    benchlib.quiet_libraries()
    splits = benchlib.laptop_splits()
    tokenizer = load_tokenizer(model_path)
    train = encode_absa_splits(splits, tokenizer, 128)["train"]
    collator = (benchlib.FixedPadCollator(tokenizer, spec["pad"]) if spec["pad"]
                else AspectCollator(tokenizer, share_texts=False))  # per-batch padding, one pass per example
    model = benchlib.trainer_model(model=model_path)
    pacer.dims = benchlib.encoder_dimensions(model)

    class Paced(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            pacer.step_done()

    class BenchTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, LengthGroupedSampler):
                # The product's epoch-0 generator (seed 42): the same batches as contender a.
                sampler.generator = torch.Generator().manual_seed(42)
            return sampler

        def training_step(self, model, inputs, num_items_in_batch=None):
            pacer.batch(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    args = benchlib.seed_training_arguments(workdir, bf16=spec["bf16"], group_by_length=spec["group"],
                                            max_steps=pacer.total_steps + 1)
    trainer = BenchTrainer(model=model, args=args, train_dataset=train, data_collator=collator,
                           processing_class=tokenizer, callbacks=[Paced()])
    try:
        trainer.train()
    except benchlib.StopRun:  # after the last round
        pass
    return {"precision": "bf16" if spec["bf16"] else "fp32", "attention": model.config._attn_implementation,
            "optimizer": str(args.optim), "padding": f"fixed {spec['pad']}" if spec["pad"] else "per batch",
            "sampling": args.train_sampling_strategy}


def worker_main(name: str, spec: dict, conn, options: dict, log_path: str) -> None:
    log = open(log_path, "w", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    torch.set_num_threads(spec.get("threads") or options["threads"])
    pacer = Pacer(conn, options["warmup_steps"], options["steps_per_round"], options["rounds"])
    try:
        with tempfile.TemporaryDirectory(prefix="bench_") as workdir:
            runner = run_product if spec["kind"] == "product" else run_trainer
            info = runner(spec, pacer, workdir, options["model"])
        conn.send({"kind": "done", "info": {**info, "threads": torch.get_num_threads(), "dims": pacer.dims}})
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which stops the benchmark
        traceback.print_exc()
        conn.send({"kind": "error", "error": f"{type(error).__name__}: {error}"})


# ----------------------------------------------------------------------------- the parent


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=sorted(SETS), default="contenders")
    parser.add_argument("--model", default=benchlib.MODEL, help="A local model folder (default: the embedded MiniLM).")
    parser.add_argument("--only", default=None, help="Comma-separated contender names of the set to run.")
    parser.add_argument("--warmup-steps", type=int, default=8)
    parser.add_argument("--steps-per-round", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--max-other-cores", type=float, default=0.1, help="A round counts only if other processes "
                        "used at most this many cores during each of its windows (from /proc/stat).")
    parser.add_argument("--max-ratio-spread", type=float, default=0.25, help="Flag a ratio whose interquartile "
                        "range over rounds is wider than this share of its median.")
    parser.add_argument("--output", default=None, help="JSON results (default bench/results/train_<set>.json).")
    parser.add_argument("--logs", default="runs/bench_logs", help="One log file per contender process.")
    return parser.parse_args()


def main() -> None:
    workers: dict = {}
    try:
        measure(parse_args(), workers)
    finally:
        for worker in workers.values():  # after an error: no contender process is left behind
            if worker["process"].is_alive():
                worker["process"].terminate()


def measure(options, workers: dict) -> None:
    os.environ["OMP_NUM_THREADS"] = str(options.threads)  # inherited by the contender processes
    torch.set_num_threads(options.threads)
    contenders = SETS[options.set]
    if options.only:
        contenders = {name: contenders[name] for name in options.only.split(",")}
    total_steps = options.warmup_steps + options.steps_per_round * options.rounds
    if total_steps + 1 > 2090 // 16:
        raise SystemExit(f"{total_steps} steps would pass the end of the first epoch (about 130 steps): an epoch "
                         "end evaluates and checkpoints inside the timed windows")
    command = benchlib.command_line()
    print(f"$ {command}", flush=True)
    env = benchlib.environment()
    print(f"{benchlib.cpu_line()}; {options.threads} threads; torch {env['torch']}, transformers "
          f"{env['transformers']}, accelerate {env['accelerate']}; {benchlib.load_line()}", flush=True)

    peaks = benchlib.matmul_peaks()
    print(f"matmul peaks (2048^3, {options.threads} threads): fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)

    context = multiprocessing.get_context("spawn")
    Path(options.logs).mkdir(parents=True, exist_ok=True)
    worker_options = {"model": options.model, "threads": options.threads, "warmup_steps": options.warmup_steps,
                      "steps_per_round": options.steps_per_round, "rounds": options.rounds}
    for index, (name, spec) in enumerate(contenders.items()):  # one at a time, so start-up does not overlap
        parent_end, child_end = context.Pipe()
        log_path = str(Path(options.logs) / f"train_{index:02d}.log")
        # Not a daemon: a contender may start DataLoader workers of its own. The parent ends it (finally below).
        process = context.Process(target=worker_main, args=(name, spec, child_end, worker_options, log_path))
        started = time.perf_counter()
        saved = dict(os.environ)
        os.environ.update(spec.get("env", {}))  # read by the new process at start-up (allocator settings)
        process.start()
        os.environ.clear()
        os.environ.update(saved)
        workers[name] = {"process": process, "conn": parent_end, "windows": [], "log": log_path}
        message = parent_end.recv()
        if message["kind"] != "ready":
            raise SystemExit(f"{name}: {message.get('error')} (log: {log_path})")
        workers[name]["startup_seconds"] = time.perf_counter() - started
        print(f"  ready: {name} ({workers[name]['startup_seconds']:.0f} s to load and run "
              f"{options.warmup_steps} warm-up steps)", flush=True)

    load_before = os.getloadavg()
    names, clean_rounds = list(workers), []
    for round_index in range(options.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            worker = workers[name]
            busy = busy_cpu_seconds()
            worker["conn"].send("go")
            message = worker["conn"].recv()
            if message["kind"] != "window":
                raise SystemExit(f"{name}: {message.get('error')} (log: {worker['log']})")
            # Cores' worth of CPU that other processes used during the window (this benchmark's parent idles).
            message["other_cores"] = max(0.0, busy_cpu_seconds() - busy - message["own_cpu_seconds"]) / message["seconds"]
            worker["windows"].append(message)
        clean = all(w["windows"][-1]["other_cores"] <= options.max_other_cores for w in workers.values())
        clean_rounds.append(clean)
        shown = ", ".join(f"{n} {w['windows'][-1]['samples'] / w['windows'][-1]['seconds']:.1f}"
                          for n, w in workers.items())
        worst = max(w["windows"][-1]["other_cores"] for w in workers.values())
        print(f"round {round_index + 1}/{options.rounds} samples/s: {shown}  [other processes up to {worst:.2f} "
              f"cores{'' if clean else ': DISTURBED'}; {benchlib.load_line()}]", flush=True)
    load_after = os.getloadavg()
    for name, worker in workers.items():
        worker["conn"].send("finish")
    for name, worker in workers.items():
        message = worker["conn"].recv()
        if message["kind"] != "done":
            raise SystemExit(f"{name}: {message.get('error')} (log: {worker['log']})")
        worker["info"] = message["info"]
        worker["process"].join(timeout=60)
    peaks_after = benchlib.matmul_peaks()
    peaks = {key: max(peaks[key], peaks_after[key]) for key in peaks}
    shape_limits = {}  # (padded tokens per step, precision) -> GFLOP/s of the step's own matrix products
    for name, worker in workers.items():
        precision = worker["info"]["precision"]
        tokens = round(sum(w["padded_tokens"] for w in worker["windows"]) / (options.steps_per_round * options.rounds))
        if (tokens, precision) not in shape_limits:
            native = precision == "fp32" or benchlib.bf16_native()
            shape_limits[tokens, precision] = benchlib.step_shape_rate(
                worker["info"]["dims"], tokens, torch.bfloat16 if precision == "bf16" else torch.float32,
                seconds=1.5 if native else 0.2)  # emulated bf16 is slow; a short look shows how slow
        worker["shape_limit"] = {"tokens_per_step": tokens, "gflops": shape_limits[tokens, precision]}
        print(f"shape limit of {name}: {tokens} padded tokens per step x hidden {worker['info']['dims']['hidden']} / "
              f"intermediate {worker['info']['dims']['intermediate']}, {precision}: "
              f"{shape_limits[tokens, precision]:.0f} GFLOP/s", flush=True)

    # Headline numbers from the rounds in which no other process took more than --max-other-cores during any
    # contender's window (every round holds the same batches for every length-grouped contender); all rounds if none.
    use = [i for i, clean in enumerate(clean_rounds) if clean] or list(range(len(clean_rounds)))
    rows = {}
    for name, worker in workers.items():
        windows = [worker["windows"][i] for i in use]
        seconds = sum(w["seconds"] for w in windows)
        samples = sum(w["samples"] for w in windows)
        precision = worker["info"]["precision"]
        rows[name] = {
            "samples_per_s": samples / seconds, "tokens_per_s": sum(w["tokens"] for w in windows) / seconds,
            "encoded_tokens_per_s": sum(w["encoded_tokens"] for w in windows) / seconds,
            "padded_tokens_per_s": sum(w["padded_tokens"] for w in windows) / seconds,
            "useful_gflops": sum(w["flops"] for w in windows) / seconds / 1e9,
            "useful_mfu": sum(w["flops"] for w in windows) / seconds / 1e9 / peaks[precision],
            "shape_limit_share": sum(w["flops"] for w in windows) / seconds / 1e9 / worker["shape_limit"]["gflops"],
            "shape_limit": worker["shape_limit"],
            "peak_rss_mib": max(w["rss_mib"] for w in worker["windows"]), "steps": options.steps_per_round * len(windows),
            "samples": samples, "seconds": seconds,
            "all_rounds_samples_per_s": [w["samples"] / w["seconds"] for w in worker["windows"]],
            "all_rounds_other_cores": [w["other_cores"] for w in worker["windows"]],
            "startup_seconds": worker["startup_seconds"], **worker["info"],
        }

    print(f"\n{len(use)} of {len(clean_rounds)} rounds used ({'undisturbed' if any(clean_rounds) else 'ALL DISTURBED'}: "
          f"other processes <= {options.max_other_cores} cores), {options.steps_per_round} steps of batch 16 each, "
          f"after {options.warmup_steps} warm-up steps; matmul peaks fp32 {peaks['fp32']:.0f} / bf16 "
          f"{peaks['bf16']:.0f} GFLOP/s; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after the rounds "
          f"(this benchmark's own {options.threads} threads included)")
    print("tokens/s: the real tokens of the examples trained on; encoded: the real tokens through the encoder (fewer "
          "when a sentence's aspects share one pass); MFU counts the encoded ones")
    print("MFU: of the 2048^3 matmul peak; shape %: of the step's own matrix products at its shapes (shape limit, "
          "GFLOP/s, at the padded tokens per step)")
    print(f"{'contender':42} {'samples/s':>9} {'tokens/s':>8} {'encoded':>8} {'prec':>5} {'GFLOP/s':>7} {'MFU':>6} "
          f"{'shape %':>7} {'limit':>6} {'tok/step':>8} {'RSS MiB':>8}")
    for name, row in rows.items():
        print(f"{name:42} {row['samples_per_s']:9.1f} {row['tokens_per_s']:8.0f} {row['encoded_tokens_per_s']:8.0f} "
              f"{row['precision']:>5} {row['useful_gflops']:7.0f} {row['useful_mfu']:6.1%} "
              f"{row['shape_limit_share']:7.1%} {row['shape_limit']['gflops']:6.0f} "
              f"{row['shape_limit']['tokens_per_step']:8d} {row['peak_rss_mib']:8.0f}")
    ratios = {}
    pairs = ([(a, o) for a in ("a", "a_fp32") if a in rows for o in ("b", "c", "c_fp32") if o in rows]
             or [(names[0], other) for other in names[1:]])
    print(f"\nratios: median of the {len(use)} per-round ratios [interquartile range] (extremes)")
    for reference, other in pairs:
        per_round = [rows[reference]["all_rounds_samples_per_s"][i] / rows[other]["all_rounds_samples_per_s"][i]
                     for i in use]
        low, median, high = (float(q) for q in np.quantile(per_round, [0.25, 0.5, 0.75]))
        unreadable = (high - low) > options.max_ratio_spread * median
        ratios[f"{reference}/{other}"] = {"median": median, "q25": low, "q75": high, "min": min(per_round),
                                          "max": max(per_round), "unreadable": unreadable,
                                          "ratio_of_totals": rows[reference]["samples_per_s"] / rows[other]["samples_per_s"]}
        print(f"({reference}) / ({other}) = {median:.2f}x [{low:.2f}-{high:.2f}] ({min(per_round):.2f}-"
              f"{max(per_round):.2f})" + ("  WARNING: the spread makes this ratio unreadable (noisy box?)"
                                         if unreadable else ""))
    print(benchlib.cpu_line())
    print(f"\n$ {command}")
    model_name = "" if options.model == benchlib.MODEL else "_" + Path(options.model).name
    output = Path(options.output or benchlib.ROOT / "bench" / "results" / f"train_{options.set}{model_name}.json")
    benchlib.write_results(output, {"command": command, "model": options.model, "environment": env,
                                    "peaks_gflops": peaks, "shape_limits_gflops": {
                                        f"{tokens} tokens {precision}": rate
                                        for (tokens, precision), rate in shape_limits.items()},
                                    "load_average_rounds": {"before": load_before, "after": load_after},
                                    "protocol": worker_options, "rounds_used": use, "clean_rounds": clean_rounds,
                                    "results": rows, "ratios": ratios})
    print(f"results in {os.path.relpath(output)}")


if __name__ == "__main__":
    main()
