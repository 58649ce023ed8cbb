"""Train / validation / test splits, shared by both tasks: finding split files, carving validation from train,
and the record a model keeps of how its splits were made, so that evaluation rebuilds the same ones."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import warnings
from pathlib import Path

import datasets
import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from .files import DataError

logger = logging.getLogger(__name__)

SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "dev", "val"), "test": ("test",)}


def find_split_files(folder: str | Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Split name -> file of a folder: `train.jsonl`, `dev.csv`, `Laptop_Test.xml`, `2018-E-c-En-dev.txt`.

    An exact stem wins; else the one stem that has the split's name as a whole word and names no other split
    (`train_dev_backup` could be either). Files that name a split but are not used are named in a note.
    """
    folder = Path(folder)
    every_file = sorted(p for p in folder.iterdir() if p.is_file())
    files = [p for p in every_file if p.suffix.lower() in suffixes]
    found = {}
    for split, names in SPLIT_NAMES.items():
        exact = [p for p in files if p.stem.lower() in names]
        candidates = exact or [p for p in files if _splits_named(p.stem) == {split}]
        if len(candidates) > 1:
            raise DataError(folder, f"several files could be the {split} split: "
                            f"{', '.join(p.name for p in candidates)}; pass the files explicitly")
        if candidates:
            found[split] = candidates[0]
    if "train" not in found:
        raise DataError(folder, f"no train file (expected e.g. train.jsonl, of type {', '.join(suffixes)}; found: "
                        f"{', '.join(p.name for p in every_file) or 'no files'})")
    unused = [p.name for p in files if p not in found.values() and _splits_named(p.stem)]
    if unused:
        logger.warning("%s: using %s; not using %s (pass files explicitly with --train_file / --validation_file / "
                       "--test_file)", folder, ", ".join(f"{p.name} as {split}" for split, p in found.items()),
                       ", ".join(unused))
    return found


def _splits_named(stem: str) -> set[str]:
    """Words split at non-letters and at camelCase, so "val" is found in `LaptopVal` but not in `retrieval`."""
    words = set(re.findall(r"[a-z]+|[0-9]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", stem).lower()))
    return {split for split, names in SPLIT_NAMES.items() if words & set(names)}


class Splits(datasets.DatasetDict):
    """Splits with what a model must keep (in its config.json) to rebuild them: `validation_split`, how validation
    was made (`split_record`), and `numeric_labels`, what whole-number labels meant (`LabelRule.numbers`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.validation_split: dict = {}
        self.numeric_labels: str | None = None


def split_fingerprint(rows) -> str:
    """The same rows give the same digest in any order and from any file format (the `row` column is left out)."""
    rows = rows.to_list() if isinstance(rows, datasets.Dataset) else rows
    digests = sorted(hashlib.sha256(json.dumps({k: v for k, v in row.items() if k != "row"}, sort_keys=True,
                                               ensure_ascii=False).encode()).digest() for row in rows)
    return hashlib.sha256(b"".join(digests)).hexdigest()[:16]


def split_record(splits, made: str, fraction: float | None = None, seed: int | None = None) -> dict:
    """`made`: "carved" from train (with fraction and seed), "given" (a file or Hub split) or "test"
    (--select_on_test); with the row count and fingerprint of train and validation."""
    record = {"made": made}
    if made == "carved":
        record.update(validation_fraction=fraction, seed=seed)
    kept = [split for split in ("train", "validation") if split in splits]
    record["rows"] = {split: len(splits[split]) for split in kept}
    record["fingerprints"] = {split: split_fingerprint(splits[split]) for split in kept}
    return record


def rebuild_recipe(record: dict | None, model: str, split: str, validation_fraction: float | None = None,
                   seed: int | None = None) -> dict:
    """`validation_fraction`, `seed` and `select_on_test` that rebuild a model's splits from its record.

    Values that differ from a carve's record are refused: another carve holds rows the model trained on.
    """
    fraction = 0.1 if validation_fraction is None else validation_fraction
    seed_or_default = 42 if seed is None else seed
    if not record:
        if split != "test":
            logger.warning("note: %s does not record how its validation split was made (trained before this was "
                           "recorded); a validation split carved now uses --validation_fraction %s --seed %s, and "
                           "holds training rows if training used others", model, fraction, seed_or_default)
        return {"validation_fraction": fraction, "seed": seed_or_default, "select_on_test": False}
    if record["made"] != "carved":
        return {"validation_fraction": fraction, "seed": seed_or_default, "select_on_test": record["made"] == "test"}
    for name, given in (("validation_fraction", validation_fraction), ("seed", seed)):
        if given is not None and given != record[name] and split != "test":
            raise SystemExit(f"--{name} {given}: {model} was selected on a validation split carved from train "
                             f"with --validation_fraction {record['validation_fraction']} --seed "
                             f"{record['seed']}; another carve holds rows it trained on. Leave out --{name}")
    return {"validation_fraction": record["validation_fraction"], "seed": record["seed"], "select_on_test": False}


def check_rebuilt_split(record: dict | None, model: str, split: str, rows, source, carved: bool) -> None:
    """A carved train / validation split other than the model's holds unknown rows (perhaps trained on): refused;
    a given one that differs gets a note."""
    if split == "test" or not record:
        return
    if carved and record["made"] != "carved":
        how = "the test split (--select_on_test)" if record["made"] == "test" else "a given validation split"
        raise DataError(source, f"has no validation split, and {model} was selected on {how} "
                        f"({record['rows'].get('validation')} rows), not on a carve of train: give that split with "
                        "--validation_file")
    if record.get("fingerprints", {}).get(split) in (None, split_fingerprint(rows)):
        return
    problem = (f"the {split} split ({len(rows)} rows) is not the one {model} was "
               f"{'trained' if split == 'train' else 'selected'} on ({record['rows'].get(split)} rows)")
    if carved:
        raise DataError(source, f"{problem}: the train data (or scikit-learn's carve) differ from training's; give "
                        f"the split with --{split}_file")
    logger.warning("note: %s: %s", source, problem)


def split_files(source, train_file=None, validation_file=None, test_file=None, suffixes=()) -> dict[str, Path]:
    """The files of each split: the `*_file`s given, over a folder's split files (`source` a folder) or over `source`
    as the train file; {} for a Hub name. A validation or test file without train is a DataError."""
    files = {split: Path(path) for split, path in
             (("train", train_file), ("validation", validation_file), ("test", test_file)) if path}
    if source and Path(source).is_dir():
        files = {**find_split_files(source, suffixes), **files}
    elif source and Path(source).is_file():
        files = {"train": Path(source), **files}
    if files and "train" not in files:
        raise DataError(next(iter(files.values())), "a train file is needed as well (--train_file)")
    return files


def choose_validation(splits: datasets.DatasetDict, select_on_test: bool, fraction: float, seed: int, source,
                      **carve) -> Splits:
    """The split that selects the model: the data's own validation split, else one carved from train, or with
    `select_on_test` the test split (as tutorials that report optimistic test scores did); recorded either way."""
    if select_on_test:
        if "test" not in splits:
            raise DataError(source, "--select_on_test needs a test split")
        logger.warning("selecting the best epoch on the TEST split: its test scores are optimistic")
        splits["validation"] = splits["test"]
    result = carve_validation(splits, fraction, seed, source=source, **carve)
    if select_on_test:
        result.validation_split["made"] = "test"
    return result


def carve_validation(splits: datasets.DatasetDict, fraction: float, seed: int, stratify_by: str | None = "label",
                     group_by=("text",), source="train") -> Splits:
    """A validation split carved from train when there is none: whole texts, stratified, seeded, recorded.

    Rows with the same `group_by` values (the aspects of a sentence, a repeated tweet) stay on one side, so model
    selection never sees train's texts. scikit-learn makes round(1 / fraction) folds (0.1: 10, 0.15: 7) and one is
    validation (above 0.5: all but one); with fewer texts than folds, one text.
    """
    if "validation" in splits:
        result = Splits(splits)
        result.validation_split = split_record(result, "given")
        return result
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {fraction}")
    train = splits["train"]
    keys = [column for column in group_by if column in train.column_names]
    groups = (train.select_columns(keys).to_pandas().groupby(keys, sort=False).ngroup().to_numpy() if keys
              else np.arange(len(train)))
    folds = min(round(1 / min(fraction, 1 - fraction)), groups.max() + 1)
    if folds < 2:
        raise DataError(source, f"cannot carve a validation split from {len(train)} rows with a single text; give "
                        "a validation file")
    labels = (np.asarray(train[stratify_by]) if isinstance(train.features.get(stratify_by), datasets.ClassLabel)
              else np.zeros(len(train), dtype=int))
    # StratifiedGroupKFold weighs one group at a time (seconds for 10k groups), so texts that occur once, most of a
    # sequence-classification set, go to StratifiedKFold; each part is stratified, so their union is too.
    repeated = np.bincount(groups)[groups] > 1
    if (~repeated).sum() < folds:
        repeated[:] = True
    held_out = np.zeros(len(train), dtype=bool)
    with warnings.catch_warnings():  # a class rarer than the folds is stratified as far as it goes
        warnings.simplefilter("ignore", UserWarning)
        for part, splitter in ((np.flatnonzero(~repeated), StratifiedKFold),
                               (np.flatnonzero(repeated), StratifiedGroupKFold)):
            if len(np.unique(groups[part])) < folds:  # a few repeated texts: they stay in train
                continue
            y = labels[part] if np.bincount(labels[part]).max() >= folds else np.zeros(len(part), dtype=int)
            fold = next(splitter(folds, shuffle=True, random_state=seed).split(part, y, groups[part]))[1]
            held_out[part[fold]] = True
    if fraction > 0.5:
        held_out = ~held_out
    logger.info("validation split: %d rows (%d texts) carved from train, no text on both sides (seed %d)",
                held_out.sum(), len(np.unique(groups[held_out])), seed)
    result = Splits(splits)
    result["train"], result["validation"] = (train.select(np.flatnonzero(~held_out)),
                                             train.select(np.flatnonzero(held_out)))
    result.validation_split = split_record(result, "carved", fraction, seed)
    return result
