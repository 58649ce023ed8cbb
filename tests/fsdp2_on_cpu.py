"""Test-only launcher: run one of the repository's scripts with FSDP2 really in effect on CPU processes (gloo).

accelerate enters its FSDP path only on GPU distributed types, but the FSDP2 code itself (fully_shard, DTensor
all-gathers, sharded save_state / load_state, full state-dict gathers) runs on CPU. Started as

    ACCELERATE_USE_CPU=true <the FSDP_* environment of accelerate_configs/xl.yaml> \
        python -m torch.distributed.run --nproc_per_node N tests/fsdp2_on_cpu.py finetune_absa.py ARGS

this makes every Accelerator the scripts create an FSDP2 one, with the plugin built from that environment exactly
as `accelerate launch --config_file accelerate_configs/xl.yaml` would build it, and prints one line per prepared
model saying whether it is sharded, so a test can assert it from inside the run. Nothing else is changed.
"""

import runpy
import sys
from pathlib import Path

import accelerate
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import absa.training  # noqa: E402


class Fsdp2OnCpu(accelerate.Accelerator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        plugin = FullyShardedDataParallelPlugin()  # fsdp_version, state-dict type, wrap policy: from FSDP_* vars
        if self.mixed_precision != "no":
            plugin.set_mixed_precision(self.mixed_precision)
        self.state.fsdp_plugin = plugin
        # Both states: every new AcceleratorState() copies PartialState's fields over its own.
        self.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    def prepare(self, *objects, **kwargs):
        from torch.distributed.fsdp import FSDPModule

        prepared = super().prepare(*objects, **kwargs)
        for model in (p for p in (prepared if isinstance(prepared, (list, tuple)) else (prepared,)) if isinstance(p, nn.Module)):
            units = sum(isinstance(module, FSDPModule) for module in model.modules())
            print(f"fsdp2 check: rank {self.process_index} of {self.num_processes}, is_fsdp2 {self.is_fsdp2}, "
                  f"sharded {isinstance(model, FSDPModule)}, units {units}, {type(model).__name__}", flush=True)
        return prepared


absa.training.Accelerator = Fsdp2OnCpu
script = str(Path(sys.argv[1]).resolve())
sys.argv = sys.argv[1:]
sys.path.insert(0, str(Path(script).parent))
runpy.run_path(script, run_name="__main__")
