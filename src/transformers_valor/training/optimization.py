"""AdamW with VALOR's settings and the warm-up + decay learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import get_scheduler

from .config import OptimizerArguments

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _no_decay_names(model: nn.Module) -> set[str]:
    names = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if param_name == "bias" or isinstance(module, _NORM_TYPES) or param.numel() == 1:
                names.add(full)
    return names


def build_optimizer(model: nn.Module, args: OptimizerArguments) -> torch.optim.AdamW:
    """
    AdamW with VALOR's settings: betas (0.9, 0.98), weight decay 0.01 on weight matrices and embeddings only,
    i.e. no decay on biases, LayerNorm (and other normalisation) weights and the scalar temperature; optional
    per-prefix learning rates (`learning_rate_overrides`, prefixes of `model`'s parameter names).
    """
    no_decay = _no_decay_names(model)
    overrides = sorted(
        args.learning_rate_overrides.items(), key=lambda kv: -len(kv[0])
    )  # longest prefix wins
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = next((value for prefix, value in overrides if name.startswith(prefix)), args.learning_rate)
        decay = 0.0 if name in no_decay else args.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    param_groups = [
        {"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()
    ]
    return torch.optim.AdamW(param_groups, lr=args.learning_rate, betas=tuple(args.betas), eps=args.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, args: OptimizerArguments, num_training_steps: int):
    """Warm-up (`warmup_steps` or `warmup_ratio` of the steps) then `lr_scheduler` decay (linear by default)."""
    warmup = (
        args.warmup_steps
        if args.warmup_steps is not None
        else math.ceil(args.warmup_ratio * num_training_steps)
    )
    return get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=num_training_steps
    )
