"""Hostile inputs to seed ensembles (use_absa.py with several MODEL_DIRs, absa.predictor.AbsaEnsemble): what a
member's folder or the command line can hold that must be refused in one line, never averaged silently."""

import json

import test_ensemble as seeds
import test_use_absa as base
from absa.predictor import open_predictor

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
