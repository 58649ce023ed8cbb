"""Seed ensembles: several model folders given to use_absa.py (or to `open_predictor`) predict the mean of their
members' probabilities, through the one batch loop of AbsaPredictor, on one process or two.

The members are tiny models with heads of different seeds, one of them another family (tokenizer) with another input
format (aspect_markers); each member's own single-model run is the reference.
"""

import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

import test_use_absa as base
from absa.corpus import PartialOutput
from absa.model import AbsaClassifier
from absa.predictor import AbsaEnsemble, AbsaPredictor, open_predictor

import use_absa

TEST = base.SAMPLE / "test.jsonl"  # 100 labelled rows
FP32 = ["--mixed_precision", "no", "--batch_size", "7"]
EVALUATION = "evaluation_sample_laptops_test.json"
ENSEMBLE_EVALUATION = "evaluation_ensemble_sample_laptops_test.json"  # named apart from a member's
plain_single_process = base.plain_single_process  # autouse: every in-process run starts as one plain process


build_member = base.build_absa_model


@pytest.fixture(scope="module")
def members(tiny_model_dirs, tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("seeds")
    return [build_member(tiny_model_dirs["bert"], root / "seed_1" / "best_model", 1),
            build_member(tiny_model_dirs["bert"], root / "seed_2" / "best_model", 2),
            build_member(tiny_model_dirs["roberta"], root / "seed_3" / "best_model", 3, input_format="aspect_markers")]


def run(mode, models, *argv):
    use_absa.main([str(a) for a in [mode, *models, *argv]])


def predicted_rows(models, output) -> list[dict]:
    run("predict", models, "--input", TEST, "--output", output, *FP32)
    return base.read_jsonl(output)


def test_ensemble_is_the_mean_of_its_members(members, tmp_path, capsys):
    singles = [base.probabilities_of(predicted_rows([folder], tmp_path / f"member{k}.jsonl"))
               for k, folder in enumerate(members)]
    assert not np.allclose(singles[0], singles[1], atol=0.05)  # the members disagree: a mean is no member's output
    mean = np.mean(singles, axis=0)
    top_two = np.sort(mean, axis=1)[:, -2:]
    assert (top_two[:, 1] - top_two[:, 0] > 1e-4).all()  # no near-tie that float noise could flip

    rows = predicted_rows(members, tmp_path / "ensemble.jsonl")
    np.testing.assert_allclose(base.probabilities_of(rows), mean, atol=2e-6)
    assert [row["predicted_label"] for row in rows] == [base.LABELS[i] for i in mean.argmax(axis=1)]
    assert rows[0]["text"] == base.read_jsonl(TEST)[0]["text"] and len(rows) == 100

    run("evaluate", members, "--test_file", TEST, "--output_dir", tmp_path, *FP32)
    assert not (tmp_path / EVALUATION).exists()
    results = json.loads((tmp_path / ENSEMBLE_EVALUATION).read_text())
    labels = np.array([base.LABELS.index(row["label"]) for row in base.read_jsonl(TEST)])
    predicted = mean.argmax(axis=1)
    assert results["model"] == [str(folder) for folder in members] and results["examples"] == 100
    assert results["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert results["confusion_matrix"] == confusion_matrix(labels, predicted, labels=[0, 1, 2]).tolist()
    # The loss is the ensemble's negative log-likelihood: of the mean probability, not the mean of the members'.
    assert results["loss"] == pytest.approx(-np.log(mean[np.arange(100), labels]).mean(), abs=1e-4)
    assert results["max_length"] == 128 and results["mixed_precision"] == "no"
    printed = capsys.readouterr().out
    assert "an ensemble of 3 models (mean probabilities): seed_1/best_model fp32" in printed

    # The Python API: the same mean.
    ensemble = open_predictor(members, device="cpu", mixed_precision="no")
    assert isinstance(ensemble, AbsaEnsemble) and ensemble.input_format == ["td_bert", "td_bert", "aspect_markers"]
    test_rows = base.read_jsonl(TEST)
    texts, starts, ends = ([row[key] for row in test_rows] for key in ("text", "start", "end"))
    np.testing.assert_allclose(ensemble.predict_probabilities(texts, starts=starts, ends=ends), mean, atol=2e-6)
    found = AbsaEnsemble.from_pretrained(members[:2], device="cpu", mixed_precision="no").predict(
        ["The battery lasts but the screen is dim"] * 2, ["battery", "screen"])
    assert [result["aspect"] for result in found] == ["battery", "screen"]
    assert sum(found[0]["probabilities"].values()) == pytest.approx(1, abs=1e-6)


def test_one_folder_is_the_single_model(members, tmp_path):
    single = open_predictor([members[0]], device="cpu")
    assert type(single) is AbsaPredictor and single.members == [single]
    # The same folder twice: its own probabilities (log of the mean of equal rows), the labels alike.
    rows = predicted_rows([members[0]], tmp_path / "one.jsonl")
    twice = predicted_rows([members[0], members[0]], tmp_path / "twice.jsonl")
    np.testing.assert_allclose(base.probabilities_of(twice), base.probabilities_of(rows), atol=2e-6)
    assert [row["predicted_label"] for row in twice] == [row["predicted_label"] for row in rows]
    run("evaluate", [members[0]], "--test_file", TEST, "--output_dir", tmp_path, *FP32)
    assert json.loads((tmp_path / EVALUATION).read_text())["model"] == str(members[0])  # a string, as before


def test_refusals_are_one_line_before_the_weights_load(members, tiny_model_dirs, tmp_path, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded")
    monkeypatch.setattr(AbsaClassifier, "from_pretrained", no_weights)
    text = ["--text", "The screen is dim.", "--aspect", "screen"]

    reordered = build_member(tiny_model_dirs["bert"], tmp_path / "reordered", 4, label_names=base.LABELS[::-1])
    message = base.exit_message(["predict", members[0], reordered, *text])
    assert f"{members[0]} and {reordered} cannot form an ensemble" in message and "label names" in message

    for split in ("validation", "train"):
        message = base.exit_message(["evaluate", *members[:2], "--dataset", base.SAMPLE, "--split", split])
        assert f"--split {split} with 2 model folders" in message and "--split test" in message

    message = base.exit_message(["predict", *members[:2], *text, "--max_length", 129])
    assert message.startswith(f"{members[0]}: max_length 129")  # checked against each member, named

    ids = build_member(tiny_model_dirs["bert"], tmp_path / "ids", 5, numeric_labels="ids")
    argv = ["evaluate", members[0], ids, "--test_file", TEST, "--output_dir", tmp_path]
    message = base.exit_message(argv)
    assert f"{members[0]} and {ids}" in message
    assert "absa_numeric_labels differ (auto vs ids); choose one with --numeric_labels" in message


def test_numeric_label_rule_given_explicitly_evaluates(members, tiny_model_dirs, tmp_path):
    ids = build_member(tiny_model_dirs["bert"], tmp_path / "ids", 5, numeric_labels="ids")
    run("evaluate", [members[0], ids], "--test_file", TEST, "--output_dir", tmp_path, "--numeric_labels", "auto",
        *FP32)
    assert json.loads((tmp_path / ENSEMBLE_EVALUATION).read_text())["examples"] == 100
    run("predict", [members[0], ids], "--text", "The screen is dim.", "--aspect", "screen", *FP32)  # no labels read


def test_predict_resumes_an_ensemble_run(members, tmp_path, monkeypatch):
    whole = tmp_path / "whole.jsonl"
    run("predict", members, "--input", TEST, "--output", whole, *FP32, "--chunk_size", 30)
    output = tmp_path / "resumed.jsonl"
    original = base.crash_on_second_chunk(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run("predict", members, "--input", TEST, "--output", output, *FP32, "--chunk_size", 30)
    monkeypatch.setattr(PartialOutput, "write_chunk", original)
    run_record = json.loads((tmp_path / "resumed.jsonl.partial" / "run.json").read_text())
    assert run_record["model"] == [str(folder.resolve()) for folder in members]

    # Another set of members is another run: refused.
    message = base.exit_message(["predict", *members[:2], "--input", TEST, "--output", output, *FP32,
                                 "--chunk_size", 30, "--resume"])
    assert "cannot resume" in message and "model" in message
    run("predict", members, "--input", TEST, "--output", output, *FP32, "--chunk_size", 30, "--resume")
    assert output.read_bytes() == whole.read_bytes()


@pytest.mark.multiprocess
def test_two_cpu_processes_evaluate_an_ensemble_like_one(members, tmp_path):
    argv = ["evaluate", *members, "--test_file", TEST, *FP32]
    run("evaluate", members, "--test_file", TEST, *FP32, "--output_dir", tmp_path / "one")
    two = base.run_script([*argv, "--output_dir", tmp_path / "two"], launcher=("-m", "torch.distributed.run",
                          "--standalone", "--nproc_per_node", "2"), ACCELERATE_USE_CPU="true")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "with 2 process(es)" in two.stdout and two.stdout.count("wrote") == 1
    one, two = (json.loads((tmp_path / name / ENSEMBLE_EVALUATION).read_text()) for name in ("one", "two"))
    assert (one["num_processes"], two["num_processes"], two["examples"]) == (1, 2, 100)
    assert two["confusion_matrix"] == one["confusion_matrix"] and two["accuracy"] == one["accuracy"]
    assert two["macro_f1"] == one["macro_f1"] and two["loss"] == pytest.approx(one["loss"], abs=1e-6)
