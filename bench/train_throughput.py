"""Training throughput: finetune_absa.py's loop against the seed tutorial's Trainer recipe, side by side, one run.

    python bench/train_throughput.py                      # (a) product vs (b) seed recipe vs (c) best-practice Trainer
    python bench/train_throughput.py --set levers         # what each speed lever of the product loop is worth
    python bench/train_throughput.py --set levers2        # torch.compile and allocator levers
    python bench/train_throughput.py --set contenders --rounds 10 --steps-per-round 6 --warmup-steps 10

Model: the embedded MiniLM (BERT, 6 layers, hidden 384); data: SemEval-2014 Laptop14 train (the 2095 rows left
after finetune_absa.py carves 10 % for validation, tokenized by the product, max_length 128); batch 16.

Contenders (each in its own process, started one after the other; all use the same thread count):
  a       finetune_absa.py with its defaults, through the product's own code: encode_absa_splits, make_dataloaders,
          AbsaClassifier, make_optimizer, make_scheduler, make_accelerator and `absa.training.fit` itself. The only
          addition is a wrapper around the train loader that pauses the loop between measuring rounds. Defaults:
          --mixed_precision auto (bf16 autocast on this CPU: AVX512-BF16), fused AdamW, length-grouped batches,
          and the aspects of one sentence encoded once per batch (AspectCollator(share_texts=True)).
  a_fp32  a with --mixed_precision no.
  b       the seed recipe: transformers.Trainer, every text padded to 100 tokens, fp32, random order, the same
          TD-BERT model (AbsaClassifier) fed by a fixed-padding collator.
  c       the best-practice Trainer: per-batch padding, train_sampling_strategy="group_by_length", bf16=True.
  c_fp32  c in fp32.
The length-grouped Trainers (c, c_fp32) and the levers without shared sentence encoding draw the SAME batches: the
Trainer's LengthGroupedSampler gets the generator the product's sampler uses for epoch 0 (seed 42). The product's
defaults shuffle whole sentences (their aspects side by side, encoded once), so their batches hold the same number
of examples from the same length-grouped shuffle, but not the same examples; tokens/s shows the work per example.

Protocol: every contender first runs --warmup-steps optimizer steps and then waits. The parent then runs
--rounds rounds; in each, the contenders take turns (the order rotates every round) to run --steps-per-round
optimizer steps while the others sleep. A window is timed from the end of one optimizer step to the end of the
k-th next, so it holds everything the loop does per step: fetching and collating the batch, forward, backward,
clipping, optimizer, scheduler, and the loop's own bookkeeping. Nothing runs concurrently within this benchmark.
The machine is shared: for every window the parent reads /proc/stat and subtracts the contender's own CPU time, which
gives the cores other processes used meanwhile. Headline numbers use only the rounds in which that stayed at or under
--max-other-cores (0.1) in every window; the per-round numbers of all rounds are in the JSON results.

Reported per contender: samples/s, real (non-pad) tokens/s, peak RSS of its process, and useful-MFU = FLOPs on
the real tokens (6 x non-embedding params per token + attention 12 x layers x hidden x L^2 per example) per
second / the matmul peak of the precision it computes in (fp32 or bf16), measured in this run by large
torch.matmul products with the same thread count.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402  (sets HF_HUB_OFFLINE and the import path of the product)
import torch  # noqa: E402

# ----------------------------------------------------------------------------- contenders

TRAINER_B = {"kind": "trainer", "pad": benchlib.SEED_PAD, "bf16": False, "group": False}
TRAINER_C = {"kind": "trainer", "pad": None, "bf16": True, "group": True}
TRAINER_C_FP32 = {"kind": "trainer", "pad": None, "bf16": False, "group": True}
SETTINGS = ("mixed_precision", "pad_to_multiple_of", "num_workers", "fused_adamw")  # finetune_absa.py settings


def product(base: dict | None = None, **changes) -> dict:
    """A product run: `base` (default: finetune_absa.py's defaults, whatever they are now) with `changes`.
    finetune_absa.py settings go to its Settings; the rest are this bench's switches (optim, attn, compile,
    threads, share_texts, env)."""
    spec = {"kind": "product", **copy.deepcopy(base or {})}
    spec.setdefault("settings", {})
    for key, value in changes.items():
        (spec["settings"] if key in SETTINGS else spec)[key] = value
    return spec


PRODUCT = product()
# The product before the levers: fp32, for-loop AdamW, SDPA, one encoder pass per aspect.
BEFORE_LEVERS = {"settings": {"mixed_precision": "no"}, "optim": "forloop", "attn": "sdpa", "compile": False,
                 "threads": None, "share_texts": False}


def lever(**changes) -> dict:
    """A product run with explicit settings, independent of the product's current defaults."""
    return product(BEFORE_LEVERS, **changes)


SETS = {
    "contenders": {"a": PRODUCT, "a_fp32": product(mixed_precision="no"), "b": TRAINER_B, "c": TRAINER_C,
                   "c_fp32": TRAINER_C_FP32},
    "defaults": {  # what each of the product's speed defaults is worth now: the defaults, then one thing undone
        "product defaults": PRODUCT,
        "- shared sentence encoding": product(share_texts=False),
        "- bf16 autocast (fp32)": product(mixed_precision="no"),
        "- fused AdamW (for-loop)": product(fused_adamw=False),
        "+ eager attention": product(attn="eager"),
        "+ torch.compile dynamic": product(compile=True),
    },
    "levers": {
        "fp32, for-loop AdamW (product at HEAD)": lever(),
        "fp32, foreach AdamW": lever(optim="foreach"),
        "fp32, fused AdamW": lever(optim="fused"),
        "bf16 autocast, for-loop AdamW": lever(mixed_precision="bf16"),
        "bf16 autocast, fused AdamW": lever(mixed_precision="bf16", optim="fused"),
        "bf16, fused, eager attention": lever(mixed_precision="bf16", optim="fused", attn="eager"),
        "bf16, fused, pad_to_multiple_of 8": lever(mixed_precision="bf16", optim="fused", pad_to_multiple_of=8),
        "bf16, fused, DataLoader worker": lever(mixed_precision="bf16", optim="fused", num_workers=1),
        "bf16, fused, 1 thread": lever(mixed_precision="bf16", optim="fused", threads=1),
    },
    "levers2": {  # in a second run: at most ~10 processes of ~1.2 GB each at once
        "bf16 autocast, fused AdamW": lever(mixed_precision="bf16", optim="fused"),
        "bf16, fused, torch.compile dynamic": lever(mixed_precision="bf16", optim="fused", compile=True),
        # Allocator: the word-embedding gradient (30522 x 384 fp32, 47 MB) is freed by zero_grad(set_to_none=True)
        # and allocated again every step; glibc serves it by mmap, so each step page-faults it in again.
        "bf16, fused, THP_MEM_ALLOC_ENABLE=1": lever(mixed_precision="bf16", optim="fused",
                                                     env={"THP_MEM_ALLOC_ENABLE": "1"}),
        "bf16, fused, glibc malloc without mmap": lever(mixed_precision="bf16", optim="fused", env={
            "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824"}),
    },
}
SETS["all"] = {**SETS["contenders"], **SETS["levers"], **SETS["levers2"]}


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
        self._reset()

    def _reset(self):
        self.lengths, self.encoded, self.padded = [], [], 0
        self.started, self.cpu = time.perf_counter(), process_cpu_seconds()

    def batch(self, batch) -> None:
        """Record the batch the next optimizer step trains on.

        lengths: every example's real tokens (what an encoder pass per example computes, comparable across
        contenders); encoded: the real tokens that went through the encoder (fewer when a sentence's aspects
        share one pass), which the FLOPs and MFU count."""
        mask = batch["attention_mask"]
        rows = batch["sequence_index"] if "sequence_index" in batch else torch.arange(len(mask))
        encoded = mask.sum(dim=1)
        self.lengths.extend(encoded[rows].tolist())
        self.encoded.extend(encoded.tolist())
        self.padded += mask.numel()

    def step_done(self) -> None:
        """Called after each optimizer step (and the loop's bookkeeping for it)."""
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
        message = self.conn.recv()  # "go" for the next window, "finish" after the last one
        if message == "finish":
            self.warmup = 10 ** 9  # the run winds up unmeasured
        self._reset()

    @property
    def total_steps(self) -> int:
        return self.warmup + self.per_round * self.rounds


class PacedLoader:
    """The product's prepared train loader, pausing before each fetch that follows a completed optimizer step."""

    def __init__(self, loader, pacer: Pacer):
        self.loader, self.pacer = loader, pacer

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        iterator, fetched = iter(self.loader), 0
        while True:
            if fetched:
                self.pacer.step_done()  # fit() asks for the next batch only once the previous step is done
            try:
                batch = next(iterator)
            except StopIteration:
                return
            fetched += 1
            self.pacer.batch(batch)
            yield batch


def rebuild_optimizer(optimizer, implementation: str):
    """The product's AdamW (same groups, decay, lr) with an explicit implementation: forloop / foreach / fused."""
    flags = {"forloop": {"foreach": False, "fused": False}, "foreach": {"foreach": True, "fused": False},
             "fused": {"foreach": False, "fused": True}}[implementation]
    groups = [{"params": group["params"], "weight_decay": group["weight_decay"]} for group in optimizer.param_groups]
    defaults = optimizer.defaults
    return torch.optim.AdamW(groups, lr=defaults["lr"], betas=defaults["betas"], eps=defaults["eps"], **flags)


def run_product(spec: dict, pacer: Pacer, workdir: str) -> dict:
    """finetune_absa.main up to `fit`, step for step (see finetune_absa.py), with the pacing loader."""
    import finetune_absa
    from absa.aspects import AspectCollator, encode_absa_splits
    from absa.data import load_absa_splits
    from absa.batches import make_dataloaders
    from absa.training import (check_settings, clear_output_dir, fit, make_accelerator,
                           make_optimizer, make_scheduler, prepare_output_dir)
    from absa.metrics import single_label_metrics
    from absa.model import AbsaClassifier, load_tokenizer

    settings = finetune_absa.Settings(model_name_or_path=benchlib.MODEL, dataset=benchlib.DATASET,
                                      output_dir=workdir, overwrite_output_dir=True,
                                      max_steps=pacer.total_steps + 1, **spec.get("settings", {}))
    check_settings(settings, finetune_absa.METRICS)
    output_dir = prepare_output_dir(settings)
    accelerator = make_accelerator(settings)
    benchlib.quiet_libraries()
    splits = load_absa_splits(settings.dataset, label_names=settings.label_names,
                              validation_fraction=settings.validation_fraction, seed=settings.seed)
    tokenizer = load_tokenizer(settings.model_name_or_path)
    features = encode_absa_splits(splits, tokenizer, settings.max_length)
    collator = AspectCollator(tokenizer, settings.pad_to_multiple_of, share_texts=spec.get("share_texts", True))
    loaders = make_dataloaders(features, collator, settings)
    clear_output_dir(accelerator, output_dir, resuming=False)

    load_kwargs = {"attn_implementation": spec["attn"]} if spec.get("attn") else {}
    model = AbsaClassifier.from_encoder(settings.model_name_or_path, settings.label_names, settings.pooling,
                                        **load_kwargs)
    pacer.dims = benchlib.encoder_dimensions(model)
    optimizer = make_optimizer(model, settings)
    if spec.get("optim"):
        optimizer = rebuild_optimizer(optimizer, spec["optim"])
    if spec.get("compile"):
        model = torch.compile(model, dynamic=True)
    train_loader, validation_loader = accelerator.prepare(loaders["train"], loaders["validation"])
    scheduler = make_scheduler(optimizer, settings, train_loader, accelerator)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def compute_metrics(logits, labels):
        return single_label_metrics(logits, labels, settings.label_names)

    fit(accelerator, model, optimizer, scheduler, PacedLoader(train_loader, pacer), validation_loader,
        compute_metrics, settings, tokenizer,
        compute_loss=lambda logits, labels: torch.nn.functional.cross_entropy(logits.float(), labels))
    inner = optimizer.optimizer
    return {"precision": accelerator.mixed_precision if accelerator.mixed_precision != "no" else "fp32",
            "attention": accelerator.unwrap_model(model).config._attn_implementation,
            "optimizer": ("fused" if inner.defaults.get("fused") else "foreach" if inner.defaults.get("foreach")
                          else "for-loop" if inner.defaults.get("foreach") is False else "default (for-loop on CPU)"),
            "settings": {key: getattr(settings, key) for key in ("learning_rate", "per_device_batch_size",
                                                                 "mixed_precision", "pad_to_multiple_of",
                                                                 "group_by_length", "num_workers", "max_length")}}


def run_trainer(spec: dict, pacer: Pacer, workdir: str) -> dict:
    """The seed recipe (b) or the best-practice Trainer (c) on the same train rows and model."""
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_pt_utils import LengthGroupedSampler
    from absa.aspects import AspectCollator, encode_absa_splits
    from absa.model import load_tokenizer

    benchlib.quiet_libraries()
    splits = benchlib.laptop_splits()
    tokenizer = load_tokenizer(benchlib.MODEL)
    train = encode_absa_splits(splits, tokenizer, 128)["train"]
    collator = (benchlib.FixedPadCollator(tokenizer, spec["pad"]) if spec["pad"]
                else AspectCollator(tokenizer, share_texts=False))  # per-batch padding, one pass per example
    model = benchlib.trainer_model()
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
                                            max_steps=pacer.total_steps)
    trainer = BenchTrainer(model=model, args=args, train_dataset=train, data_collator=collator,
                           processing_class=tokenizer, callbacks=[Paced()])
    trainer.train()
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
            info = runner(spec, pacer, workdir)
        conn.send({"kind": "done", "info": {**info, "threads": torch.get_num_threads()}})
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which stops the benchmark
        traceback.print_exc()
        conn.send({"kind": "error", "error": f"{type(error).__name__}: {error}"})


# ----------------------------------------------------------------------------- the parent


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=sorted(SETS), default="contenders")
    parser.add_argument("--only", default=None, help="Comma-separated contender names of the set to run.")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--steps-per-round", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--max-other-cores", type=float, default=0.1, help="A round counts only if other processes "
                        "used at most this many cores during each of its windows (from /proc/stat).")
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
    if total_steps + 1 > 2095 // 16:
        raise SystemExit(f"{total_steps} steps would pass the end of the first epoch (131 steps): an epoch end "
                         "evaluates and checkpoints inside the timed windows")
    command = benchlib.command_line()
    print(f"$ {command}", flush=True)
    env = benchlib.environment()
    print(f"{env['cpu']}, {env['cores']} cores, {options.threads} threads; torch {env['torch']}, transformers "
          f"{env['transformers']}, accelerate {env['accelerate']}; {benchlib.load_line()}", flush=True)

    peaks = {"fp32": benchlib.matmul_peak(torch.float32), "bf16": benchlib.matmul_peak(torch.bfloat16)}
    print(f"matmul peaks (2048^3, {options.threads} threads): fp32 {peaks['fp32']:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16']:.0f} GFLOP/s", flush=True)

    context = multiprocessing.get_context("spawn")
    Path(options.logs).mkdir(parents=True, exist_ok=True)
    worker_options = {"threads": options.threads, "warmup_steps": options.warmup_steps,
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
    peaks_after = {"fp32": benchlib.matmul_peak(torch.float32), "bf16": benchlib.matmul_peak(torch.bfloat16)}
    peaks = {key: max(peaks[key], peaks_after[key]) for key in peaks}

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
    print(f"{'contender':42} {'samples/s':>9} {'tokens/s':>8} {'encoded':>8} {'prec':>5} {'MFU':>6} {'RSS MiB':>8}")
    for name, row in rows.items():
        print(f"{name:42} {row['samples_per_s']:9.1f} {row['tokens_per_s']:8.0f} {row['encoded_tokens_per_s']:8.0f} "
              f"{row['precision']:>5} {row['useful_mfu']:6.1%} {row['peak_rss_mib']:8.0f}")
    ratios = {}
    pairs = ([(a, o) for a in ("a", "a_fp32") if a in rows for o in ("b", "c", "c_fp32") if o in rows]
             or [(names[0], other) for other in names[1:]])
    for reference, other in pairs:
        per_round = [rows[reference]["all_rounds_samples_per_s"][i] / rows[other]["all_rounds_samples_per_s"][i]
                     for i in use]
        ratios[f"{reference}/{other}"] = {"ratio": rows[reference]["samples_per_s"] / rows[other]["samples_per_s"],
                                          "per_round_min": min(per_round), "per_round_max": max(per_round)}
        print(f"({reference})/({other}) = {ratios[f'{reference}/{other}']['ratio']:.2f}x (per round {min(per_round):.2f}"
              f"-{max(per_round):.2f})")
    print(f"\n$ {command}")
    output = Path(options.output or benchlib.ROOT / "bench" / "results" / f"train_{options.set}.json")
    benchlib.write_results(output, {"command": command, "environment": env, "peaks_gflops": peaks,
                                    "load_average_rounds": {"before": load_before, "after": load_after},
                                    "protocol": worker_options, "rounds_used": use, "clean_rounds": clean_rounds,
                                    "results": rows, "ratios": ratios})
    print(f"results in {os.path.relpath(output)}")


if __name__ == "__main__":
    main()
