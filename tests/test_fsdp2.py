"""The FSDP2 path of accelerate_configs/xl.yaml (and xxl.yaml), run for real on CPU processes with gloo.

accelerate enters FSDP only on GPU distributed types; tests/fsdp2_on_cpu.py makes each Accelerator of the scripts
an FSDP2 one, with the plugin built from the environment `accelerate launch --config_file accelerate_configs/xl.yaml`
exports (computed here with accelerate's own launch code), and reports from inside the run that the model is
sharded. Everything else is the scripts' own code: fully_shard, the training loop, the best-model save (a full
state dict gathered on rank 0), the test step (the best weights broadcast from rank 0 into the sharded model),
SHARDED_STATE_DICT checkpoints and resume. `pytest -m "" -k fsdp2` selects exactly these tests.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_multi_gpu_env
from safetensors.torch import load_file, save_file

from test_finetune_absa import synthetic_absa, write_jsonl

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO / "tests" / "fsdp2_on_cpu.py"
LAUNCH_VARS = ["WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PMI_SIZE",
               "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU",
               "ACCELERATE_USE_FSDP", "ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_MIXED_PRECISION"]
pytestmark = pytest.mark.multiprocess


def xl_environment() -> dict:
    """What `accelerate launch --config_file accelerate_configs/xl.yaml` exports for FSDP (the FSDP_* settings)."""
    args = launch_command_parser().parse_args(["--config_file", str(REPO / "accelerate_configs" / "xl.yaml"),
                                               "--num_processes", "2", "--main_process_port", "0", "train.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    return {k: v for k, v in env.items() if k.startswith("FSDP_") or k in ("ACCELERATE_USE_FSDP",
                                                                            "ACCELERATE_MIXED_PRECISION")}


def fsdp2_command(script: str, processes: int, *args) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(xl_environment(), ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(SHIM), str(REPO / script), *map(str, args)]
    return command, env


def run_fsdp2(script: str, processes: int, *args) -> subprocess.CompletedProcess:
    command, env = fsdp2_command(script, processes, *args)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    # Asserted from inside the run: every rank holds a fully_shard-ed model with FSDP2 in effect.
    for rank in range(processes):
        assert f"fsdp2 check: rank {rank} of {processes}, is_fsdp2 True, sharded True" in done.stdout, done.stdout
    return done


@pytest.fixture(scope="module")
def absa_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fsdp2_absa")
    write_jsonl(folder / "train.jsonl", synthetic_absa(48, seed=0))
    write_jsonl(folder / "validation.jsonl", synthetic_absa(11, seed=1))  # 22 rows: uneven over 2 x 4
    write_jsonl(folder / "test.jsonl", synthetic_absa(10, seed=2))
    return folder


def absa_test_loss(model_dir: Path, data: Path) -> tuple[float, list]:
    """The reloaded best model on the test split, one process, fp32: loss and confusion matrix."""
    from absa.aspects import AspectCollator, encode_absa_splits
    from absa.data import load_absa_splits
    from absa.metrics import single_label_metrics
    from absa.model import AbsaClassifier
    from absa.encoders import load_tokenizer

    model = AbsaClassifier.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(str(model_dir))
    batch = AspectCollator(tokenizer)(list(encode_absa_splits(load_absa_splits(str(data))["test"], tokenizer, 128)))
    labels = batch.pop("labels")
    with torch.no_grad():
        metrics = single_label_metrics(model(**batch).float().numpy(), labels.numpy(), model.config.id2label.values())
    return metrics["loss"], metrics["confusion_matrix"]


ABSA_ARGS = ["--per_device_batch_size", 4, "--eval_batch_size", 4, "--warmup_steps", 0, "--num_epochs", 2,
             "--eval_every_steps", 2, "--early_stopping_patience", 10, "--mixed_precision", "no"]


# One process under FSDP2 (xl.yaml on one GPU) stays in the default suite through the seqcls DeBERTa case.
@pytest.mark.parametrize("processes", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_fsdp2_finetune_absa_trains_saves_reloads_and_tests(tiny_model_dirs, absa_folder, tmp_path, processes):
    out = tmp_path / "run"
    # A large learning rate makes later evaluations worse than early ones, so the best model is not the last one
    # and a test step that ignored the saved best weights would show. The recipe levers too: their parameter groups
    # go through FSDP2's sharding, and the smoothed training loss must not leak into the reported (plain) test loss.
    levers = ["--layer_lr_decay", "0.8", "--label_smoothing", "0.1"]
    run_fsdp2("finetune_absa.py", processes, "--model_name_or_path", tiny_model_dirs["bert"], "--dataset",
              absa_folder, "--output_dir", out, "--learning_rate", "2e-2", *ABSA_ARGS, *levers)
    results = json.loads((out / "results.json").read_text())
    assert results["num_processes"] == processes and results["distributed_type"] == "DistributedType.FSDP"
    assert all(row["examples"] == 22 for row in results["validation_history"])
    assert results["test"]["examples"] == 20
    last = out / "checkpoints" / f"step_{results['optimizer_steps']:07d}"  # early stopping may end it before 24
    assert (last / "pytorch_model_fsdp_0").is_dir()  # SHARDED_STATE_DICT
    loss, matrix = absa_test_loss(out / "best_model", absa_folder)
    assert results["best_step"] < results["optimizer_steps"], "the test should tell the best from the last model"
    assert loss == pytest.approx(results["test"]["loss"], abs=1e-5)
    assert matrix == results["test"]["confusion_matrix"]
    assert json.loads((out / "best_model" / "config.json").read_text())["architectures"] == ["AbsaClassifier"]
    if processes == 1:
        # Resuming the finished run goes straight to the test step: the first forward of a freshly sharded
        # one-process FSDP2 model, which torch.inference_mode breaks ("Inference tensors do not track version
        # counter"); the evaluation runs under no_grad.
        results_file = (out / "results.json").read_text()
        run_fsdp2("finetune_absa.py", 1, "--model_name_or_path", tiny_model_dirs["bert"], "--dataset", absa_folder,
                  "--output_dir", out, "--learning_rate", "2e-2", *ABSA_ARGS, *levers, "--resume_from_checkpoint",
                  "latest")
        again = json.loads((out / "results.json").read_text())
        assert again["test"] == json.loads(results_file)["test"]


def test_fsdp2_ema_evaluates_and_keeps_the_average_and_leaves_training_alone(tiny_model_dirs, absa_folder, tmp_path):
    # The average is swapped into the shards for each evaluation and out again. The root FSDP2 unit keeps its weights
    # gathered after a forward without grad: unless they are released, the next training step computes with the
    # average's, and training drifts from the plain run's (its training loss shows it).
    args = ["--model_name_or_path", tiny_model_dirs["bert"], "--dataset", absa_folder, "--learning_rate", "2e-2",
            *ABSA_ARGS, "--max_steps", 8]
    run_fsdp2("finetune_absa.py", 2, *args, "--output_dir", tmp_path / "plain")
    run_fsdp2("finetune_absa.py", 2, *args, "--output_dir", tmp_path / "averaged", "--ema_decay", "0.5")
    plain, averaged = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("plain", "averaged"))
    assert [row["step"] for row in averaged["validation_history"]] == [2, 4, 6, 8]
    assert [row["train_loss"] for row in averaged["validation_history"]] == pytest.approx(
        [row["train_loss"] for row in plain["validation_history"]], abs=1e-6)
    for mine, theirs in zip(averaged["validation_history"], plain["validation_history"]):  # the average evaluated
        assert mine["loss"] != pytest.approx(theirs["loss"], abs=1e-6)
    loss, matrix = absa_test_loss(tmp_path / "averaged" / "best_model", absa_folder)
    assert loss == pytest.approx(averaged["test"]["loss"], abs=1e-5) and matrix == averaged["test"]["confusion_matrix"]


def test_fsdp2_finetune_absa_starts_from_a_fine_tuned_absa_folder(tiny_model_dirs, absa_folder, tmp_path):
    # Rank 0 reads the folder (AbsaClassifier's weight names mapped to the encoder's), rank 1 builds on meta and gets
    # the weights by broadcast. At learning rate 0 the best model's encoder is the start's, weight for weight.
    from absa.model import WEIGHTS_NAME, AbsaClassifier

    start = tmp_path / "start"
    shutil.copytree(tiny_model_dirs["bert"], start)
    model = AbsaClassifier.from_encoder(str(start), ("negative", "neutral", "positive"))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    model.save_pretrained(start)
    run_fsdp2("finetune_absa.py", 2, "--model_name_or_path", start, "--dataset", absa_folder, "--output_dir",
              tmp_path / "run", "--learning_rate", 0, *ABSA_ARGS, "--max_steps", 2)
    trained, begun = load_file(tmp_path / "run" / "best_model" / WEIGHTS_NAME), load_file(start / WEIGHTS_NAME)
    encoder = [name for name in begun if name.startswith("encoder.")]
    assert len(encoder) > 20 and all(torch.equal(trained[name], begun[name]) for name in encoder)
    assert not torch.equal(trained["classifier.weight"], begun["classifier.weight"])  # a new classifier

    # A folder that lacks an encoder weight: rank 0 finds out, and both ranks stop (none waits for the other).
    weights = load_file(tiny_model_dirs["bert"] / WEIGHTS_NAME)
    del weights["encoder.layer.0.output.dense.weight"]
    shutil.copytree(tiny_model_dirs["bert"], tmp_path / "incomplete")
    save_file(weights, tmp_path / "incomplete" / WEIGHTS_NAME, metadata={"format": "pt"})
    command, env = fsdp2_command("finetune_absa.py", 2, "--model_name_or_path", tmp_path / "incomplete", "--dataset",
                                 absa_folder, "--output_dir", tmp_path / "refused", *ABSA_ARGS)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode != 0
    assert done.stderr.count("encoder.layer.0.output.dense.weight") >= 2, done.stderr[-3000:]  # from each rank
    assert not (tmp_path / "refused" / "best_model").exists()


def pipeline_scores(model_dir: Path, texts: list[str]) -> list[list[float]]:
    """What a user of the saved folder gets: transformers' text-classification pipeline, one process, fp32."""
    import transformers

    classifier = transformers.pipeline("text-classification", model=str(model_dir), device="cpu")
    names = [classifier.model.config.id2label[i] for i in range(classifier.model.config.num_labels)]
    return [[{item["label"]: item["score"] for item in output}[name] for name in names]
            for output in classifier(texts, top_k=None, truncation=True)]


# Both families on 1 and 2 processes; by default only DeBERTa-v2 on 2 (the suite's time budget).
# Two processes run xl.yaml's bf16 MixedPrecisionPolicy, and every weight of rank 1, the new head included, starts on
# the meta device (cpu_ram_efficient_loading). One process runs in fp32, where the reloaded best model must give
# the run's test probabilities to 1e-5.
@pytest.mark.parametrize("processes,family", [pytest.param(1, "bert", marks=pytest.mark.slow),
                                              pytest.param(2, "bert", marks=pytest.mark.slow),
                                              pytest.param(1, "deberta-v2", marks=pytest.mark.slow),
                                              (2, "deberta-v2")])
def test_fsdp2_finetune_seqcls_trains_saves_reloads_and_tests(tiny_model_dirs, tmp_path, processes, family):
    # BERT: transformers names BertEmbeddings among its no-split modules, inside which accelerate would shard the
    # input embedding twice. DeBERTa-v2: transformers names no layer class at all.
    from test_seqcls import topic_rows, write_table

    data = tmp_path / "data"
    write_table(data / "train.csv", topic_rows(64, 1))
    write_table(data / "validation.csv", topic_rows(13, 2))
    write_table(data / "test.csv", topic_rows(11, 3))
    out = tmp_path / "run"
    precision = "bf16" if processes == 2 else "no"
    # A large learning rate makes later evaluations worse than early ones, so the best model is not the last one.
    done = run_fsdp2("finetune_seqcls.py", processes, "--model_name_or_path", tiny_model_dirs[family], "--dataset",
                     data, "--label_column", "category", "--output_dir", out, "--learning_rate", "1e-2",
                     "--max_length", 32, *ABSA_ARGS, "--mixed_precision", precision)
    results = json.loads((out / "results.json").read_text())
    assert results["num_processes"] == processes and results["distributed_type"] == "DistributedType.FSDP"
    assert results["mixed_precision"] == precision
    for rank in range(processes):
        params = int(re.search(rf"rank {rank} of .* of (\d+), mixed precision {precision}", done.stdout)[1])
        assert f"rank {rank} of {processes}, " in done.stdout
        assert f"on meta before sharding {params if rank else 0} of {params}" in done.stdout, done.stdout
    assert results["best_step"] < results["optimizer_steps"], "the test should tell the best from the last model"

    # The test step used the best weights: the saved best model, reloaded in one process, predicts the same.
    tolerance = 1e-5 if precision == "no" else 2e-2
    test_rows = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert len(test_rows) == 11
    names = results["label_names"]
    expected = pipeline_scores(out / "best_model", [row["text"] for row in test_rows])
    for row, p in zip(test_rows, expected):
        assert p == pytest.approx([row["scores"][name] for name in names], abs=tolerance)


# ~40 s; the averaged run resumes all the plain one does, and the average (FSDP2's load reads only what it is shown)
@pytest.mark.parametrize("average", [pytest.param([], marks=pytest.mark.slow), ["--ema_decay", "0.9"]],
                         ids=["plain", "ema"])
def test_fsdp2_resume_after_kill_gives_the_uninterrupted_run(tiny_model_dirs, absa_folder, tmp_path, average):
    # In xl.yaml's bf16 (MixedPrecisionPolicy): sharded fp32 master weights, AdamW states and the weights' moving
    # average saved and resumed.
    args = ["--model_name_or_path", tiny_model_dirs["bert"], "--dataset", absa_folder, "--learning_rate", "3e-3",
            *ABSA_ARGS, "--mixed_precision", "bf16", "--checkpoint_every_steps", 4, "--keep_checkpoints", 10,
            *average]  # with the weights' moving average too, the best model is of it
    run_fsdp2("finetune_absa.py", 2, *args, "--output_dir", tmp_path / "whole")

    command, env = fsdp2_command("finetune_absa.py", 2, *args, "--output_dir", tmp_path / "cut")
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 300
    while not (tmp_path / "cut" / "checkpoints" / "step_0000008").is_dir():  # mid-epoch 1 of 2 (12 steps each)
        assert process.poll() is None and time.time() < deadline, "the run ended before the checkpoint appeared"
        time.sleep(0.05)
    # torchrun and both ranks, at once: torchrun starts each rank in a session of its own, so killing torchrun's
    # process group would leave the ranks to finish the run.
    for victim in [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            victim.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "cut" / "results.json").exists()
    run_fsdp2("finetune_absa.py", 2, *args, "--output_dir", tmp_path / "cut", "--resume_from_checkpoint", "latest")

    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    cut = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert Path(cut["resumed_from"]).name in ("step_0000008", "step_0000012"), cut["resumed_from"]  # mid-run
    strip = [{k: v for k, v in row.items() if k != "train_loss"} for row in whole["validation_history"]]
    assert [{k: v for k, v in row.items() if k != "train_loss"} for row in cut["validation_history"]] == strip
    assert cut["test"]["confusion_matrix"] == whole["test"]["confusion_matrix"]
    final = "checkpoints/step_0000024/pytorch_model_fsdp_0"
    assert (tmp_path / "cut" / final).is_dir() and (tmp_path / "whole" / final).is_dir()
    for name in ("best_model/model.safetensors",):
        one, two = load_file(tmp_path / "whole" / name), load_file(tmp_path / "cut" / name)
        for key, value in one.items():
            torch.testing.assert_close(two[key], value, rtol=0, atol=1e-6)
