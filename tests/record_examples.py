"""Test-only launcher: run one of the repository's scripts, recording which training examples each process trains
on, and optionally end the run the moment a given checkpoint is complete (a preemption at a known step).

    RECORD_EXAMPLES=FOLDER [STOP_AFTER_CHECKPOINT=STEP] python tests/record_examples.py finetune_absa.py ARGS

Every batch the training loop receives from the train loader adds a line {"epoch", "ids"} (row indices of the
train split) to FOLDER/rank_R.jsonl. Nothing else is changed; it can run under tests/fsdp2_on_cpu.py too.
"""

import collections
import json
import os
import runpy
import sys
from pathlib import Path

from accelerate.data_loader import DataLoaderShard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import absa.batches  # noqa: E402
import absa.checkpoints  # noqa: E402

FOLDER = Path(os.environ["RECORD_EXAMPLES"])
STOP_AFTER = int(os.environ.get("STOP_AFTER_CHECKPOINT", 0))
make_dataloaders, save_checkpoint = absa.batches.make_dataloaders, absa.checkpoints.save_checkpoint
shard_iter = DataLoaderShard.__iter__


def recording_dataloaders(*args, **kwargs):
    loaders = make_dataloaders(*args, **kwargs)
    dataset, sampler = loaders["train"].dataset, loaders["train"].sampler
    fetched = collections.deque()  # index lists fetched; the loader fetches one batch ahead of the one it yields
    get_items = dataset.__getitems__

    def fetch(indices):
        fetched.append((sampler.epoch, list(indices)))
        return get_items(indices)

    dataset.__getitems__, dataset.fetched = fetch, fetched
    return loaders


def recording_iter(self):
    fetched = getattr(self.dataset, "fetched", None)
    for batch in shard_iter(self):
        if fetched is not None:
            epoch, ids = fetched.popleft()
            with open(FOLDER / f"rank_{os.environ.get('RANK', '0')}.jsonl", "a") as log:
                log.write(json.dumps({"epoch": epoch, "ids": ids}) + "\n")
        yield batch


def stopping_save_checkpoint(accelerator, output_dir, step, keep):
    save_checkpoint(accelerator, output_dir, step, keep)
    if step == STOP_AFTER:
        os._exit(0)  # every process is past the checkpoint's last barrier


FOLDER.mkdir(parents=True, exist_ok=True)
absa.batches.make_dataloaders, absa.checkpoints.save_checkpoint = recording_dataloaders, stopping_save_checkpoint
DataLoaderShard.__iter__ = recording_iter
script = str(Path(sys.argv[1]).resolve())
sys.argv = sys.argv[1:]
sys.path.insert(0, str(Path(script).parent))
runpy.run_path(script, run_name="__main__")
