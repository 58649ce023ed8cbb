"""The training benchmarks run on any local model and report the step's shape limit (bench/README.md quotes them)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import benchlib  # noqa: E402

pytestmark = pytest.mark.skipif(not Path(benchlib.DATASET).is_dir(), reason="needs ../shared/data (Laptop14)")


def test_step_shape_rate_counts_the_step_s_matrix_products(monkeypatch):
    # 6 linear layers of one encoder layer, each forward + 2 gradient products: 3 x 2 x tokens x in x out FLOPs.
    calls = []
    real_linear, real_matmul = torch.nn.functional.linear, torch.matmul
    monkeypatch.setattr(torch.nn.functional, "linear", lambda x, w: calls.append(("linear", x.shape, w.shape))
                        or real_linear(x, w))
    monkeypatch.setattr(torch, "matmul", lambda a, b: calls.append(("matmul", a.shape, b.shape)) or real_matmul(a, b))
    rate = benchlib.step_shape_rate({"hidden": 8, "intermediate": 32}, 5, torch.float32, seconds=0.0)
    assert rate > 0
    first_pass = calls[:18]
    assert [kind for kind, *_ in first_pass] == ["linear", "matmul", "matmul"] * 6
    assert first_pass[0][1:] == (torch.Size([5, 8]), torch.Size([8, 8]))  # query: tokens x hidden, out x in
    assert first_pass[12][1:] == (torch.Size([5, 8]), torch.Size([32, 8]))  # feed-forward up
    assert first_pass[14][1:] == (torch.Size([32, 5]), torch.Size([5, 8]))  # its weight gradient: out x in
    assert first_pass[15][1:] == (torch.Size([5, 32]), torch.Size([8, 32]))  # feed-forward down


@pytest.mark.slow  # about 40 s on 2 cores: the bench's processes each load the data and a model
def test_train_throughput_on_a_local_model_reports_the_shape_limit(tiny_model_dirs, tmp_path):
    model, output = tiny_model_dirs["bert"], tmp_path / "train.json"
    subprocess.run([sys.executable, "bench/train_throughput.py", "--model", str(model), "--only", "a,c_fp32",
                    "--rounds", "2", "--warmup-steps", "1", "--steps-per-round", "1", "--output", str(output),
                    "--logs", str(tmp_path / "logs")], cwd=ROOT, check=True, capture_output=True, text=True,
                   timeout=600)
    results = json.loads(output.read_text())
    assert results["model"] == str(model) and results["command"].startswith("python bench/train_throughput.py")
    for name in ("a", "c_fp32"):
        row = results["results"][name]
        limit = row["shape_limit"]
        assert limit["gflops"] > 0 and 0 < limit["tokens_per_step"] <= 16 * 128
        assert row["shape_limit_share"] == pytest.approx(row["useful_gflops"] / limit["gflops"])
    # The trainer contender encodes each aspect's sentence again: at least as many padded tokens per step.
    assert (results["results"]["c_fp32"]["shape_limit"]["tokens_per_step"]
            >= results["results"]["a"]["shape_limit"]["tokens_per_step"])
    assert set(results["ratios"]) == {"a/c_fp32"}


def recipe_row(recipe, seed, f1, precision):
    """One results-file row of `bench/quality.py recipes` (encoder m, data set d), as the tables read it."""
    import quality
    return {"group": quality.recipe_group("m", "d", recipe), "model": "m", "dataset": "d", "recipe": recipe,
            "seed": seed, "test_macro_f1": f1, "test_accuracy": f1, "mixed_precision": precision,
            "best_validation": {"loss": 0.5, "macro_f1": 0.8}, "wall_seconds": 60.0,
            "readme_examples": {"correct": 9, "total": 9}}


def test_quality_recipes_table_pairs_only_seeds_run_in_the_same_precision(capsys):
    import quality

    # seed 2's +10 is a precision change too
    rows = [recipe_row("today", 1, 0.70, "no"), recipe_row("today", 2, 0.70, "no"),
            recipe_row("x=1", 1, 0.72, "no"), recipe_row("x=1", 2, 0.80, "bf16")]
    quality.summarize_recipes(rows, [1, 2])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "2.0±0.0 (2.0-2.0)" in lines["x=1"] and lines["x=1"].endswith("fp32 1 bf16 1")
    assert lines["(paired"].strip().startswith("(paired dF1 leaves out seed 2:")
    assert lines["today"].endswith("fp32")


def test_quality_recipes_table_names_recipes_that_share_a_long_prefix_in_full(capsys):
    import quality

    base = "metric_for_best_model=macro_f1,learning_rate=3e-5"  # over the 42 columns the table used to cut at
    rows = [recipe_row(recipe, 1, f1, "bf16")
            for recipe, f1 in ((f"{base},layer_lr_decay=0.9", 0.71), (f"{base},label_smoothing=0.1", 0.73))]
    quality.summarize_recipes(rows, [1])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "71.0" in lines[f"{base},layer_lr_decay=0.9"] and "73.0" in lines[f"{base},label_smoothing=0.1"]
    assert len({len(line) for name, line in lines.items() if name.startswith(base)}) == 1  # columns still line up


def test_quality_formats_table_pairs_only_seeds_run_in_the_same_precision(capsys):
    import quality

    def row(input_format, seed, f1, precision):
        return {"group": f"formats laptop14 {input_format}", "dataset": "laptop14", "input_format": input_format,
                "seed": seed, "test_macro_f1": f1, "test_accuracy": f1, "mixed_precision": precision,
                "best_validation": {"loss": 0.5}, "contrastive_accuracy": 0.7, "train_samples_per_second": 10.0,
                "readme_examples": {"correct": 9, "total": 9}}
    rows = [row("td_bert", 1, 0.70, "bf16"), row("td_bert", 2, 0.70, "bf16"),
            row("pair", 1, 0.71, "bf16"), row("pair", 2, 0.80, "no")]  # seed 2's +10 is a precision change too
    quality.summarize_formats(rows, [1, 2])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["pair"].endswith("1.0±0.0 (1.0-1.0)")
    assert lines["(paired"].strip() == "(paired dF1 leaves out seed 2: another precision than td_bert's run)"
