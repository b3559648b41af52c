"""VALOR models: the shared base (`ValorModel`) and one class per task.

- [`ValorModel`]: the three encoders, MGA projections and scoring, and the decoder-side modality adapters.
- [`ValorForRetrieval`]: MGA score matrices for one modality group, and the MGA loss.
- [`ValorForConditionalGeneration`]: the multimodal decoder with the MLM head (MGC loss, captioning, QA,
  `generate()`).
- [`ValorForPreTraining`]: L = alpha * L_MGA + L_MGC over modality groups, encoders run once per batch.

Input names: `input_ids`/`attention_mask` (text), `pixel_values_videos` (batch, frames, 3, height, width),
`input_features` (batch, audio clips, mel bins, time frames) with `input_features_mask` (batch, audio clips),
`prompt_ids`/`prompt_attention_mask` (task prompt or question).
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.utils import ModelOutput

from .configuration_valor import GroupName, ValorConfig, get_modality_group
from .losses import (
    DEFAULT_MAX_BLOCK_ELEMENTS,
    CaptionLoss,
    MultimodalGroupingAlignmentLoss,
    coarse_similarity,
    contrastive_loss,
    fine_grained_similarity,
    temperature_to_logit_scale,
)
from .modeling_valor_audio import ValorAudioModel
from .modeling_valor_text import ValorTextModel, ValorTextOnlyMLMHead


@dataclass
class ValorFeatures(ModelOutput):
    """
    Features of one modality (or a concatenation of modalities) in the MGA space.

    Args:
        embeds (`torch.FloatTensor` of shape `(batch_size, positions, projection_dim)`): L2-normalised token
            (text), frame (video) or clip (audio) features.
        mask (`torch.LongTensor` of shape `(batch_size, positions)`): 1 for valid positions.
        weight_logits (`torch.FloatTensor` of shape `(batch_size, positions)`, *optional*): the fine-grained
            weight MLP's output (only with `contrastive_type="fine"`).
        pooled_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`): L2-normalised sequence
            feature of the coarse variant ([CLS] for text, the mean over frames/clips for video/audio).
        last_hidden_state (`torch.FloatTensor`, *optional*): the encoder's output tokens: `(batch, text_length,
            hidden)` for text, `(batch, frames, tokens_per_frame, hidden)` for video, `(batch, clips,
            tokens_per_clip, hidden)` for audio.
    """

    embeds: torch.FloatTensor | None = None
    mask: torch.LongTensor | None = None
    weight_logits: torch.FloatTensor | None = None
    pooled_embeds: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


@dataclass
class ValorModelOutput(ModelOutput):
    """
    Output of [`ValorModel`]: the MGA features of every modality that was given.

    Args:
        text_features ([`ValorFeatures`], *optional*): text token features.
        video_features ([`ValorFeatures`], *optional*): per-frame features.
        audio_features ([`ValorFeatures`], *optional*): per-clip features.
        logit_scale (`torch.FloatTensor`): the scalar multiplying MGA scores before the softmax (1 / tau).
    """

    text_features: ValorFeatures | None = None
    video_features: ValorFeatures | None = None
    audio_features: ValorFeatures | None = None
    logit_scale: torch.FloatTensor | None = None


@dataclass
class ValorRetrievalOutput(ModelOutput):
    """
    Output of [`ValorForRetrieval`].

    Args:
        loss (`torch.FloatTensor`, *optional*): symmetric InfoNCE (MGA) loss, with `return_loss=True`.
        scores (`torch.FloatTensor` of shape `(num_queries, num_candidates)`): MGA similarity before scaling.
            Queries are the first side of the group (text for `tv`/`ta`/`tva`, video for `va`/`vta`, audio for
            `atv`), candidates the second.
        logits_per_query (`torch.FloatTensor` of shape `(num_queries, num_candidates)`): `scores * logit_scale`.
        logits_per_candidate (`torch.FloatTensor` of shape `(num_candidates, num_queries)`): its transpose.
        query_features / candidate_features ([`ValorFeatures`]): the features that were scored.
        logit_scale (`torch.FloatTensor`): 1 / tau.
    """

    loss: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    logits_per_query: torch.FloatTensor | None = None
    logits_per_candidate: torch.FloatTensor | None = None
    query_features: ValorFeatures | None = None
    candidate_features: ValorFeatures | None = None
    logit_scale: torch.FloatTensor | None = None


@dataclass
class ValorCaptioningOutput(ModelOutput):
    """
    Output of [`ValorForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor`, *optional*): MGC cross-entropy, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, text_length, vocab_size)`): vocabulary scores. During
            `unimlm` generation only the transient [MASK] position is returned, `(batch_size, 1, vocab_size)`.
        cache (`Cache`, *optional*): the decoder's key/value cache.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): decoder hidden states.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class ValorPreTrainingOutput(ModelOutput):
    """
    Output of [`ValorForPreTraining`].

    Args:
        loss (`torch.FloatTensor`): `contrastive_loss_weight * contrastive_loss + caption_loss`.
        contrastive_loss (`torch.FloatTensor`, *optional*): mean MGA loss over the active groups.
        caption_loss (`torch.FloatTensor`, *optional*): mean MGC loss over the active groups.
        group_losses (`dict[str, torch.FloatTensor]`): each component, keyed `"mga_<group>"` / `"mgc_<group>"`.
        logit_scale (`torch.FloatTensor`): 1 / tau.
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    group_losses: dict[str, torch.FloatTensor] | None = None
    logit_scale: torch.FloatTensor | None = None


def concat_features(*features: ValorFeatures) -> ValorFeatures:
    """Concatenate features of several modalities along the position axis (VALOR's grouped sequences)."""
    if len(features) == 1:
        return features[0]
    weight_logits = None
    if all(f.weight_logits is not None for f in features):
        weight_logits = torch.cat([f.weight_logits for f in features], dim=1)
    return ValorFeatures(
        embeds=torch.cat([f.embeds for f in features], dim=1),
        mask=torch.cat([f.mask for f in features], dim=1),
        weight_logits=weight_logits,
    )


def concat_feature_batches(parts: list[ValorFeatures]) -> ValorFeatures:
    """Concatenate features of several batches of the same modality along the batch axis (e.g. a corpus
    encoded in chunks). Fields that are `None` in the first part stay `None`."""
    keys = ("embeds", "mask", "weight_logits", "pooled_embeds")
    return ValorFeatures(
        **{
            key: torch.cat([getattr(p, key) for p in parts])
            for key in keys
            if getattr(parts[0], key) is not None
        }
    )


def _weight_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))


class ValorModalityAdapter(nn.Module):
    """
    Turns encoder tokens into the decoder's cross-attention inputs: a width projection (Linear + LayerNorm,
    only when the encoder width differs from the decoder's), a learned per-frame (or per-clip) embedding and a
    learned modality-type embedding.
    """

    def __init__(self, encoder_width: int, decoder_width: int, num_slots: int, layer_norm_eps: float):
        super().__init__()
        if encoder_width != decoder_width:
            self.projection = nn.Sequential(
                nn.Linear(encoder_width, decoder_width), nn.LayerNorm(decoder_width, eps=layer_norm_eps)
            )
        else:
            self.projection = nn.Identity()
        self.frame_embedding = nn.Parameter(torch.zeros(1, num_slots, decoder_width))
        self.type_embedding = nn.Parameter(torch.zeros(1, 1, decoder_width))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(batch, slots, tokens_per_slot, width)` -> `(batch, slots * tokens_per_slot, decoder_width)`."""
        batch, slots, per_slot = tokens.shape[:3]
        hidden = self.projection(tokens)  # (B, S, N, H)
        hidden = hidden + self.frame_embedding[:, :slots, None] + self.type_embedding[:, :, None]
        return hidden.reshape(batch, slots * per_slot, -1)  # (B, S*N, H)


class ValorPreTrainedModel(PreTrainedModel):
    """Base class of the VALOR models: weight initialisation and the capabilities shared by every head."""

    config: ValorConfig
    base_model_prefix = "valor"
    main_input_name = "input_ids"
    input_modalities = ("text", "video", "audio")
    supports_gradient_checkpointing = True
    _no_split_modules = ["ValorTextLayer", "ValorVideoSwinBlock", "CLIPEncoderLayer", "ViTLayer"]
    _supports_sdpa = True
    _keys_to_ignore_on_load_unexpected = [r"pooler\."]

    # Set by the package (`transformers_valor.modelcard.create_model_card`): writes README.md into a saved folder.
    model_card_writer: Callable | None = None

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as `PreTrainedModel.save_pretrained` does, plus a README.md model card when the folder has none."""
        super().save_pretrained(save_directory, *args, **kwargs)
        writer = type(self).model_card_writer
        if (
            writer is not None
            and kwargs.get("is_main_process", True)
            and not os.path.exists(os.path.join(save_directory, "README.md"))
        ):
            writer(self, save_directory)

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, ValorModalityAdapter):
            init.normal_(module.frame_embedding, mean=0.0, std=std)
            init.normal_(module.type_embedding, mean=0.0, std=std)
        elif isinstance(module, ValorModel):
            if module.config.logit_scale_type == "temperature":
                init.constant_(module.temperature, self.config.temperature_init)
            else:
                init.constant_(module.logit_scale, temperature_to_logit_scale(self.config.temperature_init))
        elif isinstance(module, ValorTextOnlyMLMHead):
            init.zeros_(module.predictions.bias)


class ValorModel(ValorPreTrainedModel):
    """
    VALOR's three encoders with the MGA heads and the decoder-side modality adapters.

    `get_text_features`, `get_video_features` and `get_audio_features` return projected, L2-normalised
    features with their masks; `group_features` and `similarity` score them for any modality group, on
    features computed once (for example over a whole corpus).

    Example:

    ```python
    >>> from transformers_valor import ValorModel
    >>> model = ValorModel.from_pretrained("path/or/repo")  # doctest: +SKIP
    >>> text = model.get_text_features(input_ids, attention_mask)  # doctest: +SKIP
    >>> video = model.get_video_features(pixel_values_videos)  # doctest: +SKIP
    >>> scores = model.similarity(*model.group_features("tv", text=text, video=video))  # doctest: +SKIP
    ```
    """

    # A checkpoint of a head class carries the MLM head, which the base model does not use.
    _keys_to_ignore_on_load_unexpected = [r"pooler\.", r"^cls\."]

    def __init__(self, config: ValorConfig):
        super().__init__(config)
        text_width = config.text_config.hidden_size
        video_width = config.vision_config.hidden_size
        audio_width = config.audio_config.hidden_size
        dim = config.projection_dim

        self.text_model = ValorTextModel(config.text_config)
        # Video Swin (ValorVideoSwinConfig) or CLIP's vision tower per frame (CLIPVisionConfig).
        self.vision_model = AutoModel.from_config(config.vision_config)
        self.audio_model: ValorAudioModel = AutoModel.from_config(config.audio_config)

        self.text_projection = nn.Linear(text_width, dim, bias=False)
        self.video_projection = nn.Linear(video_width, dim, bias=False)
        self.audio_projection = nn.Linear(audio_width, dim, bias=False)
        if config.contrastive_type == "fine":
            self.text_weight_mlp = _weight_mlp(dim)
            self.video_weight_mlp = _weight_mlp(dim)
            self.audio_weight_mlp = _weight_mlp(dim)
        else:
            self.audiovisual_fusion = nn.Linear(2 * dim, dim)
        if config.logit_scale_type == "temperature":
            self.temperature = nn.Parameter(torch.tensor(config.temperature_init))
        else:
            self.logit_scale = nn.Parameter(torch.tensor(temperature_to_logit_scale(config.temperature_init)))

        eps = config.text_config.layer_norm_eps
        self.video_adapter = ValorModalityAdapter(video_width, text_width, config.max_video_frames, eps)
        self.audio_adapter = ValorModalityAdapter(audio_width, text_width, config.max_audio_clips, eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        """The shared word embeddings."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        """Replace the shared word embeddings."""
        self.text_model.set_input_embeddings(value)

    # ----------------------------------------------------------------------------------------------- encoders
    def get_logit_scale(self) -> torch.Tensor:
        """The factor multiplying MGA scores before the softmax: 1 / tau."""
        if self.config.logit_scale_type == "temperature":
            return 1.0 / self.temperature
        return self.logit_scale.exp()

    def _check_video(self, pixel_values_videos: torch.Tensor) -> None:
        if pixel_values_videos.dim() != 5:
            raise ValueError(
                "`pixel_values_videos` must have shape (batch, frames, channels, height, width), got "
                f"{tuple(pixel_values_videos.shape)}."
            )
        frames = pixel_values_videos.shape[1]
        if frames > self.config.max_video_frames:
            raise ValueError(
                f"`pixel_values_videos` has {frames} frames but the model has only "
                f"{self.config.max_video_frames} frame embedding slots (`max_video_frames`)."
            )

    def _check_audio(self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None) -> None:
        if input_features.dim() != 4:
            raise ValueError(
                "`input_features` must have shape (batch, audio_clips, mel_bins, time_frames), got "
                f"{tuple(input_features.shape)}."
            )
        clips = input_features.shape[1]
        if clips > self.config.max_audio_clips:
            raise ValueError(
                f"`input_features` has {clips} audio clips but the model has only {self.config.max_audio_clips} "
                "clip embedding slots (`max_audio_clips`)."
            )
        if input_features_mask is not None and input_features_mask.shape != input_features.shape[:2]:
            raise ValueError(
                f"`input_features_mask` has shape {tuple(input_features_mask.shape)}, expected "
                f"{tuple(input_features.shape[:2])} (batch, audio_clips)."
            )

    def encode_video(self, pixel_values_videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Run the video encoder.

        Returns:
            tokens `(batch, frames, tokens_per_frame, video_width)` (the decoder's inputs) and per-frame features
            `(batch, frames, video_width)` (the MGA inputs: the mean of a Video Swin frame's tokens, or CLIP's
            [CLS] after its final LayerNorm).
        """
        self._check_video(pixel_values_videos)
        pixel_values_videos = pixel_values_videos.to(self.dtype)
        if self.config.is_clip_vision:
            batch, frames = pixel_values_videos.shape[:2]
            hidden = self.vision_model(pixel_values=pixel_values_videos.flatten(0, 1)).last_hidden_state
            # transformers applies CLIP's final LayerNorm to the pooled token only; VALOR applies it to all.
            hidden = self.vision_model.post_layernorm(hidden)
            tokens = hidden.view(batch, frames, *hidden.shape[1:])  # (B, T, 1 + patches, C)
            return tokens, tokens[:, :, 0]
        output = self.vision_model(pixel_values_videos=pixel_values_videos)
        return output.last_hidden_state, output.pooler_output

    def encode_audio(self, input_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Run the audio encoder on every clip.

        Returns:
            tokens `(batch, clips, 1 + patches, audio_width)` and per-clip [CLS] features `(batch, clips, width)`.
        """
        self._check_audio(input_features, None)
        output = self.audio_model(input_features.to(self.dtype), return_dict=True)
        return output.last_hidden_state, output.pooler_output

    def _features(self, feats, mask, projection, weight_mlp_name, pooled_source) -> ValorFeatures:
        embeds = F.normalize(projection(feats), dim=-1)
        weight_logits = None
        if self.config.contrastive_type == "fine":
            weight_logits = getattr(self, weight_mlp_name)(embeds).squeeze(-1)
        pooled = F.normalize(projection(pooled_source), dim=-1)
        return ValorFeatures(embeds=embeds, mask=mask, weight_logits=weight_logits, pooled_embeds=pooled)

    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        prompt_ids: torch.LongTensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
    ) -> ValorFeatures:
        """
        Encode text bidirectionally and project every token into the MGA space.

        Returns:
            [`ValorFeatures`] with `embeds` `(batch, text_length, projection_dim)` and `mask` = the attention mask.
        """
        if attention_mask is None:
            attention_mask = (input_ids != self.config.text_config.pad_token_id).long()
        hidden = self.text_model(
            input_ids,
            attention_mask=attention_mask,
            prompt_ids=prompt_ids,
            prompt_attention_mask=prompt_attention_mask,
            is_decoder=False,
            return_dict=True,
        ).last_hidden_state
        features = self._features(
            hidden, attention_mask.long(), self.text_projection, "text_weight_mlp", hidden[:, 0]
        )
        features.last_hidden_state = hidden
        return features

    def video_features_from_frames(self, frame_feats: torch.Tensor) -> ValorFeatures:
        """MGA features from per-frame encoder features `(batch, frames, video_width)`."""
        mask = torch.ones(frame_feats.shape[:2], dtype=torch.long, device=frame_feats.device)
        return self._features(
            frame_feats, mask, self.video_projection, "video_weight_mlp", frame_feats.mean(1)
        )

    def audio_features_from_clips(self, clip_feats: torch.Tensor, mask: torch.Tensor | None) -> ValorFeatures:
        """MGA features from per-clip encoder features `(batch, clips, audio_width)` and the clip mask."""
        if mask is None:
            mask = torch.ones(clip_feats.shape[:2], dtype=torch.long, device=clip_feats.device)
        weights = mask.to(clip_feats.dtype)[..., None]
        pooled = (clip_feats * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self._features(clip_feats, mask.long(), self.audio_projection, "audio_weight_mlp", pooled)

    def get_video_features(self, pixel_values_videos: torch.Tensor) -> ValorFeatures:
        """
        Encode a video and project every frame into the MGA space.

        Returns:
            [`ValorFeatures`] with `embeds` `(batch, frames, projection_dim)` and an all-ones `mask`.
        """
        tokens, frame_feats = self.encode_video(pixel_values_videos)
        features = self.video_features_from_frames(frame_feats)
        features.last_hidden_state = tokens
        return features

    def get_audio_features(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor | None = None
    ) -> ValorFeatures:
        """
        Encode the audio clips and project every clip into the MGA space.

        Returns:
            [`ValorFeatures`] with `embeds` `(batch, clips, projection_dim)` and `mask` = `input_features_mask`
            (all ones when not given; all zeros for a sample without sound).
        """
        self._check_audio(input_features, input_features_mask)
        tokens, clip_feats = self.encode_audio(input_features)
        features = self.audio_features_from_clips(clip_feats, input_features_mask)
        features.last_hidden_state = tokens
        return features

    # ------------------------------------------------------------------------------------------------ scoring
    def group_features(
        self,
        group: GroupName,
        text: ValorFeatures | None = None,
        video: ValorFeatures | None = None,
        audio: ValorFeatures | None = None,
    ) -> tuple[ValorFeatures, ValorFeatures]:
        """
        Arrange features into the two sides of an MGA group (e.g. `tva`: text vs `[frames ; clips]`).

        With `contrastive_type="coarse"`, the `tva` candidate side is the fused audiovisual vector.
        """
        spec = get_modality_group(group)
        available = {"text": text, "video": video, "audio": audio}
        query_side, candidate_side = spec.query, spec.candidates
        missing = [name for name in query_side + candidate_side if available[name] is None]
        if missing:
            raise ValueError(
                f"Modality group {group!r} needs {' and '.join(missing)} features, which were not given."
            )
        if self.config.contrastive_type == "coarse":
            if len(candidate_side) == 2 and group != "tva":
                raise NotImplementedError(
                    f"Coarse MGA defines no fusion for group {group!r} (VALOR's coarse variant covers tv, ta, tva, "
                    "va); use contrastive_type='fine'."
                )
            query = available[query_side[0]]
            if group == "tva":
                fused = self.audiovisual_fusion(torch.cat([video.pooled_embeds, audio.pooled_embeds], dim=-1))
                return query, ValorFeatures(pooled_embeds=F.normalize(fused, dim=-1))
            return query, available[candidate_side[0]]
        query = concat_features(*(available[name] for name in query_side))
        candidates = concat_features(*(available[name] for name in candidate_side))
        return query, candidates

    def similarity(
        self,
        query: ValorFeatures,
        candidates: ValorFeatures,
        max_block_elements: int | None = DEFAULT_MAX_BLOCK_ELEMENTS,
    ) -> torch.Tensor:
        """
        MGA scores `(num_queries, num_candidates)` between two sides prepared by `group_features`: VALOR's
        fine-grained score, computed in bounded-memory blocks, or the coarse dot product.
        """
        if self.config.contrastive_type == "coarse":
            return coarse_similarity(query.pooled_embeds, candidates.pooled_embeds)
        return fine_grained_similarity(
            query.embeds,
            query.mask,
            query.weight_logits,
            candidates.embeds,
            candidates.mask,
            candidates.weight_logits,
            max_block_elements=max_block_elements,
        )

    def decoder_inputs(
        self, video_tokens: torch.Tensor | None = None, audio_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Turn encoder tokens into the decoder's cross-attention inputs `(batch, tokens, text_width)`."""
        video_states = self.video_adapter(video_tokens) if video_tokens is not None else None
        audio_states = self.audio_adapter(audio_tokens) if audio_tokens is not None else None
        return video_states, audio_states

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> ValorModelOutput | tuple:
        """
        Encode whichever modalities are given and return their MGA features.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): text.
            attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`, *optional*): text padding mask.
            pixel_values_videos (`torch.FloatTensor` of shape `(batch_size, frames, 3, height, width)`, *optional*).
            input_features (`torch.FloatTensor` of shape `(batch_size, clips, mel_bins, time_frames)`, *optional*).
            input_features_mask (`torch.Tensor` of shape `(batch_size, clips)`, *optional*): 0 for missing audio.
        """
        if input_ids is None and pixel_values_videos is None and input_features is None:
            raise ValueError("Pass at least one of `input_ids`, `pixel_values_videos` and `input_features`.")
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output = ValorModelOutput(
            text_features=self.get_text_features(input_ids, attention_mask)
            if input_ids is not None
            else None,
            video_features=(
                self.get_video_features(pixel_values_videos) if pixel_values_videos is not None else None
            ),
            audio_features=(
                self.get_audio_features(input_features, input_features_mask)
                if input_features is not None
                else None
            ),
            logit_scale=self.get_logit_scale(),
        )
        return output if return_dict else output.to_tuple()


def _check_batch_sizes(**tensors: torch.Tensor | None) -> int:
    sizes = {name: t.shape[0] for name, t in tensors.items() if t is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Batch sizes of the inputs differ: {sizes}.")
    return next(iter(sizes.values())) if sizes else 0


class ValorForRetrieval(ValorPreTrainedModel):
    """
    VALOR for text-to-video, text-to-audio and text-to-audiovisual retrieval (MGA only), like `CLIPModel`
    returns `logits_per_text`: score matrices for one modality group and, with `return_loss=True`, the
    symmetric InfoNCE loss over the batch. The forward never gathers across processes; distributed training
    uses [`~transformers_valor.losses.MultimodalGroupingAlignmentLoss`] with `gather_distributed=True`.
    """

    _keys_to_ignore_on_load_unexpected = [r"pooler\.", r"^cls\."]

    def __init__(self, config: ValorConfig):
        super().__init__(config)
        self.valor = ValorModel(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        group: GroupName = "tva",
        return_loss: bool = False,
        return_dict: bool | None = None,
    ) -> ValorRetrievalOutput | tuple:
        """
        Score every query of the batch against every candidate for the modality `group`.

        Args:
            group (`str`, defaults to `"tva"`): `tv`, `ta`, `tva`, `va`, `vta` or `atv`.
            return_loss (`bool`): also compute the MGA loss (paired samples on the diagonal).
        """
        needed = get_modality_group(group).modalities
        given = {"text": input_ids, "video": pixel_values_videos, "audio": input_features}
        missing = sorted(name for name in needed if given[name] is None)
        if missing:
            names = {"text": "input_ids", "video": "pixel_values_videos", "audio": "input_features"}
            raise ValueError(
                f"Modality group {group!r} needs {', '.join(names[m] for m in missing)}, which were not given."
            )
        _check_batch_sizes(**{name: given[name] for name in needed})
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        valor = self.valor
        text = valor.get_text_features(input_ids, attention_mask) if "text" in needed else None
        video = valor.get_video_features(pixel_values_videos) if "video" in needed else None
        audio = valor.get_audio_features(input_features, input_features_mask) if "audio" in needed else None
        query, candidates = valor.group_features(group, text=text, video=video, audio=audio)
        scores = valor.similarity(query, candidates)
        logit_scale = valor.get_logit_scale()
        logits = scores * logit_scale
        loss = contrastive_loss(logits) if return_loss else None
        output = ValorRetrievalOutput(
            loss=loss,
            scores=scores,
            logits_per_query=logits,
            logits_per_candidate=logits.t(),
            query_features=query,
            candidate_features=candidates,
            logit_scale=logit_scale,
        )
        return output if return_dict else output.to_tuple()


class ValorWithMLMHeadPreTrainedModel(ValorPreTrainedModel):
    """Base of the heads that decode text: `ValorModel` plus BERT's MLM head tied to the word embeddings."""

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "valor.text_model.embeddings.word_embeddings.weight"
    }

    def __init__(self, config: ValorConfig):
        super().__init__(config)
        self.valor = ValorModel(config)
        self.cls = ValorTextOnlyMLMHead(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        """The shared word embeddings."""
        return self.valor.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Linear:
        """The MLM decoder (tied to the word embeddings)."""
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear):
        """Replace the MLM decoder."""
        self.cls.predictions.decoder = new_embeddings


class ValorForConditionalGeneration(ValorWithMLMHeadPreTrainedModel, GenerationMixin):
    """
    VALOR's multimodal decoder for captioning and question answering: the shared text transformer run causally
    with cross-attention over the video and/or audio tokens, and BERT's MLM head tied to the word embeddings.

    The modalities conditioning the decoder are chosen by which inputs are passed (`pixel_values_videos`,
    `input_features`, or both). `generate()` encodes them once and decodes with greedy search, beam search or
    sampling. With the `unimlm` objective each step feeds a transient [MASK] token whose output predicts the
    next word; the key/value cache never keeps that position.
    """

    def encode_modalities(
        self,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        modalities: Literal["video", "audio", "both"] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """
        Encode the conditioning modalities into the decoder's cross-attention inputs.

        Args:
            modalities (`str`, *optional*): `"video"`, `"audio"` or `"both"`; by default every modality given.
        """
        if modalities not in (None, "video", "audio", "both"):
            raise ValueError(f"`modalities` must be 'video', 'audio' or 'both', got {modalities!r}.")
        use_video = pixel_values_videos is not None and modalities in (None, "video", "both")
        use_audio = input_features is not None and modalities in (None, "audio", "both")
        if modalities in ("video", "both") and pixel_values_videos is None:
            raise ValueError(f"`modalities={modalities!r}` needs `pixel_values_videos`.")
        if modalities in ("audio", "both") and input_features is None:
            raise ValueError(f"`modalities={modalities!r}` needs `input_features`.")
        if not use_video and not use_audio:
            raise ValueError(
                "VALOR's decoder needs at least one modality: pass `pixel_values_videos` and/or `input_features` "
                "(text-only decoding is not supported)."
            )
        _check_batch_sizes(
            pixel_values_videos=pixel_values_videos if use_video else None,
            input_features=input_features if use_audio else None,
        )
        video_tokens = self.valor.encode_video(pixel_values_videos)[0] if use_video else None
        audio_tokens = self.valor.encode_audio(input_features)[0] if use_audio else None
        return self.valor.decoder_inputs(video_tokens, audio_tokens)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        video_states: torch.FloatTensor | None = None,
        audio_states: torch.FloatTensor | None = None,
        prompt_ids: torch.LongTensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        generation_step: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ValorCaptioningOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): decoder input. For `unimlm`
                training, the masked caption (see `transformers_valor.data.masking`); for `lm`, the caption.
            labels (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): `unimlm`: the original
                token at masked positions, -100 elsewhere; `lm`: the caption ids (-100 on padding), shifted inside.
            video_states / audio_states (`torch.FloatTensor`, *optional*): precomputed decoder inputs from
                `encode_modalities`; used instead of `pixel_values_videos` / `input_features`.
            prompt_ids / prompt_attention_mask (*optional*): task prompt or question, a bidirectional prefix.
            generation_step (`bool`): set by `generate()`: with `unimlm`, append the transient [MASK], return its
                logits only and drop it from the cache.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if input_ids is None:
            raise ValueError(
                "`input_ids` are required (use `generate()` to caption from the modalities alone)."
            )
        if video_states is None and audio_states is None:
            if input_features_mask is not None and input_features is None:
                raise ValueError("`input_features_mask` was given without `input_features`.")
            video_states, audio_states = self.encode_modalities(pixel_values_videos, input_features)
        _check_batch_sizes(input_ids=input_ids, video_states=video_states, audio_states=audio_states)

        unimlm_step = generation_step and self.config.caption_objective == "unimlm"
        if unimlm_step:
            mask_column = torch.full_like(input_ids[:, :1], self.config.text_config.mask_token_id)
            input_ids = torch.cat([input_ids, mask_column], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        text_output = self.valor.text_model(
            input_ids,
            attention_mask=attention_mask,
            prompt_ids=prompt_ids,
            prompt_attention_mask=prompt_attention_mask,
            video_states=video_states,
            audio_states=audio_states,
            is_decoder=True,
            cache=cache,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = text_output.last_hidden_state
        if unimlm_step:
            hidden = hidden[:, -1:]
            if text_output.cache is not None:
                text_output.cache.crop(-1)
        logits = self.cls(hidden)

        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"`labels` shape {tuple(labels.shape)} differs from `input_ids` {tuple(input_ids.shape)}."
                )
            loss = CaptionLoss(self.config.caption_objective, self.config.label_smoothing)(logits, labels)
        output = ValorCaptioningOutput(
            loss=loss, logits=logits, cache=text_output.cache, hidden_states=text_output.hidden_states
        )
        return output if return_dict else output.to_tuple()

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        is_first_iteration: bool | None = False,
        prompt_ids: torch.LongTensor | None = None,
        **kwargs,
    ):
        """Slice the new tokens, keep the modality states and the prompt mask, and feed the prompt only once."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        cached = cache is not None and cache.get_seq_length() > 0
        model_inputs["prompt_ids"] = None if cached else prompt_ids
        model_inputs["generation_step"] = True
        return model_inputs

    @torch.no_grad()
    def generate(
        self,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prompt_ids: torch.LongTensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        modalities: Literal["video", "audio", "both"] | None = None,
        video_states: torch.FloatTensor | None = None,
        audio_states: torch.FloatTensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """
        Caption (or answer) from video and/or audio. The encoders run once; decoding goes through
        `GenerationMixin.generate` (greedy, beam search, sampling, ...).

        Args:
            input_ids (`torch.LongTensor`, *optional*): a caption prefix starting with [CLS]; default [CLS].
            prompt_ids / prompt_attention_mask (*optional*): task prompt or question (bidirectional prefix).
            modalities (`str`, *optional*): condition on `"video"`, `"audio"` or `"both"`; default all given.
            video_states / audio_states (`torch.FloatTensor`, *optional*): decoder inputs precomputed with
                `encode_modalities` (to decode the same clips several times without re-encoding them).
            generate_kwargs: passed to `GenerationMixin.generate` (`num_beams`, `max_new_tokens`, `do_sample`...).

        Returns:
            `torch.LongTensor` of generated ids, starting with [CLS]; decode with `processor.batch_decode`.
        """
        del input_features_mask  # cross-attention has no mask: silent clips are encoded from all-zero input
        if video_states is None and audio_states is None:
            video_states, audio_states = self.encode_modalities(
                pixel_values_videos, input_features, modalities
            )
        elif pixel_values_videos is not None or input_features is not None:
            raise ValueError("Pass either raw inputs or precomputed `video_states`/`audio_states`, not both.")
        reference = video_states if video_states is not None else audio_states
        text_config = self.config.text_config
        if input_ids is None:
            input_ids = torch.full((reference.shape[0], 1), text_config.bos_token_id, device=reference.device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if prompt_ids is not None and prompt_attention_mask is None:
            prompt_attention_mask = torch.ones_like(prompt_ids)
        generate_kwargs.setdefault("eos_token_id", text_config.eos_token_id)
        generate_kwargs.setdefault("pad_token_id", text_config.pad_token_id)
        generate_kwargs.setdefault("bos_token_id", text_config.bos_token_id)
        return super().generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            video_states=video_states,
            audio_states=audio_states,
            prompt_ids=prompt_ids,
            prompt_attention_mask=prompt_attention_mask,
            **generate_kwargs,
        )


class ValorForPreTraining(ValorWithMLMHeadPreTrainedModel):
    """
    VALOR pretraining: L = alpha * L_MGA + L_MGC over modality groups (default T-AV, T-V and T-A for both).

    The text, video and audio encoders run once per batch; every group reuses their outputs. Groups whose
    modalities are absent from the batch (e.g. no `input_features` for a video-only dataset) are not trained
    unless explicitly requested, in which case a ValueError names the missing input.

    `forward` computes the losses of the local batch. Distributed training calls [`compute_losses`] with loss
    objects that gather the MGA features across processes and normalise MGC by the global token count (see
    `transformers_valor.losses`), so that the gradients equal a single-process run on the global batch.
    """

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        caption_input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        prompt_ids: torch.LongTensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        contrastive_groups: list[str] | None = None,
        caption_groups: list[str] | None = None,
        return_dict: bool | None = None,
    ) -> ValorPreTrainingOutput | tuple:
        r"""
        Args:
            input_ids / attention_mask: the clean caption, for the text encoder (MGA).
            caption_input_ids (`torch.LongTensor`, *optional*): the decoder input for MGC (the masked caption for
                `unimlm`; defaults to `input_ids` for `lm`).
            labels (`torch.LongTensor`, *optional*): MGC targets (see [`ValorForConditionalGeneration`]). Without
                labels no MGC loss is computed.
            prompt_ids / prompt_attention_mask (*optional*): task prompt for the decoder.
            contrastive_groups / caption_groups (`list[str]`, *optional*): groups to train; default the config's
                groups restricted to the modalities present.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output = self.compute_losses(
            MultimodalGroupingAlignmentLoss(),
            CaptionLoss(self.config.caption_objective, self.config.label_smoothing),
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values_videos=pixel_values_videos,
            input_features=input_features,
            input_features_mask=input_features_mask,
            caption_input_ids=caption_input_ids,
            labels=labels,
            prompt_ids=prompt_ids,
            prompt_attention_mask=prompt_attention_mask,
            contrastive_groups=contrastive_groups,
            caption_groups=caption_groups,
        )
        return output if return_dict else output.to_tuple()

    def compute_losses(
        self,
        mga_loss: MultimodalGroupingAlignmentLoss,
        caption_loss: CaptionLoss,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        caption_input_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        prompt_ids: torch.LongTensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        contrastive_groups: list[str] | None = None,
        caption_groups: list[str] | None = None,
    ) -> ValorPreTrainingOutput:
        """
        The pretraining losses of one batch with the given loss objects (the inputs are those of `forward`).

        Args:
            mga_loss ([`~transformers_valor.losses.MultimodalGroupingAlignmentLoss`]): the MGA loss; with
                `gather_distributed=True` the negatives are the global batch.
            caption_loss ([`~transformers_valor.losses.CaptionLoss`]): the MGC loss.
        """
        _check_batch_sizes(
            input_ids=input_ids,
            pixel_values_videos=pixel_values_videos,
            input_features=input_features,
            labels=labels,
        )
        available = {"text"}
        available |= {"video"} if pixel_values_videos is not None else set()
        available |= {"audio"} if input_features is not None else set()
        if len(available) == 1:
            raise ValueError(
                "Pretraining needs `pixel_values_videos` and/or `input_features` besides the text."
            )
        mga_groups = self._active_groups(
            contrastive_groups, self.config.contrastive_groups, available, "contrastive"
        )
        mgc_groups = []
        if labels is not None:
            mgc_groups = self._active_groups(caption_groups, self.config.caption_groups, available, "caption")

        tokens, features = self._encode_media(pixel_values_videos, input_features, input_features_mask)
        logit_scale = self.valor.get_logit_scale()
        group_losses: dict[str, torch.Tensor] = {}
        if mga_groups:
            features["text"] = self.valor.get_text_features(input_ids, attention_mask)
            group_losses.update(mga_loss(self.valor, features, mga_groups, logit_scale))
        if mgc_groups:
            decoder = {
                "input_ids": caption_input_ids if caption_input_ids is not None else input_ids,
                "attention_mask": attention_mask,
                "prompt_ids": prompt_ids,
                "prompt_attention_mask": prompt_attention_mask,
            }
            group_losses.update(self._caption_losses(caption_loss, mgc_groups, tokens, decoder, labels))
        return self._combine(group_losses, logit_scale)

    @staticmethod
    def _active_groups(requested, defaults, available: set[str], kind: str) -> list[str]:
        """The groups to train: `requested` (checked) or the config's `defaults` the batch's modalities allow."""

        def needs(group: str) -> set[str]:
            spec = get_modality_group(group, kind)
            return set(spec.decoder_modalities if kind == "caption" else spec.modalities)

        if requested is None:
            return [group for group in defaults if needs(group) <= available]
        groups = list(requested)
        for group in groups:
            missing = needs(group) - available
            if missing:
                raise ValueError(
                    f"{kind.capitalize()} group {group!r} needs {' and '.join(sorted(missing))} input, which is "
                    "absent."
                )
        return groups

    def _encode_media(self, pixel_values_videos, input_features, input_features_mask):
        """Run the video and audio encoders once: decoder-side tokens and MGA features per modality."""
        valor = self.valor
        tokens: dict[str, torch.Tensor | None] = {"video": None, "audio": None}
        features: dict[str, ValorFeatures | None] = {"video": None, "audio": None}
        if pixel_values_videos is not None:
            tokens["video"], frame_feats = valor.encode_video(pixel_values_videos)
            features["video"] = valor.video_features_from_frames(frame_feats)
        if input_features is not None:
            valor._check_audio(input_features, input_features_mask)
            tokens["audio"], clip_feats = valor.encode_audio(input_features)
            features["audio"] = valor.audio_features_from_clips(clip_feats, input_features_mask)
        return tokens, features

    def _caption_losses(self, caption_loss, groups, tokens, decoder: dict, labels) -> dict[str, torch.Tensor]:
        """The MGC loss of every caption group, decoding the same caption against each group's modalities."""
        video_states, audio_states = self.valor.decoder_inputs(tokens["video"], tokens["audio"])
        states = {"video": video_states, "audio": audio_states}
        losses = {}
        for group in groups:
            use = get_modality_group(group, "caption").decoder_modalities
            hidden = self.valor.text_model(
                decoder["input_ids"],
                attention_mask=decoder["attention_mask"],
                prompt_ids=decoder["prompt_ids"],
                prompt_attention_mask=decoder["prompt_attention_mask"],
                video_states=states["video"] if "video" in use else None,
                audio_states=states["audio"] if "audio" in use else None,
                is_decoder=True,
                use_cache=False,
                return_dict=True,
            ).last_hidden_state
            losses[f"mgc_{group}"] = caption_loss(self.cls(hidden), labels)
        return losses

    def _combine(
        self, group_losses: dict[str, torch.Tensor], logit_scale: torch.Tensor
    ) -> ValorPreTrainingOutput:
        """`alpha * mean(MGA) + mean(MGC)` with the per-component losses."""
        mga = [v for k, v in group_losses.items() if k.startswith("mga_")]
        mgc = [v for k, v in group_losses.items() if k.startswith("mgc_")]
        contrastive = torch.stack(mga).mean() if mga else None
        captioning = torch.stack(mgc).mean() if mgc else None
        if contrastive is None and captioning is None:
            raise ValueError("No objective is active: give `labels` for MGC or enable contrastive groups.")
        total = 0.0
        if contrastive is not None:
            total = total + self.config.contrastive_loss_weight * contrastive
        if captioning is not None:
            total = total + captioning
        return ValorPreTrainingOutput(
            loss=total,
            contrastive_loss=contrastive,
            caption_loss=captioning,
            group_losses=group_losses,
            logit_scale=logit_scale,
        )
