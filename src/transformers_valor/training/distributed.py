"""The distributed engine of a run: what the launch asked for, what Accelerate set up, and FSDP2 applied by the
loop where Accelerate does not apply it (the CPU).

`accelerate launch --config_file` hands its config to the script as environment variables (`ACCELERATE_USE_FSDP`,
`FSDP_VERSION`, `FSDP_*`, `ACCELERATE_USE_DEEPSPEED`, `ACCELERATE_MIXED_PRECISION`, ...). Accelerate 1.15 then
enables FSDP and DeepSpeed on accelerator devices only: on the CPU an FSDP config silently runs MULTI_CPU DDP, and a
DeepSpeed config does too (with `cpu=True`), or with `cpu=False` runs DeepSpeed while Accelerate counts one process
on every rank. [`resolve_engine`] compares what was asked with what runs and raises [`DistributedEngineError`] when
they differ, except in the one case the loop handles itself: FSDP2 asked for on the CPU, where [`shard_objective`]
applies Accelerate's own FSDP2 preparation (`accelerate.utils.fsdp2_prepare_model`: `fully_shard` on every layer
class of the auto-wrap policy, then on the training objective as the root) with the FSDP plugin Accelerate builds
from the same environment, so the CPU runs the wrapping a GPU launch of the same config runs.

The root of the sharding is the training objective (`training.objectives`), not the model: its `forward` is the
one call per step (FSDP2 gathers the root's own parameters in its pre-forward hook), and it may call the model's
methods rather than its `forward` (`ValorForPreTraining.compute_losses`, `get_text_features`, `generate` for
SCST); the layers it reaches that way are units of their own, gathered by their own `forward` hooks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal

from accelerate import Accelerator
from accelerate.utils import (
    DistributedType,
    FullyShardedDataParallelPlugin,
    fsdp2_apply_ac,
    fsdp2_prepare_model,
)
from torch import nn

logger = logging.getLogger(__name__)

Engine = Literal["default", "fsdp", "deepspeed", "megatron_lm"]
# Distributed types that keep a whole copy of the weights in every process.
REPLICATED_TYPES = {t for t in DistributedType if t.name == "NO" or t.name.startswith("MULTI_")}
_ENGINE_TYPES = {
    "fsdp": DistributedType.FSDP,
    "deepspeed": DistributedType.DEEPSPEED,
    "megatron_lm": DistributedType.MEGATRON_LM,
}


class DistributedEngineError(RuntimeError):
    """The distributed engine that would run is not the one the launch asked for; the message says why."""


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "false").lower() == "true"


@dataclass(frozen=True)
class EngineRequest:
    """What the launch asked for: the engine (`default`: DDP or one process), the FSDP version, the processes."""

    engine: Engine = "default"
    fsdp_version: int | None = None
    world_size: int = 1


def requested_engine(environ: Mapping[str, str] | None = None) -> EngineRequest:
    """The engine the `accelerate launch` config asked for, read from the environment it sets."""
    environ = os.environ if environ is None else environ
    world_size = int(environ.get("WORLD_SIZE", "1"))
    if _flag(environ, "ACCELERATE_USE_DEEPSPEED"):
        return EngineRequest("deepspeed", world_size=world_size)
    if _flag(environ, "ACCELERATE_USE_FSDP"):
        return EngineRequest("fsdp", int(environ.get("FSDP_VERSION", "1")), world_size)
    if _flag(environ, "ACCELERATE_USE_MEGATRON_LM"):
        return EngineRequest("megatron_lm", world_size=world_size)
    return EngineRequest(world_size=world_size)


@dataclass
class DistributedEngine:
    """
    The engine a run uses.

    Args:
        request ([`EngineRequest`]): what the launch asked for.
        distributed_type (`DistributedType`): what Accelerate set up.
        loop_fsdp2 (`FullyShardedDataParallelPlugin`, *optional*): set when the loop applies FSDP2 itself (FSDP2
            asked for on the CPU); the plugin Accelerate built from the launch config.
    """

    request: EngineRequest
    distributed_type: DistributedType
    loop_fsdp2: FullyShardedDataParallelPlugin | None = None

    def describe(self) -> str:
        """One line for the log."""
        if self.loop_fsdp2 is not None:
            return (
                "FSDP2 (fully_shard applied by the training loop; Accelerate runs FSDP on accelerators only)"
            )
        return self.distributed_type.name


def resolve_engine(accelerator: Accelerator, environ: Mapping[str, str] | None = None) -> DistributedEngine:
    """
    Check that the engine Accelerate set up is the one the launch asked for.

    Raises:
        DistributedEngineError: FSDP version 1 or DeepSpeed asked for where Accelerate does not run it, an FSDP
            launch of a single process, or Accelerate counting another number of processes than were launched.
    """
    request = requested_engine(environ)
    actual = accelerator.distributed_type
    if request.world_size != accelerator.num_processes:
        raise DistributedEngineError(
            f"{request.world_size} processes were launched (WORLD_SIZE) but Accelerate runs {actual.name} with "
            f"{accelerator.num_processes} process(es); every rank would act as the main process. "
            + _why(request, accelerator)
        )
    if request.engine == "default" or actual == _ENGINE_TYPES[request.engine]:
        return DistributedEngine(request, actual)
    if request.engine == "fsdp" and request.fsdp_version == 2 and actual == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        return DistributedEngine(request, actual, loop_fsdp2=plugin)
    raise DistributedEngineError(
        f"The accelerate config asks for {request.engine.upper()}"
        + (f" (fsdp_version {request.fsdp_version})" if request.engine == "fsdp" else "")
        + f" but Accelerate set up {actual.name}. "
        + _why(request, accelerator)
    )


def _why(request: EngineRequest, accelerator: Accelerator) -> str:
    """The reason a requested engine does not run here, and what to do."""
    device = accelerator.device.type
    if request.engine == "fsdp" and request.world_size < 2:
        return "FSDP shards over processes: launch two or more (`--num_processes`)."
    if request.engine == "fsdp":
        return (
            f"Accelerate enables FSDP on accelerator devices only (this run is on {device}); on the CPU the "
            "training loop applies FSDP2 itself: set `fsdp_version: 2` in the accelerate config."
        )
    if request.engine == "deepspeed":
        return (
            f"Accelerate enables DeepSpeed on accelerator devices only (this run is on {device}); on the CPU use "
            "DDP or FSDP2 (docs/pretraining.md, 'DeepSpeed')."
        )
    return f"Launch with the accelerate config the engine needs (this run is on {device})."


def is_fsdp2(module: nn.Module) -> bool:
    """Whether `module` (or the module a wrapper holds) has been sharded by FSDP2's `fully_shard`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule) or isinstance(getattr(module, "module", None), FSDPModule)


class _AcceleratorView:
    """The attributes of an `Accelerator` that `fsdp2_prepare_model` and `fsdp2_apply_ac` read, with the FSDP plugin
    that `AcceleratorState` drops on the CPU."""

    def __init__(self, accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin):
        self.state = SimpleNamespace(fsdp_plugin=plugin)
        self.mixed_precision = accelerator.mixed_precision
        self.is_main_process = accelerator.is_main_process
        self.device = accelerator.device
        self.torch_device_mesh = None
        self.parallelism_config = None


def shard_objective(accelerator: Accelerator, engine: DistributedEngine, objective: nn.Module) -> nn.Module:
    """
    Apply FSDP2 to the training objective when the loop runs it ([`DistributedEngine.loop_fsdp2`]); otherwise
    return it unchanged (Accelerate's `prepare` wraps it). Build the optimizer afterwards: `fully_shard` replaces
    the parameters.
    """
    plugin = engine.loop_fsdp2
    if plugin is None:
        return objective
    view = _AcceleratorView(accelerator, plugin)
    plugin.set_auto_wrap_policy(objective)
    if plugin.activation_checkpointing:
        objective = fsdp2_apply_ac(view, objective)
    objective = fsdp2_prepare_model(view, objective)
    logger.info(
        "FSDP2 on %d processes: units %s, reshard_after_forward=%s, %s",
        accelerator.num_processes,
        plugin.transformer_cls_names_to_wrap,
        plugin.reshard_after_forward,
        plugin.mixed_precision_policy,
    )
    return objective


def prepare_objective(accelerator: Accelerator, engine: DistributedEngine, objective: nn.Module, optimizer):
    """`accelerator.prepare` of the objective and optimizer; only of the optimizer when the loop sharded the
    objective (Accelerate would wrap it in DDP)."""
    if engine.loop_fsdp2 is not None:
        return objective, accelerator.prepare(optimizer)
    return accelerator.prepare(objective, optimizer)


@contextmanager
def unsharded(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, an FSDP2 `module`'s own parameters are whole (gathered on every process, which must all
    enter it), e.g. to read the temperature outside a forward; other modules pass unchanged."""
    if not is_fsdp2(module):
        yield module
        return
    module.unshard()
    try:
        yield module
    finally:
        module.reshard()
