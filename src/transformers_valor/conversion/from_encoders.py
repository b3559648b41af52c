"""Initialise a new VALOR from `transformers`-format single-modality checkpoints.

VALOR's towers start from public encoders (VALOR_SPEC section 1): BERT-base for the shared text encoder/decoder
(with its MLM head), CLIP ViT (VALOR-L) or Video Swin (VALOR-B) for video, and AST (AudioSet) for audio.
[`init_from_encoders`] builds the VALOR model and copies those weights, with two conversions:

- CLIP: when the checkpoint's image size differs from VALOR's (336-px weights run at 224), its position grid is
  resized bilinearly (24 x 24 -> 16 x 16), the CLS position kept. From a full `CLIPModel`, its `logit_scale` also
  becomes VALOR-L's temperature (tau = 1 / exp(logit_scale)).
- AST: the distillation token and its position are dropped, and the (frequency x time) patch-position grid
  (12 x 101 for AudioSet's 128 x 1024 input with stride 10) is resized bilinearly to VALOR's grid (4 x 32 for a
  64 x 512 input with stride 16), the CLS position kept. `transformers`' `ASTPatchEmbeddings` transposes its
  `(time, frequency)` input to `(frequency, time)` before the convolution, so its patches are already ordered
  row-major over (frequency, time), VALOR's (mel, time) order: no permutation is needed, and the 16 x 16 kernels
  are copied as they are (VALOR applies them with stride 16).

Everything else VALOR adds is new and keeps its initialisation: the decoder's cross-attention, the prompt
type embedding, the MGA projections and weight MLPs, the temperature (unless taken from CLIP), the modality
adapters, and the MLM head when the BERT checkpoint has none. `NEW_WEIGHT_PATTERNS` lists them; any other weight
left unfilled is an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import (
    ASTConfig,
    ASTModel,
    AutoConfig,
    BertConfig,
    BertForPreTraining,
    BertModel,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedConfig,
    PreTrainedModel,
)

from ..configuration_valor import ValorConfig, ValorVideoSwinConfig
from ..modeling_valor import ValorForPreTraining, ValorModel, ValorPreTrainedModel
from ..modeling_video_swin import ValorVideoSwinModel
from .key_mapping import TIED_DECODER_KEY
from .position_grid import resize_position_grid

# Weights of a VALOR model that no single-modality checkpoint provides (relative to `ValorModel`; the heads add
# `valor.`). `cls.` is new only when the BERT checkpoint has no MLM head.
NEW_WEIGHT_PATTERNS = (
    r"text_model\.encoder\.layer\.\d+\.crossattention(_video|_audio)?\.",
    r"text_model\.embeddings\.prompt_embedding\.",
    r"(text|video|audio)_projection\.",
    r"(text|video|audio)_weight_mlp\.",
    r"audiovisual_fusion\.",
    r"(temperature|logit_scale)$",
    r"(video|audio)_adapter\.",
)

EncoderSource = str | os.PathLike | PreTrainedModel


@dataclass
class InitializationReport:
    """
    What [`init_from_encoders`] did.

    Args:
        copied (`dict[str, str]`): VALOR key -> where it came from.
        new (`list[str]`): VALOR weights left at their initialisation (all match `NEW_WEIGHT_PATTERNS`, the MLM
            head when BERT had none, or a tower that was not given).
        dropped (`dict[str, str]`): source weights not used, with the reason.
    """

    copied: dict[str, str] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)


@dataclass
class _Encoders:
    """The loaded single-modality towers (`None` where not given)."""

    bert: BertModel | None = None
    mlm_head: nn.Module | None = None
    vision: nn.Module | None = None
    clip_logit_scale: torch.Tensor | None = None
    ast: ASTModel | None = None


# ------------------------------------------------------------------------------------------------- loading
def _load_text(source: EncoderSource) -> tuple[BertModel, nn.Module | None]:
    """BERT body and, when the checkpoint has one, its MLM head (`cls.predictions`)."""
    if isinstance(source, BertModel):
        return source, None
    if isinstance(source, PreTrainedModel) and hasattr(source, "bert") and hasattr(source, "cls"):
        return source.bert, source.cls.predictions  # BertForPreTraining / BertForMaskedLM
    if isinstance(source, PreTrainedModel):
        raise TypeError(f"`text` must be a BERT model or checkpoint, got {type(source).__name__}.")
    model, info = BertForPreTraining.from_pretrained(source, output_loading_info=True)
    has_head = not any(key.startswith("cls.predictions.") for key in info["missing_keys"])
    return model.bert, model.cls.predictions if has_head else None


def _load_vision(source: EncoderSource) -> tuple[nn.Module, torch.Tensor | None]:
    """The video tower (CLIPVisionModel or ValorVideoSwinModel) and CLIP's `logit_scale` when available."""
    if isinstance(source, CLIPModel):
        return source.vision_model, source.logit_scale.detach()
    if isinstance(source, (CLIPVisionModel, ValorVideoSwinModel)):
        return source, None
    if isinstance(source, PreTrainedModel):
        raise TypeError(
            f"`vision` must be a CLIP or Video Swin model or checkpoint, got {type(source).__name__}."
        )
    model_type = AutoConfig.from_pretrained(source).model_type
    if model_type == "clip":
        model = CLIPModel.from_pretrained(source)
        return model.vision_model, model.logit_scale.detach()
    if model_type == "clip_vision_model":
        return CLIPVisionModel.from_pretrained(source), None
    if model_type == "valor_video_swin":
        return ValorVideoSwinModel.from_pretrained(source), None
    raise ValueError(
        f"`vision` checkpoint has model_type {model_type!r}; expected 'clip', 'clip_vision_model' or "
        "'valor_video_swin'."
    )


def _load_audio(source: EncoderSource) -> ASTModel:
    """The AST body of an `ASTModel` / `ASTForAudioClassification` (checkpoint or loaded model)."""
    if isinstance(source, ASTModel):
        return source
    if isinstance(source, PreTrainedModel) and hasattr(source, "audio_spectrogram_transformer"):
        return source.audio_spectrogram_transformer
    if isinstance(source, PreTrainedModel):
        raise TypeError(f"`audio` must be an AST model or checkpoint, got {type(source).__name__}.")
    return ASTModel.from_pretrained(source)


def _load_encoders(
    text: EncoderSource | None, vision: EncoderSource | None, audio: EncoderSource | None
) -> _Encoders:
    """Load the given towers (text, then vision, then audio)."""
    encoders = _Encoders()
    if text is not None:
        encoders.bert, encoders.mlm_head = _load_text(text)
    if vision is not None:
        encoders.vision, encoders.clip_logit_scale = _load_vision(vision)
    if audio is not None:
        encoders.ast = _load_audio(audio)
    return encoders


# ----------------------------------------------------------------------------------------------- conversion
def ast_patch_grid(config: ASTConfig) -> tuple[int, int]:
    """AST's (frequency, time) patch grid, e.g. (12, 101) for 128 mel bins x 1024 frames with stride 10."""
    frequency = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
    time = (config.max_length - config.patch_size) // config.time_stride + 1
    return frequency, time


def convert_ast_state_dict(
    ast: ASTModel, target_grid: tuple[int, int], prefix: str = "audio_model."
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """
    AST weights under VALOR's `ViTModel` names: distillation token dropped, position grid resized to
    `target_grid` (mel patches, time patches). Returns the tensors and the dropped keys with reasons.
    """
    converted, dropped = {}, {}
    source_grid = ast_patch_grid(ast.config)
    for key, tensor in ast.state_dict().items():
        if key == "embeddings.distillation_token":
            dropped[key] = "AST distillation token (VALOR has one CLS token)"
        elif key == "embeddings.position_embeddings":
            positions = tensor[0]  # (2 + F*T, C): CLS, distillation, grid
            without_distillation = torch.cat([positions[:1], positions[2:]])  # (1 + F*T, C)
            converted[prefix + key] = resize_position_grid(without_distillation, target_grid, source_grid)[
                None
            ]
            dropped[key + "[1]"] = "position of the distillation token"
        else:
            # Patch projection, layers and final LayerNorm use the same names in ASTModel and ViTModel.
            converted[prefix + key] = tensor
    return converted, dropped


def convert_clip_vision_state_dict(
    vision: nn.Module, target_image_size: int, prefix: str = "vision_model."
) -> dict[str, torch.Tensor]:
    """CLIP vision weights under `CLIPVisionModel` names, position grid resized to `target_image_size`."""
    config = vision.config
    converted = {}
    for key, tensor in vision.state_dict().items():
        if key == "embeddings.position_embedding.weight":
            old = config.image_size // config.patch_size
            new = target_image_size // config.patch_size
            tensor = resize_position_grid(tensor, (new, new), (old, old))
        converted[prefix + key] = tensor
    return converted


# ------------------------------------------------------------------------------------------- configuration
def _text_config_from_bert(config: BertConfig) -> dict[str, Any]:
    """VALOR's `text_config` values read from a BERT config."""
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_dropout_prob": config.hidden_dropout_prob,
        "attention_probs_dropout_prob": config.attention_probs_dropout_prob,
        "pad_token_id": config.pad_token_id if config.pad_token_id is not None else 0,
    }


def _audio_config_from_ast(config: ASTConfig) -> dict[str, Any]:
    """VALOR's `audio_config` values read from an AST config (VALOR's own input size kept)."""
    return {
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "patch_size": config.patch_size,
        "qkv_bias": config.qkv_bias,
    }


def _vision_config_from(vision: nn.Module, image_size: int) -> PreTrainedConfig:
    """VALOR's `vision_config`: the tower's own config (a CLIP one at `image_size`)."""
    if isinstance(vision.config, CLIPVisionConfig):
        values = vision.config.to_dict()
        values.pop("model_type", None)
        values.pop("transformers_version", None)
        values["image_size"] = image_size
        return CLIPVisionConfig(**values)
    values = vision.config.to_dict()
    values.pop("transformers_version", None)
    return ValorVideoSwinConfig(**{k: v for k, v in values.items() if k != "model_type"})


def _derive_config(encoders: _Encoders, image_size: int, config_kwargs: Mapping[str, Any]) -> ValorConfig:
    """
    The [`ValorConfig`] of the given encoders: sub-configs derived from them, updated by same-named dicts in
    `config_kwargs` (e.g. special token ids); a tower not given takes the `ValorConfig` default.
    """
    values: dict[str, Any] = dict(config_kwargs)
    if encoders.bert is not None:
        values["text_config"] = {
            **_text_config_from_bert(encoders.bert.config),
            **values.get("text_config", {}),
        }
    if encoders.ast is not None:
        values["audio_config"] = {
            **_audio_config_from_ast(encoders.ast.config),
            **values.get("audio_config", {}),
        }
    if encoders.vision is not None and "vision_config" not in values:
        values["vision_config"] = _vision_config_from(encoders.vision, image_size)
    return ValorConfig(**values)


def _resolve_config(
    config: ValorConfig | Mapping[str, Any] | None,
    encoders: _Encoders,
    image_size: int,
    config_kwargs: Mapping[str, Any],
) -> ValorConfig:
    """The given configuration, or the one derived from the encoders when `config` is `None`."""
    if config is None:
        return _derive_config(encoders, image_size, config_kwargs)
    if isinstance(config, Mapping):
        return ValorConfig(**{**config, **config_kwargs})
    if config_kwargs:
        raise ValueError("Pass either a ValorConfig or config keyword arguments, not both.")
    return config


# ------------------------------------------------------------------------------------------------ copying
def _text_weights(
    encoders: _Encoders, model: ValorPreTrainedModel, base_prefix: str, report: InitializationReport
) -> dict:
    """BERT's body under `text_model.` and its MLM head under `cls.predictions.` (when both sides have one)."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in encoders.bert.state_dict().items():
        if key.startswith("pooler."):
            report.dropped[f"bert.{key}"] = "BERT pooler (unused by VALOR)"
        elif key == "embeddings.position_ids" or key.endswith("token_type_ids"):
            report.dropped[f"bert.{key}"] = "buffer"
        else:
            converted[f"{base_prefix}text_model.{key}"] = tensor
    if encoders.mlm_head is not None and hasattr(model, "cls"):
        for key, tensor in encoders.mlm_head.state_dict().items():
            if key == "decoder.weight":
                report.dropped["cls.predictions.decoder.weight"] = "tied to the word embeddings"
            elif key == "decoder.bias":
                report.dropped["cls.predictions.decoder.bias"] = "alias of cls.predictions.bias"
            else:
                converted[f"cls.predictions.{key}"] = tensor
    return converted


def _vision_weights(
    encoders: _Encoders, config: ValorConfig, base_prefix: str, report: InitializationReport
) -> dict:
    """The video tower under `vision_model.` (CLIP's grid resized), and CLIP's `logit_scale` when it applies."""
    tower, prefix = encoders.vision, f"{base_prefix}vision_model."
    if isinstance(tower, ValorVideoSwinModel):
        return {f"{prefix}{key}": tensor for key, tensor in tower.state_dict().items()}
    converted = convert_clip_vision_state_dict(tower, config.vision_config.image_size, prefix=prefix)
    if encoders.clip_logit_scale is not None:
        if config.logit_scale_type == "log_scale":
            converted[f"{base_prefix}logit_scale"] = encoders.clip_logit_scale.reshape(1)
        else:
            report.dropped["logit_scale"] = "CLIP's logit_scale (this config uses a raw temperature)"
    return converted


def _audio_weights(
    encoders: _Encoders, config: ValorConfig, base_prefix: str, report: InitializationReport
) -> dict:
    """AST under `audio_model.`, its position grid resized to VALOR's audio input."""
    mel, frames = config.audio_config.image_size
    patch = config.audio_config.patch_size
    audio_weights, audio_dropped = convert_ast_state_dict(
        encoders.ast, (mel // patch, frames // patch), prefix=f"{base_prefix}audio_model."
    )
    report.dropped.update({f"audio.{k}": v for k, v in audio_dropped.items()})
    return audio_weights


def _encoder_weights(
    encoders: _Encoders, model: ValorPreTrainedModel, base_prefix: str, report: InitializationReport
) -> dict[str, torch.Tensor]:
    """Every weight the given encoders provide, under the model's names (text, then vision, then audio)."""
    converted: dict[str, torch.Tensor] = {}
    if encoders.bert is not None:
        converted.update(_text_weights(encoders, model, base_prefix, report))
    if encoders.vision is not None:
        converted.update(_vision_weights(encoders, model.config, base_prefix, report))
    if encoders.ast is not None:
        converted.update(_audio_weights(encoders, model.config, base_prefix, report))
    return converted


def _check_shapes(converted: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Every copied tensor must exist in the model with the same shape."""
    expected = model.state_dict()
    problems = [
        f"{key}: got {tuple(tensor.shape)}, the model expects "
        + (f"{tuple(expected[key].shape)}" if key in expected else "no such weight")
        for key, tensor in converted.items()
        if key not in expected or expected[key].shape != tensor.shape
    ]
    if problems:
        raise ValueError(
            "The encoder checkpoints do not fit the VALOR configuration:\n  " + "\n  ".join(problems)
        )


def _origin(key: str) -> str:
    """Which encoder a copied VALOR weight came from."""
    if "vision_model." in key:
        return "vision"
    if "audio_model." in key:
        return "audio"
    if key.endswith("logit_scale"):
        return "vision (CLIP logit_scale)"
    return "text"


def _check_unfilled(
    missing: list[str], base_prefix: str, given: Mapping[str, bool], has_mlm_head: bool
) -> None:
    """
    Weights left at their initialisation must be new in VALOR (`NEW_WEIGHT_PATTERNS`), the tied decoder, or
    belong to a tower that was not given (`given`: tower name -> given) or to an MLM head BERT did not have.
    """
    allowed = [re.compile(re.escape(base_prefix) + pattern) for pattern in NEW_WEIGHT_PATTERNS]
    towers_not_given = [f"{base_prefix}{name}." for name, is_given in given.items() if not is_given]
    if not has_mlm_head:
        towers_not_given.append("cls.")
    unexplained = [
        key
        for key in missing
        if key != TIED_DECODER_KEY
        and not any(regex.match(key) for regex in allowed)
        and not any(key.startswith(prefix) for prefix in towers_not_given)
    ]
    if unexplained:
        raise RuntimeError(f"VALOR weights left unfilled without a reason: {unexplained}")


def init_from_encoders(
    config: ValorConfig | Mapping[str, Any] | None = None,
    text: EncoderSource | None = None,
    vision: EncoderSource | None = None,
    audio: EncoderSource | None = None,
    model_class: type[ValorPreTrainedModel] = ValorForPreTraining,
    image_size: int = 224,
    **config_kwargs,
) -> tuple[ValorPreTrainedModel, InitializationReport]:
    """
    Build a VALOR model whose towers are copied from single-modality `transformers` checkpoints.

    Args:
        config ([`ValorConfig`] or `dict`, *optional*): the VALOR configuration. By default it is derived from the
            given encoders (BERT -> `text_config`, CLIP / Video Swin -> `vision_config` with frames of
            `image_size`, AST -> `audio_config` on VALOR's 64 x 512 input) and `config_kwargs`; a tower not given
            takes the `ValorConfig` default.
        text: path / Hub id of a `BertModel`, `BertForPreTraining` or `BertForMaskedLM` checkpoint, or a loaded
            model. Its MLM head (when present) becomes VALOR's caption head.
        vision: a `CLIPModel` / `CLIPVisionModel` checkpoint (VALOR-L style) or a [`ValorVideoSwinModel`] checkpoint
            in this project's format (VALOR-B style), or a loaded model.
        audio: an `ASTModel` / `ASTForAudioClassification` checkpoint or loaded model.
        model_class: the VALOR class to build ([`ValorForPreTraining`] by default, or any other VALOR head or
            [`ValorModel`]).
        image_size (`int`, defaults to 224): frame size of the new model when `config` is derived.
        config_kwargs: further [`ValorConfig`] arguments when `config` is derived (e.g. `use_task_prompt=True`);
            `text_config` / `audio_config` dicts update the configs derived from BERT / AST (e.g. special token
            ids, or `image_size` of the audio input).

    Returns:
        `(model, report)`: the model and an [`InitializationReport`] (copied, new and dropped weights).

    Example:

    ```python
    >>> from transformers_valor.conversion import init_from_encoders
    >>> model, report = init_from_encoders(  # doctest: +SKIP
    ...     text="google-bert/bert-base-uncased",
    ...     vision="openai/clip-vit-large-patch14-336",
    ...     audio="MIT/ast-finetuned-audioset-10-10-0.4593",
    ...     use_task_prompt=True,
    ... )
    ```
    """
    encoders = _load_encoders(text, vision, audio)
    config = _resolve_config(config, encoders, image_size, config_kwargs)
    model = model_class(config)
    base_prefix = "" if isinstance(model, ValorModel) else "valor."
    report = InitializationReport()
    converted = _encoder_weights(encoders, model, base_prefix, report)
    _check_shapes(converted, model)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected
    report.copied = {key: _origin(key) for key in converted}
    given = {
        "text_model": text is not None,
        "vision_model": vision is not None,
        "audio_model": audio is not None,
    }
    _check_unfilled(missing, base_prefix, given, has_mlm_head=encoders.mlm_head is not None)
    report.new = sorted(set(missing) - {TIED_DECODER_KEY})
    return model, report
