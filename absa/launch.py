"""Start-up checks: the launcher really started the distributed run it was asked for; bf16 is native.

Two accelerate 1.15 traps train silently in the wrong way (measured, see accelerate_configs/README.md):
* `accelerate launch --cpu --num_processes 2` (or a MULTI_CPU config) starts ONE process unless MPI is
  used; a GPU/FSDP config on a machine without GPUs starts N processes that each see
  DistributedType.NO and all train the same thing independently.
* An FSDP / multi-GPU config on a machine without GPUs therefore never shards anything.
"""

import os

import torch
from accelerate.utils import DistributedType

CPU_LAUNCH = "ACCELERATE_USE_CPU=true torchrun --nproc_per_node N SCRIPT ARGS"

# Where torchrun (WORLD_SIZE) and MPI launchers announce the number of processes they started;
# the same variables accelerate's own get_cpu_distributed_information() reads.
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _announced_world_size():
    for var in _WORLD_SIZE_VARS:
        if os.environ.get(var):
            return var, int(os.environ[var])
    return None, None


def _flag(var):
    return os.environ.get(var, "").lower() in ("1", "true", "yes")


def fsdp_wrap_classes(model) -> list[str]:
    """Class names of the encoder's layers (BertLayer, XLMRobertaXLLayer, DebertaV2Layer, ...) for FSDP's
    TRANSFORMER_BASED_WRAP: assign them to `model._no_split_modules` before `accelerator.prepare`.

    Not transformers' own `_no_split_modules`: it is empty for DeBERTa-v2 and ELECTRA (then no layer would be
    wrapped and the whole model would be one FSDP unit), and BERT's names BertEmbeddings, inside which accelerate
    1.15 then shards the input embedding a second time and fails.
    """
    layer_lists = [module for name, module in model.named_modules() if name.endswith("encoder.layer")]
    return sorted({type(layer).__name__ for layers in layer_lists for layer in layers})


def make_fsdp_ready(model):
    """Set the FSDP wrap classes and give every parameter real storage; returns the model.

    With FSDP's cpu_ram_efficient_loading, transformers leaves newly initialised weights (a classification head) on
    the meta device on every rank but the first. accelerate maps the optimizer's parameters to the sharded ones by
    `data_ptr()`, which is 0 for every meta tensor, so those weights would share one optimizer slot (wrong updates,
    and a crash when the optimizer state is saved). Empty real storage gives them distinct pointers; their values
    come from rank 0 when the model is sharded.
    """
    model._no_split_modules = fsdp_wrap_classes(model)
    for module in model.modules():
        if any(parameter.is_meta for parameter in module.parameters(recurse=False)):
            module.to_empty(device="cpu", recurse=False)
    return model


def check_distributed_setup(accelerator) -> None:
    """Raise SystemExit if the launch does not match what the launcher was asked for."""
    env = os.environ
    n = accelerator.num_processes
    # Every `accelerate launch` path exports ACCELERATE_DYNAMO_BACKEND; plain python/torchrun do not.
    by_accelerate = "ACCELERATE_DYNAMO_BACKEND" in env
    # accelerate uses torchrun (which sets LOCAL_RANK) only for its GPU launchers (multi-GPU, FSDP, ...).
    gpu_launcher = by_accelerate and "LOCAL_RANK" in env
    fsdp = _flag("ACCELERATE_USE_FSDP")

    # The failure is FSDP asked for but not in effect (accelerate falls back to plain CPU processes without GPUs).
    not_sharded = fsdp and accelerator.distributed_type != DistributedType.FSDP
    if not_sharded or (gpu_launcher and accelerator.device.type == "cpu"):
        what = "an FSDP" if fsdp else "a multi-GPU"
        raise SystemExit(
            f"Refusing to train: {what} launch was requested but this process runs on the CPU "
            f"(no GPU found; accelerate reports {accelerator.distributed_type}, {n} process(es)), so "
            "nothing would be sharded and every process would train its own copy. On a GPU machine use "
            "accelerate_configs/xl.yaml or xxl.yaml; without GPUs start a real gloo process group with "
            f"`{CPU_LAUNCH}` (or plain `python SCRIPT ARGS` for one process)."
        )

    var, announced = _announced_world_size()
    if announced is not None and announced != n:
        raise SystemExit(
            f"Refusing to train: the launcher started {announced} processes ({var}={announced}) but "
            f"accelerate formed a group of {n} ({accelerator.distributed_type}), so the processes would "
            "train independent copies of the same model. This happens when a GPU config or plain torchrun "
            f"is used without GPUs; on CPU use `{CPU_LAUNCH}`."
        )

    # accelerate's simple launcher sets MASTER_ADDR only when more than one process was asked for,
    # and then (without MPI) still starts just this one.
    if announced is None and by_accelerate and "MASTER_ADDR" in env and n == 1:
        raise SystemExit(
            "Refusing to train: `accelerate launch` was asked for more than one process (it exported "
            f"MASTER_ADDR={env['MASTER_ADDR']}) but started only this one; accelerate 1.15 does this for "
            "--cpu --num_processes N and for MULTI_CPU configs unless MPI is used. Start a real gloo "
            f"process group with `{CPU_LAUNCH}`, or drop --num_processes (and unset MASTER_ADDR) to "
            "run one process."
        )


def keep_freed_memory() -> bool:
    """Ask glibc to serve large blocks from its heap and keep them when freed (CPU training, Linux).

    Every step frees and allocates again blocks of tens of MB (the word-embedding gradient is 47 MB for MiniLM);
    glibc hands blocks over 32 MB out as fresh mmap pages that fault in on every step. Measured on a 2-core Xeon
    with AMX: 1.25x faster bf16 training of MiniLM (bench/README.md). False where this is not glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl and macOS have other allocators)
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))


def bf16_is_native(device) -> bool:
    """Whether `device` computes bf16 natively: CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX-BF16 (elsewhere
    bf16 is emulated and slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":  # not counting emulation: pre-Ampere GPUs (T4, V100) emulate bf16, slowly
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        capabilities = getattr(torch.cpu, "get_capabilities", dict)()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False
