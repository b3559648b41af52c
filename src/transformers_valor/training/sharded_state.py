"""The FSDP2-sharded part of a checkpoint: each process's shards of the weights and optimizer, without pickle.

`torch.distributed.checkpoint` has two halves. Its state-dict API (`get_model_state_dict`,
`get_optimizer_state_dict`, `set_model_state_dict`, `set_optimizer_state_dict`) turns an FSDP2 module and its
optimizer into dictionaries keyed by parameter names whose values are DTensors (this process's shard plus its
placement), and loads such dictionaries back. Its storage half (`dcp.save` / `FileSystemWriter`) writes a
pickled `.metadata` file and pickles non-tensor values, so it is not used. Here every process writes its local
shards with safetensors and the rest (the optimizer's step counts, hyperparameters, structure) as JSON through
`safe_state`:

- `model_shard_<rank>.safetensors`: the local shard of every parameter and the buffers, by name (a weight tied to
  another one, such as the MLM decoder and the word embeddings, is stored once, under its first name);
- `optimizer_shard_<rank>.json` + `.safetensors`: the optimizer state keyed by parameter name, each DTensor stored
  as its local shard.

Placements are not stored: loading rebuilds each DTensor from the local shard with the placement the model being
resumed has, which must be the same sharding (same processes, same FSDP units); local shapes are checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from .safe_state import StateFileError, check_like, load_state_tree, save_state_tree

MODEL_SHARD = "model_shard_{rank}.safetensors"
OPTIMIZER_SHARD = "optimizer_shard_{rank}"


def _torch_optimizer(optimizer):
    """The torch optimizer inside Accelerate's `AcceleratedOptimizer` (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def _to_local(tree: Any) -> Any:
    """`tree` with every DTensor replaced by this process's shard (a plain CPU-ready tensor)."""
    if isinstance(tree, DTensor):
        return tree.to_local()
    if isinstance(tree, dict):
        return {key: _to_local(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_local(value) for value in tree)
    return tree


def _from_local(loaded: Any, template: Any) -> Any:
    """`loaded` (a tree of local shards) with a DTensor wherever `template` (the live state) has one."""
    if isinstance(template, DTensor):
        local = loaded.to(device=template.device, dtype=template.dtype)
        return DTensor.from_local(
            local, template.device_mesh, template.placements, shape=template.shape, stride=template.stride()
        )
    if isinstance(template, dict):
        return {key: _from_local(loaded[key], value) for key, value in template.items()}
    if isinstance(template, (list, tuple)):
        return type(template)(_from_local(a, b) for a, b in zip(loaded, template))
    if isinstance(template, torch.Tensor):
        return loaded.to(device=template.device)
    return loaded


def _unique_entries(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Entries of `model`'s state dict stored once each, and `{alias: first name}` of tied parameters."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in first:
            aliases[name] = first[id(parameter)]
        else:
            first[id(parameter)] = name
    return {k: v for k, v in state.items() if k not in aliases}, {
        k: v for k, v in aliases.items() if k in state
    }


def save_sharded_state(folder: Path, rank: int, model: nn.Module, optimizer) -> list[Path]:
    """Write this process's model and optimizer shards into `folder` (every process calls it); the files written."""
    unique, _ = _unique_entries(model, get_model_state_dict(model))
    model_file = folder / MODEL_SHARD.format(rank=rank)
    save_file({k: v.detach().cpu().contiguous() for k, v in _to_local(unique).items()}, str(model_file))
    optimizer_state = get_optimizer_state_dict(model, _torch_optimizer(optimizer))
    return [
        model_file,
        *save_state_tree(_to_local(optimizer_state), folder / OPTIMIZER_SHARD.format(rank=rank)),
    ]


def load_sharded_state(folder: Path, rank: int, model: nn.Module, optimizer) -> None:
    """
    Load this process's shards from `folder` into the FSDP2 `model` and its `optimizer`.

    Raises:
        StateFileError: a file is missing or unreadable, or its names and local shapes differ from the model's
            (another model, or another sharding).
    """
    model_file = folder / MODEL_SHARD.format(rank=rank)
    try:
        stored = load_file(str(model_file))
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise StateFileError(f"{model_file} cannot be read as safetensors: {err}") from err
    template = get_model_state_dict(model)
    unique, aliases = _unique_entries(model, template)
    check_like(stored, _to_local(unique), model_file.name)
    state = {name: _from_local(stored[name], tensor) for name, tensor in unique.items()}
    state.update({alias: state[name] for alias, name in aliases.items()})
    set_model_state_dict(model, state, options=StateDictOptions(strict=True))

    torch_optimizer = _torch_optimizer(optimizer)
    where = OPTIMIZER_SHARD.format(rank=rank)
    loaded = load_state_tree(folder / where)
    if not isinstance(loaded, dict) or not isinstance(loaded.get("state"), dict):
        raise StateFileError(f"{where}: expected an optimizer state with 'state' and 'param_groups'.")
    # The live optimizer's state (DCP fills every parameter's); the file holds the parameters that had gradients.
    template = get_optimizer_state_dict(model, torch_optimizer)
    unknown = sorted(set(loaded["state"]) - set(template["state"]))
    if unknown:
        raise StateFileError(f"{where}: state of parameters the model does not have: {unknown[:5]}.")
    template = {
        "state": {name: template["state"][name] for name in loaded["state"]},
        "param_groups": template["param_groups"],
    }
    check_like(loaded, _to_local(template), where)
    # Not strict: parameters that never had a gradient (unused prompts, towers a run does not read) have no
    # state, as in the run that wrote the file; every other entry was checked above.
    options = StateDictOptions(strict=False)
    set_optimizer_state_dict(model, torch_optimizer, _from_local(loaded, template), options=options)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights of an FSDP2 `model` on the main process's CPU (empty on the others), a tied weight under
    its first name only (gathered copies no longer share memory, so `save_pretrained` could not see the tie);
    a collective."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return _unique_entries(model, state)[0]
