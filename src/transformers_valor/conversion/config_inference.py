"""The [`ValorConfig`] of an original VALOR checkpoint, read from its tensor shapes.

[`detect_variant`] tells VALOR-B (Video Swin video tower) from VALOR-L (CLIP); [`infer_config`] reads widths,
depths, vocabulary, position counts, the MGA type and the cross-attention layout from the shapes, fills the
values that are not in the weights with the published conventions, applies the caller's overrides and checks
the result against the relative-position tables and the audio position count.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
from transformers import CLIPVisionConfig

from ..configuration_valor import ValorConfig
from .report import ConversionError

Variant = Literal["valor-b", "valor-l"]
VARIANTS = ("valor-b", "valor-l")
# Reference cross-attention types that use two blocks (`cross_attn_v`, `cross_attn_a`), by this project's name.
SPLIT_CROSS_ATTENTION_LAYOUTS = ("parallel", "video_first", "audio_first")
BERT_PREFIX = "multimodal_encoder."


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of distinct values of the first group of `pattern` among the keys (e.g. layer indices)."""
    regex = re.compile(pattern)
    return len({m.group(1) for key in state_dict if (m := regex.match(key))})


def _require(state_dict: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    """`state_dict[key]`, or a `ConversionError` naming what is missing."""
    if key not in state_dict:
        raise ConversionError(f"Missing `{key}` ({what}); is this a VALOR checkpoint of the right variant?")
    return state_dict[key]


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> Variant:
    """`valor-b` for a Video Swin video tower (`video_encoder.*`), `valor-l` for CLIP (`clip_model.visual.*`)."""
    has_swin = any(key.startswith("video_encoder.") for key in state_dict)
    has_clip = any(key.startswith("clip_model.visual.") for key in state_dict)
    if has_swin == has_clip:
        raise ConversionError(
            "Cannot tell the video encoder: expected `video_encoder.*` (Video Swin, VALOR-B) or "
            "`clip_model.visual.*` (CLIP, VALOR-L)."
        )
    return "valor-b" if has_swin else "valor-l"


def _deep_update(base: dict, overrides: Mapping) -> dict:
    """Merge `overrides` into `base` in place, recursing into nested dicts."""
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def _check_variant(state_dict: Mapping[str, torch.Tensor], variant: Variant) -> None:
    """Refuse an unknown variant, or one that does not match the checkpoint's video encoder."""
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}.")
    if detect_variant(state_dict) != variant:
        raise ConversionError(
            f"--variant {variant} does not match the checkpoint, whose video encoder is "
            f"{'Video Swin (valor-b)' if variant == 'valor-l' else 'CLIP (valor-l)'}."
        )


def _cross_attention_blocks(state_dict: Mapping[str, torch.Tensor]) -> tuple[bool, bool]:
    """Whether the decoder has one concatenated cross-attention block, and whether it has split ones."""
    has_concat = any(".cross_attn.cross." in key for key in state_dict)
    has_split = any(".cross_attn_v." in key or ".cross_attn_a." in key for key in state_dict)
    return has_concat, has_split


def _cross_attention_layout(state_dict: Mapping[str, torch.Tensor], requested: str | None) -> str | None:
    """
    The decoder's cross-attention layout: `concat` for one concatenated block (`cross_attn.cross`); split blocks
    (`cross_attn_v`, `cross_attn_a`) need the order from `requested`, since it is not in the weights.
    """
    has_concat, has_split = _cross_attention_blocks(state_dict)
    if has_split and requested not in SPLIT_CROSS_ATTENTION_LAYOUTS:
        raise ConversionError(
            "The checkpoint has separate video/audio cross-attention blocks (`cross_attn_v`, `cross_attn_a`); "
            "their order is not in the weights. Pass overrides {'cross_attention_layout': 'parallel' | "
            "'video_first' | 'audio_first'} (the reference's va_parallel / video_audio / audio_video)."
        )
    if has_concat:
        layout = requested or "concat"
        if layout != "concat":
            raise ConversionError(f"The checkpoint has one concatenated cross-attention, not {layout!r}.")
        return layout
    return requested


def _text_config(state_dict: Mapping[str, torch.Tensor], has_cross_attention: bool) -> dict[str, Any]:
    """The shared BERT's sub-config (heads = width / 64)."""
    sd, bert = state_dict, BERT_PREFIX
    word = _require(sd, bert + "embeddings.word_embeddings.weight", "BERT word embeddings")
    text_width = word.shape[1]
    layer_pat = re.escape(bert) + r"encoder\.layer\.(\d+)\."
    return {
        "vocab_size": word.shape[0],
        "hidden_size": text_width,
        "num_hidden_layers": _count(sd, layer_pat),
        "num_attention_heads": max(1, text_width // 64),
        "intermediate_size": _require(
            sd, bert + "encoder.layer.0.intermediate.dense.weight", "BERT feed-forward"
        ).shape[0],
        "max_position_embeddings": _require(
            sd, bert + "embeddings.position_embeddings.weight", "BERT positions"
        ).shape[0],
        "type_vocab_size": _require(sd, bert + "embeddings.token_type_embeddings.weight", "BERT types").shape[
            0
        ],
        "add_cross_attention": has_cross_attention,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
    }


def _video_swin_config(state_dict: Mapping[str, torch.Tensor], image_size: int) -> dict[str, Any]:
    """VALOR-B's Video Swin sub-config (window (8, 7, 7), checked later against the relative-position tables)."""
    sd = state_dict
    proj = _require(sd, "video_encoder.patch_embed.proj.weight", "Video Swin patch embedding")
    num_stages = _count(sd, r"video_encoder\.layers\.(\d+)\.")
    depths = [_count(sd, rf"video_encoder\.layers\.{s}\.blocks\.(\d+)\.") for s in range(num_stages)]
    heads = [
        sd[f"video_encoder.layers.{s}.blocks.0.attn.relative_position_bias_table"].shape[1]
        for s in range(num_stages)
    ]
    return {
        "model_type": "valor_video_swin",
        "image_size": image_size,
        "embed_dim": proj.shape[0],
        "patch_size": list(proj.shape[2:]),
        "num_channels": proj.shape[1],
        "depths": depths,
        "num_heads": heads,
        "window_size": [8, 7, 7],
        "patch_norm": "video_encoder.patch_embed.norm.weight" in sd,
    }


def _clip_vision_config(state_dict: Mapping[str, torch.Tensor], image_size: int) -> dict[str, Any]:
    """VALOR-L's CLIP vision sub-config (heads = width / 64)."""
    sd = state_dict
    conv = _require(sd, "clip_model.visual.conv1.weight", "CLIP patch embedding")
    width = conv.shape[0]
    return {
        "model_type": "clip_vision_model",
        "hidden_size": width,
        "intermediate_size": _require(
            sd, "clip_model.visual.transformer.resblocks.0.mlp.c_fc.weight", "CLIP MLP"
        ).shape[0],
        "num_hidden_layers": _count(sd, r"clip_model\.visual\.transformer\.resblocks\.(\d+)\."),
        "num_attention_heads": max(1, width // 64),
        "patch_size": conv.shape[-1],
        "num_channels": conv.shape[1],
        "image_size": image_size,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


def _audio_config(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The audio ViT's sub-config (heads = width / 64); the input size is `ValorAudioConfig`'s 64 x 512."""
    sd = state_dict
    first_conv = _require(sd, "audio_embeddings.first_conv.weight", "audio patch embedding")
    audio_width = first_conv.shape[0]
    return {
        "hidden_size": audio_width,
        "num_hidden_layers": _count(sd, r"audio_encoder\.layer\.(\d+)\."),
        "num_attention_heads": max(1, audio_width // 64),
        "intermediate_size": _require(
            sd, "audio_encoder.layer.0.ff_layer.linear1.weight", "audio feed-forward"
        ).shape[0],
        "patch_size": first_conv.shape[-1],
        "num_channels": first_conv.shape[1],
    }


def _config_values(
    state_dict: Mapping[str, torch.Tensor], variant: Variant, image_size: int, layout: str | None
) -> dict[str, Any]:
    """All [`ValorConfig`] arguments read from the shapes or fixed by the variant, before the overrides."""
    sd = state_dict
    has_cross_attention = any(_cross_attention_blocks(sd))
    video = _video_swin_config if variant == "valor-b" else _clip_vision_config
    contra = _require(sd, "contra_head_t.linear.weight", "text contrastive head")
    return {
        "text_config": _text_config(sd, has_cross_attention),
        "vision_config": video(sd, image_size),
        "audio_config": _audio_config(sd),
        "projection_dim": contra.shape[0],
        "contrastive_type": "fine" if "text_fine_weight.0.weight" in sd else "coarse",
        "cross_attention_layout": layout or "concat",
        "logit_scale_type": "log_scale" if variant == "valor-l" else "temperature",
        "use_task_prompt": variant == "valor-l",
        "max_video_frames": _require(sd, "video_frame_embedding", "video frame embedding").shape[1],
        "max_audio_clips": _require(sd, "audio_frame_embedding", "audio frame embedding").shape[1],
    }


def _build_config(values: dict[str, Any]) -> ValorConfig:
    """A [`ValorConfig`] from the merged values; the vision `model_type` picks CLIP or Video Swin."""
    values = dict(values)
    vision = dict(values.pop("vision_config"))
    if vision.pop("model_type") == "clip_vision_model":
        vision = CLIPVisionConfig(**vision)
    else:
        vision = {"model_type": "valor_video_swin", **vision}
    return ValorConfig(vision_config=vision, **values)


def _check_swin_window(state_dict: Mapping[str, torch.Tensor], config: ValorConfig) -> None:
    """The Video Swin window must fit the relative-position tables (not in the shapes otherwise)."""
    window = config.vision_config.window_size
    expected = math.prod(2 * w - 1 for w in window)
    table = state_dict["video_encoder.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
    if table != expected:
        raise ConversionError(
            f"The Video Swin relative position tables have {table} rows, but window {window} needs {expected}; "
            "pass the right window with overrides {'vision_config': {'window_size': [t, h, w]}}."
        )


def _check_audio_positions(state_dict: Mapping[str, torch.Tensor], config: ValorConfig) -> None:
    """The audio input size must fit the audio encoder's position count."""
    audio_positions = state_dict["audio_embeddings.position_embeddings.weight"].shape[0]
    mel, frames = config.audio_config.image_size
    patch = config.audio_config.patch_size
    if audio_positions != (mel // patch) * (frames // patch) + 1:
        raise ConversionError(
            f"The audio encoder has {audio_positions} positions, which does not fit a {mel} x {frames} input with "
            f"patch {patch}; pass overrides {{'audio_config': {{'image_size': [mel_bins, frames]}}}}."
        )


def infer_config(
    state_dict: Mapping[str, torch.Tensor],
    variant: Variant,
    image_size: int = 224,
    overrides: Mapping[str, Any] | None = None,
) -> ValorConfig:
    """
    Build the [`ValorConfig`] of a reference checkpoint from its tensor shapes.

    Read from the shapes: vocabulary, widths, depths, intermediate sizes, position counts, Video Swin embedding
    dim / patch / depths / heads, CLIP width / patch / depth, the audio patch size, the projection dim, the
    fine or coarse MGA variant, frame-embedding slots, the cross-attention layout (`concat` when the checkpoint
    has `cross_attn.cross`). Not in the shapes, hence conventions that `overrides` can change: heads = width / 64
    for BERT, CLIP and the audio ViT; the Video Swin window (8, 7, 7), checked against the relative-position
    tables; the frame size `image_size` (224); the audio input 64 x 512; `use_task_prompt` on for VALOR-L.

    Args:
        overrides (`dict`, *optional*): nested values merged last, e.g.
            `{"text_config": {"num_attention_heads": 4}, "vision_config": {"window_size": [2, 4, 4]}}`. A
            checkpoint with split cross-attention blocks needs `{"cross_attention_layout": ...}`.
    """
    _check_variant(state_dict, variant)
    overrides = dict(overrides or {})
    layout = _cross_attention_layout(state_dict, overrides.get("cross_attention_layout"))
    values = _deep_update(_config_values(state_dict, variant, image_size, layout), overrides)
    config = _build_config(values)
    if variant == "valor-b":
        _check_swin_window(state_dict, config)
    _check_audio_positions(state_dict, config)
    return config
