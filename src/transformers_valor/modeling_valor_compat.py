"""Load-time shims for VALOR weights written before a parameter changed shape.

The MGA temperature (`temperature`, VALOR-B) and the CLIP-style `logit_scale` (VALOR-L) are 1-d parameters of one
element: FSDP2's `fully_shard` refuses 0-d parameters ("fully_shard doesn't support scalar parameters"), and they
were 0-d in earlier versions (in `save_pretrained` folders, training checkpoints and the converter's output). Two
paths load weights, and each gets the reshape:

- `from_pretrained` goes through transformers' weight-conversion mapping: [`register_scalar_parameter_shim`]
  registers an [`AtLeast1d`] conversion for the `valor` model type (its reverse, applied when saving, is itself,
  so folders are written 1-d);
- `load_state_dict` (training checkpoints read with safetensors, the converter, `init_from_encoders`) runs the
  module pre-hook [`scalar_parameters_to_1d`], which `ValorModel` registers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.core_model_loading import ConversionOps, WeightConverter

# Names of `ValorModel` parameters that earlier versions stored as 0-d tensors.
SCALAR_PARAMETERS: tuple[str, ...] = ("temperature", "logit_scale")


class AtLeast1d(ConversionOps):
    """A weight conversion that turns a 0-d tensor into a 1-element 1-d tensor; other tensors pass unchanged."""

    @torch.no_grad()
    def convert(
        self, input_dict: dict[str, Any], source_patterns: list[str], target_patterns: list[str], **kwargs
    ) -> dict[str, torch.Tensor]:
        """`{target: tensor}` with the single collected tensor reshaped to `(1,)` when it is 0-d."""
        (tensors,) = input_dict.values()
        tensor = tensors[0] if isinstance(tensors, list) else tensors
        return {target_patterns[0]: tensor.reshape(1) if tensor.dim() == 0 else tensor}

    @property
    def reverse_op(self) -> ConversionOps:
        """Itself: saving keeps the 1-d shape."""
        return self


def register_scalar_parameter_shim(model_type: str = "valor") -> None:
    """Register the [`AtLeast1d`] conversions of [`SCALAR_PARAMETERS`] for `model_type` (once per process)."""
    if get_checkpoint_conversion_mapping(model_type) is not None:
        return
    converters = [WeightConverter(name, name, [AtLeast1d()]) for name in SCALAR_PARAMETERS]
    register_checkpoint_conversion_mapping(model_type, converters)


def scalar_parameters_to_1d(
    module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *args: Any, **kwargs: Any
) -> None:
    """`load_state_dict` pre-hook: reshape a 0-d `<prefix>temperature` / `<prefix>logit_scale` entry to `(1,)`."""
    for name in SCALAR_PARAMETERS:
        key = prefix + name
        value = state_dict.get(key)
        if (
            isinstance(value, torch.Tensor)
            and value.dim() == 0
            and isinstance(getattr(module, name, None), nn.Parameter)
        ):
            state_dict[key] = value.reshape(1)
