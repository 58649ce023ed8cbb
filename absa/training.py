"""Around the training loop both scripts write out: the Accelerator, the run's state, the learning-rate schedule
in global optimizer steps, the weights' moving average, and several seeds."""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import GradientAccumulationPlugin, parse_flag_from_env, reduce, set_seed

from .checkpoints import release_gathered_weights
from .launch import (check_distributed_setup, check_shared_output_dir, end_run, keep_freed_memory,
                     resolve_mixed_precision)
from .reports import write_json
from .settings import TrainingSettings


def make_accelerator(settings: TrainingSettings) -> Accelerator:
    """The Accelerator, created before the model so FSDP can load weights on one rank only.

    `--mixed_precision auto` keeps an accelerate config's choice; without one it is bf16 autocast where bf16 is
    native: on such CPUs MiniLM trains faster than in fp32 at the same validation loss (bench/README.md).
    """
    mixed_precision = settings.mixed_precision
    if mixed_precision == "auto" and os.environ.get("ACCELERATE_MIXED_PRECISION"):
        mixed_precision = None  # launched with an accelerate config: its choice
    elif mixed_precision == "auto":  # (not PartialState().device: a state made before the Accelerator misses --cpu)
        on_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        mixed_precision = resolve_mixed_precision("auto", "cpu" if on_cpu else "cuda")
    # Under FSDP each micro-batch's gradient is reduce-scattered at once (sync_each_batch): accelerate's default
    # (no_sync) keeps the whole model's gradient unsharded on every GPU until the window's last micro-batch, +2 B per
    # parameter in bf16 (19.9 GiB per GPU for XLM-R XXL). DDP holds full gradients anyway and keeps no_sync.
    accumulation = GradientAccumulationPlugin(num_steps=settings.gradient_accumulation_steps,
                                              sync_each_batch=parse_flag_from_env("ACCELERATE_USE_FSDP"))
    accelerator = Accelerator(mixed_precision=mixed_precision, log_with=settings.report_to,
                              gradient_accumulation_plugin=accumulation, project_dir=settings.output_dir)
    check_distributed_setup(accelerator)
    check_shared_output_dir(accelerator, settings.output_dir)
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING, force=True)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is too much
    set_seed(settings.seed)
    return accelerator


@dataclass
class RunState:
    """Where the run is, saved in every checkpoint (`accelerator.register_for_checkpointing`). The position counts
    examples of the epoch's seeded order and global optimizer steps, which do not depend on the number of processes
    or the batch size, so a run resumes on any number of processes."""

    epoch: int = 0  # epochs finished
    examples_in_epoch: int = 0  # examples of the epoch's seeded order trained on, all processes together
    epoch_grouping: list = field(default_factory=list)  # [batch size, group_by_length] the epoch's order was made with
    step: int = 0  # optimizer steps, global
    total_steps: int = 0  # the schedule's last step, as planned at the last (re)start
    decay_from: list = field(default_factory=list)  # [step, scale] where a re-planned decay began
    train_samples: int = 0
    train_seconds: float = 0.0  # training only: evaluation and checkpoint time are not counted
    train_loss_sum: float = 0.0  # since the last evaluation, per process (the mean over processes once folded)
    train_loss_batches: int = 0  # per process
    history: list = field(default_factory=list)  # one row per evaluation
    best: float | None = None
    best_step: int | None = None
    evaluations_without_improvement: int = 0
    # What the position belongs to: a checkpoint of another seed or other training data is refused.
    seed: int | None = None
    train_data: str = ""  # the train sampler's fingerprint
    num_processes: int = 1  # and batch size: what the run last trained with, for the resume message
    per_device_batch_size: int = 0
    selection: list = field(default_factory=list)  # [metric_for_best_model, select_on_test] `best` was chosen by
    parameter_groups: list = field(default_factory=list)  # each optimizer group's tensor count: what its state fits
    peak_learning_rates: list = field(default_factory=list)  # each group's peak rate: the recipe it trains at
    ema_decay: float = 0.0  # the weights' moving average evaluated and kept (0: none): what `best` is a value of
    averaged_steps: int = 0  # optimizer steps in the average so far

    def __post_init__(self):
        self._loss_sum = None  # on the device: read once per evaluation or checkpoint, not once per step
        self._clock = time.perf_counter()

    def restart_clock(self) -> None:
        self._clock = time.perf_counter()

    def batch_done(self, loss: torch.Tensor, samples: int, epoch_examples: int | None = None) -> None:
        """Count one trained batch: its loss, its samples (all processes) and the time since the last one.

        On several processes Accelerate fills the epoch's last batches with examples trained on already; with the
        epoch's size given, only its examples are counted (the fill would inflate samples per second)."""
        if epoch_examples is not None:
            samples = max(0, min(samples, epoch_examples - self.examples_in_epoch))
        self._loss_sum = loss.detach() if self._loss_sum is None else self._loss_sum + loss.detach()
        self.train_loss_batches += 1
        self.examples_in_epoch += samples
        self.train_samples += samples
        now = time.perf_counter()
        self.train_seconds += now - self._clock
        self._clock = now

    def take_train_loss(self) -> float:
        """The mean training loss per batch since the last call, over all processes (a collective)."""
        mean = self._fold_train_loss() / self.train_loss_batches
        self.train_loss_sum, self.train_loss_batches = 0.0, 0
        return mean

    def _fold_train_loss(self) -> float:
        # Each process's sum becomes the mean over processes (the same on all), which a resumed run on any number
        # of processes goes on adding to.
        local = torch.tensor(self.train_loss_sum, dtype=torch.float32, device=PartialState().device)
        if self._loss_sum is not None:
            local = local + self._loss_sum.float()
        self.train_loss_sum, self._loss_sum = reduce(local, "mean").item(), None
        return self.train_loss_sum

    def state_dict(self) -> dict:
        # `save_state` asks every process for this and writes the main process's: the loss sum is folded first.
        self._fold_train_loss()
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
        self._loss_sum = None


def optimizer_steps(settings: TrainingSettings, train_examples: int, num_processes: int, run: RunState) -> int:
    """The run's last optimizer step: the steps taken, then those of the rest of this epoch and of the epochs left
    at this number of processes and batch size (an epoch's last, shorter accumulation window is a step too)."""
    def steps(examples: int) -> int:
        batches = math.ceil(math.ceil(examples / settings.per_device_batch_size) / num_processes)
        return math.ceil(batches / settings.gradient_accumulation_steps)

    epochs_left = settings.num_epochs - run.epoch - 1
    total = run.step + (steps(train_examples - run.examples_in_epoch) + epochs_left * steps(train_examples)
                        if epochs_left >= 0 else 0)
    return min(total, settings.max_steps) if settings.max_steps else total


def linear_schedule(optimizer, learning_rate: float | list[float], warmup_steps: int, total_steps: int,
                    run: RunState) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' get_linear_schedule_with_warmup, placed at the run's global optimizer step `run.step`.

    `learning_rate`: the peak rate, or each parameter group's peak rate in the optimizer's group order.

    Rebuilt from `run.step` on resume, so it is where it was on any number of processes. A run resumed with
    another number of steps ahead decays from the learning rate it had to 0 at its new last step (no jump). A run
    whose schedule had ended and is given more steps follows the schedule planned for its new last step, or every
    step it is given would be at learning rate 0.
    """
    if run.total_steps and run.step >= run.total_steps and total_steps > run.step:
        run.decay_from = []  # the old plan is spent: the new one from the start
    elif run.total_steps not in (0, total_steps) and run.step > warmup_steps:
        run.decay_from = [run.step, linear_scale(run.step, warmup_steps, run.total_steps, run.decay_from)]
    run.total_steps, decay_from = total_steps, run.decay_from
    peaks = learning_rate if isinstance(learning_rate, list) else [learning_rate] * len(optimizer.param_groups)
    if len(peaks) != len(optimizer.param_groups):
        raise ValueError(f"{len(peaks)} peak learning rates for {len(optimizer.param_groups)} parameter groups")
    for group, peak in zip(optimizer.param_groups, peaks):  # an FSDP2 (DCP) checkpoint's optimizer does not bring
        group["initial_lr"] = peak  # the peak back
    run.peak_learning_rates = list(peaks)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_scale(step, warmup_steps, total_steps, decay_from), last_epoch=run.step - 1)


def linear_scale(step: int, warmup_steps: int, total_steps: int, decay_from: list) -> float:
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    start, scale = decay_from or (warmup_steps, 1.0)
    return scale * max(0.0, (total_steps - step) / max(1, total_steps - start))


# The moving average of the weights lives in the optimizer's state, beside AdamW's moments: a checkpoint keeps it
# and a resumed run (sharded under FSDP2, on any number of processes) gets it back the way it gets the moments.
AVERAGE = "ema"


def average_weights(optimizer, decay: float, run: RunState) -> None:
    """After an optimizer step (not one fp16's scaler skipped): each trained weight's exponential moving average
    moves towards it.

    Until the average spans 1 / (1 - decay) steps it is the plain mean of the weights of every step averaged so far
    (`run.averaged_steps`), so the weights it started from do not linger in it (the bias an average started at them
    would have)."""
    weight = max(1 - decay, 1 / (run.averaged_steps + 1))
    with torch.no_grad():
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                state = optimizer.state[parameter]
                if AVERAGE in state:
                    state[AVERAGE].lerp_(parameter.detach(), weight)
                else:
                    state[AVERAGE] = parameter.detach().clone()
    run.averaged_steps += 1


def make_room_for_the_average(optimizer) -> None:
    """Before `load_state` of a checkpoint that holds the average. FSDP2's sharded (DCP) load reads only the state
    the fresh optimizer already has, and would leave the average out, silently: each place is made first, AdamW's
    as torch makes them for that load (a step at learning rate 0), then the average's."""
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper would step fp16's scaler too
    _init_optim_state(optimizer)
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            optimizer.state[parameter][AVERAGE] = parameter.detach().clone()


@contextmanager
def averaged_weights(model, optimizer, use: bool = True):
    """The moving average in place of the trained weights (evaluate, save the best model), then the trained weights
    back, exactly: the two are swapped in place, so a sharded model's shards stay where they are."""
    pairs = [(parameter.detach(), optimizer.state[parameter][AVERAGE]) for group in optimizer.param_groups
             for parameter in group["params"] if use and AVERAGE in optimizer.state[parameter]]

    def swap():
        if not pairs:
            return
        release_gathered_weights(model)  # FSDP2: the next forward gathers the swapped-in shards
        with torch.no_grad():
            for weight, average in pairs:
                trained = weight.clone()
                weight.copy_(average)
                average.copy_(trained)

    swap()
    try:
        yield
    finally:
        swap()


def finish_run(accelerator: Accelerator) -> None:
    """Every process is done with this run; trackers are closed. Not `accelerator.end_training()`: that also ends
    the process group, which the next of several `--seeds` still needs (`run_for_seeds` ends it, once)."""
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:
        tracker.finish()


def run_for_seeds(main, settings: TrainingSettings, keys) -> list[dict]:
    """`main(settings)` once, or once per `--seeds` value in output_dir/seed_N with mean and range of `keys`; then
    the process group is torn down."""
    if not settings.seeds:
        runs = [main(settings)]
    else:
        # seeds=[seed]: one seed of several (`prepare_output_dir` lets one without a checkpoint start)
        runs = [main(replace(settings, seed=seed, seeds=[seed],
                             output_dir=str(Path(settings.output_dir) / f"seed_{seed}"))) for seed in settings.seeds]
        summary = {}
        for key in keys:  # the keys a task reports (seqcls: accuracy or pearson, ...)
            values = [run[key] for run in runs if run.get(key) is not None]
            if values:
                summary[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                                "values": values}
        if PartialState().is_main_process:  # the Accelerator exists by now
            write_json(Path(settings.output_dir) / "seeds_summary.json", {"seeds": settings.seeds, **summary})
            for key, values in summary.items():
                print(f"{key}: mean {values['mean']:.4f} (min {values['min']:.4f}, max {values['max']:.4f}) over "
                      f"seeds {settings.seeds}")
    end_run()
    return runs
