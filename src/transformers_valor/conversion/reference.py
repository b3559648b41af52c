"""An independent forward of the ORIGINAL VALOR weights, and the parity check of a converted folder.

[`OriginalValorReference`] computes VALOR's features, fine-grained scores and caption logits directly from an
original state dict with `torch.nn` transformer layers, independently of this project's modules.
[`verify_conversion`] reloads a converted folder and compares it with that reference on seeded inputs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration_valor import MODALITY_GROUPS, ValorConfig
from ..modeling_valor import ValorForConditionalGeneration, ValorForRetrieval
from .config_inference import Variant
from .report import ConversionError

logger = logging.getLogger(__name__)


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _torch_layer(
    state: Mapping[str, torch.Tensor],
    heads: int,
    eps: float,
    activation,
    norm_first: bool,
    decoder: bool = False,
) -> nn.Module:
    """A `torch.nn` transformer encoder (or decoder) layer in eval mode, loaded from `state` (its own names)."""
    cls = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    layer = cls(
        state["self_attn.out_proj.weight"].shape[0],
        heads,
        state["linear1.weight"].shape[0],
        dropout=0.0,
        activation=activation,
        layer_norm_eps=eps,
        batch_first=True,
        norm_first=norm_first,
    ).eval()
    layer.load_state_dict(state)
    return layer


def _packed(sd: Mapping[str, torch.Tensor], prefix: str, suffix: str) -> torch.Tensor:
    """BERT's separate query / key / value tensors packed as `nn.MultiheadAttention`'s `in_proj_*`."""
    return torch.cat([sd[f"{prefix}{name}.{suffix}"] for name in ("query", "key", "value")])


def _bert_layer_state(sd: Mapping[str, torch.Tensor], p: str, with_cross: bool) -> dict[str, torch.Tensor]:
    """The original BERT layer `p` (and its concatenated cross-attention) under `torch.nn` layer names."""
    last_norm = "norm3" if with_cross else "norm2"
    state = {
        "self_attn.in_proj_weight": _packed(sd, p + "attention.self.", "weight"),
        "self_attn.in_proj_bias": _packed(sd, p + "attention.self.", "bias"),
        "self_attn.out_proj.weight": sd[p + "attention.output.dense.weight"],
        "self_attn.out_proj.bias": sd[p + "attention.output.dense.bias"],
        "norm1.weight": sd[p + "attention.output.LayerNorm.weight"],
        "norm1.bias": sd[p + "attention.output.LayerNorm.bias"],
        "linear1.weight": sd[p + "intermediate.dense.weight"],
        "linear1.bias": sd[p + "intermediate.dense.bias"],
        "linear2.weight": sd[p + "output.dense.weight"],
        "linear2.bias": sd[p + "output.dense.bias"],
        f"{last_norm}.weight": sd[p + "output.LayerNorm.weight"],
        f"{last_norm}.bias": sd[p + "output.LayerNorm.bias"],
    }
    if with_cross:
        c = p + "cross_attn."
        state.update(
            {
                "multihead_attn.in_proj_weight": _packed(sd, c + "cross.", "weight"),
                "multihead_attn.in_proj_bias": _packed(sd, c + "cross.", "bias"),
                "multihead_attn.out_proj.weight": sd[c + "output.dense.weight"],
                "multihead_attn.out_proj.bias": sd[c + "output.dense.bias"],
                "norm2.weight": sd[c + "output.LayerNorm.weight"],
                "norm2.bias": sd[c + "output.LayerNorm.bias"],
            }
        )
    return state


def _audio_layer_state(sd: Mapping[str, torch.Tensor], p: str) -> dict[str, torch.Tensor]:
    """The original audio encoder layer `p` (`attention.linears.0-3`) under `torch.nn` layer names."""
    return {
        "self_attn.in_proj_weight": torch.cat([sd[p + f"attention.linears.{i}.weight"] for i in range(3)]),
        "self_attn.in_proj_bias": torch.cat([sd[p + f"attention.linears.{i}.bias"] for i in range(3)]),
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


def _clip_layer_state(sd: Mapping[str, torch.Tensor], p: str) -> dict[str, torch.Tensor]:
    """The OpenAI-CLIP residual block `p` (packed `in_proj`, already `torch.nn`'s) under `torch.nn` layer names."""
    return {
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
        state = _bert_layer_state(self.sd, f"multimodal_encoder.encoder.layer.{index}.", with_cross)
        return _torch_layer(state, self.text_heads, 1e-12, "gelu", norm_first=False, decoder=with_cross)

    def _embed_text(self, input_ids: torch.Tensor, prompt: bool = False) -> torch.Tensor:
        """BERT embeddings; a prompt (`bert.py`, `token_type='prompt'`) takes the prompt embedding as its type."""
        sd, p = self.sd, "multimodal_encoder.embeddings."
        positions = torch.arange(input_ids.shape[1])
        token_type = (
            sd[p + "prompt_embedding.weight"][0] if prompt else sd[p + "token_type_embeddings.weight"][0]
        )
        hidden = (
            sd[p + "word_embeddings.weight"][input_ids]
            + sd[p + "position_embeddings.weight"][positions][None]
        )
        return F.layer_norm(
            hidden + token_type,
            hidden.shape[-1:],
            sd[p + "LayerNorm.weight"],
            sd[p + "LayerNorm.bias"],
            eps=1e-12,
        )

    def _with_prompt(self, input_ids: torch.Tensor, prompt_ids: torch.Tensor | None):
        """The embedded sequence `[text ; prompt]` (the reference appends the prompt) and its padding (id 0)."""
        hidden, padding = self._embed_text(input_ids), input_ids == 0
        if prompt_ids is not None:
            hidden = torch.cat([hidden, self._embed_text(prompt_ids, prompt=True)], dim=1)
            padding = torch.cat([padding, prompt_ids == 0], dim=1)
        return hidden, padding

    def text_states(self, input_ids: torch.Tensor, prompt_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Bidirectional BERT over `input_ids` and the appended prompt (padding id 0 masked); text part `(B, L, H)`."""
        hidden, padding = self._with_prompt(input_ids, prompt_ids)
        for index in range(self.config.text_config.num_hidden_layers):
            hidden = self._bert_layer(index, with_cross=False)(hidden, src_key_padding_mask=padding)
        return hidden[:, : input_ids.shape[1]]

    def decoder_logits(
        self, input_ids: torch.Tensor, memory: torch.Tensor, prompt_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Causal BERT over `[text ; prompt]` with concatenated cross-attention over `memory`, then the MLM head on
        the text part: `(B, L, vocab)`. `bert.py`'s causal rule: text rows causal among themselves and seeing the
        prompt, prompt rows blocked from the text.
        """
        sd = self.sd
        hidden, padding = self._with_prompt(input_ids, prompt_ids)
        length, total = input_ids.shape[1], hidden.shape[1]
        blocked = torch.zeros(total, total, dtype=torch.bool)
        blocked[:length, :length] = torch.ones(length, length, dtype=torch.bool).triu(1)
        blocked[length:, :length] = True
        for index in range(self.config.text_config.num_hidden_layers):
            hidden = self._bert_layer(index, with_cross=True)(
                hidden, memory, tgt_mask=blocked, tgt_key_padding_mask=padding
            )
        hidden = hidden[:, :length]
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
            state = _audio_layer_state(sd, f"audio_encoder.layer.{index}.")
            x = _torch_layer(state, cfg.num_attention_heads, 1e-12, "gelu", norm_first=True)(x)
        x = F.layer_norm(
            x,
            x.shape[-1:],
            sd["audio_encoder.last_layernorm.weight"],
            sd["audio_encoder.last_layernorm.bias"],
            eps=1e-12,
        )
        return x.view(batch, clips, *x.shape[1:])

    def _clip_positions(self, width: int) -> torch.Tensor:
        """CLIP's position table at the run resolution."""
        cfg = self.config.vision_config
        grid = cfg.image_size // cfg.patch_size
        positions = self.sd["clip_model.visual.positional_embedding"]
        side = math.isqrt(positions.shape[0] - 1)
        if side != grid:
            # The reference's own resize of 336-px weights to the run resolution, deliberately written here
            # rather than calling `position_grid.resize_position_grid`: the parity check must not share the
            # converter's code.
            grid_pos = positions[1:].reshape(side, side, width).permute(2, 0, 1)[None]
            grid_pos = F.interpolate(grid_pos, (grid, grid), mode="bilinear")[0].permute(1, 2, 0)
            positions = torch.cat([positions[:1], grid_pos.reshape(-1, width)])
        return positions

    def clip_video_tokens(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """OpenAI-CLIP visual tower per frame, `ln_post` on every token: `(B, T, 1 + patches, C)`."""
        sd, cfg, v = self.sd, self.config.vision_config, "clip_model.visual."
        batch, frames = pixel_values_videos.shape[:2]
        x = F.conv2d(pixel_values_videos.flatten(0, 1).float(), sd[v + "conv1.weight"], stride=cfg.patch_size)
        x = x.flatten(2).transpose(1, 2)  # (B*T, patches, C)
        width = x.shape[-1]
        cls = sd[v + "class_embedding"].expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self._clip_positions(width)[None]
        x = F.layer_norm(x, (width,), sd[v + "ln_pre.weight"], sd[v + "ln_pre.bias"], eps=1e-5)
        for index in range(cfg.num_hidden_layers):
            state = _clip_layer_state(sd, f"{v}transformer.resblocks.{index}.")
            x = _torch_layer(state, cfg.num_attention_heads, 1e-5, _quick_gelu, norm_first=True)(x)
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


# ------------------------------------------------------------------------------------------ parity check
def _verification_inputs(config: ValorConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded inputs: two captions (one padded), two 2-frame videos, one audio clip each."""
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


def _relative_max_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max absolute difference, relative to the magnitude of `expected` when it exceeds 1."""
    return (actual - expected).abs().max().item() / max(1.0, expected.abs().max().item())


def _expected_scores(
    reference: OriginalValorReference, text, text_mask: torch.Tensor, video, audio
) -> dict[str, torch.Tensor]:
    """The reference's fine-grained scores of the `tv`, `ta` and `tva` groups from projected features."""
    ones_v = torch.ones(video[0].shape[:2])
    ones_a = torch.ones(audio[0].shape[:2])
    return {
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


def _retrieval_differences(
    retrieval: ValorForRetrieval,
    reference: OriginalValorReference,
    inputs: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
) -> dict[str, float]:
    """Differences of the converted model's retrieval scores and logits from the reference's, per group."""
    results: dict[str, float] = {}
    for group, scores in expected.items():
        out = retrieval(**inputs, group=group)
        out_logits = getattr(out, MODALITY_GROUPS[group].logits_names[0])
        results[f"retrieval_scores_{group}"] = (out_logits / out.logit_scale - scores).abs().max().item()
        logits = scores * reference.logit_scale()
        results[f"retrieval_logits_{group}"] = _relative_max_difference(out_logits, logits)
    return results


def _task_prompt(config: ValorConfig, variant: Variant, name: str, batch_size: int) -> torch.Tensor | None:
    """The task prompt `name` the reference appends (`get_task_prompt`) for VALOR-L, whose published recipe runs
    with `use_task_prompt`, else `None`; its token ids are those the converter stored from the vocabulary."""
    if variant != "valor-l":
        return None
    if not config.task_prompt_ids or name not in config.task_prompt_ids:
        raise ConversionError(f"VALOR-L runs with task prompts but the config has no token ids for {name!r}.")
    return torch.tensor(config.task_prompt_ids[name]).repeat(batch_size, 1)


def _caption_difference(
    model_dir: str | os.PathLike,
    reference: OriginalValorReference,
    inputs: Mapping[str, torch.Tensor],
    video_tokens: torch.Tensor,
    audio_tokens: torch.Tensor,
) -> float:
    """Relative difference of the converted captioner's logits from the reference decoder's (first sample), with
    the captioning task prompt when the config uses task prompts."""
    captioner = ValorForConditionalGeneration.from_pretrained(model_dir).eval()
    decoder_ids = inputs["input_ids"][:1, :5]  # [CLS] w1 .. w4, no padding
    memory = torch.cat(
        [reference.adapt("video", video_tokens[:1]), reference.adapt("audio", audio_tokens[:1])], 1
    )
    prompt = _task_prompt(captioner.config, reference.variant, "captioning", 1)
    expected_logits = reference.decoder_logits(decoder_ids, memory, prompt)
    logits = captioner(
        input_ids=decoder_ids,
        pixel_values_videos=inputs["pixel_values_videos"][:1],
        input_features=inputs["input_features"][:1],
    ).logits
    return _relative_max_difference(logits, expected_logits)


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
    [`OriginalValorReference`] on seeded inputs: the text features, retrieval scores and logits of the `tv`, `ta`
    and `tva` groups (text with padding), and the caption (MLM) logits of the decoder conditioned on video and
    audio. For VALOR-L the reference runs the text encoder with the `retrieval` prompt and the decoder with the
    `captioning` prompt, as the original code does with `use_task_prompt`; the converted models must add them
    themselves.

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
    text = reference.project(
        "text", reference.text_states(ids, _task_prompt(config, variant, "retrieval", len(ids)))
    )
    if variant == "valor-l":
        video_tokens = reference.clip_video_tokens(pixels)
    else:
        video_tokens = retrieval.valor.encode_video(pixels)[0].float()
    audio_tokens = reference.audio_tokens(spec)
    video = reference.project("video", reference.frame_features(video_tokens))
    audio = reference.project("audio", audio_tokens[:, :, 0])
    expected = _expected_scores(reference, text, text_mask, video, audio)
    if config.contrastive_type != "fine":
        raise ConversionError("Parity checks cover the fine-grained MGA of the published checkpoints only.")
    results = _retrieval_differences(retrieval, reference, inputs, expected)
    valid = text_mask.bool()
    features = retrieval.valor.get_text_features(ids).embeds
    results["text_features"] = (features[valid] - text[0][valid]).abs().max().item()
    del retrieval

    if config.cross_attention_layout == "concat":
        results["caption_logits"] = _caption_difference(
            model_dir, reference, inputs, video_tokens, audio_tokens
        )
    else:
        logger.warning("Caption parity is checked for the `concat` cross-attention layout only; skipped.")

    failed = {name: value for name, value in results.items() if not value <= atol}
    if failed:
        raise ConversionError(f"Parity check failed (tolerance {atol}): {failed}")
    return results
