"""Hostile inputs to seed ensembles (use_absa.py with several MODEL_DIRs, absa.predictor.AbsaEnsemble): what a
member's folder or the command line can hold that must be refused in one line, never averaged silently."""

import json
import os

import pytest

import test_ensemble as seeds
import test_use_absa as base
from absa.corpus import PartialOutput
from absa.predictor import AbsaEnsemble, open_predictor

import use_absa

plain_single_process = base.plain_single_process  # autouse
members = seeds.members  # a fixture
build_member = seeds.build_member


def test_label_names_are_compared_by_label_id_not_by_key_order(members, tiny_model_dirs, tmp_path):
    """A config.json whose id2label lists its ids in another order: ids 0 and 1 swapped, yet the same names in the
    same order of keys. The names by id differ from the first member's: refused, not averaged column by column."""
    swapped = build_member(tiny_model_dirs["bert"], tmp_path / "swapped" / "best_model", 4)
    config = json.loads((swapped / "config.json").read_text())
    config["id2label"] = {"1": "negative", "0": "neutral", "2": "positive"}
    config["label2id"] = {"negative": 1, "neutral": 0, "positive": 2}
    (swapped / "config.json").write_text(json.dumps(config))
    assert open_predictor([swapped], device="cpu").label_names == [
        "neutral", "negative", "positive"]
    message = base.exit_message(["predict", members[0], swapped, "--text", "The screen is dim.", "--aspect",
                                 "screen"])
    assert f"{members[0]} and {swapped} cannot form an ensemble" in message and "label names" in message


@pytest.mark.slow  # over 25 s on 2 cores; a sibling in the default suite runs the same path
@pytest.mark.multiprocess
def test_two_cpu_processes_predict_an_ensemble_file_like_one(members, tmp_path):
    """15 chunks of 7 rows (the last of 2) over 2 processes: the bytes of one process."""
    argv = ["predict", *members, "--input", seeds.TEST, *seeds.FP32, "--chunk_size", 7]
    use_absa.main([str(a) for a in [*argv, "--output", tmp_path / "one.csv"]])
    two = base.run_script([*argv, "--output", tmp_path / "two.csv"], launcher=(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"), ACCELERATE_USE_CPU="true")
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()


def test_no_folder_is_a_value_error():
    for folders in ([], ()):
        with pytest.raises(ValueError, match="no model folder"):
            open_predictor(folders, device="cpu")
        with pytest.raises(ValueError, match="no model folder"):
            AbsaEnsemble(folders, device="cpu")


def test_an_aspect_one_member_cannot_fit_is_refused_in_one_line(members, tiny_model_dirs, tmp_path):
    """An aspect of 20 words fits member 1 (128 tokens) but not a member trained with max_length 16."""
    short = build_member(tiny_model_dirs["bert"], tmp_path / "short" / "best_model", 6, max_length=16)
    aspect = " ".join(["battery"] * 20)
    rows = [{"text": "The screen is dim.", "aspect": "screen"}, {"text": f"The {aspect} is fine.", "aspect": aspect}]
    source = tmp_path / "long.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    use_absa.main(["predict", str(members[0]), "--input", str(source), "--output", str(tmp_path / "ok.csv")])
    message = base.exit_message(["predict", members[0], short, "--input", source, "--output", tmp_path / "x.csv"])
    assert "line 2" in message and "max_length=16" in message and not (tmp_path / "x.csv").exists()


def test_resume_refuses_the_members_in_another_order(members, tmp_path, monkeypatch):
    """The mean's float rounding depends on the order: resumed chunks would mix two sets of numbers."""
    output = tmp_path / "out.jsonl"
    base.crash_on_second_chunk(monkeypatch)
    argv = ["--input", seeds.TEST, "--output", output, *seeds.FP32, "--chunk_size", 30]
    with pytest.raises(KeyboardInterrupt):
        use_absa.main([str(a) for a in ["predict", *members, *argv]])
    message = base.exit_message(["predict", *members[::-1], *argv, "--resume"])
    assert "cannot resume" in message and "model" in message


@pytest.mark.slow  # over 25 s on 2 cores; a sibling in the default suite runs the same path
@pytest.mark.multiprocess
def test_two_cpu_processes_evaluate_three_rows_like_one(members, tmp_path):
    """3 examples, batch size 2, 2 processes: the second process's last batch is padded by accelerate."""
    test = tmp_path / "data" / "test.jsonl"
    test.parent.mkdir()
    test.write_text("".join(line + "\n" for line in seeds.TEST.read_text().splitlines()[:3]))
    argv = ["evaluate", *members, "--test_file", test, "--mixed_precision", "no", "--batch_size", 2]
    use_absa.main([str(a) for a in [*argv, "--output_dir", tmp_path / "one"]])
    two = base.run_script([*argv, "--output_dir", tmp_path / "two"], launcher=(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"), ACCELERATE_USE_CPU="true")
    assert two.returncode == 0, two.stderr[-3000:]
    one, two = (json.loads((tmp_path / name / "evaluation_ensemble_data_test.json").read_text())
                for name in ("one", "two"))
    assert two["examples"] == 3 and two["confusion_matrix"] == one["confusion_matrix"]
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-6)


@pytest.mark.parametrize("label_names", [["Negative", "Neutral", "Positive"], ["negative", "positive"],
                                         ["negative", "neutral", "positive", "conflict"]])
def test_label_names_in_another_case_or_number_are_refused(members, tiny_model_dirs, tmp_path, label_names):
    other = build_member(tiny_model_dirs["bert"], tmp_path / "other", 7, label_names=label_names)
    for argv in (["predict", members[0], other, "--text", "The screen is dim.", "--aspect", "screen"],
                 ["evaluate", other, members[0], "--test_file", seeds.TEST, "--output_dir", tmp_path]):
        message = base.exit_message(argv)
        assert "cannot form an ensemble" in message and "label names" in message
    assert not list(tmp_path.glob("evaluation*"))


def test_resume_takes_the_same_members_spelled_otherwise(members, tmp_path, monkeypatch):
    """Relative paths with a trailing slash name the same folders as the absolute ones: the run resumes, and its
    bytes are those of an uninterrupted run."""
    argv = ["--input", seeds.TEST, *seeds.FP32, "--chunk_size", 30]
    use_absa.main([str(a) for a in ["predict", *members, *argv, "--output", tmp_path / "whole.csv"]])
    output = tmp_path / "out.csv"
    original = base.crash_on_second_chunk(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        use_absa.main([str(a) for a in ["predict", *members, *argv, "--output", output]])
    monkeypatch.setattr(PartialOutput, "write_chunk", original)
    monkeypatch.chdir(members[0].parents[1])
    relative = [os.path.relpath(folder) + "/" for folder in members]
    use_absa.main(["predict", *relative, *map(str, argv), "--output", str(output), "--resume"])
    assert output.read_bytes() == (tmp_path / "whole.csv").read_bytes()
