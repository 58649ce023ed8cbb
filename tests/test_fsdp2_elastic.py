"""An FSDP2 run's sharded checkpoint (torch.distributed.checkpoint: model and optimizer) resumed on another number
of processes: DCP reshards on load, and the run continues from the example where it stopped, each training example
once per epoch. Run for real on CPU processes (tests/fsdp2_on_cpu.py), with tests/record_examples.py recording the
examples each process trains on and ending the first run the moment its step-4 checkpoint is complete."""

import json
import subprocess
from collections import Counter

import pytest

from test_elastic_resume import trained_examples
from test_fsdp2 import ABSA_ARGS, REPO, absa_folder, fsdp2_command  # noqa: F401 (fixture)

pytestmark = pytest.mark.multiprocess


def run_recorded_fsdp2(processes, record, *args, stop_after=0) -> str:
    command, env = fsdp2_command("tests/record_examples.py", processes, REPO / "finetune_absa.py", *args)
    env.update(RECORD_EXAMPLES=str(record), STOP_AFTER_CHECKPOINT=str(stop_after))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    for rank in range(processes):  # asserted from inside the run: FSDP2 in effect, the model sharded
        assert f"fsdp2 check: rank {rank} of {processes}, is_fsdp2 True, sharded True" in done.stdout, done.stdout
    return done.stdout


@pytest.mark.parametrize("before,after", [pytest.param(2, 1), pytest.param(1, 2, marks=pytest.mark.slow)])
def test_fsdp2_sharded_checkpoint_resumes_on_another_number_of_processes(tiny_model_dirs, absa_folder, tmp_path,
                                                                         before, after):
    args = ["--model_name_or_path", tiny_model_dirs["bert"], "--dataset", absa_folder, "--output_dir",
            tmp_path / "run", "--learning_rate", "3e-3", *ABSA_ARGS, "--checkpoint_every_steps", 4,
            "--early_stopping_patience", 100,  # every example of both epochs, however validation goes
            "--ema_decay", "0.9"]  # the weights' average, in the optimizer's state, resharded too
    run_recorded_fsdp2(before, tmp_path / "before", *args, stop_after=4)
    assert (tmp_path / "run/checkpoints/step_0000004/pytorch_model_fsdp_0").is_dir()  # sharded (DCP)
    assert (tmp_path / "run/checkpoints/step_0000004/optimizer_0").is_dir()
    out = run_recorded_fsdp2(after, tmp_path / "after", *args, "--resume_from_checkpoint", "latest")
    done = 4 * 4 * before  # 4 steps of 4 rows on each process
    assert f"example {done} of 96) on {after} process(es) x batch 4, not {before} x 4" in out, out

    seen_before, seen_after = trained_examples(tmp_path / "before"), trained_examples(tmp_path / "after")
    assert sum(seen_before[0].values()) == done and sum(seen_after[0].values()) == 96 - done
    for epoch in (0, 1):
        assert seen_before.get(epoch, Counter()) + seen_after[epoch] == Counter(range(96)), epoch
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["num_processes"] == after and results["distributed_type"] == "DistributedType.FSDP"
    assert results["optimizer_steps"] == 4 + (96 - done) // (4 * after) + 96 // (4 * after)
    assert all(row["examples"] == 22 for row in results["validation_history"])
