"""Start-up checks: the launcher really started the distributed run it was asked for; bf16 is native.

Two accelerate 1.15 traps train silently in the wrong way (measured, see accelerate_configs/README.md):
* `accelerate launch --cpu --num_processes 2` (or a MULTI_CPU config) starts ONE process unless MPI is
  used; a GPU/FSDP config on a machine without GPUs starts N processes that each see
  DistributedType.NO and all train the same thing independently.
* An FSDP / multi-GPU config on a machine without GPUs therefore never shards anything.
"""

import logging
import os
import time
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, broadcast_object_list

logger = logging.getLogger(__name__)

# One precision vocabulary for training and use: no (fp32), fp16 and bf16 autocast, auto (bf16 where it is native).
MIXED_PRECISIONS = ("no", "fp16", "bf16", "auto")
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


def check_shared_output_dir(accelerator, output_dir) -> None:
    """Raise SystemExit on every process unless every machine of a multi-machine run sees the same output_dir.

    Every process writes its own checkpoint shards there, and process 0 alone renames and rotates the checkpoint
    folders and writes the best model and results; on a disk local to each machine the other machines' shards
    would land in folders nobody renames, and a resumed run would find incomplete checkpoints. Checked with a file
    process 0 writes and the first process of every machine must find; one machine needs nothing.
    """
    from accelerate.utils import broadcast_object_list, gather_object

    first_on_machine = gather_object([accelerator.local_process_index == 0])
    if sum(first_on_machine) < 2:
        return
    marker = Path(output_dir) / ".shared_filesystem_check"
    decision = [None, None]  # (token written, why it could not be)
    if accelerator.is_main_process:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{os.getpid()}-{time.time_ns()}")
            decision[0] = marker.read_text()
        except OSError as error:
            decision[1] = f"--output_dir {output_dir}: cannot write there ({error})"
    token, refusal = broadcast_object_list(decision)
    if refusal:
        raise SystemExit(refusal)
    accelerator.wait_for_everyone()
    sees = accelerator.local_process_index != 0 or (marker.is_file() and marker.read_text() == token)
    blind = [index for index, seen in enumerate(gather_object([sees])) if not seen]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker.unlink(missing_ok=True)
    if blind:
        raise SystemExit(
            f"Refusing to train: --output_dir {output_dir} is not one shared folder for all "
            f"{sum(first_on_machine)} machines: the machine(s) of process(es) {blind} do not see the file process 0 "
            "wrote there. Every process writes checkpoint shards into it and process 0 renames them and writes the "
            "best model, so it must be on a filesystem all machines mount (NFS, Lustre, ...) under the same path.")


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


def resolve_mixed_precision(choice: str, device) -> str:
    """`--mixed_precision` on `device`: auto is bf16 where bf16 is native (see `bf16_is_native`), else no (fp32)."""
    if choice not in MIXED_PRECISIONS:
        raise ValueError(f"mixed precision must be one of {', '.join(MIXED_PRECISIONS)}, got {choice!r}")
    if choice == "auto":
        return "bf16" if bf16_is_native(device) else "no"
    return choice


def end_run() -> None:
    """Tear down the process group once every process is done: a process that destroys the gloo group while
    another still writes its files can abort that one."""
    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()


def decided_by_main(accelerator, decide, *arguments):
    """`decide(*arguments)` on the main process only; its result, or its one-line refusal (a SystemExit, or a
    ValueError such as DataError naming the file, row and field), handed to every process: all go on alike or all
    stop."""
    outcome = [None, None]
    if accelerator.is_main_process:
        try:
            outcome = [decide(*arguments), None]
        except ValueError as error:
            outcome = [None, str(error)]
        except SystemExit as error:
            outcome = [None, error.code]
    broadcast_object_list(outcome)
    if outcome[1] is not None:
        raise SystemExit(outcome[1])
    return outcome[0]
