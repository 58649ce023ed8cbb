"""Test-only launcher: run one of the repository's scripts with FSDP2 really in effect on CPU processes (gloo).

accelerate enters its FSDP path only on GPU distributed types, but the FSDP2 code itself (fully_shard, DTensor
all-gathers, sharded save_state / load_state, full state-dict gathers) runs on CPU. Started as

    ACCELERATE_USE_CPU=true <the FSDP_* environment of accelerate_configs/xl.yaml> \
        python -m torch.distributed.run --nproc_per_node N tests/fsdp2_on_cpu.py finetune_absa.py ARGS

this makes every Accelerator the scripts create an FSDP2 one, with the plugin built from that environment exactly
as `accelerate launch --config_file accelerate_configs/xl.yaml` would build it, and prints one line per prepared
model saying whether it is sharded (and how many of its parameters were on meta before), and one line per
transformers.pipeline built, so a test can assert them from inside the run. Nothing else is changed.
"""

import gc
import runpy
import sys
from pathlib import Path

import accelerate
import transformers
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

        # Parameters on the meta device before sharding: with cpu_ram_efficient_loading, all of them on ranks > 0.
        on_meta = [(sum(p.is_meta for p in o.parameters()), len(list(o.parameters())))
                   for o in objects if isinstance(o, nn.Module)]
        prepared = super().prepare(*objects, **kwargs)
        models = [p for p in (prepared if isinstance(prepared, (list, tuple)) else (prepared,))
                  if isinstance(p, nn.Module)]
        for model, (meta, params) in zip(models, on_meta):
            units = sum(isinstance(module, FSDPModule) for module in model.modules())
            print(f"fsdp2 check: rank {self.process_index} of {self.num_processes}, is_fsdp2 {self.is_fsdp2}, "
                  f"sharded {isinstance(model, FSDPModule)}, units {units}, {type(model).__name__}, "
                  f"on meta before sharding {meta} of {params}, mixed precision {self.mixed_precision}", flush=True)
        return prepared


def pipeline_beside_live_shards(*args, **kwargs):
    """transformers.pipeline, reporting how many FSDP2 units are alive in this process when it is built: a full
    model built beside a sharded one is what a GPU cannot hold for XL/XXL."""
    from torch.distributed.fsdp import FSDPModule

    units = sum(isinstance(o, FSDPModule) for o in gc.get_objects())
    print(f"fsdp2 check: pipeline built on rank {PartialState().process_index} beside {units} live FSDP units",
          flush=True)
    return build_pipeline(*args, **kwargs)


absa.training.Accelerator = Fsdp2OnCpu
build_pipeline = transformers.pipeline
# The first attribute access replaces transformers' lazy module in sys.modules: patch the old and the new object.
transformers.pipeline = sys.modules["transformers"].pipeline = pipeline_beside_live_shards
script = str(Path(sys.argv[1]).resolve())
sys.argv = sys.argv[1:]
sys.path.insert(0, str(Path(script).parent))
runpy.run_path(script, run_name="__main__")
