"""The run folder: refusing to overwrite a run, checkpoints and their rotation, resuming, and the best model.

Every folder is written under a temporary name and renamed into place, so a crash never leaves one half-written.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from .launch import decided_by_main

BEST_MODEL = "best_model"
CHECKPOINTS = "checkpoints"


def prepare_output_dir(accelerator: Accelerator, settings) -> tuple[Path, str | None]:
    """The run folder and the checkpoint to resume from (None: start afresh), decided on the main process: every
    process resumes from the same checkpoint, or stops with the same message."""
    output_dir = Path(settings.output_dir)
    return output_dir, decided_by_main(accelerator, find_resume_checkpoint, output_dir, settings)


def find_resume_checkpoint(output_dir: Path, settings) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names; refuses to start over a run unless asked, or over the
    model the run starts from. First puts back a best model that a crash left half-replaced."""
    recover_folder(output_dir / BEST_MODEL)
    holds_run = (output_dir / "results.json").exists() or (output_dir / CHECKPOINTS).exists()
    checkpoint = None
    if settings.resume_from_checkpoint == "latest" and settings.seeds and not checkpoints_in(output_dir) \
            and not (output_dir / "results.json").exists():  # one seed of several that had not begun
        print(f"{output_dir}: no checkpoint yet, this seed starts from the beginning")
    elif settings.resume_from_checkpoint:
        checkpoint = str(find_checkpoint(output_dir, settings.resume_from_checkpoint))
        if not own_checkpoint(output_dir, checkpoint) and holds_run and not settings.overwrite_output_dir:
            raise SystemExit(f"{output_dir} already holds a run, and {checkpoint} is not one of its checkpoints; "
                             "pass --overwrite_output_dir to replace that run, or give another --output_dir")
    elif holds_run and not settings.overwrite_output_dir:
        raise SystemExit(f"{output_dir} already holds a run; pass --overwrite_output_dir to replace it, or "
                         "--resume_from_checkpoint latest to continue it")
    model = Path(settings.model_name_or_path).resolve()
    if not (checkpoint and own_checkpoint(output_dir, checkpoint)) and any(
            model == path or path in model.parents for path in map(Path.resolve, previous_run(output_dir))):
        raise SystemExit(f"--model_name_or_path {settings.model_name_or_path} is in what --overwrite_output_dir "
                         f"removes from {output_dir} before the model is read; copy it out of there first, or give "
                         "another --output_dir")
    return checkpoint


def previous_run(output_dir: Path) -> list[Path]:
    """What a run that starts over in output_dir removes first."""
    return [output_dir / name for name in (CHECKPOINTS, BEST_MODEL, "results.json", "metrics.jsonl")]


def own_checkpoint(output_dir: Path, checkpoint: str | Path) -> bool:
    """Whether `checkpoint` is one of output_dir's (not another run's, continued in output_dir)."""
    return Path(checkpoint).resolve().parent == (output_dir / CHECKPOINTS).resolve()


def checkpoints_in(output_dir: Path) -> list[Path]:
    """The finished checkpoints of a run, oldest first."""
    return sorted((output_dir / CHECKPOINTS).glob("step_*[0-9]"))


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


def check_resume(checkpoint: str | None, settings, train_order) -> None:
    """Refuse, before the model loads, a checkpoint whose position means nothing here: another seed, other
    training data, another selection metric or weight average, or a checkpoint of an earlier version that counted
    batches."""
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
    # With --ema_decay the best model and `best` are of the weights' moving average, which the checkpoint keeps.
    ema_decay, saved_decay = getattr(settings, "ema_decay", 0.0), saved.get("ema_decay", 0.0)
    if saved_decay != ema_decay:
        raise SystemExit(f"{checkpoint} was trained with --ema_decay {saved_decay}, not {ema_decay}: resume it with "
                         f"--ema_decay {saved_decay}, or start over with --overwrite_output_dir")
    # Nothing left to train and nothing evaluated yet: there would be no best model to test, only one a killed run
    # may have left after this checkpoint.
    ended = (settings.max_steps and saved["step"] >= settings.max_steps) or saved["epoch"] >= settings.num_epochs
    if ended and saved["best_step"] is None:
        raise SystemExit(f"{checkpoint} is at step {saved['step']} (epoch {saved['epoch'] + 1}), where this run "
                         f"stops (--max_steps {settings.max_steps}, --num_epochs {settings.num_epochs}), and has no "
                         "evaluation yet: resume it with more steps or epochs")


def check_parameter_groups(checkpoint: str, optimizer) -> None:
    """Refuse, before its optimizer state is loaded, a checkpoint whose optimizer had other parameter groups (another
    --layer_lr_decay or --freeze_word_embeddings: torch would stop inside load_state with a traceback) or other peak
    learning rates (another --learning_rate, or a default that changed since: the rest of the run would silently
    train at another rate than its first part). `optimizer` is fresh: each group's rate is its peak."""
    saved = torch.load(Path(checkpoint) / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=False)
    now = [len(group["params"]) for group in optimizer.param_groups]
    if saved.get("parameter_groups") and saved["parameter_groups"] != now:
        raise SystemExit(f"{checkpoint}: its optimizer has parameter groups of {saved['parameter_groups']} tensors, "
                         f"these settings make {now}: resume it with the --layer_lr_decay and "
                         "--freeze_word_embeddings it was trained with, or start over with --overwrite_output_dir")
    peaks, rates = saved.get("peak_learning_rates"), [group["lr"] for group in optimizer.param_groups]
    if not peaks and (Path(checkpoint) / "optimizer.bin").is_file():  # written before the peaks were recorded
        groups = torch.load(Path(checkpoint) / "optimizer.bin", map_location="cpu", weights_only=False,
                            mmap=True)["param_groups"]  # mmap: the states are not read
        peaks = [group["initial_lr"] for group in groups] if all("initial_lr" in g for g in groups) else None
    if peaks and (len(peaks) != len(rates) or
                  not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(peaks, rates))):
        raise SystemExit(f"{checkpoint} was trained at peak learning rate {format_rates(peaks)}, these settings give "
                         f"{format_rates(rates)}: resume it with the --learning_rate (and --layer_lr_decay) it was "
                         "trained with, or start over with --overwrite_output_dir")


def format_rates(rates: list[float]) -> str:
    distinct = sorted(set(rates), reverse=True)
    return f"{distinct[0]:g}" if len(distinct) == 1 else f"{distinct[0]:g} (top) to {distinct[-1]:g} (bottom layer)"


def clear_output_dir(accelerator: Accelerator, output_dir: Path, checkpoint: str | None) -> None:
    """Remove the previous run when starting over (or continuing another folder's checkpoint here), and put back
    the checkpoint's best model when resuming. Called once the data has loaded and the checkpoint is accepted, so
    bad data or a refused resume never changes what the previous run left."""
    if accelerator.is_main_process and not (checkpoint and own_checkpoint(output_dir, checkpoint)):
        for path in previous_run(output_dir):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
    # A best model newer than the checkpoint belongs to evaluations the resumed run does not have: testing it would
    # report a model the history does not list.
    if accelerator.is_main_process and checkpoint and (Path(checkpoint) / BEST_MODEL).is_dir():
        temporary = output_dir / f"{BEST_MODEL}.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        link_folder(Path(checkpoint) / BEST_MODEL, temporary)
        replace_folder(temporary, output_dir / BEST_MODEL)
    accelerator.wait_for_everyone()


def resume_message(accelerator: Accelerator, settings, run, checkpoint: str, train_examples: int) -> str:
    """Where the run continues, and whether it continues exactly as the interrupted run would have."""
    where = (f"resumed from {checkpoint} (epoch {run.epoch + 1}, step {run.step}, example {run.examples_in_epoch} "
             f"of {train_examples})" if run.epoch < settings.num_epochs else
             f"resumed from {checkpoint} (step {run.step}, all {run.epoch} epochs done)")
    before = (run.num_processes, run.per_device_batch_size)
    if before == (accelerator.num_processes, settings.per_device_batch_size):
        return where
    return (f"{where} on {accelerator.num_processes} process(es) x batch {settings.per_device_batch_size}, not "
            f"{before[0]} x {before[1]}: each remaining example is trained on once per epoch and the learning rate "
            "continues from this step, but the batches, and so the numbers, differ from an uninterrupted run's")


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> None:
    """`save_state` into a temporary folder, renamed when complete, with the best model so far linked in (resuming
    puts it back); the `keep` newest are kept. Checkpoints newer than this one are of the run an earlier checkpoint
    was resumed from: `latest` would take them after a crash, so they go too."""
    checkpoints = output_dir / CHECKPOINTS
    folder = checkpoints / f"step_{step:07d}"
    temporary = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process:
        for stale in checkpoints.glob("step_*.tmp"):
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(temporary))
    except (OSError, RuntimeError) as error:  # a full disk surfaces from torch.save as "unexpected pos ..."
        newest = checkpoints_in(output_dir)
        raise RuntimeError(f"could not write checkpoint {folder} ({shutil.disk_usage(output_dir).free / 2**30:.1f} "
                           f"GiB free there; the newest complete checkpoint, {newest[-1] if newest else 'none'}, is "
                           f"kept): {error}") from error
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if (output_dir / BEST_MODEL).is_dir():
            link_folder(output_dir / BEST_MODEL, temporary / BEST_MODEL)
        replace_folder(temporary, folder)
        done = checkpoints_in(output_dir)
        abandoned = [old for old in done if old.name > folder.name]
        done = done[:len(done) - len(abandoned)]
        for old in abandoned + done[:max(0, len(done) - keep)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def save_best_model(accelerator: Accelerator, model, tokenizer, folder: Path) -> None:
    """Save the (possibly sharded) model whole. `get_state_dict` is a collective under FSDP: every process calls
    this; the main process writes."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        temporary = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(temporary, state_dict=state_dict, is_main_process=True)
        tokenizer.save_pretrained(temporary)
        replace_folder(temporary, folder)
    accelerator.wait_for_everyone()


def load_best_weights(accelerator: Accelerator, model, folder: Path) -> None:
    """Put the weights of `save_best_model` back into the prepared model. Under FSDP2 only the main process reads
    the file and the shards are broadcast from it: no process holds a second full copy of the model."""
    if accelerator.is_fsdp2:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        release_gathered_weights(model)
        state_dict = read_weights(folder) if accelerator.is_main_process else {}
        set_model_state_dict(model, state_dict, options=StateDictOptions(full_state_dict=True,
                                                                         broadcast_from_rank0=True))
    else:
        accelerator.unwrap_model(model).load_state_dict(read_weights(folder))
    accelerator.wait_for_everyone()


def release_gathered_weights(model) -> None:
    """Under FSDP2, drop the full weights a forward pass gathered: the root module keeps its own gathered after a
    forward without grad, and the next forward would compute with them, not with the shards written since."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def read_weights(folder: Path) -> dict:
    """The state dict of a saved folder: model.safetensors, or every shard of a large model."""
    state_dict = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        state_dict.update(load_file(path))
    if not state_dict:
        raise SystemExit(f"{folder}: no *.safetensors weights")
    return state_dict


def link_folder(source: Path, target: Path) -> None:
    """A copy of a model folder: weights hard-linked (they are never rewritten in place), the small files copied
    (a threshold is written into config.json)."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        try:
            if path.suffix != ".safetensors":
                raise OSError
            os.link(path, target / path.name)
        except OSError:  # or where the file system has no hard links
            shutil.copy2(path, target / path.name)


def replace_folder(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`, keeping the previous `target` until the new one is in place."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(target: Path) -> None:
    """After a crash between the two renames of `replace_folder`, put the previous folder back."""
    old = target.with_name(target.name + ".old")
    if not target.exists() and old.exists():
        os.replace(old, target)
