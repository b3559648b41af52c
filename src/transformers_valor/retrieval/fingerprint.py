"""What identifies the model and the processor a gallery was built with.

A gallery's features are only comparable with queries encoded by the same model, so a saved gallery records the
model's fingerprint and refuses another model. The fingerprint is a SHA-256 of:

- the config fields that change what the towers and MGA heads compute without showing in a weight's name or
  shape (`COMPUTE_FIELDS`: `contrastive_type`; each tower's `model_type`, activation, LayerNorm epsilon, patch,
  window and image sizes); everything else that matters shows in the state dict. The list is explicit, so that
  a later version adding config fields (with defaults) does not invalidate saved galleries;
- every value of the MGA heads: the text / video / audio projections, the fine-grained weight MLPs and the
  coarse audiovisual fusion (what turns encoder outputs into the MGA space);
- the name, shape and 64 evenly spaced values of every other tensor of the state dict (any training step or
  another checkpoint changes them), in float32.

The processor description records the video processor's and the feature extractor's settings together with the
frame / clip counts and processor arguments the gallery was encoded with, and their hash (the text tokenizer is
the model's side: it only reads the queries); encoding more items into a gallery compares the settings both
sides have (`settings_differences`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

MGA_HEAD_PREFIXES: tuple[str, ...] = (
    "text_projection.",
    "video_projection.",
    "audio_projection.",
    "text_weight_mlp.",
    "video_weight_mlp.",
    "audio_weight_mlp.",
    "audiovisual_fusion.",
)
SAMPLED_VALUES = 64
COMPUTE_FIELDS: dict[str, tuple[str, ...]] = {
    "": ("contrastive_type",),
    "text_config": ("model_type", "hidden_act", "layer_norm_eps"),
    "vision_config": (
        "model_type",
        "hidden_act",
        "layer_norm_eps",
        "patch_size",
        "window_size",
        "image_size",
        "temporal_stride",
    ),
    "audio_config": ("model_type", "hidden_act", "layer_norm_eps", "patch_size", "image_size"),
}
_VOLATILE_SETTINGS = frozenset({"_processor_class", "processor_class", "transformers_version"})


def _compute_config(config) -> dict[str, Any]:
    """The `COMPUTE_FIELDS` of a config and its tower configs (absent fields are left out)."""
    out = {}
    for sub, fields in COMPUTE_FIELDS.items():
        part = getattr(config, sub) if sub else config
        out[sub or "model"] = {f: getattr(part, f) for f in fields if getattr(part, f, None) is not None}
    return out


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in sorted(value.items()) if k not in _VOLATILE_SETTINGS}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return value


def _tensor_bytes(tensor: torch.Tensor, sample: bool) -> bytes:
    flat = tensor.detach().reshape(-1).to(device="cpu", dtype=torch.float32)
    if sample and flat.numel() > SAMPLED_VALUES:
        flat = flat[torch.linspace(0, flat.numel() - 1, SAMPLED_VALUES).long()]
    return flat.numpy().tobytes()


def model_fingerprint(model) -> str:
    """The SHA-256 (hex) identifying a [`ValorModel`]'s MGA features (see the module docstring)."""
    digest = hashlib.sha256()
    config = json.dumps(_compute_config(model.config), sort_keys=True, default=str)
    digest.update(config.encode())
    for name, tensor in sorted(model.state_dict().items()):
        if not tensor.is_floating_point():
            continue
        head = name.startswith(MGA_HEAD_PREFIXES)
        digest.update(f"{name}:{tuple(tensor.shape)}:{'full' if head else 'sampled'}\n".encode())
        digest.update(_tensor_bytes(tensor, sample=not head))
    return digest.hexdigest()


def model_description(model) -> dict[str, Any]:
    """What a gallery records about its model: the fingerprint, where it was loaded from (with the hub commit
    when known), the MGA type and width."""
    config = model.config
    return {
        "fingerprint": model_fingerprint(model),
        "name_or_path": getattr(config, "_name_or_path", "") or "",
        "commit": getattr(config, "_commit_hash", None),
        "contrastive_type": config.contrastive_type,
        "projection_dim": config.projection_dim,
    }


def processor_description(
    processor,
    num_frames: int | None = None,
    num_clips: int | None = None,
    processor_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a gallery records about how its media were decoded: the settings and their SHA-256."""
    settings = {
        "video_processor": processor.video_processor.to_dict(),
        "feature_extractor": processor.feature_extractor.to_dict(),
        "num_frames": num_frames,
        "num_clips": num_clips,
        "processor_kwargs": dict(processor_kwargs or {}),
    }
    text = json.dumps(_stable(settings), sort_keys=True, default=str)
    return {"fingerprint": hashlib.sha256(text.encode()).hexdigest(), "settings": json.loads(text)}


def settings_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The names of the decoding settings that differ between two `processor_description(...)["settings"]`: the
    frame / clip counts and processor arguments exactly, and the video processor's and feature extractor's options
    that both sides have (an option only one has was added by a later version, with its default)."""
    out = [
        key
        for key in ("num_frames", "num_clips", "processor_kwargs")
        if recorded.get(key) != current.get(key)
    ]
    for part in ("video_processor", "feature_extractor"):
        old, new = recorded.get(part, {}), current.get(part, {})
        out.extend(f"{part}.{key}" for key in sorted(set(old) & set(new)) if old[key] != new[key])
    return out
