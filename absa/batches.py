"""The data loaders of both fine-tuning scripts, with a seeded, length-grouped train sampler that can start inside
an epoch and keeps identical inputs (ABSA: the aspects of one sentence, encoded once by TD-BERT) side by side."""

from __future__ import annotations

import hashlib
import itertools

import torch
from torch.utils.data import DataLoader, Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices


def text_groups(input_ids) -> list[list[int]]:
    """Indices of identical inputs (in ABSA: the aspects of one sentence), grouped, in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, ids in enumerate(input_ids):
        groups.setdefault(tuple(ids), []).append(i)
    return list(groups.values())


class EpochSeededSampler(Sampler):
    """Shuffles whole `groups` with a generator seeded by seed + epoch, optionally grouping similar lengths.

    The order depends only on the epoch (and the batch size length grouping is for), so every process draws the
    same order before Accelerate shards it. `start` skips the examples of that order trained on already: a resumed
    run continues from the example where it stopped on any number of processes, and on as many as before it sees
    exactly the batches the interrupted run would have seen.

    On several processes what is left of the order from `start` is filled up to a multiple of `pad_to_multiple_of`
    (processes x batch size) with the epoch's first examples, as Accelerate's even batches would fill it. Done here,
    a run resumed inside the epoch gets the uninterrupted run's fill (Accelerate would fill with the first examples
    after where it resumed), and one resumed on more processes only examples of the epoch's beginning again.
    """

    def __init__(self, lengths, batch_size: int, seed: int, group_by_length: bool, groups=None, fingerprint="",
                 pad_to_multiple_of: int = 1):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.pad_to_multiple_of = pad_to_multiple_of
        self.group_by_length = group_by_length
        self.groups = groups or [[i] for i in range(len(self.lengths))]
        self.epoch = 0
        self.start = 0  # examples of this epoch's order already trained on (all processes together)
        self.fingerprint = fingerprint  # of the examples it orders: a checkpoint's position means nothing on others

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths) + self.padding() - self.start

    def padding(self) -> int:
        """How many of the epoch's first examples fill up what is left of it from `start`."""
        return -(len(self.lengths) - self.start) % self.pad_to_multiple_of if len(self.lengths) > self.start else 0

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.group_by_length:
            lengths = [self.lengths[group[0]] for group in self.groups]
            order = get_length_grouped_indices(lengths, self.batch_size, generator=generator)
        else:
            order = torch.randperm(len(self.groups), generator=generator).tolist()
        examples = [i for group in order for i in self.groups[group]]
        examples += itertools.islice(itertools.cycle(examples), self.padding())
        return iter(examples[self.start:])


def fingerprint(dataset, input_ids) -> str:
    """A hash of a split's inputs (ABSA: with the aspects' masks) and labels, the same on every process and run."""
    digest = hashlib.sha256(repr(list(input_ids)).encode())  # list(): a datasets Column's repr is a preview
    for name in ("aspect_mask", "labels"):
        if name in dataset.column_names:
            digest.update(repr(list(dataset[name])).encode())
    return digest.hexdigest()[:16]


def make_dataloaders(features, collator, settings, num_processes: int,
                     keep_identical_inputs_together: bool = False) -> dict:
    """The train loader and one loader per evaluation split. With `keep_identical_inputs_together` evaluation
    splits are sorted by length too; without, they keep the order of `features` (the i-th output is the i-th row)."""
    loaders = {}
    for split, dataset in features.items():
        input_ids = dataset["input_ids"]  # the whole column, read once
        lengths = [len(ids) for ids in input_ids]
        groups = text_groups(input_ids) if keep_identical_inputs_together else None
        if split == "train":
            sampler = EpochSeededSampler(lengths, settings.per_device_batch_size, settings.seed,
                                         settings.group_by_length, groups, fingerprint(dataset, input_ids),
                                         settings.per_device_batch_size * num_processes if num_processes > 1 else 1)
            # Its own generator: otherwise every new iterator draws a seed from the global RNG, and a resumed
            # run's dropout masks would drift from the uninterrupted run's.
            loaders[split] = DataLoader(dataset, batch_size=settings.per_device_batch_size, sampler=sampler,
                                        collate_fn=collator, num_workers=settings.num_workers,
                                        generator=torch.Generator().manual_seed(settings.seed))
            continue
        if groups:  # shortest first, so batches pad little
            dataset = dataset.select([i for group in sorted(groups, key=lambda g: lengths[g[0]]) for i in group])
        loaders[split] = DataLoader(dataset, batch_size=settings.eval_batch_size, collate_fn=collator,
                                    num_workers=settings.num_workers)
    return loaders
