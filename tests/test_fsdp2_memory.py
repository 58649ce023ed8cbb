"""What FSDP2 (accelerate_configs/xl.yaml, xxl.yaml) keeps in memory, measured on 2 gloo CPU processes.

The probes (tests/fsdp2_memory_probe.py) run under tests/fsdp2_on_cpu.py with the launch environment of xl.yaml:
FSDP2 full shard, bf16 MixedPrecisionPolicy, fsdp_cpu_ram_efficient_loading.
"""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from test_fsdp2 import REPO, fsdp2_command

pytestmark = pytest.mark.multiprocess
PROBE = Path(__file__).resolve().parent / "fsdp2_memory_probe.py"


@pytest.fixture(scope="module")
def encoder_157mib(tmp_path_factory) -> Path:
    """A BERT encoder of 41 M parameters (157 MiB in fp32), random weights from a config, saved offline."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("encoder_157mib")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                        intermediate_size=2048)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def probe(encoder_157mib, tiny_model_dirs, tmp_path_factory) -> dict[int, dict]:
    """One run of the probe on 2 processes (the 157 MiB encoder, then a tiny BERT): rank -> its report."""
    argv, env = fsdp2_command(str(PROBE), 2, encoder_157mib, tiny_model_dirs["bert"])
    env["PROBE_OUTPUT_DIR"] = str(tmp_path_factory.mktemp("probe_run"))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    reports = [json.loads(line[len("probe "):]) for line in done.stdout.splitlines() if line.startswith("probe ")]
    assert sorted(report["rank"] for report in reports) == [0, 1], done.stdout
    return {report["rank"]: report for report in reports}


def test_ram_efficient_loading_reads_the_checkpoint_on_rank_0_only(encoder_157mib, probe):
    """fsdp_cpu_ram_efficient_loading: rank 1 builds the model on meta and gets the weights by broadcast."""
    model_mib = (encoder_157mib / "model.safetensors").stat().st_size / 2**20
    rank0, rank1 = probe[0], probe[1]
    assert rank1["encoder_params_on_meta"] == rank1["encoder_params"], "rank 1 read the checkpoint"
    assert rank0["encoder_params_on_meta"] == 0
    # Rank 1's peak while loading: its buffers and the head, nothing of the size of the model.
    assert rank1["rss_peak_load_mib"] - rank1["rss_before_mib"] < 0.25 * model_mib, rank1
    # After sharding, every rank's full weights are the file's (rank 0's, broadcast).
    assert rank0["weights_equal_file"] and rank1["weights_equal_file"] and rank1["compared"] > 100


def test_gradient_accumulation_keeps_gradients_sharded(probe):
    """Under FSDP2 the scripts' Accelerator reduce-scatters every micro-batch: no rank ever holds the whole model's
    gradient unsharded. accelerate's default (no sync between micro-batches) holds all of it on every rank."""
    reports = probe
    total = reports[0]["total"]
    assert {report["mixed_precision"] for report in reports.values()} == {"bf16"}  # the MixedPrecisionPolicy path
    for report in reports.values():
        assert [step["sync_step"] for step in report["scripts"]] == [False, True]
        assert [step["unsharded"] for step in report["scripts"]] == [0, 0]
        # accelerate's default, for comparison: the whole gradient on every rank after a micro-batch.
        assert [step["unsharded"] for step in report["default"]] == [total, 0]
    for phase in ("scripts", "default"):
        sharded = [sum(reports[rank][phase][step]["sharded"] for rank in (0, 1)) for step in (0, 1)]
        assert sharded == ([total, total] if phase == "scripts" else [0, total])
