"""Convert the published VALOR checkpoints (reference PyTorch state dicts) into this project's format.

    python -m transformers_valor.convert_original --checkpoint VALOR_base.pt --variant valor-b \
        --vocab bert-base-uncased/vocab.txt --output_dir valor-base [--push_to_hub my-org/valor-base]

Steps (as timm's `checkpoint_filter_fn` and nanoGPT's `from_pretrained` do it):
1. load the state dict with `torch.load(weights_only=True)`;
2. infer the [`ValorConfig`] from the tensor shapes (`infer_config`);
3. map EVERY key through an explicit rule table (`convert_state_dict`): a key is either mapped, or dropped with a
   stated reason (CLIP's text tower, BERT's pooler, buffers the model recomputes, the duplicate `txt_encoder.*`
   copy of the shared BERT, ...); any other key, any shape mismatch and any model weight left unfilled stop the
   conversion with a `ConversionError` that lists them;
4. save safetensors + config, the processor (BERT WordPiece tokenizer from the given `vocab.txt`, the video
   processor with ImageNet (VALOR-B) or CLIP (VALOR-L) statistics, the audio feature extractor) and a model card;
5. reload the saved folder as [`ValorForRetrieval`] and [`ValorForConditionalGeneration`] and compare retrieval
   scores and caption logits with an independent forward computed from the ORIGINAL tensors (`verify_conversion`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_valor import AUDIO_ENCODER_DEFAULTS, ValorConfig
from .modeling_valor import ValorForConditionalGeneration, ValorForPreTraining, ValorForRetrieval

logger = logging.getLogger(__name__)

Variant = Literal["valor-b", "valor-l"]
VARIANTS = ("valor-b", "valor-l")
TIED_DECODER_KEY = "cls.predictions.decoder.weight"
WORD_EMBEDDINGS_KEY = "valor.text_model.embeddings.word_embeddings.weight"
# Reference cross-attention types that use two blocks (`cross_attn_v`, `cross_attn_a`), by this project's name.
SPLIT_CROSS_ATTENTION_LAYOUTS = ("parallel", "video_first", "audio_first")


class ConversionError(ValueError):
    """Raised when a checkpoint has keys the converter cannot place, wrong shapes, or leaves weights unfilled."""


@dataclass
class ConversionReport:
    """
    What the conversion did.

    Args:
        mapped (`dict[str, str]`): target key -> source key (with the transform in brackets when not a copy).
        dropped (`dict[str, str]`): source key -> why it is not needed.
        verification (`dict[str, float]`): max absolute differences of the parity checks (filled by
            `verify_conversion`).
    """

    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    verification: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A Markdown summary for logs and the model card."""
        lines = [
            f"- {len(self.mapped)} tensors mapped, {len(self.dropped)} source keys dropped as unused:",
        ]
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"  - {count} x {reason}" for reason, count in sorted(reasons.items())]
        if self.verification:
            lines.append("- parity with an independent forward of the original weights (max abs difference):")
            lines += [f"  - {name}: {value:.2e}" for name, value in self.verification.items()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- loading
def load_original_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """
    Load a reference checkpoint with `torch.load(weights_only=True)`; unwrap a `{"model": ...}` /
    `{"state_dict": ...}` container and strip a DistributedDataParallel `module.` prefix.
    """
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for container in ("model", "state_dict", "module"):
        if isinstance(obj, Mapping) and container in obj and isinstance(obj[container], Mapping):
            obj = obj[container]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors.")
    state_dict = dict(obj)
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


# ------------------------------------------------------------------------------------------ config inference
def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in state_dict if (m := regex.match(key))})


def _require(state_dict: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
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
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


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
    if variant not in VARIANTS:
        raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}.")
    if detect_variant(state_dict) != variant:
        raise ConversionError(
            f"--variant {variant} does not match the checkpoint, whose video encoder is "
            f"{'Video Swin (valor-b)' if variant == 'valor-l' else 'CLIP (valor-l)'}."
        )
    overrides = dict(overrides or {})
    sd = state_dict
    bert = "multimodal_encoder."

    # Text (the shared BERT)
    word = _require(sd, bert + "embeddings.word_embeddings.weight", "BERT word embeddings")
    text_width = word.shape[1]
    layer_pat = re.escape(bert) + r"encoder\.layer\.(\d+)\."
    has_concat = any(".cross_attn.cross." in key for key in sd)
    has_split = any(".cross_attn_v." in key or ".cross_attn_a." in key for key in sd)
    layout = overrides.get("cross_attention_layout")
    if has_split and layout not in SPLIT_CROSS_ATTENTION_LAYOUTS:
        raise ConversionError(
            "The checkpoint has separate video/audio cross-attention blocks (`cross_attn_v`, `cross_attn_a`); "
            "their order is not in the weights. Pass overrides {'cross_attention_layout': 'parallel' | "
            "'video_first' | 'audio_first'} (the reference's va_parallel / video_audio / audio_video)."
        )
    if has_concat:
        layout = layout or "concat"
        if layout != "concat":
            raise ConversionError(f"The checkpoint has one concatenated cross-attention, not {layout!r}.")
    text_config = {
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
        "add_cross_attention": has_concat or has_split,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
    }

    # Video
    if variant == "valor-b":
        proj = _require(sd, "video_encoder.patch_embed.proj.weight", "Video Swin patch embedding")
        num_stages = _count(sd, r"video_encoder\.layers\.(\d+)\.")
        depths = [_count(sd, rf"video_encoder\.layers\.{s}\.blocks\.(\d+)\.") for s in range(num_stages)]
        heads = [
            sd[f"video_encoder.layers.{s}.blocks.0.attn.relative_position_bias_table"].shape[1]
            for s in range(num_stages)
        ]
        vision_config = {
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
    else:
        conv = _require(sd, "clip_model.visual.conv1.weight", "CLIP patch embedding")
        width = conv.shape[0]
        vision_config = {
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

    # Audio
    first_conv = _require(sd, "audio_embeddings.first_conv.weight", "audio patch embedding")
    audio_width = first_conv.shape[0]
    audio_config = {
        **AUDIO_ENCODER_DEFAULTS,
        "hidden_size": audio_width,
        "num_hidden_layers": _count(sd, r"audio_encoder\.layer\.(\d+)\."),
        "num_attention_heads": max(1, audio_width // 64),
        "intermediate_size": _require(
            sd, "audio_encoder.layer.0.ff_layer.linear1.weight", "audio feed-forward"
        ).shape[0],
        "patch_size": first_conv.shape[-1],
        "num_channels": first_conv.shape[1],
    }

    contra = _require(sd, "contra_head_t.linear.weight", "text contrastive head")
    config = {
        "text_config": text_config,
        "vision_config": vision_config,
        "audio_config": audio_config,
        "projection_dim": contra.shape[0],
        "contrastive_type": "fine" if "text_fine_weight.0.weight" in sd else "coarse",
        "cross_attention_layout": layout or "concat",
        "logit_scale_type": "log_scale" if variant == "valor-l" else "temperature",
        "use_task_prompt": variant == "valor-l",
        "max_video_frames": _require(sd, "video_frame_embedding", "video frame embedding").shape[1],
        "max_audio_clips": _require(sd, "audio_frame_embedding", "audio frame embedding").shape[1],
    }
    _deep_update(config, overrides)
    vision = dict(config.pop("vision_config"))
    if vision.pop("model_type") == "clip_vision_model":
        from transformers import CLIPVisionConfig

        vision = CLIPVisionConfig(**vision)
    else:
        vision = {"model_type": "valor_video_swin", **vision}
    valor_config = ValorConfig(vision_config=vision, **config)

    if variant == "valor-b":
        window = valor_config.vision_config.window_size
        expected = math.prod(2 * w - 1 for w in window)
        table = sd["video_encoder.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]
        if table != expected:
            raise ConversionError(
                f"The Video Swin relative position tables have {table} rows, but window {window} needs {expected}; "
                "pass the right window with overrides {'vision_config': {'window_size': [t, h, w]}}."
            )
    audio_positions = sd["audio_embeddings.position_embeddings.weight"].shape[0]
    mel, frames = valor_config.audio_config.image_size
    patch = valor_config.audio_config.patch_size
    if audio_positions != (mel // patch) * (frames // patch) + 1:
        raise ConversionError(
            f"The audio encoder has {audio_positions} positions, which does not fit a {mel} x {frames} input with "
            f"patch {patch}; pass overrides {{'audio_config': {{'image_size': [mel_bins, frames]}}}}."
        )
    return valor_config


# --------------------------------------------------------------------------------------------- the key map
@dataclass(frozen=True)
class Rule:
    """One line of the key map: source regex -> target template(s), with an optional tensor transform."""

    pattern: str
    targets: tuple[str, ...]
    transform: str = "copy"


def _split3(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(tensor.chunk(3, dim=0))  # in_proj (3W, ...) -> q, k, v


def resize_position_grid(
    positions: torch.Tensor,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    prefix: int = 1,
) -> torch.Tensor:
    """
    Bilinearly resize a ViT position table `(prefix + H*W, C)` (row-major grid) to `(prefix + H'*W', C)`,
    keeping the first `prefix` (CLS-like) positions.
    """
    num_tokens, width = positions.shape
    if old_grid is None:
        side = math.isqrt(num_tokens - prefix)
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != num_tokens - prefix:
        raise ConversionError(f"A {old_grid} grid does not fit {num_tokens - prefix} position embeddings.")
    if tuple(old_grid) == tuple(new_grid):
        return positions
    grid = positions[prefix:].reshape(*old_grid, width).permute(2, 0, 1)[None]  # (1, C, H, W)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bilinear", align_corners=False)
    grid = grid[0].permute(1, 2, 0).reshape(-1, width).to(positions.dtype)  # (H'*W', C)
    return torch.cat([positions[:prefix], grid], dim=0)


def key_map(config: ValorConfig, variant: Variant) -> tuple[list[Rule], list[tuple[str, str]]]:
    """
    The explicit key map of a variant: (rules that place tensors, (regex, reason) of keys dropped on purpose).
    """
    bert, text = r"multimodal_encoder\.", "valor.text_model."
    layer = bert + r"encoder\.layer\.(\d+)\."
    rules = [
        Rule(
            bert + r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|prompt_embedding|"
            r"LayerNorm)\.(weight|bias)$",
            (text + r"embeddings.\1.\2",),
        ),
        Rule(
            layer + r"attention\.(self\.(?:query|key|value)|output\.(?:dense|LayerNorm))\.(weight|bias)$",
            (text + r"encoder.layer.\1.attention.\2.\3",),
        ),
        Rule(
            layer + r"(intermediate\.dense|output\.(?:dense|LayerNorm))\.(weight|bias)$",
            (text + r"encoder.layer.\1.\2.\3",),
        ),
        Rule(
            layer + r"cross_attn\.cross\.(query|key|value)\.(weight|bias)$",
            (text + r"encoder.layer.\1.crossattention.self.\2.\3",),
        ),
        Rule(
            layer + r"cross_attn\.output\.(dense|LayerNorm)\.(weight|bias)$",
            (text + r"encoder.layer.\1.crossattention.output.\2.\3",),
        ),
        Rule(
            layer + r"cross_attn_v\.cross\.(query|key|value)\.(weight|bias)$",
            (text + r"encoder.layer.\1.crossattention_video.self.\2.\3",),
        ),
        Rule(
            layer + r"cross_attn_v\.output\.(dense|LayerNorm)\.(weight|bias)$",
            (text + r"encoder.layer.\1.crossattention_video.output.\2.\3",),
        ),
        Rule(
            layer + r"cross_attn_a\.cross\.(query|key|value)\.(weight|bias)$",
            (text + r"encoder.layer.\1.crossattention_audio.self.\2.\3",),
        ),
        Rule(
            layer + r"cross_attn_a\.output\.(dense|LayerNorm)\.(weight|bias)$",
            (text + r"encoder.layer.\1.crossattention_audio.output.\2.\3",),
        ),
        # MLM head (the decoder weight is tied to the word embeddings, see the dropped keys)
        Rule(r"cls\.dense\.(weight|bias)$", (r"cls.predictions.transform.dense.\1",)),
        Rule(r"cls\.layernorm\.(weight|bias)$", (r"cls.predictions.transform.LayerNorm.\1",)),
        Rule(r"cls\.decoder\.bias$", ("cls.predictions.bias",)),
        # Audio encoder -> transformers ViTModel
        Rule(r"audio_embeddings\.cls_token$", ("valor.audio_model.embeddings.cls_token",)),
        Rule(
            r"audio_embeddings\.first_conv\.(weight|bias)$",
            (r"valor.audio_model.embeddings.patch_embeddings.projection.\1",),
        ),
        Rule(
            r"audio_embeddings\.position_embeddings\.weight$",
            ("valor.audio_model.embeddings.position_embeddings",),
            "add_batch_dim",
        ),
        Rule(
            r"audio_encoder\.layer\.(\d+)\.attention\.linears\.0\.(weight|bias)$",
            (r"valor.audio_model.layers.\1.attention.q_proj.\2",),
        ),
        Rule(
            r"audio_encoder\.layer\.(\d+)\.attention\.linears\.1\.(weight|bias)$",
            (r"valor.audio_model.layers.\1.attention.k_proj.\2",),
        ),
        Rule(
            r"audio_encoder\.layer\.(\d+)\.attention\.linears\.2\.(weight|bias)$",
            (r"valor.audio_model.layers.\1.attention.v_proj.\2",),
        ),
        Rule(
            r"audio_encoder\.layer\.(\d+)\.attention\.linears\.3\.(weight|bias)$",
            (r"valor.audio_model.layers.\1.attention.o_proj.\2",),
        ),
        Rule(
            r"audio_encoder\.layer\.(\d+)\.ff_layer\.linear1\.(weight|bias)$",
            (r"valor.audio_model.layers.\1.mlp.fc1.\2",),
        ),
        Rule(
            r"audio_encoder\.layer\.(\d+)\.ff_layer\.linear2\.(weight|bias)$",
            (r"valor.audio_model.layers.\1.mlp.fc2.\2",),
        ),
        Rule(
            r"audio_encoder\.layer\.(\d+)\.layernorm1\.(weight|bias)$",
            (r"valor.audio_model.layers.\1.layernorm_before.\2",),
        ),
        Rule(
            r"audio_encoder\.layer\.(\d+)\.layernorm2\.(weight|bias)$",
            (r"valor.audio_model.layers.\1.layernorm_after.\2",),
        ),
        Rule(r"audio_encoder\.last_layernorm\.(weight|bias)$", (r"valor.audio_model.layernorm.\1",)),
        # MGA heads
        Rule(r"contra_head_t\.linear\.weight$", ("valor.text_projection.weight",)),
        Rule(r"contra_head_v\.linear\.weight$", ("valor.video_projection.weight",)),
        Rule(r"contra_head_a\.linear\.weight$", ("valor.audio_projection.weight",)),
        Rule(r"text_fine_weight\.(0|2)\.(weight|bias)$", (r"valor.text_weight_mlp.\1.\2",)),
        Rule(r"video_fine_weight\.(0|2)\.(weight|bias)$", (r"valor.video_weight_mlp.\1.\2",)),
        Rule(r"audio_fine_weight\.(0|2)\.(weight|bias)$", (r"valor.audio_weight_mlp.\1.\2",)),
        Rule(r"va_fusion\.(weight|bias)$", (r"valor.audiovisual_fusion.\1",)),
        # Decoder-side modality adapters
        Rule(r"video_type_embeddings$", ("valor.video_adapter.type_embedding",)),
        Rule(r"audio_type_embeddings$", ("valor.audio_adapter.type_embedding",)),
        Rule(r"video_frame_embedding$", ("valor.video_adapter.frame_embedding",)),
        Rule(r"audio_frame_embedding$", ("valor.audio_adapter.frame_embedding",)),
        Rule(
            r"hidden_trans_video_multimodal\.(0|1)\.(weight|bias)$",
            (r"valor.video_adapter.projection.\1.\2",),
        ),
        Rule(
            r"hidden_trans_audio_multimodal\.(0|1)\.(weight|bias)$",
            (r"valor.audio_adapter.projection.\1.\2",),
        ),
    ]
    dropped = [
        (r"(multimodal_encoder|txt_encoder)\.pooler\.", "BERT pooler (unused by VALOR)"),
        (r"txt_encoder\.", "second name of the shared BERT (checked equal to multimodal_encoder.*)"),
        (r"cls\.decoder\.weight$", "MLM decoder weight, tied to the word embeddings (checked equal)"),
    ]
    if variant == "valor-b":
        rules += [
            Rule(r"video_encoder\.(.+\.relative_position_bias_table)$", (r"valor.vision_model.\1",)),
            Rule(
                r"video_encoder\.((?:patch_embed\.(?:proj|norm)|layers\.\d+\.blocks\.\d+\.(?:norm1|norm2|"
                r"attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)|layers\.\d+\.downsample\.(?:reduction|norm)|norm)"
                r"\.(?:weight|bias))$",
                (r"valor.vision_model.\1",),
            ),
            Rule(r"contra_temp$", ("valor.temperature",)),
        ]
        dropped += [
            (r"video_encoder\..*relative_position_index$", "Video Swin buffer the model recomputes"),
        ]
    else:
        visual, vision = r"clip_model\.visual\.", "valor.vision_model."
        block = visual + r"transformer\.resblocks\.(\d+)\."
        grid = config.vision_config.image_size // config.vision_config.patch_size
        rules += [
            Rule(visual + r"conv1\.weight$", (vision + "embeddings.patch_embedding.weight",)),
            Rule(visual + r"class_embedding$", (vision + "embeddings.class_embedding",)),
            Rule(
                visual + r"positional_embedding$",
                (vision + "embeddings.position_embedding.weight",),
                f"resize_grid_{grid}",
            ),
            Rule(visual + r"ln_pre\.(weight|bias)$", (vision + r"pre_layrnorm.\1",)),
            Rule(visual + r"ln_post\.(weight|bias)$", (vision + r"post_layernorm.\1",)),
            Rule(
                block + r"attn\.in_proj_weight$",
                tuple(vision + rf"encoder.layers.\1.self_attn.{p}_proj.weight" for p in "qkv"),
                "split3",
            ),
            Rule(
                block + r"attn\.in_proj_bias$",
                tuple(vision + rf"encoder.layers.\1.self_attn.{p}_proj.bias" for p in "qkv"),
                "split3",
            ),
            Rule(
                block + r"attn\.out_proj\.(weight|bias)$",
                (vision + r"encoder.layers.\1.self_attn.out_proj.\2",),
            ),
            Rule(block + r"ln_1\.(weight|bias)$", (vision + r"encoder.layers.\1.layer_norm1.\2",)),
            Rule(block + r"ln_2\.(weight|bias)$", (vision + r"encoder.layers.\1.layer_norm2.\2",)),
            Rule(block + r"mlp\.c_fc\.(weight|bias)$", (vision + r"encoder.layers.\1.mlp.fc1.\2",)),
            Rule(block + r"mlp\.c_proj\.(weight|bias)$", (vision + r"encoder.layers.\1.mlp.fc2.\2",)),
            Rule(r"clip_model\.logit_scale$", ("valor.logit_scale",)),
        ]
        dropped += [
            (r"clip_model\.visual\.proj$", "CLIP's visual projection (VALOR uses its own contra_head_v)"),
            (
                r"clip_model\.(transformer\.|token_embedding\.|positional_embedding$|ln_final\.|text_projection$|"
                r"prompt_embedding\.)",
                "CLIP text tower (unused: VALOR's text encoder is BERT)",
            ),
            (r"clip_model\.(input_resolution|context_length|vocab_size)$", "CLIP metadata"),
            (r"contra_temp$", "unused temperature (VALOR-L takes tau from CLIP's logit_scale)"),
        ]
    return rules, dropped


def _apply_transform(name: str, tensor: torch.Tensor, config: ValorConfig) -> tuple[torch.Tensor, ...]:
    if name == "copy":
        return (tensor,)
    if name == "split3":
        return _split3(tensor)
    if name == "add_batch_dim":
        return (tensor[None],)  # (N, C) -> (1, N, C)
    if name.startswith("resize_grid_"):
        grid = int(name.rsplit("_", 1)[1])
        return (resize_position_grid(tensor, (grid, grid)),)
    raise ValueError(f"Unknown transform {name!r}.")


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: ValorConfig,
    variant: Variant,
    expected_shapes: Mapping[str, torch.Size] | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """
    Map a reference state dict onto [`ValorForPreTraining`] names.

    Every source key must match exactly one rule or one "dropped" pattern; every target must exist in the model
    with the same shape; every model weight except the tied MLM decoder must be filled. Otherwise a
    `ConversionError` lists the offending keys.

    Args:
        expected_shapes (`dict[str, torch.Size]`, *optional*): the target model's state-dict shapes; by default
            read from a `ValorForPreTraining(config)` built on the meta device.
        dtype (`torch.dtype`, *optional*): cast floating tensors (default float32); `None` keeps them.
    """
    if expected_shapes is None:
        with torch.device("meta"):
            expected_shapes = {k: v.shape for k, v in ValorForPreTraining(config).state_dict().items()}
    rules, dropped_patterns = key_map(config, variant)
    compiled = [(re.compile(rule.pattern), rule) for rule in rules]
    compiled_dropped = [(re.compile(pattern), reason) for pattern, reason in dropped_patterns]

    converted: dict[str, torch.Tensor] = {}
    report = ConversionReport()
    unplaced, mismatched, duplicated = [], [], []
    for key, tensor in state_dict.items():
        match = next(((regex, rule) for regex, rule in compiled if regex.match(key)), None)
        if match is None:
            reason = next((reason for regex, reason in compiled_dropped if regex.match(key)), None)
            if reason is None:
                unplaced.append(key)
            else:
                report.dropped[key] = reason
            continue
        regex, rule = match
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        pieces = _apply_transform(rule.transform, tensor, config)
        for template, piece in zip(rule.targets, pieces, strict=True):
            target = regex.sub(template, key)
            if target not in expected_shapes:
                unplaced.append(f"{key} -> {target} (no such weight in the model)")
                continue
            if tuple(piece.shape) != tuple(expected_shapes[target]):
                mismatched.append(
                    f"{key} {tuple(tensor.shape)} -> {target}: got {tuple(piece.shape)}, "
                    f"the model expects {tuple(expected_shapes[target])}"
                )
                continue
            if target in converted:
                duplicated.append(f"{target} (from {report.mapped[target]} and {key})")
            converted[target] = piece.contiguous()
            report.mapped[target] = key if rule.transform == "copy" else f"{key} [{rule.transform}]"

    missing = sorted(set(expected_shapes) - set(converted) - {TIED_DECODER_KEY})
    problems = []
    if unplaced:
        problems.append(f"{len(unplaced)} key(s) the converter cannot place:\n  " + "\n  ".join(unplaced))
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es):\n  " + "\n  ".join(mismatched))
    if duplicated:
        problems.append("weights written twice:\n  " + "\n  ".join(duplicated))
    if missing:
        problems.append(f"{len(missing)} model weight(s) not filled:\n  " + "\n  ".join(missing))
    problems += _check_shared_copies(state_dict)
    if problems:
        raise ConversionError("Conversion refused.\n" + "\n".join(problems))
    # nanoGPT-style count check: every model tensor but the tied decoder comes from the checkpoint exactly once.
    assert len(converted) == len(expected_shapes) - (TIED_DECODER_KEY in expected_shapes)
    return converted, report


def _check_shared_copies(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The shared BERT must be identical under both names, and the MLM decoder tied to the word embeddings."""
    problems = []
    differing = []
    for key, tensor in state_dict.items():
        if not key.startswith("txt_encoder.") or ".pooler." in key:
            continue
        twin = "multimodal_encoder." + key[len("txt_encoder.") :]
        if twin not in state_dict or not torch.equal(state_dict[twin], tensor):
            differing.append(key)
    if differing:
        problems.append(
            f"{len(differing)} `txt_encoder.*` tensor(s) differ from (or lack) their `multimodal_encoder.*` twin; "
            "this project supports only the shared text encoder/decoder (`share_txt_and_multimodal`):\n  "
            + "\n  ".join(differing[:20])
        )
    decoder = state_dict.get("cls.decoder.weight")
    word = state_dict.get("multimodal_encoder.embeddings.word_embeddings.weight")
    if decoder is not None and (word is None or not torch.equal(decoder, word)):
        problems.append("`cls.decoder.weight` is not tied to the word embeddings, which the model requires.")
    return problems


# ------------------------------------------------------------------- independent reference forward
def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _torch_layer(kind: str, width: int, heads: int, ff: int, eps: float, activation, norm_first: bool):
    cls = nn.TransformerDecoderLayer if kind == "decoder" else nn.TransformerEncoderLayer
    layer = cls(
        width,
        heads,
        ff,
        dropout=0.0,
        activation=activation,
        layer_norm_eps=eps,
        batch_first=True,
        norm_first=norm_first,
    )
    return layer.eval()


class OriginalValorReference:
    """
    VALOR's forward computed directly from the ORIGINAL state dict with `torch.nn` transformer layers
    (`nn.MultiheadAttention` takes the reference's packed q/k/v), independent of this project's modules.

    Video Swin is the exception: its tokens are taken from the converted model's tower (its weights are copied
    one-to-one, without any renaming inside the tower); everything after it (frame pooling, projection, weight
    MLP, adapters, decoder) is recomputed here.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor], config: ValorConfig, variant: Variant):
        self.sd = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
        self.config = config
        self.variant = variant
        text = config.text_config
        self.text_heads = text.num_attention_heads

    def _bert_layer(self, index: int, with_cross: bool) -> nn.Module:
        sd, p = self.sd, f"multimodal_encoder.encoder.layer.{index}."
        width = sd[p + "attention.self.query.weight"].shape[0]
        ff = sd[p + "intermediate.dense.weight"].shape[0]
        kind = "decoder" if with_cross else "encoder"
        layer = _torch_layer(kind, width, self.text_heads, ff, 1e-12, "gelu", norm_first=False)

        def packed(prefix: str, kind: str) -> torch.Tensor:
            return torch.cat([sd[f"{prefix}{name}.{kind}"] for name in ("query", "key", "value")])

        state = {
            "self_attn.in_proj_weight": packed(p + "attention.self.", "weight"),
            "self_attn.in_proj_bias": packed(p + "attention.self.", "bias"),
            "self_attn.out_proj.weight": sd[p + "attention.output.dense.weight"],
            "self_attn.out_proj.bias": sd[p + "attention.output.dense.bias"],
            "norm1.weight": sd[p + "attention.output.LayerNorm.weight"],
            "norm1.bias": sd[p + "attention.output.LayerNorm.bias"],
            "linear1.weight": sd[p + "intermediate.dense.weight"],
            "linear1.bias": sd[p + "intermediate.dense.bias"],
            "linear2.weight": sd[p + "output.dense.weight"],
            "linear2.bias": sd[p + "output.dense.bias"],
        }
        last_norm = "norm3" if with_cross else "norm2"
        state[f"{last_norm}.weight"] = sd[p + "output.LayerNorm.weight"]
        state[f"{last_norm}.bias"] = sd[p + "output.LayerNorm.bias"]
        if with_cross:
            c = p + "cross_attn."
            state.update(
                {
                    "multihead_attn.in_proj_weight": packed(c + "cross.", "weight"),
                    "multihead_attn.in_proj_bias": packed(c + "cross.", "bias"),
                    "multihead_attn.out_proj.weight": sd[c + "output.dense.weight"],
                    "multihead_attn.out_proj.bias": sd[c + "output.dense.bias"],
                    "norm2.weight": sd[c + "output.LayerNorm.weight"],
                    "norm2.bias": sd[c + "output.LayerNorm.bias"],
                }
            )
        layer.load_state_dict(state)
        return layer

    def _embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        sd, p = self.sd, "multimodal_encoder.embeddings."
        positions = torch.arange(input_ids.shape[1])
        hidden = (
            sd[p + "word_embeddings.weight"][input_ids]
            + sd[p + "position_embeddings.weight"][positions][None]
            + sd[p + "token_type_embeddings.weight"][0]
        )
        return F.layer_norm(
            hidden, hidden.shape[-1:], sd[p + "LayerNorm.weight"], sd[p + "LayerNorm.bias"], eps=1e-12
        )

    def text_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Bidirectional BERT over `input_ids` (padding id 0 masked), `(B, L, H)`."""
        hidden = self._embed_text(input_ids)
        padding = input_ids == 0
        for index in range(self.config.text_config.num_hidden_layers):
            hidden = self._bert_layer(index, with_cross=False)(hidden, src_key_padding_mask=padding)
        return hidden

    def decoder_logits(self, input_ids: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Causal BERT with concatenated cross-attention over `memory`, then the MLM head: `(B, L, vocab)`."""
        sd = self.sd
        hidden = self._embed_text(input_ids)
        length = input_ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).triu(1)
        for index in range(self.config.text_config.num_hidden_layers):
            hidden = self._bert_layer(index, with_cross=True)(hidden, memory, tgt_mask=causal)
        hidden = F.gelu(F.linear(hidden, sd["cls.dense.weight"], sd["cls.dense.bias"]))
        hidden = F.layer_norm(
            hidden, hidden.shape[-1:], sd["cls.layernorm.weight"], sd["cls.layernorm.bias"], eps=1e-12
        )
        word = sd["multimodal_encoder.embeddings.word_embeddings.weight"]
        return hidden @ word.t() + sd["cls.decoder.bias"]

    def audio_tokens(self, input_features: torch.Tensor) -> torch.Tensor:
        """Pre-norm ViT over each clip `(B, clips, mel, time)` -> `(B, clips, 1 + patches, H)`."""
        sd, cfg = self.sd, self.config.audio_config
        batch, clips = input_features.shape[:2]
        x = F.conv2d(
            input_features.flatten(0, 1)[:, None].float(),
            sd["audio_embeddings.first_conv.weight"],
            sd["audio_embeddings.first_conv.bias"],
            stride=cfg.patch_size,
        )  # (B*clips, C, mel/p, time/p)
        x = x.flatten(2).transpose(1, 2)  # (B*clips, patches, C)
        cls = sd["audio_embeddings.cls_token"].expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + sd["audio_embeddings.position_embeddings.weight"][None]
        for index in range(cfg.num_hidden_layers):
            p = f"audio_encoder.layer.{index}."
            width = x.shape[-1]
            layer = _torch_layer(
                "encoder",
                width,
                cfg.num_attention_heads,
                sd[p + "ff_layer.linear1.weight"].shape[0],
                1e-12,
                "gelu",
                True,
            )
            layer.load_state_dict(
                {
                    "self_attn.in_proj_weight": torch.cat(
                        [sd[p + f"attention.linears.{i}.weight"] for i in range(3)]
                    ),
                    "self_attn.in_proj_bias": torch.cat(
                        [sd[p + f"attention.linears.{i}.bias"] for i in range(3)]
                    ),
                    "self_attn.out_proj.weight": sd[p + "attention.linears.3.weight"],
                    "self_attn.out_proj.bias": sd[p + "attention.linears.3.bias"],
                    "linear1.weight": sd[p + "ff_layer.linear1.weight"],
                    "linear1.bias": sd[p + "ff_layer.linear1.bias"],
                    "linear2.weight": sd[p + "ff_layer.linear2.weight"],
                    "linear2.bias": sd[p + "ff_layer.linear2.bias"],
                    "norm1.weight": sd[p + "layernorm1.weight"],
                    "norm1.bias": sd[p + "layernorm1.bias"],
                    "norm2.weight": sd[p + "layernorm2.weight"],
                    "norm2.bias": sd[p + "layernorm2.bias"],
                }
            )
            x = layer(x)
        x = F.layer_norm(
            x,
            x.shape[-1:],
            sd["audio_encoder.last_layernorm.weight"],
            sd["audio_encoder.last_layernorm.bias"],
            eps=1e-12,
        )
        return x.view(batch, clips, *x.shape[1:])

    def clip_video_tokens(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """OpenAI-CLIP visual tower per frame, `ln_post` on every token: `(B, T, 1 + patches, C)`."""
        sd, cfg, v = self.sd, self.config.vision_config, "clip_model.visual."
        batch, frames = pixel_values_videos.shape[:2]
        x = F.conv2d(pixel_values_videos.flatten(0, 1).float(), sd[v + "conv1.weight"], stride=cfg.patch_size)
        x = x.flatten(2).transpose(1, 2)  # (B*T, patches, C)
        width = x.shape[-1]
        cls = sd[v + "class_embedding"].expand(x.shape[0], 1, -1)
        grid = cfg.image_size // cfg.patch_size
        positions = sd[v + "positional_embedding"]
        side = math.isqrt(positions.shape[0] - 1)
        if side != grid:  # the reference's own resize of 336-px weights to the run resolution
            grid_pos = positions[1:].reshape(side, side, width).permute(2, 0, 1)[None]
            grid_pos = F.interpolate(grid_pos, (grid, grid), mode="bilinear")[0].permute(1, 2, 0)
            positions = torch.cat([positions[:1], grid_pos.reshape(-1, width)])
        x = torch.cat([cls, x], dim=1) + positions[None]
        x = F.layer_norm(x, (width,), sd[v + "ln_pre.weight"], sd[v + "ln_pre.bias"], eps=1e-5)
        for index in range(cfg.num_hidden_layers):
            p = f"{v}transformer.resblocks.{index}."
            layer = _torch_layer(
                "encoder",
                width,
                cfg.num_attention_heads,
                sd[p + "mlp.c_fc.weight"].shape[0],
                1e-5,
                _quick_gelu,
                True,
            )
            layer.load_state_dict(
                {
                    "self_attn.in_proj_weight": sd[p + "attn.in_proj_weight"],
                    "self_attn.in_proj_bias": sd[p + "attn.in_proj_bias"],
                    "self_attn.out_proj.weight": sd[p + "attn.out_proj.weight"],
                    "self_attn.out_proj.bias": sd[p + "attn.out_proj.bias"],
                    "linear1.weight": sd[p + "mlp.c_fc.weight"],
                    "linear1.bias": sd[p + "mlp.c_fc.bias"],
                    "linear2.weight": sd[p + "mlp.c_proj.weight"],
                    "linear2.bias": sd[p + "mlp.c_proj.bias"],
                    "norm1.weight": sd[p + "ln_1.weight"],
                    "norm1.bias": sd[p + "ln_1.bias"],
                    "norm2.weight": sd[p + "ln_2.weight"],
                    "norm2.bias": sd[p + "ln_2.bias"],
                }
            )
            x = layer(x)
        x = F.layer_norm(x, (width,), sd[v + "ln_post.weight"], sd[v + "ln_post.bias"], eps=1e-5)
        return x.view(batch, frames, *x.shape[1:])

    def frame_features(self, video_tokens: torch.Tensor) -> torch.Tensor:
        """Per-frame MGA inputs: CLIP's CLS token, or the mean of a Video Swin frame's tokens."""
        return video_tokens[:, :, 0] if self.variant == "valor-l" else video_tokens.mean(2)

    def _weights(self, name: str, feats: torch.Tensor) -> torch.Tensor:
        sd = self.sd
        hidden = F.relu(F.linear(feats, sd[f"{name}_fine_weight.0.weight"], sd[f"{name}_fine_weight.0.bias"]))
        return F.linear(hidden, sd[f"{name}_fine_weight.2.weight"], sd[f"{name}_fine_weight.2.bias"])[..., 0]

    def project(self, name: str, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Contrastive head + L2 norm, and the fine-grained weight logits."""
        letter = name[0]
        embeds = F.normalize(feats @ self.sd[f"contra_head_{letter}.linear.weight"].t(), dim=-1)
        return embeds, self._weights(name, embeds)

    @staticmethod
    def fine_score(fa, ma, la, fb, mb, lb) -> torch.Tensor:
        """VALOR's fine-grained score between sequences A `(Na, t, d)` and B `(Nb, v, d)`."""
        wa = la.masked_fill(ma == 0, float("-inf")).softmax(-1)
        wb = lb.masked_fill(mb == 0, float("-inf")).softmax(-1)
        sim = torch.einsum("atd,bvd->abtv", fa, fb) * ma[:, None, :, None] * mb[None, :, None, :]
        a2b = (sim.max(-1).values * wa[:, None]).sum(-1)
        b2a = (sim.max(-2).values * wb[None]).sum(-1)
        return (a2b + b2a) / 2

    def logit_scale(self) -> torch.Tensor:
        """1 / tau: `1 / contra_temp` (VALOR-B) or `exp(clip_model.logit_scale)` (VALOR-L)."""
        if self.variant == "valor-l":
            return self.sd["clip_model.logit_scale"].exp()
        return 1.0 / self.sd["contra_temp"]

    def adapt(self, name: str, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder inputs: optional Linear+LayerNorm, + frame embedding, flatten, + type embedding."""
        sd = self.sd
        key = f"hidden_trans_{name}_multimodal."
        if key + "0.weight" in sd:
            tokens = F.linear(tokens, sd[key + "0.weight"], sd[key + "0.bias"])
            tokens = F.layer_norm(
                tokens, tokens.shape[-1:], sd[key + "1.weight"], sd[key + "1.bias"], eps=1e-12
            )
        batch, slots = tokens.shape[:2]
        tokens = tokens + sd[f"{name}_frame_embedding"][:, :slots, None]
        return tokens.reshape(batch, -1, tokens.shape[-1]) + sd[f"{name}_type_embeddings"]


def _verification_inputs(config: ValorConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    text = config.text_config
    low = min(text.random_token_start, text.vocab_size - 1)
    ids = torch.randint(low, text.vocab_size, (2, 7), generator=generator)
    ids[:, 0] = text.bos_token_id if text.bos_token_id < text.vocab_size else 1
    ids[1, 5:] = text.pad_token_id  # one padded caption
    size = config.vision_config.image_size
    channels = config.vision_config.num_channels
    mel, frames = config.audio_config.image_size
    return {
        "input_ids": ids,
        "pixel_values_videos": torch.randn(2, 2, channels, size, size, generator=generator),
        "input_features": torch.randn(2, 1, mel, frames, generator=generator),
    }


@torch.no_grad()
def verify_conversion(
    state_dict: Mapping[str, torch.Tensor],
    model_dir: str | os.PathLike,
    variant: Variant,
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[str, float]:
    """
    Reload the converted folder as [`ValorForRetrieval`] and [`ValorForConditionalGeneration`] and compare with
    [`OriginalValorReference`] on seeded inputs: retrieval scores and logits of the `tv`, `ta` and `tva` groups
    (text with padding), and the caption (MLM) logits of the decoder conditioned on video and audio.

    Returns:
        `dict[str, float]` of max absolute differences. Raises `ConversionError` when one exceeds `atol` (scaled
        by the magnitude of the compared values).
    """
    retrieval = ValorForRetrieval.from_pretrained(model_dir).eval()
    config = retrieval.config
    inputs = _verification_inputs(config, seed)
    reference = OriginalValorReference(state_dict, config, variant)
    ids, pixels, spec = inputs["input_ids"], inputs["pixel_values_videos"], inputs["input_features"]

    text_mask = (ids != config.text_config.pad_token_id).long()
    text = reference.project("text", reference.text_states(ids))
    if variant == "valor-l":
        video_tokens = reference.clip_video_tokens(pixels)
    else:
        video_tokens = retrieval.valor.encode_video(pixels)[0].float()
    audio_tokens = reference.audio_tokens(spec)
    video = reference.project("video", reference.frame_features(video_tokens))
    audio = reference.project("audio", audio_tokens[:, :, 0])
    ones_v = torch.ones(video[0].shape[:2])
    ones_a = torch.ones(audio[0].shape[:2])
    expected = {
        "tv": reference.fine_score(text[0], text_mask, text[1], video[0], ones_v, video[1]),
        "ta": reference.fine_score(text[0], text_mask, text[1], audio[0], ones_a, audio[1]),
        "tva": reference.fine_score(
            text[0],
            text_mask,
            text[1],
            torch.cat([video[0], audio[0]], 1),
            torch.cat([ones_v, ones_a], 1),
            torch.cat([video[1], audio[1]], 1),
        ),
    }
    if config.contrastive_type != "fine":
        raise ConversionError("Parity checks cover the fine-grained MGA of the published checkpoints only.")
    results: dict[str, float] = {}
    for group, scores in expected.items():
        out = retrieval(input_ids=ids, pixel_values_videos=pixels, input_features=spec, group=group)
        results[f"retrieval_scores_{group}"] = (out.scores - scores).abs().max().item()
        logits = scores * reference.logit_scale()
        results[f"retrieval_logits_{group}"] = (out.logits_per_query - logits).abs().max().item() / max(
            1.0, logits.abs().max().item()
        )
    del retrieval

    if config.cross_attention_layout == "concat":
        captioner = ValorForConditionalGeneration.from_pretrained(model_dir).eval()
        decoder_ids = ids[:1, :5]  # [CLS] w1 .. w4, no padding
        memory = torch.cat(
            [reference.adapt("video", video_tokens[:1]), reference.adapt("audio", audio_tokens[:1])], 1
        )
        expected_logits = reference.decoder_logits(decoder_ids, memory)
        logits = captioner(
            input_ids=decoder_ids, pixel_values_videos=pixels[:1], input_features=spec[:1]
        ).logits
        results["caption_logits"] = (logits - expected_logits).abs().max().item() / max(
            1.0, expected_logits.abs().max().item()
        )
    else:
        logger.warning("Caption parity is checked for the `concat` cross-attention layout only; skipped.")

    failed = {name: value for name, value in results.items() if not value <= atol}
    if failed:
        raise ConversionError(f"Parity check failed (tolerance {atol}): {failed}")
    return results


# -------------------------------------------------------------------------------------------- end to end
def build_processor(vocab_path: str | os.PathLike, variant: Variant, config: ValorConfig):
    """
    The [`ValorProcessor`] of a converted checkpoint: BERT uncased WordPiece from `vocab_path`, the video
    processor with ImageNet (VALOR-B) or CLIP (VALOR-L) statistics, and the audio feature extractor.
    """
    from transformers import BertTokenizerFast
    from transformers.models.bert.tokenization_bert import load_vocab

    from .feature_extraction_valor import ValorFeatureExtractor
    from .processing_valor import ValorProcessor
    from .video_processing_valor import ValorVideoProcessor

    tokenizer = BertTokenizerFast(vocab=load_vocab(os.fspath(vocab_path)), do_lower_case=True)
    if len(tokenizer) != config.text_config.vocab_size:
        raise ConversionError(
            f"{vocab_path} has {len(tokenizer)} entries but the checkpoint's vocabulary has "
            f"{config.text_config.vocab_size}; use bert-base-uncased's vocab.txt."
        )
    size = config.vision_config.image_size
    video_processor = ValorVideoProcessor.for_vision_tower(
        "clip" if variant == "valor-l" else "video_swin", size={"height": size, "width": size}
    )
    mel, frames = config.audio_config.image_size
    feature_extractor = ValorFeatureExtractor(feature_size=mel, num_mel_bins=mel, clip_length=frames)
    return ValorProcessor(
        tokenizer=tokenizer, video_processor=video_processor, feature_extractor=feature_extractor
    )


def convert_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor],
    variant: Variant,
    output_dir: str | os.PathLike,
    vocab: str | os.PathLike | None = None,
    image_size: int = 224,
    config_overrides: Mapping[str, Any] | None = None,
    verify: bool = True,
    push_to_hub: str | None = None,
    model_card_kwargs: Mapping[str, Any] | None = None,
) -> ConversionReport:
    """
    Convert a reference checkpoint (path or already loaded state dict) and write it to `output_dir`.

    Writes `model.safetensors` + `config.json` ([`ValorForPreTraining`], loadable by every VALOR head), the
    processor files when `vocab` is given, and `README.md`. With `verify` (default) the saved folder is reloaded
    and compared with the original weights (`verify_conversion`); with `push_to_hub` the folder is uploaded.

    Returns:
        The [`ConversionReport`] (mapped / dropped keys, parity results).
    """
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "<state dict>"
    state_dict = (
        load_original_state_dict(checkpoint)
        if isinstance(checkpoint, (str, os.PathLike))
        else dict(checkpoint)
    )
    config = infer_config(state_dict, variant, image_size=image_size, overrides=config_overrides)
    model = ValorForPreTraining(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    converted, report = convert_state_dict(state_dict, config, variant, expected_shapes=expected)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if unexpected or set(missing) - {TIED_DECODER_KEY}:
        raise ConversionError(f"Loading failed: missing {missing}, unexpected {unexpected}.")
    if not torch.equal(model.cls.predictions.decoder.weight, model.get_input_embeddings().weight):
        raise ConversionError("The MLM decoder is not tied to the word embeddings after loading.")
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir)
    del model
    if vocab is not None:
        build_processor(vocab, variant, config).save_pretrained(output_dir)
    if verify:
        report.verification = verify_conversion(state_dict, output_dir, variant)
    logger.info("Converted %s:\n%s", source, report.summary())

    from .modelcard import create_model_card

    card_kwargs = {
        "model_id": push_to_hub or os.path.basename(os.path.normpath(os.fspath(output_dir))),
        "description": "## Conversion\n\n"
        f"Converted from the original VALOR checkpoint `{os.path.basename(source)}` ({variant}) with "
        "`python -m transformers_valor.convert_original`.\n\n" + report.summary(),
        **(model_card_kwargs or {}),
    }
    create_model_card(config, output_dir, **card_kwargs)
    with open(os.path.join(output_dir, "conversion_report.json"), "w") as handle:
        json.dump(
            {"mapped": report.mapped, "dropped": report.dropped, "verification": report.verification},
            handle,
            indent=1,
        )
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=os.fspath(output_dir))
    return report


def main(argv: list[str] | None = None) -> ConversionReport:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the reference .pt state dict")
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.add_argument("--vocab", help="bert-base-uncased vocab.txt, for the tokenizer")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--push_to_hub", help="Hub repository id to upload the converted folder to")
    parser.add_argument(
        "--image_size", type=int, default=224, help="frame size the model runs at (default 224)"
    )
    parser.add_argument(
        "--config_overrides", type=json.loads, default=None, help="JSON merged into the config"
    )
    parser.add_argument("--no_verify", action="store_true", help="skip the parity check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = convert_checkpoint(
        args.checkpoint,
        args.variant,
        args.output_dir,
        vocab=args.vocab,
        image_size=args.image_size,
        config_overrides=args.config_overrides,
        verify=not args.no_verify,
        push_to_hub=args.push_to_hub,
    )
    print(report.summary())
    return report


if __name__ == "__main__":
    main()
