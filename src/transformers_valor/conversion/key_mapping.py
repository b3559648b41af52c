"""The explicit key map from an original VALOR state dict to this project's [`ValorForPreTraining`] names.

Every source key either matches one [`Rule`] (source regex -> target template(s), with an optional tensor
transform) or one pattern of keys dropped on purpose, with the reason. [`convert_state_dict`] applies the map
and refuses (with a [`ConversionError`] listing them) unknown keys, shape mismatches, weights written twice,
model weights left unfilled, and a shared BERT whose two copies differ.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..configuration_valor import ValorConfig
from ..modeling_valor import ValorForPreTraining
from .config_inference import Variant
from .position_grid import resize_position_grid
from .report import ConversionError, ConversionReport

TIED_DECODER_KEY = "cls.predictions.decoder.weight"


@dataclass(frozen=True)
class Rule:
    """One line of the key map: source regex -> target template(s), with an optional tensor transform."""

    pattern: str
    targets: tuple[str, ...]
    transform: str = "copy"


# ----------------------------------------------------------------------------------------------- loading
def load_original_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """
    Load a reference checkpoint with `torch.load(weights_only=True)`; unwrap a `{"model": ...}` /
    `{"state_dict": ...}` container and strip a DistributedDataParallel `module.` prefix.
    """
    if os.path.isdir(path):
        raise ConversionError(
            f"{path} is a folder; give the .pt state dict file (the one inside the download)."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (
        Exception
    ) as err:  # torch.load raises unrelated types (KeyError, EOFError, UnpicklingError) on bad files
        raise ConversionError(
            f"{path} is not a PyTorch checkpoint that `torch.load(weights_only=True)` can read "
            f"({type(err).__name__}: {err}); give the original VALOR .pt state dict."
        ) from err
    for container in ("model", "state_dict", "module"):
        if isinstance(obj, Mapping) and container in obj and isinstance(obj[container], Mapping):
            obj = obj[container]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors.")
    state_dict = dict(obj)
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    return state_dict


# ------------------------------------------------------------------------------------------ the rule tables
_BERT, _TEXT = r"multimodal_encoder\.", "valor.text_model."
_LAYER = _BERT + r"encoder\.layer\.(\d+)\."
_AUDIO_LAYER = r"audio_encoder\.layer\.(\d+)\."

# The shared BERT, with the cross-attention block(s) of the decoder.
TEXT_RULES = (
    Rule(
        _BERT + r"embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|prompt_embedding|"
        r"LayerNorm)\.(weight|bias)$",
        (_TEXT + r"embeddings.\1.\2",),
    ),
    Rule(
        _LAYER + r"attention\.(self\.(?:query|key|value)|output\.(?:dense|LayerNorm))\.(weight|bias)$",
        (_TEXT + r"encoder.layer.\1.attention.\2.\3",),
    ),
    Rule(
        _LAYER + r"(intermediate\.dense|output\.(?:dense|LayerNorm))\.(weight|bias)$",
        (_TEXT + r"encoder.layer.\1.\2.\3",),
    ),
    Rule(
        _LAYER + r"cross_attn\.cross\.(query|key|value)\.(weight|bias)$",
        (_TEXT + r"encoder.layer.\1.crossattention.self.\2.\3",),
    ),
    Rule(
        _LAYER + r"cross_attn\.output\.(dense|LayerNorm)\.(weight|bias)$",
        (_TEXT + r"encoder.layer.\1.crossattention.output.\2.\3",),
    ),
    Rule(
        _LAYER + r"cross_attn_v\.cross\.(query|key|value)\.(weight|bias)$",
        (_TEXT + r"encoder.layer.\1.crossattention_video.self.\2.\3",),
    ),
    Rule(
        _LAYER + r"cross_attn_v\.output\.(dense|LayerNorm)\.(weight|bias)$",
        (_TEXT + r"encoder.layer.\1.crossattention_video.output.\2.\3",),
    ),
    Rule(
        _LAYER + r"cross_attn_a\.cross\.(query|key|value)\.(weight|bias)$",
        (_TEXT + r"encoder.layer.\1.crossattention_audio.self.\2.\3",),
    ),
    Rule(
        _LAYER + r"cross_attn_a\.output\.(dense|LayerNorm)\.(weight|bias)$",
        (_TEXT + r"encoder.layer.\1.crossattention_audio.output.\2.\3",),
    ),
)

# MLM head (the decoder weight is tied to the word embeddings, see the dropped keys).
MLM_HEAD_RULES = (
    Rule(r"cls\.dense\.(weight|bias)$", (r"cls.predictions.transform.dense.\1",)),
    Rule(r"cls\.layernorm\.(weight|bias)$", (r"cls.predictions.transform.LayerNorm.\1",)),
    Rule(r"cls\.decoder\.bias$", ("cls.predictions.bias",)),
)

# Audio encoder -> the ViT-style audio tower (`valor.audio_model`).
AUDIO_RULES = (
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
        _AUDIO_LAYER + r"attention\.linears\.0\.(weight|bias)$",
        (r"valor.audio_model.layers.\1.attention.q_proj.\2",),
    ),
    Rule(
        _AUDIO_LAYER + r"attention\.linears\.1\.(weight|bias)$",
        (r"valor.audio_model.layers.\1.attention.k_proj.\2",),
    ),
    Rule(
        _AUDIO_LAYER + r"attention\.linears\.2\.(weight|bias)$",
        (r"valor.audio_model.layers.\1.attention.v_proj.\2",),
    ),
    Rule(
        _AUDIO_LAYER + r"attention\.linears\.3\.(weight|bias)$",
        (r"valor.audio_model.layers.\1.attention.o_proj.\2",),
    ),
    Rule(_AUDIO_LAYER + r"ff_layer\.linear1\.(weight|bias)$", (r"valor.audio_model.layers.\1.mlp.fc1.\2",)),
    Rule(_AUDIO_LAYER + r"ff_layer\.linear2\.(weight|bias)$", (r"valor.audio_model.layers.\1.mlp.fc2.\2",)),
    Rule(_AUDIO_LAYER + r"layernorm1\.(weight|bias)$", (r"valor.audio_model.layers.\1.layernorm_before.\2",)),
    Rule(_AUDIO_LAYER + r"layernorm2\.(weight|bias)$", (r"valor.audio_model.layers.\1.layernorm_after.\2",)),
    Rule(r"audio_encoder\.last_layernorm\.(weight|bias)$", (r"valor.audio_model.layernorm.\1",)),
)

# MGA heads and the decoder-side modality adapters.
HEAD_RULES = (
    Rule(r"contra_head_t\.linear\.weight$", ("valor.text_projection.weight",)),
    Rule(r"contra_head_v\.linear\.weight$", ("valor.video_projection.weight",)),
    Rule(r"contra_head_a\.linear\.weight$", ("valor.audio_projection.weight",)),
    Rule(r"text_fine_weight\.(0|2)\.(weight|bias)$", (r"valor.text_weight_mlp.\1.\2",)),
    Rule(r"video_fine_weight\.(0|2)\.(weight|bias)$", (r"valor.video_weight_mlp.\1.\2",)),
    Rule(r"audio_fine_weight\.(0|2)\.(weight|bias)$", (r"valor.audio_weight_mlp.\1.\2",)),
    Rule(r"va_fusion\.(weight|bias)$", (r"valor.audiovisual_fusion.\1",)),
    Rule(r"video_type_embeddings$", ("valor.video_adapter.type_embedding",)),
    Rule(r"audio_type_embeddings$", ("valor.audio_adapter.type_embedding",)),
    Rule(r"video_frame_embedding$", ("valor.video_adapter.frame_embedding",)),
    Rule(r"audio_frame_embedding$", ("valor.audio_adapter.frame_embedding",)),
    Rule(r"hidden_trans_video_multimodal\.(0|1)\.(weight|bias)$", (r"valor.video_adapter.projection.\1.\2",)),
    Rule(r"hidden_trans_audio_multimodal\.(0|1)\.(weight|bias)$", (r"valor.audio_adapter.projection.\1.\2",)),
)

# VALOR-B: the Video Swin tower keeps the reference names.
VIDEO_SWIN_RULES = (
    Rule(r"video_encoder\.(.+\.relative_position_bias_table)$", (r"valor.vision_model.\1",)),
    Rule(
        r"video_encoder\.((?:patch_embed\.(?:proj|norm)|layers\.\d+\.blocks\.\d+\.(?:norm1|norm2|"
        r"attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)|layers\.\d+\.downsample\.(?:reduction|norm)|norm)"
        r"\.(?:weight|bias))$",
        (r"valor.vision_model.\1",),
    ),
    Rule(r"contra_temp$", ("valor.temperature",), "at_least_1d"),
)

# (regex, reason) of source keys dropped on purpose.
COMMON_DROPPED = (
    (r"(multimodal_encoder|txt_encoder)\.pooler\.", "BERT pooler (unused by VALOR)"),
    (r"txt_encoder\.", "second name of the shared BERT (checked equal to multimodal_encoder.*)"),
    (r"cls\.decoder\.weight$", "MLM decoder weight, tied to the word embeddings (checked equal)"),
)
VIDEO_SWIN_DROPPED = (
    (r"video_encoder\..*relative_position_index$", "Video Swin buffer the model recomputes"),
)
CLIP_DROPPED = (
    (r"clip_model\.visual\.proj$", "CLIP's visual projection (VALOR uses its own contra_head_v)"),
    (
        r"clip_model\.(transformer\.|token_embedding\.|positional_embedding$|ln_final\.|text_projection$|"
        r"prompt_embedding\.)",
        "CLIP text tower (unused: VALOR's text encoder is BERT)",
    ),
    (r"clip_model\.(input_resolution|context_length|vocab_size)$", "CLIP metadata"),
    (r"contra_temp$", "unused temperature (VALOR-L takes tau from CLIP's logit_scale)"),
)


def _clip_rules(grid: int) -> list[Rule]:
    """VALOR-L's OpenAI-CLIP visual tower -> `CLIPVisionModel`, its position grid resized to `grid x grid`."""
    visual, vision = r"clip_model\.visual\.", "valor.vision_model."
    block = visual + r"transformer\.resblocks\.(\d+)\."
    return [
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
        Rule(r"clip_model\.logit_scale$", ("valor.logit_scale",), "at_least_1d"),
    ]


def key_map(config: ValorConfig, variant: Variant) -> tuple[list[Rule], list[tuple[str, str]]]:
    """
    The explicit key map of a variant: (rules that place tensors, (regex, reason) of keys dropped on purpose).
    """
    rules = [*TEXT_RULES, *MLM_HEAD_RULES, *AUDIO_RULES, *HEAD_RULES]
    dropped = list(COMMON_DROPPED)
    if variant == "valor-b":
        rules += VIDEO_SWIN_RULES
        dropped += VIDEO_SWIN_DROPPED
    else:
        rules += _clip_rules(config.vision_config.image_size // config.vision_config.patch_size)
        dropped += CLIP_DROPPED
    return rules, dropped


# ---------------------------------------------------------------------------------------------- transforms
def _apply_transform(name: str, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The pieces a rule's transform makes of a source tensor, one per target."""
    if name == "copy":
        return (tensor,)
    if name == "split3":
        return tuple(tensor.chunk(3, dim=0))  # in_proj (3W, ...) -> q, k, v
    if name == "at_least_1d":
        return (tensor.reshape(1) if tensor.dim() == 0 else tensor,)  # 0-d scalar -> (1,): FSDP2 shards it
    if name == "add_batch_dim":
        return (tensor[None],)  # (N, C) -> (1, N, C)
    if name.startswith("resize_grid_"):
        grid = int(name.rsplit("_", 1)[1])
        return (resize_position_grid(tensor, (grid, grid)),)
    raise ValueError(f"Unknown transform {name!r}.")


# ------------------------------------------------------------------------------------------ applying the map
class _KeyPlacer:
    """Places source tensors by the key map and collects what could not be placed."""

    def __init__(
        self,
        rules: list[Rule],
        dropped: list[tuple[str, str]],
        expected_shapes: Mapping[str, torch.Size],
        dtype: torch.dtype | None,
    ):
        self.rules = [(re.compile(rule.pattern), rule) for rule in rules]
        self.dropped = [(re.compile(pattern), reason) for pattern, reason in dropped]
        self.expected_shapes = expected_shapes
        self.dtype = dtype
        self.converted: dict[str, torch.Tensor] = {}
        self.report = ConversionReport()
        self.unplaced: list[str] = []
        self.mismatched: list[str] = []
        self.duplicated: list[str] = []

    def place(self, key: str, tensor: torch.Tensor) -> None:
        """Map `key` by the first matching rule, or record it as dropped (with the reason) or unplaced."""
        match = next(((regex, rule) for regex, rule in self.rules if regex.match(key)), None)
        if match is None:
            reason = next((reason for regex, reason in self.dropped if regex.match(key)), None)
            if reason is None:
                self.unplaced.append(key)
            else:
                self.report.dropped[key] = reason
            return
        regex, rule = match
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        pieces = _apply_transform(rule.transform, tensor)
        for template, piece in zip(rule.targets, pieces, strict=True):
            self._store(key, tensor, regex.sub(template, key), piece, rule.transform)

    def _store(
        self, key: str, tensor: torch.Tensor, target: str, piece: torch.Tensor, transform: str
    ) -> None:
        expected = self.expected_shapes
        if target not in expected:
            self.unplaced.append(f"{key} -> {target} (no such weight in the model)")
            return
        if tuple(piece.shape) != tuple(expected[target]):
            self.mismatched.append(
                f"{key} {tuple(tensor.shape)} -> {target}: got {tuple(piece.shape)}, "
                f"the model expects {tuple(expected[target])}"
            )
            return
        if target in self.converted:
            self.duplicated.append(f"{target} (from {self.report.mapped[target]} and {key})")
        self.converted[target] = piece.contiguous()
        self.report.mapped[target] = key if transform == "copy" else f"{key} [{transform}]"

    def problems(self) -> list[str]:
        """Unplaced keys, shape mismatches, weights written twice and model weights left unfilled."""
        missing = sorted(set(self.expected_shapes) - set(self.converted) - {TIED_DECODER_KEY})
        problems = []
        if self.unplaced:
            problems.append(
                f"{len(self.unplaced)} key(s) the converter cannot place:\n  " + "\n  ".join(self.unplaced)
            )
        if self.mismatched:
            problems.append(f"{len(self.mismatched)} shape mismatch(es):\n  " + "\n  ".join(self.mismatched))
        if self.duplicated:
            problems.append("weights written twice:\n  " + "\n  ".join(self.duplicated))
        if missing:
            problems.append(f"{len(missing)} model weight(s) not filled:\n  " + "\n  ".join(missing))
        return problems


def _check_shared_copies(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """
    Problems with the shared copies of an original state dict: the shared BERT must be identical under both
    names (`txt_encoder.*` and `multimodal_encoder.*`), and the MLM decoder tied to the word embeddings.
    """
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
    placer = _KeyPlacer(*key_map(config, variant), expected_shapes, dtype)
    for key, tensor in state_dict.items():
        placer.place(key, tensor)
    problems = placer.problems() + _check_shared_copies(state_dict)
    if problems:
        raise ConversionError("Conversion refused.\n" + "\n".join(problems))
    # nanoGPT-style count check: every model tensor but the tied decoder comes from the checkpoint exactly once.
    assert len(placer.converted) == len(expected_shapes) - (TIED_DECODER_KEY in expected_shapes)
    return placer.converted, placer.report
