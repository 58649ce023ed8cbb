"""accelerate_configs/*.yaml, absa.launch and bench/scale_guide.py, checked offline on CPU.

The YAMLs are read and turned into launch environments with accelerate's own code
(load_config_from_file, _validate_launch_command, prepare_multi_gpu_env), and the FSDP wrap classes
are resolved with accelerate's own FSDP2 logic, so a config or accelerate change that breaks the
scripts' assumptions fails here rather than on a GPU cluster.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from accelerate.utils.launch import prepare_multi_gpu_env
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

from absa.launch import check_distributed_setup
from absa.encoders import fsdp_wrap_classes, make_fsdp_ready
from absa.model import AbsaClassifier

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs"
FSDP_CONFIGS = ["xl.yaml", "xxl.yaml"]
GPU_CONFIGS = ["base.yaml", "large.yaml", *FSDP_CONFIGS]
# Every variable a launcher may set; cleared so tests see "plain python" unless they set some.
LAUNCH_VARS = [
    "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
    "ACCELERATE_USE_CPU", "ACCELERATE_USE_FSDP", "ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_MIXED_PRECISION",
]

DEBERTA = dict(relative_attention=True, position_buckets=8, pos_att_type=["p2c", "c2p"],
               norm_rel_ebd="layer_norm", type_vocab_size=0)
FAMILIES = {
    "bert": {}, "roberta": {}, "xlm-roberta": {}, "xlm-roberta-xl": {}, "electra": {},
    "deberta-v2": DEBERTA,
    # transformers declares no _no_split_modules for these: the layers are found by structure.
    "distilbert": {"hidden_dim": 37}, "albert": {"embedding_size": 16},
}
# The class of each family's repeated block (ALBERT: one AlbertLayer in one shared group, run num_hidden_layers times).
LAYER_CLASS = {"bert": "BertLayer", "roberta": "RobertaLayer", "xlm-roberta": "XLMRobertaLayer",
               "xlm-roberta-xl": "XLMRobertaXLLayer", "electra": "ElectraLayer", "deberta-v2": "DebertaV2Layer",
               "distilbert": "TransformerBlock", "albert": "AlbertLayer"}


def tiny_config(model_type, **extra):
    return AutoConfig.for_model(model_type, vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=37, max_position_embeddings=64,
                                num_labels=3, **{**FAMILIES.get(model_type, {}), **extra})


def encoder_without_pooler(config):
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:  # DeBERTa-v2, ELECTRA have no pooler
        return AutoModel.from_config(config)


def launch_env(config_name, *extra):
    """The environment `accelerate launch --config_file CONFIG --num_processes 2` gives a GPU job."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIGS / config_name), "--num_processes", "2", "--main_process_port", "0",
         *extra, "train.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


# ---------------------------------------------------------------- configs parse and have the fields


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_config_fields(name):
    cfg = load_config_from_file(str(CONFIGS / name))
    assert cfg.mixed_precision == "bf16"
    assert cfg.use_cpu is False
    # -1 = "pass --num_processes": accelerate has no "all GPUs" value when a config file is used.
    assert cfg.num_processes == -1
    if name in FSDP_CONFIGS:
        assert cfg.distributed_type == DistributedType.FSDP
        fsdp = cfg.fsdp_config
        assert fsdp["fsdp_version"] == 2
        assert fsdp["fsdp_reshard_after_forward"] is True  # FSDP2 full sharding
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # comes from model._no_split_modules
        assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
        assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_sync_module_states"] is True
        assert fsdp["fsdp_offload_params"] is False
    else:
        assert cfg.distributed_type == DistributedType.MULTI_GPU and cfg.fsdp_config == {}


def test_cpu_config_is_single_process():
    cfg = load_config_from_file(str(CONFIGS / "cpu.yaml"))
    assert cfg.distributed_type == DistributedType.NO and cfg.use_cpu and cfg.num_processes == 1


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_launch_refuses_missing_num_processes(name):
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    with pytest.raises(ValueError, match="num_processes"):
        _validate_launch_command(args)


@pytest.mark.parametrize("name", FSDP_CONFIGS)
def test_fsdp_launch_env(name):
    env = launch_env(name)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_OFFLOAD_PARAMS"] == "false"
    assert "FSDP_TRANSFORMER_CLS_TO_WRAP" not in env
    # The documented override for too few GPUs.
    assert launch_env(name, "--fsdp_offload_params", "true")["FSDP_OFFLOAD_PARAMS"] == "true"


def test_multi_node_launch_args():
    """The README's multi-node line: --num_processes is the total over all machines."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIGS / "xxl.yaml"), "--num_processes", "16", "--num_machines", "2",
         "--machine_rank", "1", "--main_process_ip", "10.0.0.1", "--main_process_port", "29500", "train.py"])
    args, _, _ = _validate_launch_command(args)
    prepare_multi_gpu_env(args)  # fills in the torchrun arguments
    assert (args.nproc_per_node, args.nnodes, args.node_rank) == ("8", "2", 1)
    # Without --same_network (a YAML `same_network:` is ignored: the flag defaults to False, not None).
    assert args.rdzv_endpoint == "10.0.0.1:29500"


# ---------------------------------------------------------------- FSDP wrap classes per family


def resolved_wrap_classes(model, monkeypatch):
    """Classes accelerate's FSDP2 path (fsdp2_prepare_model) would fully_shard for xl.yaml."""
    for key, value in launch_env("xl.yaml").items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    plugin.set_auto_wrap_policy(model)  # raises if a named class is missing from the model
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    return [type(m) for m in model.modules() if policy(m)]


def build(kind, config):
    """The scripts' models: AbsaClassifier around an encoder, or AutoModelForSequenceClassification."""
    if kind == "absa":
        return AbsaClassifier(encoder_without_pooler(config))
    return make_fsdp_ready(AutoModelForSequenceClassification.from_config(config))


@pytest.mark.parametrize("kind", ["absa", "seqcls"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_xl_config_wraps_every_encoder_layer(family, kind, monkeypatch):
    model = build(kind, tiny_config(family))
    layers = [m for m in model.modules() if type(m).__name__ == LAYER_CLASS[family]]
    assert layers and model._no_split_modules == [LAYER_CLASS[family]]
    wrapped = resolved_wrap_classes(model, monkeypatch)
    # Every layer is a unit of its own, and nothing else but them (accelerate adds the input embedding).
    assert len(wrapped) == len(layers) and set(wrapped) == {type(layers[0])}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fsdp_wrap_classes_are_the_encoder_layers(family):
    encoder = encoder_without_pooler(tiny_config(family))
    # Not transformers' list: empty for DeBERTa-v2 / ELECTRA / DistilBERT / ALBERT, and BERT's names BertEmbeddings.
    assert fsdp_wrap_classes(encoder) == [LAYER_CLASS[family]]


def test_model_without_repeated_layers_warns_under_fsdp(monkeypatch, caplog):
    # A list of torch's own modules (here Linear heads) is not a stack of layers.
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ModuleList([torch.nn.Linear(4, 2)] * 2))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level("WARNING", logger="absa.launch"):
        assert make_fsdp_ready(model)._no_split_modules == []
    assert "whole model is one FSDP unit" in caplog.text
    caplog.clear()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    make_fsdp_ready(model)
    assert not caplog.text  # without FSDP it does not matter


# ---------------------------------------------------------------- check_distributed_setup, in-process


def fake_accelerator(n=1, device="cpu", dtype=DistributedType.NO):
    return SimpleNamespace(num_processes=n, device=torch.device(device), distributed_type=dtype)


@pytest.fixture
def clean_env(monkeypatch):
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_plain_python_passes(clean_env):
    check_distributed_setup(fake_accelerator())


def test_torchrun_cpu_group_passes(clean_env):
    for k, v in {"WORLD_SIZE": "2", "LOCAL_RANK": "0", "ACCELERATE_USE_CPU": "true"}.items():
        clean_env.setenv(k, v)
    check_distributed_setup(fake_accelerator(2, dtype=DistributedType.MULTI_CPU))


def test_fsdp_on_gpus_passes(clean_env):
    env = launch_env("xl.yaml")
    for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_DYNAMO_BACKEND"):
        clean_env.setenv(k, env[k])
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("LOCAL_RANK", "0")
    check_distributed_setup(fake_accelerator(2, "cuda", DistributedType.FSDP))


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_gpu_config_on_cpu_refused(clean_env, name):
    env = launch_env(name)  # what accelerate launch exports, plus what torchrun adds per rank
    for k in ("ACCELERATE_USE_FSDP", "ACCELERATE_DYNAMO_BACKEND"):
        if k in env:
            clean_env.setenv(k, env[k])
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("LOCAL_RANK", "0")
    with pytest.raises(SystemExit, match="FSDP" if name in FSDP_CONFIGS else "multi-GPU") as exc:
        check_distributed_setup(fake_accelerator(1))
    assert "ACCELERATE_USE_CPU=true torchrun" in str(exc.value)


def test_world_size_mismatch_refused(clean_env):
    clean_env.setenv("WORLD_SIZE", "2")  # plain torchrun without ACCELERATE_USE_CPU on a CPU box
    with pytest.raises(SystemExit, match="independent copies"):
        check_distributed_setup(fake_accelerator(1))


def test_simple_launcher_one_of_many_refused(clean_env):
    # What `accelerate launch --cpu --num_processes 2` exports (measured): no WORLD_SIZE at all.
    for k, v in {"ACCELERATE_USE_CPU": "True", "ACCELERATE_DYNAMO_BACKEND": "NO",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        clean_env.setenv(k, v)
    with pytest.raises(SystemExit, match="started only this one"):
        check_distributed_setup(fake_accelerator(1))


# ---------------------------------------------------------------- real launches of a tiny script

PROBE = textwrap.dedent("""
    import sys, torch
    from accelerate import Accelerator
    from absa.launch import check_distributed_setup
    acc = Accelerator()
    check_distributed_setup(acc)
    assert acc.num_processes == int(sys.argv[1]), acc.num_processes
    total = acc.reduce(torch.ones(1, device=acc.device), reduction="sum").item()
    assert total == acc.num_processes, total  # a real process group, not N copies
    print(f"OK rank={acc.process_index} n={acc.num_processes} type={acc.distributed_type}")
    acc.end_training()  # destroys the gloo group; exiting without it aborts (SIGABRT) under torch 2.13
""")


def run(cmd, tmp_path, **env):
    (tmp_path / "probe.py").write_text(PROBE)
    clean = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    clean.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env)
    return subprocess.run(cmd, cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120)


@pytest.mark.multiprocess
def test_real_plain_python(tmp_path):
    out = run([sys.executable, "probe.py", "1"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "OK rank=0 n=1" in out.stdout


@pytest.mark.multiprocess
def test_real_torchrun_cpu_group_of_two(tmp_path):
    out = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "probe.py", "2"], tmp_path, ACCELERATE_USE_CPU="true")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("n=2 type=DistributedType.MULTI_CPU") == 2


@pytest.mark.multiprocess
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_real_fsdp_config_on_cpu_refused(tmp_path):
    out = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "xl.yaml"),
               "--num_processes", "2", "--main_process_port", "0", "probe.py", "2"], tmp_path)
    assert out.returncode != 0
    assert "Refusing to train: an FSDP launch" in out.stderr


@pytest.mark.multiprocess
def test_real_accelerate_cpu_two_processes_refused(tmp_path):
    out = run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
               "probe.py", "2"], tmp_path)
    assert out.returncode != 0
    assert "started only this one" in out.stderr


# ---------------------------------------------------------------- scale guide counts


def load_scale_guide():
    spec = importlib.util.spec_from_file_location("scale_guide", REPO / "bench" / "scale_guide.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("family,extra", [("xlm-roberta-xl", {}), ("deberta-v2", {"conv_kernel_size": 3})])
def test_scale_guide_counts_match_real_model(family, extra):
    config = tiny_config(family, **extra)
    total, layer = load_scale_guide().count_params(config)
    real = encoder_without_pooler(config)
    assert total == sum(p.numel() for p in real.parameters())
    assert layer == sum(p.numel() for p in real.encoder.layer[0].parameters())


# ---------------------------------------------------------------- several machines: one shared output_dir

MACHINE_PROBE = textwrap.dedent("""
    import sys
    from accelerate import Accelerator
    from absa.launch import check_shared_output_dir
    accelerator = Accelerator()
    check_shared_output_dir(accelerator, sys.argv[1])
    print(f"OK rank={accelerator.process_index} local={accelerator.local_process_index}", flush=True)
    accelerator.end_training()
""")


def two_machines(tmp_path, folder_of_machine) -> list[subprocess.CompletedProcess]:
    """Two torchrun "machines" of one process each on this host (static rendezvous, like accelerate's multi-node
    launch); machine R runs in folder_of_machine[R] with the relative --output_dir `run`."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    (tmp_path / "probe.py").write_text(MACHINE_PROBE)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    processes = []
    for machine, folder in enumerate(folder_of_machine):
        folder.mkdir(exist_ok=True)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(machine),
             "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
             str(tmp_path / "probe.py"), "run"],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in processes]


@pytest.mark.multiprocess
def test_machines_with_their_own_output_dir_are_refused(tmp_path):
    done = two_machines(tmp_path, [tmp_path / "machine0", tmp_path / "machine1"])
    for machine in done:  # every process stops with the same line, before anything is trained
        assert machine.returncode != 0 and "OK rank" not in machine.stdout
        assert "is not one shared folder for all 2 machines" in machine.stderr, machine.stderr[-2000:]
        assert "process(es) [1]" in machine.stderr


@pytest.mark.multiprocess
def test_machines_sharing_the_output_dir_pass(tmp_path):
    shared = tmp_path / "shared"
    done = two_machines(tmp_path, [shared, shared])
    for machine, rank in zip(done, (0, 1)):
        assert machine.returncode == 0, machine.stderr[-3000:]
        assert f"OK rank={rank} local=0" in machine.stdout
    assert list((shared / "run").iterdir()) == []  # the check leaves nothing behind


def test_make_accelerator_checks_the_output_dir(clean_env, monkeypatch, tmp_path):
    import absa.training
    from absa.settings import TrainingSettings

    checked = []
    monkeypatch.setattr(absa.training, "check_shared_output_dir", lambda acc, folder: checked.append(folder))
    absa.training.make_accelerator(TrainingSettings(output_dir=str(tmp_path / "run")))
    assert checked == [str(tmp_path / "run")]


@pytest.fixture(scope="module")
def scale_guide():
    return load_scale_guide()


@pytest.mark.parametrize("gpus", [3, 8])
def test_scale_guide_shard_is_what_fully_shard_stores(scale_guide, gpus):
    """One rank's share of XLM-R XL (the real config, on meta), counted by the guide and by torch's fully_shard
    itself on a fake process group of `gpus` ranks, per layer as accelerate wraps it."""
    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    name, model_type, values = next(m for m in scale_guide.MODELS if m[0] == "facebook/xlm-roberta-xl")
    config = AutoConfig.for_model(model_type, **values)
    model = scale_guide.build_meta(config)
    dist.init_process_group("fake", store=FakeStore(), rank=gpus - 1, world_size=gpus)  # the last rank: padding
    try:
        classes = fsdp_wrap_classes(model)
        for module in list(model.modules())[::-1]:
            if type(module).__name__ in classes:
                fully_shard(module)
        fully_shard(model)
        stored = sum(param._sharded_param_data.numel() for module in model.modules() if isinstance(module, FSDPModule)
                     for group in module._get_fsdp_state()._fsdp_param_groups for param in group.fsdp_params)
    finally:
        dist.destroy_process_group()
    assert stored == scale_guide.shard_elements(scale_guide.parameter_shapes(config), gpus)
    assert stored * gpus >= scale_guide.count_params(config)[0]


def test_scale_guide_table_is_the_readme_and_the_yaml_comments(scale_guide, capsys):
    """accelerate_configs/README.md shows the guide's output as it is, and xl.yaml / xxl.yaml state its GPU counts."""
    scale_guide.main(["--headroom", "0.2"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    readme = (CONFIGS / "README.md").read_text().splitlines()
    assert len(table) == 13 and all(line in readme for line in table)
    rows = {row["model"]: row for row in scale_guide.rows(0.2)}
    gpus_key = next(key for key in rows["`facebook/xlm-roberta-xl`"] if key.startswith("FSDP2 min GPUs"))
    for name, yaml in (("facebook/xlm-roberta-xl", "xl.yaml"), ("facebook/xlm-roberta-xxl", "xxl.yaml")):
        counts = rows[f"`{name}`"][gpus_key].split(" / ")
        stated = ", ".join(f">= {n} x {size} GiB" for n, size in zip(counts, scale_guide.GPUS))
        assert f"{name.split('/')[1]}: {stated}" in (CONFIGS / yaml).read_text(), stated
