"""Resume anywhere: a checkpoint's position is counted in examples of the epoch's seeded order and in global
optimizer steps, so a run continues on another number of processes (or batch size) with every training example
trained on once per epoch and the learning-rate schedule where it was; on as many processes it continues exactly.
Also: what an impossible resume is told, the last checkpoint of a run, checkpoint rotation, several seeds, and the
gradient of an epoch's short last accumulation window.

tests/record_examples.py records, inside the run, the training examples of every batch each process trains on, and
ends a run the moment a chosen checkpoint is complete (a preemption at a known step).
"""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import finetune_absa
from absa.settings import parse_settings
from absa.training import RunState, linear_schedule
from test_finetune_absa import run_main, synthetic_folder, synthetic_splits, without_dropout  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
RECORDER = ROOT / "tests" / "record_examples.py"
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU")


@pytest.fixture
def data_96(tmp_path):
    """96 training rows: 12 batches of 8, so 1 and 2 processes both split every epoch without padding."""
    return synthetic_splits(tmp_path / "data_96", 48, 10)


def recorded_run(processes: int, record: Path, *args, stop_after: int = 0) -> subprocess.CompletedProcess:
    """finetune_absa.py on 1 process, or 2 real CPU processes (gloo), through the recorder."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(RECORD_EXAMPLES=str(record), STOP_AFTER_CHECKPOINT=str(stop_after), OMP_NUM_THREADS="1")
    launcher = [sys.executable]
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "true"
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    done = subprocess.run([*launcher, str(RECORDER), str(ROOT / "finetune_absa.py"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def trained_examples(*records: Path) -> dict[int, Counter]:
    """epoch -> how many times each training row was trained on, over every process of every record."""
    seen: dict[int, Counter] = {}
    for record in records:
        for log in record.glob("rank_*.jsonl"):
            for line in log.read_text().splitlines():
                row = json.loads(line)
                seen.setdefault(row["epoch"], Counter()).update(row["ids"])
    return seen


def common_args(model_dir, data, output_dir, *extra):
    return ["--model_name_or_path", model_dir, "--dataset", data, "--output_dir", output_dir,
            "--per_device_batch_size", 8, "--learning_rate", "3e-3", "--warmup_steps", 2, "--num_epochs", 2,
            "--early_stopping_patience", 5, "--checkpoint_every_steps", 2, "--keep_checkpoints", 3, *extra]


# 29 s: test_fsdp2_elastic.py resumes a 2-process run on 1 process by default (the same skip, the sharded format)
@pytest.mark.slow
@pytest.mark.multiprocess
def test_one_process_run_resumed_on_two_sees_every_example_once_per_epoch(tiny_model_dirs, data_96, tmp_path):
    args = common_args(tiny_model_dirs["bert"], data_96, tmp_path / "run")
    recorded_run(1, tmp_path / "before", *args, stop_after=4)  # preempted after 4 of 12 steps (32 examples)
    assert not (tmp_path / "run/results.json").exists()
    resumed = recorded_run(2, tmp_path / "after", *args, "--resume_from_checkpoint", "latest")
    assert "example 32 of 96) on 2 process(es) x batch 8, not 1 x 8" in resumed.stdout, resumed.stdout

    before, after = trained_examples(tmp_path / "before"), trained_examples(tmp_path / "after")
    assert sum(before[0].values()) == 32 and 1 not in before  # what the checkpoint holds, nothing more
    assert sum(after[0].values()) == 64 and sum(after[1].values()) == 96
    for epoch in (0, 1):  # every row exactly once per epoch, across the two runs and both processes
        assert before.get(epoch, Counter()) + after[epoch] == Counter(range(96)), epoch
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["num_processes"] == 2
    assert results["optimizer_steps"] == 4 + 64 // 16 + 96 // 16  # 4 steps of 8 rows, then of 2 x 8
    assert results["epochs_run"] == 2 and [row["step"] for row in results["validation_history"]] == [8, 14]


LOSS_PROBE = """
import torch
from accelerate import Accelerator
from absa.training import RunState
accelerator = Accelerator()
run = RunState()
for loss in ([1.0, 3.0] if accelerator.is_main_process else [5.0, 7.0]):  # each process its own batches
    run.batch_done(torch.tensor(loss), 8)
saved = run.state_dict()  # what save_state asks every process for; the main process's is written
print(f"rank {accelerator.process_index}: saved sum {saved['train_loss_sum']} over {saved['train_loss_batches']}", flush=True)
accelerator.end_training()
"""


@pytest.mark.multiprocess
# ~40 s on 2 cores; test_finetune_absa.py checks the same fill on the sampler alone, in the default suite.
@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_resumed_inside_an_epoch_that_needs_a_fill_continue_exactly(tiny_model_dirs, synthetic_folder,
                                                                                    tmp_path):
    # 300 rows on 2 x 8: the epoch's last batches are filled with examples trained on already. The resumed run's fill
    # used to be the first examples after where it resumed, so its numbers drifted from the uninterrupted run's.
    args = ["--model_name_or_path", tiny_model_dirs["bert"], "--dataset", synthetic_folder, "--per_device_batch_size",
            8, "--learning_rate", "3e-3", "--warmup_steps", 2, "--num_epochs", 1, "--checkpoint_every_steps", 3,
            "--keep_checkpoints", 10]
    recorded_run(2, tmp_path / "whole_record", *args, "--output_dir", tmp_path / "whole")
    recorded_run(2, tmp_path / "before", *args, "--output_dir", tmp_path / "cut", stop_after=12)
    recorded_run(2, tmp_path / "after", *args, "--output_dir", tmp_path / "cut", "--resume_from_checkpoint", "latest")
    cut, whole = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("cut", "whole"))
    assert cut["resumed_from"].endswith("step_0000012") and cut["optimizer_steps"] == whole["optimizer_steps"] == 19
    assert cut["validation_history"] == whole["validation_history"]  # the training loss of both processes too
    assert cut["test"] == whole["test"]
    assert trained_examples(tmp_path / "before", tmp_path / "after") == trained_examples(tmp_path / "whole_record")


def test_saved_training_loss_is_every_processes(tmp_path):
    # Only the main process's run state is written: it must hold the mean over processes of the loss sums (a
    # resumed run's first train_loss used to be the main process's alone).
    (tmp_path / "probe.py").write_text(LOSS_PROBE)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "probe.py")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank}: saved sum 8.0 over 2" in done.stdout, done.stdout  # (1 + 3 + 5 + 7) / 2 processes


# The same-count half checks the training loss too (both processes' share); ~2 minutes on 2 busy cores.
@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_process_run_resumed_exactly_on_two_and_elastically_on_one(tiny_model_dirs, data_96, tmp_path):
    whole = common_args(tiny_model_dirs["bert"], data_96, tmp_path / "whole", "--ema_decay", "0.9")
    recorded_run(2, tmp_path / "whole_record", *whole)
    args = common_args(tiny_model_dirs["bert"], data_96, tmp_path / "cut", "--ema_decay", "0.9")
    recorded_run(2, tmp_path / "before", *args, stop_after=2)  # after 2 of 6 steps of 2 x 8 (32 examples)
    shutil.copytree(tmp_path / "cut", tmp_path / "elastic")

    # On 2 processes again: the uninterrupted run exactly, the training loss of both processes included.
    recorded_run(2, tmp_path / "after", *args, "--resume_from_checkpoint", "latest")
    cut, uninterrupted = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("cut", "whole"))
    assert cut["validation_history"] == uninterrupted["validation_history"]
    assert cut["test"] == uninterrupted["test"]
    last = "checkpoints/step_0000012/model.safetensors"
    for key, value in load_file(tmp_path / "whole" / last).items():
        torch.testing.assert_close(load_file(tmp_path / "cut" / last)[key], value, rtol=0, atol=0)

    # On 1 process with batch 4: the rest of epoch 1 (64 rows), then epoch 2, each row once.
    elastic = common_args(tiny_model_dirs["bert"], data_96, tmp_path / "elastic", "--per_device_batch_size", 4,
                          "--ema_decay", "0.9")
    resumed = recorded_run(1, tmp_path / "elastic_record", *elastic, "--resume_from_checkpoint", "latest")
    assert "example 32 of 96) on 1 process(es) x batch 4, not 2 x 8" in resumed.stdout, resumed.stdout
    before, after = trained_examples(tmp_path / "before"), trained_examples(tmp_path / "elastic_record")
    assert sum(before[0].values()) == 32 and sum(after[0].values()) == 64
    for epoch in (0, 1):
        assert before.get(epoch, Counter()) + after[epoch] == Counter(range(96)), epoch
    results = json.loads((tmp_path / "elastic/results.json").read_text())
    assert results["num_processes"] == 1 and results["optimizer_steps"] == 2 + 64 // 4 + 96 // 4


def test_schedule_continues_from_the_global_step():
    from transformers import get_linear_schedule_with_warmup

    def lrs(scheduler, steps):
        out = []
        for _ in range(steps):
            out.append(scheduler.get_last_lr()[0])
            scheduler.optimizer.step()
            scheduler.step()
        return out

    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    # A fresh run: transformers' schedule, value for value.
    reference = get_linear_schedule_with_warmup(optimizer(), 3, 20)
    fresh = linear_schedule(optimizer(), 1.0, 3, 20, RunState())
    assert lrs(fresh, 20) == lrs(reference, 20)

    # Resumed at step 8 with the same plan: the same values on; with 10 steps left instead of 12 (another process
    # count): from the learning rate it had, linearly to 0 at the new last step.
    again = linear_schedule(optimizer(), 1.0, 3, 20, RunState(step=8, total_steps=20))
    assert lrs(again, 12) == [(20 - s) / 17 for s in range(8, 20)]
    moved = RunState(step=8, total_steps=20)
    replanned = lrs(linear_schedule(optimizer(), 1.0, 3, 18, moved), 10)
    assert replanned[0] == pytest.approx(12 / 17) and replanned[-1] == pytest.approx(12 / 17 / 10)
    assert all(a > b for a, b in zip(replanned, replanned[1:]))
    # Resumed again with that new plan: the re-planned decay goes on, no jump.
    moved.step = 12
    assert lrs(linear_schedule(optimizer(), 1.0, 3, 18, moved), 6) == pytest.approx(replanned[4:])


def test_keep_checkpoints_three_keeps_three(tiny_model_dirs, synthetic_folder, tmp_path):
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 10,
             "--checkpoint_every_steps", 2, "--keep_checkpoints", 3)
    assert [p.name for p in sorted((tmp_path / "run/checkpoints").iterdir())] == \
        ["step_0000006", "step_0000008", "step_0000010"]


def test_run_that_stops_early_or_at_max_steps_leaves_its_last_checkpoint(tiny_model_dirs, synthetic_folder,
                                                                         tmp_path):
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "max", "--max_steps", 2)
    assert [p.name for p in (tmp_path / "max/checkpoints").iterdir()] == ["step_0000002"]
    # lr 0: no evaluation after the first improves, so patience 2 stops at step 9, mid-epoch 1 (38 steps).
    results = run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "early", "--learning_rate", 0,
                       "--eval_every_steps", 3, "--early_stopping_patience", 2)
    assert results["optimizer_steps"] == 9
    assert sorted(p.name for p in (tmp_path / "early/checkpoints").iterdir()) == ["step_0000009"]


def test_early_stopped_run_resumed_stays_stopped(tiny_model_dirs, synthetic_folder, tmp_path):
    args = ["--learning_rate", 0, "--early_stopping_patience", 2, "--num_epochs", 6]
    first = run_main(tiny_model_dirs["electra"], synthetic_folder, tmp_path / "run", *args)
    assert first["epochs_run"] == 3
    again = run_main(tiny_model_dirs["electra"], synthetic_folder, tmp_path / "run", *args,
                     "--resume_from_checkpoint", "latest")
    assert again["optimizer_steps"] == first["optimizer_steps"] and again["validation_history"] == \
        first["validation_history"]


def test_several_seeds_resume_each_its_own(tiny_model_dirs, synthetic_folder, tmp_path):
    from absa.training import run_for_seeds

    def seeds(*extra):
        settings = parse_settings(finetune_absa.Settings, [
            "--model_name_or_path", str(tiny_model_dirs["bert"]), "--dataset", str(synthetic_folder),
            "--output_dir", str(tmp_path / "seeds"), "--max_steps", "2", "--seeds", "1", "2", *extra])
        return run_for_seeds(finetune_absa.main, settings, keys=("test_accuracy",))

    first = seeds()
    shutil.rmtree(tmp_path / "seeds/seed_2")  # preempted before seed 2 began
    (tmp_path / "seeds/seeds_summary.json").unlink()
    again = seeds("--resume_from_checkpoint", "latest")
    assert [run["settings"]["seed"] for run in again] == [1, 2]
    assert again[0]["test"] == first[0]["test"] and again[1]["test"] == first[1]["test"]
    assert json.loads((tmp_path / "seeds/seeds_summary.json").read_text())["seeds"] == [1, 2]
    with pytest.raises(SystemExit, match="with --seeds must be `latest`"):
        seeds("--resume_from_checkpoint", str(tmp_path / "seeds/seed_1/checkpoints/step_0000002"))


def test_a_checkpoint_of_another_seed_or_other_data_is_refused(tiny_model_dirs, synthetic_folder, data_96, tmp_path):
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 2)
    (tmp_path / "run/best_model/README.md").write_text("a refused resume changes nothing\n")
    with pytest.raises(SystemExit, match="is a run with --seed 42, not 7"):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 4, "--seed", 7,
                 "--resume_from_checkpoint", "latest")
    with pytest.raises(SystemExit, match="trained on other training data"):
        run_main(tiny_model_dirs["bert"], data_96, tmp_path / "run", "--max_steps", 4,
                 "--resume_from_checkpoint", "latest")
    assert [p.name for p in (tmp_path / "run/checkpoints").iterdir()] == ["step_0000002"]
    assert (tmp_path / "run/best_model/README.md").exists()  # best_model was not put back from the checkpoint


def test_short_last_accumulation_window_is_a_mean_over_its_examples(tiny_model_dirs, synthetic_folder, tmp_path):
    """300 rows: 32 x 9 + 12 in batches of 32, and the same windows as 8 x 4 accumulated, whose last window holds
    2 batches (8 + 4 rows) instead of 4. Both must take the same steps."""
    model_dir = without_dropout(tiny_model_dirs["bert"], tmp_path / "no_dropout")
    common = ["--num_epochs", 1, "--warmup_steps", 0, "--group_by_length", "false", "--max_grad_norm", 0,
              "--mixed_precision", "no", "--learning_rate", "1e-3"]
    whole = run_main(model_dir, synthetic_folder, tmp_path / "b32", *common, "--per_device_batch_size", 32)
    windows = run_main(model_dir, synthetic_folder, tmp_path / "b8x4", *common, "--per_device_batch_size", 8,
                       "--gradient_accumulation_steps", 4)
    assert whole["optimizer_steps"] == windows["optimizer_steps"] == 10
    one = load_file(tmp_path / "b32/best_model/model.safetensors")
    two = load_file(tmp_path / "b8x4/best_model/model.safetensors")
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=2e-6)


def test_resume_puts_back_the_best_model_of_its_checkpoint(tiny_model_dirs, synthetic_folder, tmp_path):
    # Killed after saving a new best model but before the next checkpoint: that model belongs to evaluations the
    # resumed run does not have. Here the run ends at the checkpoint and best_model is then replaced by another.
    first = run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 4,
                     "--eval_every_steps", 2)
    saved = (tmp_path / "run/best_model/model.safetensors").read_bytes()
    weights = load_file(tmp_path / "run/best_model/model.safetensors")
    from safetensors.torch import save_file
    save_file({key: torch.zeros_like(value) for key, value in weights.items()},
              tmp_path / "run/best_model/model.safetensors.new")
    os.replace(tmp_path / "run/best_model/model.safetensors.new", tmp_path / "run/best_model/model.safetensors")
    again = run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 4,
                     "--eval_every_steps", 2, "--resume_from_checkpoint", "latest")
    assert (tmp_path / "run/best_model/model.safetensors").read_bytes() == saved
    assert again["test"] == first["test"] and again["best_step"] == first["best_step"]


def test_run_given_more_steps_after_its_schedule_ended_still_learns(tiny_model_dirs, synthetic_folder, tmp_path):
    # A run that stopped at --max_steps (or after its last epoch) ended at learning rate 0; resumed with more steps,
    # "decay from the learning rate it had" used to keep every new step at 0: the extension changed nothing.
    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)

    ended = RunState(step=20, total_steps=20)
    scheduler = linear_schedule(optimizer(), 1.0, 3, 30, ended)
    assert scheduler.get_last_lr()[0] == pytest.approx(10 / 27)  # the plan for 30 steps, at step 20
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 2)
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 4,
             "--resume_from_checkpoint", "latest")
    before = load_file(tmp_path / "run/checkpoints/step_0000002/model.safetensors")
    after = load_file(tmp_path / "run/checkpoints/step_0000004/model.safetensors")
    assert any(not torch.equal(before[key], after[key]) for key in before)


def test_resume_with_nothing_left_to_train_and_no_evaluation_is_refused(tiny_model_dirs, synthetic_folder, tmp_path):
    # The checkpoint at step 2 precedes the run's first evaluation; resumed with --max_steps 2 the loop has nothing
    # to do, and the test evaluation had no best model of its own (it used to end in StopIteration after testing
    # whatever best_model/ the run had left, here step 4's).
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 4,
             "--checkpoint_every_steps", 2, "--keep_checkpoints", 3)
    first = tmp_path / "run/checkpoints/step_0000002"
    assert not (first / "best_model").exists()
    with pytest.raises(SystemExit, match="step 2 .* has no evaluation yet: resume it with more steps"):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 2,
                 "--resume_from_checkpoint", first)


def test_resumed_from_an_earlier_checkpoint_the_newer_ones_give_way(tiny_model_dirs, synthetic_folder, tmp_path):
    # Resumed from step 2 of [2, 4, 6]: the new step 3 is the run's newest. It used to be kept beside the abandoned
    # 4 and 6 (with --keep_checkpoints 3, step 2 was deleted instead), so `latest` after a crash went back to 6.
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 6,
             "--checkpoint_every_steps", 2, "--keep_checkpoints", 3)
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 3,
             "--checkpoint_every_steps", 2, "--keep_checkpoints", 3,
             "--resume_from_checkpoint", tmp_path / "run/checkpoints/step_0000002")
    assert [p.name for p in sorted((tmp_path / "run/checkpoints").iterdir())] == ["step_0000002", "step_0000003"]


def test_the_fill_of_an_epochs_last_batches_is_not_counted_as_trained_examples():
    # 6 training rows on 2 processes x batch 8: Accelerate gives each process a full batch of 8 (rows repeated to
    # fill them); 16 samples used to be counted for the epoch, so samples per second came out 16/6 times too high.
    run = RunState()
    run.batch_done(torch.tensor(1.0), 2 * 8, 6)
    assert (run.examples_in_epoch, run.train_samples) == (6, 6)
    run = RunState(examples_in_epoch=90, train_samples=190)  # resumed at row 90 of 96: one fill batch per process
    run.batch_done(torch.tensor(1.0), 2 * 8, 96)
    assert (run.examples_in_epoch, run.train_samples) == (96, 196)


def test_another_folders_checkpoint_continued_over_a_run_needs_overwrite(tiny_model_dirs, synthetic_folder, tmp_path):
    # Continuing run a's checkpoint in b, which holds a run of its own: b's results, metrics and checkpoints used to
    # be overwritten and rotated away (and its newer checkpoints mixed with the continuation) without asking.
    for name in ("a", "b"):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / name, "--max_steps", 2)
    b_results = (tmp_path / "b/results.json").read_text()
    a_checkpoint = tmp_path / "a/checkpoints/step_0000002"
    with pytest.raises(SystemExit, match="already holds a run, and .* is not one of its checkpoints"):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "b", "--max_steps", 3,
                 "--resume_from_checkpoint", a_checkpoint)
    assert (tmp_path / "b/results.json").read_text() == b_results
    continued = run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "b", "--max_steps", 3,
                         "--resume_from_checkpoint", a_checkpoint, "--overwrite_output_dir")
    assert continued["optimizer_steps"] == 3 and len(continued["validation_history"]) == 2
    assert [p.name for p in (tmp_path / "b/checkpoints").iterdir()] == ["step_0000003"]  # b's own step 2 is gone
    assert (tmp_path / "a/checkpoints/step_0000002/best_model").is_dir()  # a's checkpoint untouched


def test_a_skipped_optimizer_step_keeps_the_schedule_at_the_global_step(tiny_model_dirs, synthetic_folder, tmp_path,
                                                                       monkeypatch):
    # fp16's loss scaler skips a step now and then (inf gradients). The schedule is rebuilt from run.step on resume,
    # so it must follow run.step while the run goes on too: it used to stay behind by the skipped steps, and the
    # resumed run's learning rates (and weights) differed from the uninterrupted run's.
    from accelerate import Accelerator

    skipped = []  # the first step of each timeline is skipped (CPU has no fp16 scaler: simulated)
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped",
                        property(lambda self: not skipped and not skipped.append(True)))
    model_dir = without_dropout(tiny_model_dirs["bert"], tmp_path / "no_dropout")
    args = ["--max_steps", 4, "--checkpoint_every_steps", 2, "--keep_checkpoints", 3, "--mixed_precision", "no"]
    run_main(model_dir, synthetic_folder, tmp_path / "whole", *args)
    skipped.clear()
    run_main(model_dir, synthetic_folder, tmp_path / "cut", *args[:1], 2, *args[2:])
    run_main(model_dir, synthetic_folder, tmp_path / "cut", *args, "--resume_from_checkpoint", "latest")
    last = "checkpoints/step_0000004/model.safetensors"
    whole, cut = load_file(tmp_path / "whole" / last), load_file(tmp_path / "cut" / last)
    for key, value in whole.items():
        torch.testing.assert_close(cut[key], value, rtol=0, atol=0)


def test_a_checkpoint_resumed_with_another_selection_metric_is_refused(tiny_model_dirs, synthetic_folder, tmp_path):
    # The run's best value is a validation loss (about 1.1); resumed with --metric_for_best_model accuracy, each
    # accuracy was compared with that loss as if it were an accuracy, and the best model chosen by it, silently.
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 2,
             "--metric_for_best_model", "loss")
    with pytest.raises(SystemExit, match="selects the best model by loss on the validation split"):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 4,
                 "--metric_for_best_model", "accuracy", "--resume_from_checkpoint", "latest")
    with pytest.raises(SystemExit, match="--select_on_test false"):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 4,
                 "--metric_for_best_model", "loss", "--select_on_test", "true", "--resume_from_checkpoint", "latest")


def test_a_checkpoint_resumed_with_another_weight_average_is_refused(tiny_model_dirs, synthetic_folder, tmp_path):
    # Its best value is of the moving average: the plain weights would be compared with it (and vice versa), and a
    # run resumed with an average its checkpoint does not hold would start one from the resumed weights, silently.
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 2, "--ema_decay", "0.9")
    results = (tmp_path / "run/results.json").read_bytes()
    refusals = ((["--ema_decay", "0"], "trained with --ema_decay 0.9, not 0.0: resume it with --ema_decay 0.9"),
                (["--ema_decay", "0.99"], "trained with --ema_decay 0.9, not 0.99"))
    for flags, message in refusals:
        with pytest.raises(SystemExit, match=message):
            run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 4,
                     "--resume_from_checkpoint", "latest", *flags)
    assert (tmp_path / "run/results.json").read_bytes() == results
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "plain", "--max_steps", 2)
    with pytest.raises(SystemExit, match="trained with --ema_decay 0.0, not 0.9"):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "plain", "--max_steps", 4,
                 "--resume_from_checkpoint", "latest", "--ema_decay", "0.9")


def test_a_nan_first_evaluation_does_not_stay_best():
    # A first validation loss of NaN (diverged, e.g. an fp16 overflow) used to stay best for good: no number
    # compares below NaN, so no later model was saved and early stopping ended the run on the NaN one.
    from absa.metrics import is_better

    assert is_better("loss", 0.7, float("nan")) and is_better("accuracy", 0.3, float("nan"))
    assert not is_better("loss", float("nan"), 0.7) and is_better("loss", 0.6, 0.7)
    assert not is_better("loss", float("nan"), float("nan"))  # NaN after NaN: patience still runs out


def test_an_unfinished_checkpoint_is_refused(tmp_path):
    # A crash in save_checkpoint leaves step_N.tmp, which may hold the run state but not every process's files
    # (accelerate writes the run state last on the main process only); given by name it used to be resumed from.
    from absa.checkpoints import find_checkpoint

    unfinished = tmp_path / "checkpoints/step_0000004.tmp"
    unfinished.mkdir(parents=True)
    (unfinished / "custom_checkpoint_0.pkl").write_bytes(b"")
    with pytest.raises(SystemExit, match="an unfinished checkpoint"):
        find_checkpoint(tmp_path, str(unfinished))
    finished = unfinished.with_name("step_0000004")
    unfinished.rename(finished)
    assert find_checkpoint(tmp_path, str(finished)) == finished == find_checkpoint(tmp_path, "latest")


def test_a_checkpoint_that_cannot_be_written_says_where_and_keeps_the_last_one(tmp_path):
    # A full disk made torch.save fail with "unexpected pos 820720832 vs 820720720", which names neither the folder
    # nor the cause; the error now says which checkpoint, how much space is left and which checkpoint is kept.
    from types import SimpleNamespace

    from absa.checkpoints import find_checkpoint, save_checkpoint

    kept = tmp_path / "checkpoints/step_0000002"
    kept.mkdir(parents=True)
    (kept / "model.safetensors").write_bytes(b"weights")

    def full_disk(folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "optimizer.bin").write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 820720832 vs 820720720")

    accelerator = SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None, save_state=full_disk)
    with pytest.raises(RuntimeError, match=r"could not write checkpoint .*step_0000004 \(.* GiB free there; the "
                                           r"newest complete checkpoint, .*step_0000002, is kept\): .*unexpected pos"):
        save_checkpoint(accelerator, tmp_path, 4, keep=2)
    assert (kept / "model.safetensors").read_bytes() == b"weights"
    assert find_checkpoint(tmp_path, "latest") == kept


def test_overwrite_never_removes_the_model_it_starts_from(tiny_model_dirs, synthetic_folder, tmp_path):
    # Fine-tuning a run's best model further in that run's folder: --overwrite_output_dir removed best_model/ before
    # the model was read from it, and the run failed with the model gone.
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 2)
    weights = (tmp_path / "run/best_model/model.safetensors").read_bytes()
    with pytest.raises(SystemExit, match="--model_name_or_path .* is in what --overwrite_output_dir removes"):
        finetune_absa.main(parse_settings(finetune_absa.Settings, [
            "--model_name_or_path", str(tmp_path / "run/best_model"), "--dataset", str(synthetic_folder),
            "--output_dir", str(tmp_path / "run"), "--overwrite_output_dir", "--max_steps", "2"]))
    assert (tmp_path / "run/best_model/model.safetensors").read_bytes() == weights
