"""VALOR models: the shared base (`ValorModel`) and one class per task.

- [`ValorModel`]: the three encoders, MGA projections and scoring, and the decoder-side modality adapters.
- [`ValorForRetrieval`]: MGA score matrices for one modality group, and the MGA loss.
- [`ValorForConditionalGeneration`]: the multimodal decoder with the MLM head (MGC loss, captioning, QA,
  `generate()`).
- [`ValorForPreTraining`]: L = alpha * L_MGA + L_MGC over modality groups, encoders run once per batch.

Input names: `input_ids`/`attention_mask` (text), `pixel_values_videos` (batch, frames, 3, height, width),
`input_features` (batch, audio clips, mel bins, time frames) with `input_features_mask` (batch, audio clips),
`prompt_ids`/`prompt_attention_mask` (a composed decoder prompt), `question_ids`/`question_attention_mask` (a QA
question, composed into the prompt by the model).

Task prompts (`ValorConfig.task_prompts`, VALOR-L's `use_task_prompt`) are added by the models themselves: the text
encoder gets the `retrieval` prompt, the decoder the `captioning` prompt, a question becomes `[CLS] + qa prompt +
question`, and conditioned MLM uses its group's prompt; callers pass only the text.
"""

import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.generation import GenerationMode
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.hub import hf_api

from .configuration_valor import GroupName, TaskPromptName, ValorConfig, get_modality_group
from .generation_valor import BEAM_RANKINGS, valor_beam_search, valor_generation_config
from .losses import (
    DEFAULT_MAX_BLOCK_ELEMENTS,
    CaptionLoss,
    MultimodalGroupingAlignmentLoss,
    QuestionAnsweringLoss,
    coarse_similarity,
    contrastive_loss,
    fine_grained_similarity,
    temperature_to_logit_scale,
)
from .modeling_attention import check_attention_weights_available
from .modeling_valor_audio import ValorAudioModel
from .modeling_valor_compat import register_scalar_parameter_shim, scalar_parameters_to_1d
from .modeling_valor_text import ValorTextModel, ValorTextModelOutput, ValorTextOnlyMLMHead


def _nested_to_tuple(output: ModelOutput) -> tuple:
    """`to_tuple` that also turns nested outputs (and the outputs in a dict) into tuples, as CLIP's outputs do."""

    def convert(value):
        if isinstance(value, ModelOutput):
            return value.to_tuple()
        if isinstance(value, dict) and any(isinstance(v, ModelOutput) for v in value.values()):
            return {k: convert(v) for k, v in value.items()}
        return value

    return tuple(convert(output[key]) for key in output.keys())


@dataclass
class ValorFeatures(BaseModelOutputWithPooling):
    """
    Output of `get_text_features`, `get_video_features` and `get_audio_features`, in the 5.x convention of CLIP,
    CLAP and X-CLIP: the tower's output, with `pooler_output` replaced by the projected sequence vector
    (L2-normalised, as CLAP's), plus VALOR's per-position MGA features that its fine-grained score reads. A
    concatenation of modalities (one side of a modality group) carries only `embeds`, `mask` and `weight_logits`.

    Args:
        last_hidden_state (`torch.FloatTensor`, *optional*): the tower's output tokens: `(batch, text_length,
            hidden)` for text, `(batch, frames, tokens_per_frame, hidden)` for video, `(batch, clips,
            tokens_per_clip, hidden)` for audio.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, projection_dim)`): the projected, L2-normalised
            sequence vector: [CLS] for text, the mean over frames for video, the mean over the valid clips for audio
            (the vectors of VALOR's coarse MGA variant).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the tower's hidden states (embeddings, then every
            layer), with `output_hidden_states=True`; video and audio ones per frame / clip, as
            `last_hidden_state`.
        attentions (`tuple(torch.FloatTensor)`, *optional*): the tower's attention weights per layer, with
            `output_attentions=True` (eager attention): text `(batch, heads, queries, keys)`; Video Swin `(batch,
            windows, heads, window_tokens, window_tokens)` per block; CLIP frames and audio clips `(batch,
            frames_or_clips, heads, tokens, tokens)`.
        embeds (`torch.FloatTensor` of shape `(batch_size, positions, projection_dim)`): L2-normalised token
            (text), frame (video) or clip (audio) features.
        mask (`torch.LongTensor` of shape `(batch_size, positions)`): 1 for valid positions.
        weight_logits (`torch.FloatTensor` of shape `(batch_size, positions)`, *optional*): the fine-grained
            weight MLP's output (only with `contrastive_type="fine"`).
    """

    embeds: torch.FloatTensor | None = None
    mask: torch.LongTensor | None = None
    weight_logits: torch.FloatTensor | None = None


@dataclass
class ValorModelOutput(ModelOutput):
    """
    Output of [`ValorModel`]: the features of every modality that was given (as `CLIPModel` returns its
    `text_embeds` and `text_model_output`).

    Args:
        text_embeds / video_embeds / audio_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`,
            *optional*): the `pooler_output` of each modality's features.
        text_model_output / video_model_output / audio_model_output ([`ValorFeatures`], *optional*): the whole
            output of `get_text_features` / `get_video_features` / `get_audio_features`.
        logit_scale (`torch.FloatTensor`): the scalar multiplying MGA scores before the softmax (1 / tau).
    """

    text_embeds: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    text_model_output: ValorFeatures | None = None
    video_model_output: ValorFeatures | None = None
    audio_model_output: ValorFeatures | None = None
    logit_scale: torch.FloatTensor | None = None

    to_tuple = _nested_to_tuple


@dataclass
class ValorRetrievalOutput(ModelOutput):
    """
    Output of [`ValorForRetrieval`], named as X-CLIP (`logits_per_text`, `logits_per_video`) and CLAP
    (`logits_per_audio`) name theirs. A group compares a query side with a candidate side
    (`MODALITY_GROUPS[group].query` / `.candidates`); `logits_per_<first modality of the query side>` holds the
    `(queries, candidates)` matrix and `logits_per_<first modality of the candidate side>` its transpose:

    | group | `logits_per_text` | `logits_per_video` | `logits_per_audio` |
    | --- | --- | --- | --- |
    | `tv` | texts x videos | videos x texts | - |
    | `ta` | texts x audios | - | audios x texts |
    | `tva` | texts x videos (frames and soundtrack) | videos x texts | - |
    | `va` | - | videos x audios | audios x videos |
    | `vta` | (text, audio) pairs x videos | videos x (text, audio) pairs | - |
    | `atv` | (text, video) pairs x audios | - | audios x (text, video) pairs |

    Args:
        loss (`torch.FloatTensor`, *optional*): symmetric InfoNCE (MGA) loss, with `return_loss=True`.
        logits_per_text / logits_per_video / logits_per_audio (`torch.FloatTensor`, *optional*): the group's MGA
            scores times `logit_scale` (see the table; `None` for the modality that names neither side).
        text_embeds / video_embeds / audio_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`,
            *optional*): the pooled, projected features of the modalities the group reads (see
            [`ValorFeatures`]); the fine-grained score itself reads the per-position features of the
            `*_model_output`s.
        text_model_output / video_model_output / audio_model_output ([`ValorFeatures`], *optional*): the features
            of each modality the group reads.
        logit_scale (`torch.FloatTensor`): 1 / tau; the raw scores are `logits / logit_scale`, or
            `model.valor.similarity(*model.valor.group_features(group, ...))`.
    """

    loss: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    logits_per_audio: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    text_model_output: ValorFeatures | None = None
    video_model_output: ValorFeatures | None = None
    audio_model_output: ValorFeatures | None = None
    logit_scale: torch.FloatTensor | None = None

    to_tuple = _nested_to_tuple


@dataclass
class ValorCaptioningOutput(ModelOutput):
    """
    Output of [`ValorForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor`, *optional*): MGC cross-entropy, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, text_length, vocab_size)`): vocabulary scores. During
            `unimlm` generation only the transient [MASK] position is returned, `(batch_size, 1, vocab_size)`.
        cache (`Cache`, *optional*): the decoder's key/value cache.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): decoder hidden states (embeddings, then every
            layer) of the text positions, with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*): decoder self-attention weights per layer, with
            `output_attentions=True` (see [`ValorTextModelOutput`]).
        cross_attentions (`tuple(torch.FloatTensor)`, *optional*): decoder cross-attention weights per layer over
            the `[video ; audio]` tokens, each `(batch_size, heads, queries, modality_tokens)`, with
            `output_attentions=True`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class ValorPreTrainingOutput(ModelOutput):
    """
    Output of [`ValorForPreTraining`].

    Args:
        loss (`torch.FloatTensor`): `contrastive_loss_weight * contrastive_loss + caption_loss + mlm_loss`.
        contrastive_loss (`torch.FloatTensor`, *optional*): mean MGA loss over the active groups.
        caption_loss (`torch.FloatTensor`, *optional*): mean MGC loss over the active groups.
        mlm_loss (`torch.FloatTensor`, *optional*): mean conditioned-MLM loss over the active groups.
        group_losses (`dict[str, torch.FloatTensor]`): each component, keyed `"mga_<group>"`, `"mgc_<group>"`,
            `"mlm_<group>"`.
        logit_scale (`torch.FloatTensor`): 1 / tau.
        text_model_output / video_model_output / audio_model_output ([`ValorFeatures`], *optional*): the encoders'
            features (text only when an MGA group is trained), with their hidden states and attentions when
            `output_hidden_states` / `output_attentions` are set.
        decoder_outputs (`dict[str, ValorTextModelOutput]`, *optional*): with `output_hidden_states` or
            `output_attentions`, the shared text transformer's output of every MGC and conditioned-MLM pass, keyed as
            `group_losses` (`"mgc_tva"`, `"mlm_tv"`, ...): its hidden states, self- and cross-attentions.
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    caption_loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    group_losses: dict[str, torch.FloatTensor] | None = None
    logit_scale: torch.FloatTensor | None = None
    text_model_output: ValorFeatures | None = None
    video_model_output: ValorFeatures | None = None
    audio_model_output: ValorFeatures | None = None
    decoder_outputs: dict[str, ValorTextModelOutput] | None = None

    to_tuple = _nested_to_tuple


@dataclass
class ValorGenerateOutput(GenerateDecoderOnlyOutput):
    """
    `GenerateDecoderOnlyOutput` of [`ValorForConditionalGeneration.generate`] with `return_dict_in_generate=True`,
    plus the decoder's cross-attentions (`transformers` returns them for encoder-decoder models only).

    Args:
        cross_attentions (`tuple(tuple(torch.FloatTensor))`, *optional*): with `output_attentions=True`, one tuple
            per generated token, holding one tensor per layer `(batch * beams, heads, queries, modality_tokens)`
            over the `[video ; audio]` tokens; the queries are the step's new positions (with `unimlm`, the
            transient [MASK] slot is the last one), as `attentions`.
    """

    cross_attentions: tuple[tuple[torch.FloatTensor, ...], ...] | None = None


@dataclass
class ValorGenerateBeamOutput(GenerateBeamDecoderOnlyOutput):
    """`GenerateBeamDecoderOnlyOutput` plus the decoder's `cross_attentions` (see [`ValorGenerateOutput`])."""

    cross_attentions: tuple[tuple[torch.FloatTensor, ...], ...] | None = None


def with_cross_attentions(output: ModelOutput, recorded: list) -> ModelOutput:
    """`generate`'s dict output with the cross-attentions recorded at each step (as many as `attentions`: steps
    that `generate` undid are dropped)."""
    steps = len(output.attentions) if output.attentions is not None else len(recorded)
    kind = (
        ValorGenerateBeamOutput if isinstance(output, GenerateBeamDecoderOnlyOutput) else ValorGenerateOutput
    )
    return kind(**output, cross_attentions=tuple(recorded[:steps]))


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
    keys = ("embeds", "mask", "weight_logits", "pooler_output")
    return ValorFeatures(
        **{
            key: torch.cat([getattr(p, key) for p in parts])
            for key in keys
            if getattr(parts[0], key) is not None
        }
    )


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of the floating-point `tensor` is finite, in one reduction pass: its minimum and
    maximum are NaN when any value is, and an infinity when any value is one (10x faster than
    `isfinite(tensor).all()`, which writes a boolean tensor first, on a batch of frames)."""
    if tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def warn_if_not_finite(tensor: torch.Tensor, name: str) -> None:
    """A `UserWarning` (shown once per place by Python's default filter) when `tensor` holds NaN or inf values,
    which would otherwise turn every score and caption into NaN or garbage without a word."""
    if not torch.compiler.is_compiling() and tensor.is_floating_point() and not all_finite(tensor):
        warnings.warn(
            f"`{name}` holds NaN or infinite values: the outputs computed from it are not meaningful (check the "
            "decoding and preprocessing of the media).",
            UserWarning,
            stacklevel=3,
        )


def check_caption_labels(labels: torch.LongTensor, objective: str, name: str = "labels") -> None:
    """
    Refuse `unimlm` labels that are not VALOR's masking: they hold the original token at the MASKED positions of the
    decoder input and -100 elsewhere, always at the first position ([CLS]), which is never predicted. Labels that
    mark it are the caption itself (BLIP's habit `labels=input_ids`), and training on them with the unmasked caption
    as input teaches the model to copy its input (the loss falls to ~0 and the captions are garbage).

    Raises:
        ValueError: with `objective="unimlm"`, some row of `labels` marks position 0.
    """
    # Reading the labels' values is a graph break under torch.compile: compiled code skips the check.
    if objective != "unimlm" or labels.numel() == 0 or torch.compiler.is_compiling():
        return
    if not bool((labels[:, 0] != -100).any()):
        return
    raise ValueError(
        f"`{name}` mark the first position ([CLS]) for training, but with caption_objective='unimlm' labels are the "
        "original tokens at the MASKED positions of the decoder input (-100 elsewhere, always at [CLS]): labels "
        "equal to the caption (`labels=input_ids`) would train the decoder to copy its input. Mask the caption "
        "first: `input_ids, labels = transformers_valor.data.masking.mask_captions(input_ids, "
        "CaptionMaskingConfig.from_model_config(model.config.text_config))`, or use a model with "
        "caption_objective='lm', which takes `labels=input_ids` and shifts them inside (as BLIP)."
    )


def strip_trailing_sep(
    input_ids: torch.LongTensor, attention_mask: torch.Tensor, sep_token_id: int, pad_token_id: int
) -> tuple[torch.LongTensor, torch.Tensor]:
    """
    A caption prefix from the processor (`[CLS] w1 .. wk [SEP] [PAD]..`) without its trailing [SEP], as
    `BlipForConditionalGeneration.generate` strips it: decoding continues the caption instead of starting after its
    end. The [SEP] of a row becomes padding (masked out); columns that are padding in every row are dropped. Rows
    holding [CLS] alone are kept as they are.
    """
    lengths = attention_mask.long().sum(1)  # (B,), the processor pads on the right
    last = (lengths - 1).clamp(min=0)
    ends_with_sep = (input_ids.gather(1, last[:, None]).squeeze(1) == sep_token_id) & (lengths > 1)
    if not bool(ends_with_sep.any()):
        return input_ids, attention_mask
    rows = ends_with_sep.nonzero().squeeze(1)
    input_ids, attention_mask = input_ids.clone(), attention_mask.clone()
    input_ids[rows, last[rows]] = pad_token_id
    attention_mask[rows, last[rows]] = 0
    keep = int(attention_mask.long().sum(1).max())
    return input_ids[:, :keep], attention_mask[:, :keep]


def compose_question_prompt(
    question_ids: torch.LongTensor, question_attention_mask: torch.Tensor, instruction_ids: torch.LongTensor
) -> tuple[torch.LongTensor, torch.Tensor]:
    """
    VALOR-L's QA prompt (reference `forward_qa_single`): `[CLS]` + the instruction without its `[CLS]`/`[SEP]` +
    the question tokens without their `[CLS]`, i.e. `[CLS] answer the question q1 .. qn [SEP] [PAD]..`.

    Args:
        question_ids / question_attention_mask (`(batch, length)`): `[CLS] q1 .. qn [SEP]`, padded at the end.
        instruction_ids (`(batch, instruction_length)`): the `qa` task prompt, `[CLS] w1 .. wk [SEP]`.
    """
    inner = instruction_ids[:, 1:-1].to(question_ids)
    ids = torch.cat([question_ids[:, :1], inner, question_ids[:, 1:]], dim=1)
    mask = question_attention_mask.to(question_ids.dtype)
    mask = torch.cat([mask[:, :1], torch.ones_like(inner), mask[:, 1:]], dim=1)
    return ids, mask


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


register_scalar_parameter_shim(ValorConfig.model_type)


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

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        """
        Save as `PreTrainedModel.save_pretrained` does, plus a README.md model card when the folder has none. A
        class that does not generate (pretraining, retrieval) also writes VALOR's generation config when the folder
        has none, so that the captioner loaded from the folder decodes as the reference does. With `push_to_hub`
        (and `repo_id`, `commit_message`, `create_pr`, `private`, `token`) the folder, VALOR's card included, is
        uploaded afterwards (transformers would upload its generic placeholder card instead).
        """
        hub = {
            name: kwargs.pop(name)
            for name in ("repo_id", "commit_message", "create_pr", "private")
            if name in kwargs
        }
        if push_to_hub and kwargs.get("is_main_process", True):
            repo_id = hub.get("repo_id", os.path.basename(os.path.normpath(os.fspath(save_directory))))
            repo_id = (
                hf_api()
                .create_repo(repo_id, exist_ok=True, private=hub.get("private"), token=kwargs.get("token"))
                .repo_id
            )
            timestamps = self._get_files_timestamps(save_directory) if os.path.isdir(save_directory) else {}
        self._save_with_card(save_directory, *args, **kwargs)
        if push_to_hub and kwargs.get("is_main_process", True):
            self._upload_modified_files(
                save_directory,
                repo_id,
                timestamps,
                commit_message=hub.get("commit_message"),
                token=kwargs.get("token"),
                create_pr=hub.get("create_pr", False),
            )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
        tags: list[str] | None = None,
    ) -> str:
        """
        `PushToHubMixin.push_to_hub` (same arguments), uploading VALOR's model card (with `tags` and the model's
        `model_tags` added, the usage snippet naming `repo_id`) where transformers uploads the Hub repo's card or
        its generic placeholder.
        """
        repo_id = hf_api().create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
        tags = list(
            dict.fromkeys([*(self.model_tags or []), *([tags] if isinstance(tags, str) else tags or [])])
        )
        with tempfile.TemporaryDirectory() as folder:
            writer = type(self).model_card_writer
            if writer is not None:
                writer(self, folder, model_id=repo_id, tags=tags)
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            return self._upload_modified_files(
                folder,
                repo_id,
                files_timestamps={},
                commit_message=commit_message,
                token=token,
                create_pr=create_pr,
                revision=revision,
                commit_description=commit_description,
            )

    def _save_with_card(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, then VALOR's generation config and model card where missing."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if (
            not self.can_generate()
            and kwargs.get("is_main_process", True)
            and not os.path.exists(os.path.join(save_directory, "generation_config.json"))
        ):
            valor_generation_config(self.config.text_config).save_pretrained(save_directory)
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
        # One-element 1-d parameters (FSDP2 refuses 0-d ones); 0-d weights of earlier versions are reshaped on load.
        if config.logit_scale_type == "temperature":
            self.temperature = nn.Parameter(torch.full((1,), config.temperature_init))
        else:
            self.logit_scale = nn.Parameter(
                torch.full((1,), temperature_to_logit_scale(config.temperature_init))
            )
        self.register_load_state_dict_pre_hook(scalar_parameters_to_1d)

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
            return (1.0 / self.temperature).squeeze(0)
        return self.logit_scale.exp().squeeze(0)

    def _check_video(self, pixel_values_videos: torch.Tensor) -> None:
        warn_if_not_finite(pixel_values_videos, "pixel_values_videos")
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
        warn_if_not_finite(input_features, "input_features")
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

    def check_output_attentions(self, output_attentions: bool | None) -> None:
        """A `ValueError` when `output_attentions` asks for weights a tower's attention kernel does not compute
        (anything but `attn_implementation="eager"`)."""
        if output_attentions:
            config = self.config
            check_attention_weights_available(
                {"text": config.text_config, "video": config.vision_config, "audio": config.audio_config}
            )

    def video_tower(
        self,
        pixel_values_videos: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """
        Run the video encoder.

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` = tokens `(batch, frames, tokens_per_frame,
            video_width)` (the decoder's inputs), `pooler_output` = per-frame features `(batch, frames,
            video_width)` (the MGA inputs: the mean of a Video Swin frame's tokens, or CLIP's [CLS] after its final
            LayerNorm), and the tower's `hidden_states` / `attentions` when asked for (CLIP's per frame, `(batch,
            frames, ...)`).
        """
        self._check_video(pixel_values_videos)
        pixel_values_videos = pixel_values_videos.to(self.dtype)
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        if not self.config.is_clip_vision:
            output = self.vision_model(pixel_values_videos=pixel_values_videos, return_dict=True, **flags)
            return BaseModelOutputWithPooling(**output)
        batch, frames = pixel_values_videos.shape[:2]

        def per_frame(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.view(batch, frames, *tensor.shape[1:])  # (B * T, ...) -> (B, T, ...)

        output = self.vision_model(pixel_values=pixel_values_videos.flatten(0, 1), return_dict=True, **flags)
        # transformers applies CLIP's final LayerNorm to the pooled token only; VALOR applies it to all.
        tokens = per_frame(
            self.vision_model.post_layernorm(output.last_hidden_state)
        )  # (B, T, 1 + patches, C)
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens,
            pooler_output=tokens[:, :, 0],
            hidden_states=tuple(map(per_frame, output.hidden_states)) if output.hidden_states else None,
            attentions=tuple(map(per_frame, output.attentions)) if output.attentions else None,
        )

    def encode_video(self, pixel_values_videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The video encoder's tokens and per-frame features (see [`video_tower`])."""
        output = self.video_tower(pixel_values_videos)
        return output.last_hidden_state, output.pooler_output

    def audio_tower(
        self,
        input_features: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """
        Run the audio encoder on every clip.

        Returns:
            `BaseModelOutputWithPooling` with `last_hidden_state` = tokens `(batch, clips, 1 + patches,
            audio_width)`, `pooler_output` = per-clip [CLS] features `(batch, clips, width)`, and the tower's
            `hidden_states` / `attentions` when asked for.
        """
        self._check_audio(input_features, None)
        output = self.audio_model(
            input_features.to(self.dtype),
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        return BaseModelOutputWithPooling(**output)

    def encode_audio(self, input_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The audio encoder's tokens and per-clip features (see [`audio_tower`])."""
        output = self.audio_tower(input_features)
        return output.last_hidden_state, output.pooler_output

    def _features(self, feats, mask, projection, weight_mlp_name, pooled_source) -> ValorFeatures:
        embeds = F.normalize(projection(feats), dim=-1)
        weight_logits = None
        if self.config.contrastive_type == "fine":
            weight_logits = getattr(self, weight_mlp_name)(embeds).squeeze(-1)
        pooled = F.normalize(projection(pooled_source), dim=-1)
        return ValorFeatures(embeds=embeds, mask=mask, weight_logits=weight_logits, pooler_output=pooled)

    @staticmethod
    def _with_tower_output(features: ValorFeatures, tower: ModelOutput) -> ValorFeatures:
        """`features` with the tower's tokens, hidden states and attentions, built anew so that the tuple order
        is the fields' (`last_hidden_state`, `pooler_output`, ... as `BaseModelOutputWithPooling`)."""
        return ValorFeatures(
            last_hidden_state=tower.last_hidden_state,
            pooler_output=features.pooler_output,
            hidden_states=tower.hidden_states,
            attentions=tower.attentions,
            embeds=features.embeds,
            mask=features.mask,
            weight_logits=features.weight_logits,
        )

    # ------------------------------------------------------------------------------------------------ prompts
    def task_prompt_inputs(
        self, name: TaskPromptName, batch_size: int, device: torch.device | str | None = None
    ) -> tuple[torch.LongTensor, torch.LongTensor]:
        """
        The config's task prompt `name` as `[CLS] prompt [SEP]` ids (`config.task_prompt_ids`), one row per
        sample, and its all-ones mask: both `(batch_size, prompt_length)`.
        """
        ids = (self.config.task_prompt_ids or {}).get(name)
        if ids is None:
            raise ValueError(
                f"The task prompt {name!r} ({self.config.task_prompts[name]!r}) has no token ids in the config: call "
                "`model.config.set_task_prompt_ids(processor.tokenizer)` once (the converter and the training "
                "scripts do it), or turn task prompts off with `use_task_prompt=False`."
            )
        prompt = torch.tensor(ids, dtype=torch.long, device=device).repeat(batch_size, 1)
        return prompt, torch.ones_like(prompt)

    def default_prompt(
        self,
        name: TaskPromptName,
        batch_size: int,
        device: torch.device | str | None,
        prompt_ids: torch.LongTensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        use_task_prompt: bool | None = None,
    ) -> tuple[torch.LongTensor | None, torch.Tensor | None]:
        """
        The prompt of a call: `prompt_ids` / `prompt_attention_mask` when either is given; otherwise the task
        prompt `name` when `use_task_prompt` (default: `config.use_task_prompt`) is on; otherwise none.
        """
        if prompt_ids is not None or prompt_attention_mask is not None:
            return prompt_ids, prompt_attention_mask
        if not (self.config.use_task_prompt if use_task_prompt is None else use_task_prompt):
            return None, None
        return self.task_prompt_inputs(name, batch_size, device)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        prompt_ids: torch.LongTensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        use_task_prompt: bool | None = None,
        token_type_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ValorFeatures:
        """
        Encode text bidirectionally and project every token into the MGA space. With `use_task_prompt` (default:
        the config's, on in VALOR-L) the text encoder runs with the `retrieval` task prompt appended, as the
        reference does; explicit `prompt_ids` replace it.

        Args:
            token_type_ids (`torch.LongTensor`, *optional*): BERT token types (what a BERT tokenizer returns; VALOR
                uses 0 everywhere).
            output_attentions / output_hidden_states (`bool`, *optional*): also return the text encoder's
                attention weights (eager attention) / hidden states.
            return_dict (`bool`, *optional*): `False` returns a tuple.

        Returns:
            [`ValorFeatures`] with `pooler_output` `(batch, projection_dim)` (the projected [CLS]), `embeds`
            `(batch, text_length, projection_dim)` and `mask` = the attention mask.
        """
        self.check_output_attentions(output_attentions)
        if attention_mask is None:
            attention_mask = (input_ids != self.config.text_config.pad_token_id).long()
        prompt_ids, prompt_attention_mask = self.default_prompt(
            "retrieval",
            input_ids.shape[0],
            input_ids.device,
            prompt_ids,
            prompt_attention_mask,
            use_task_prompt,
        )
        output = self.text_model(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            prompt_ids=prompt_ids,
            prompt_attention_mask=prompt_attention_mask,
            is_decoder=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = output.last_hidden_state
        features = self._features(
            hidden, attention_mask.long(), self.text_projection, "text_weight_mlp", hidden[:, 0]
        )
        return self._with_tower_output(features, output)

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

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ValorFeatures:
        """
        Encode a video and project every frame into the MGA space.

        Args:
            output_attentions / output_hidden_states (`bool`, *optional*): also return the video encoder's
                attention weights (eager attention) / hidden states.
            return_dict (`bool`, *optional*): `False` returns a tuple.

        Returns:
            [`ValorFeatures`] with `pooler_output` `(batch, projection_dim)` (the projected mean of the frames),
            `embeds` `(batch, frames, projection_dim)` and an all-ones `mask`.
        """
        self.check_output_attentions(output_attentions)
        tower = self.video_tower(pixel_values_videos, output_attentions, output_hidden_states)
        return self._with_tower_output(self.video_features_from_frames(tower.pooler_output), tower)

    @can_return_tuple
    def get_audio_features(
        self,
        input_features: torch.Tensor,
        input_features_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ValorFeatures:
        """
        Encode the audio clips and project every clip into the MGA space.

        Args:
            output_attentions / output_hidden_states (`bool`, *optional*): also return the audio encoder's
                attention weights (eager attention) / hidden states.
            return_dict (`bool`, *optional*): `False` returns a tuple.

        Returns:
            [`ValorFeatures`] with `pooler_output` `(batch, projection_dim)` (the projected mean of the valid
            clips), `embeds` `(batch, clips, projection_dim)` and `mask` = `input_features_mask` (all ones when not
            given; all zeros for a sample without sound).
        """
        self.check_output_attentions(output_attentions)
        self._check_audio(input_features, input_features_mask)
        tower = self.audio_tower(input_features, output_attentions, output_hidden_states)
        features = self.audio_features_from_clips(tower.pooler_output, input_features_mask)
        return self._with_tower_output(features, tower)

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
                fused = self.audiovisual_fusion(torch.cat([video.pooler_output, audio.pooler_output], dim=-1))
                return query, ValorFeatures(pooler_output=F.normalize(fused, dim=-1))
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
            return coarse_similarity(query.pooler_output, candidates.pooler_output)
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

    def modality_features(
        self,
        modalities: frozenset[str] | set[str],
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        use_task_prompt: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> dict[str, ValorFeatures | None]:
        """The [`ValorFeatures`] of each of `modalities` (`"text"`, `"video"`, `"audio"`), `None` for the others."""
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        features: dict[str, ValorFeatures | None] = {"text": None, "video": None, "audio": None}
        if "text" in modalities:
            features["text"] = self.get_text_features(
                input_ids,
                attention_mask,
                use_task_prompt=use_task_prompt,
                token_type_ids=token_type_ids,
                return_dict=True,
                **flags,
            )
        if "video" in modalities:
            features["video"] = self.get_video_features(pixel_values_videos, return_dict=True, **flags)
        if "audio" in modalities:
            features["audio"] = self.get_audio_features(
                input_features, input_features_mask, return_dict=True, **flags
            )
        return features

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        use_task_prompt: bool | None = None,
        token_type_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ValorModelOutput:
        """
        Encode whichever modalities are given and return their MGA features.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): text.
            attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`, *optional*): text padding mask.
            pixel_values_videos (`torch.FloatTensor` of shape `(batch_size, frames, 3, height, width)`, *optional*).
            input_features (`torch.FloatTensor` of shape `(batch_size, clips, mel_bins, time_frames)`, *optional*).
            input_features_mask (`torch.Tensor` of shape `(batch_size, clips)`, *optional*): 0 for missing audio.
            use_task_prompt (`bool`, *optional*): the text encoder's `retrieval` prompt (default: the config's).
            token_type_ids (`torch.LongTensor`, *optional*): BERT token types of the text (VALOR uses 0).
            output_attentions / output_hidden_states (`bool`, *optional*): the towers' attention weights (eager
                attention) / hidden states, in each `*_model_output`.
            return_dict (`bool`, *optional*): `False` returns (nested) tuples.
        """
        given = {"text": input_ids, "video": pixel_values_videos, "audio": input_features}
        if all(value is None for value in given.values()):
            raise ValueError("Pass at least one of `input_ids`, `pixel_values_videos` and `input_features`.")
        features = self.modality_features(
            {name for name, value in given.items() if value is not None},
            input_ids,
            attention_mask,
            token_type_ids,
            pixel_values_videos,
            input_features,
            input_features_mask,
            use_task_prompt,
            output_attentions,
            output_hidden_states,
        )
        return ValorModelOutput(
            **{f"{name}_embeds": f.pooler_output for name, f in features.items() if f is not None},
            **{f"{name}_model_output": f for name, f in features.items() if f is not None},
            logit_scale=self.get_logit_scale(),
        )


def _check_batch_sizes(**tensors: torch.Tensor | None) -> int:
    sizes = {name: t.shape[0] for name, t in tensors.items() if t is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Batch sizes of the inputs differ: {sizes}.")
    if 0 in sizes.values():
        raise ValueError(f"An empty batch (batch size 0): {sizes}.")
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

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        group: GroupName = "tva",
        return_loss: bool = False,
        use_task_prompt: bool | None = None,
        token_type_ids: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ValorRetrievalOutput:
        """
        Score every query of the batch against every candidate for the modality `group`.

        Args:
            group (`str`, defaults to `"tva"`): `tv`, `ta`, `tva`, `va`, `vta` or `atv` (which `logits_per_*` field
                holds which matrix: see [`ValorRetrievalOutput`]).
            return_loss (`bool`): also compute the MGA loss (paired samples on the diagonal).
            use_task_prompt (`bool`, *optional*): run the text encoder with the `retrieval` task prompt (default:
                the config's, on in VALOR-L).
            token_type_ids (`torch.LongTensor`, *optional*): BERT token types of the text (VALOR uses 0).
            output_attentions / output_hidden_states (`bool`, *optional*): the towers' attention weights (eager
                attention) / hidden states, in each `*_model_output`.
            return_dict (`bool`, *optional*): `False` returns (nested) tuples.
        """
        spec = get_modality_group(group)
        given = {"text": input_ids, "video": pixel_values_videos, "audio": input_features}
        missing = sorted(name for name in spec.modalities if given[name] is None)
        if missing:
            names = {"text": "input_ids", "video": "pixel_values_videos", "audio": "input_features"}
            raise ValueError(
                f"Modality group {group!r} needs {', '.join(names[m] for m in missing)}, which were not given."
            )
        _check_batch_sizes(**{name: given[name] for name in spec.modalities})
        valor = self.valor
        features = valor.modality_features(
            spec.modalities,
            input_ids,
            attention_mask,
            token_type_ids,
            pixel_values_videos,
            input_features,
            input_features_mask,
            use_task_prompt,
            output_attentions,
            output_hidden_states,
        )
        query, candidates = valor.group_features(group, **features)
        logit_scale = valor.get_logit_scale()
        logits = valor.similarity(query, candidates) * logit_scale  # (queries, candidates)
        rows_name, columns_name = spec.logits_names
        return ValorRetrievalOutput(
            loss=contrastive_loss(logits) if return_loss else None,
            **{rows_name: logits, columns_name: logits.t()},
            **{f"{name}_embeds": f.pooler_output for name, f in features.items() if f is not None},
            **{f"{name}_model_output": f for name, f in features.items() if f is not None},
            logit_scale=logit_scale,
        )


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
    next word; the key/value cache never keeps that position. Its generation config is VALOR's caption decoding
    (`generation_valor.valor_generation_config`: beam 3, 30 new tokens, the reference's beam ranking).

    Prompts (see [`decoder_prompt`]): with `use_task_prompt` (VALOR-L) the decoder runs with the `captioning` task
    prompt, and a question given as `question_ids` becomes `[CLS] answer the question q1 .. [SEP]`.
    """

    def __init__(self, config: ValorConfig):
        super().__init__(config)
        self.generation_config = valor_generation_config(config.text_config)

    def question_prompt(
        self,
        question_ids: torch.LongTensor,
        question_attention_mask: torch.Tensor | None = None,
        use_task_prompt: bool | None = None,
    ) -> tuple[torch.LongTensor, torch.Tensor]:
        """
        The decoder prompt of a QA question `[CLS] q1 .. qn [SEP]`: with `use_task_prompt` (default: the config's)
        `[CLS]` + the `qa` task prompt without its [CLS]/[SEP] + the question without its [CLS]
        ([`compose_question_prompt`]); otherwise the question itself. The mask defaults to `question_ids != pad`.
        """
        if question_ids.dim() != 2:
            raise ValueError(
                f"`question_ids` must have shape (batch, length), got {tuple(question_ids.shape)}."
            )
        if question_attention_mask is None:
            question_attention_mask = (question_ids != self.config.text_config.pad_token_id).long()
        if not (self.config.use_task_prompt if use_task_prompt is None else use_task_prompt):
            return question_ids, question_attention_mask
        instruction, _ = self.valor.task_prompt_inputs("qa", question_ids.shape[0], question_ids.device)
        return compose_question_prompt(question_ids, question_attention_mask, instruction)

    def decoder_prompt(
        self,
        batch_size: int,
        device: torch.device | str | None,
        prompt_ids: torch.LongTensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        question_ids: torch.LongTensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        use_task_prompt: bool | None = None,
    ) -> tuple[torch.LongTensor | None, torch.Tensor | None]:
        """
        The prompt the decoder runs with: `prompt_ids` / `prompt_attention_mask` as given; else the QA prompt of
        `question_ids` ([`question_prompt`]); else the `captioning` task prompt when `use_task_prompt` (default: the
        config's) is on; else none.
        """
        if question_ids is None:
            if question_attention_mask is not None:
                raise ValueError("`question_attention_mask` was given without `question_ids`.")
            return self.valor.default_prompt(
                "captioning", batch_size, device, prompt_ids, prompt_attention_mask, use_task_prompt
            )
        if prompt_ids is not None or prompt_attention_mask is not None:
            raise ValueError(
                "Give a question as `question_ids` or a composed prompt as `prompt_ids`, not both."
            )
        return self.question_prompt(question_ids, question_attention_mask, use_task_prompt)

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

    @can_return_tuple
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
        question_ids: torch.LongTensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        use_task_prompt: bool | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        generation_step: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ValorCaptioningOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): decoder input. For `unimlm`
                training, the masked caption (see `transformers_valor.data.masking`); for `lm`, the caption.
            labels (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*): `unimlm`: the original
                token at masked positions, -100 elsewhere (`data.masking.mask_captions` makes both; labels that
                mark the first position ([CLS]), such as BLIP's `labels=input_ids`, are refused, see
                [`check_caption_labels`]); `lm`: the caption ids (-100 on padding), shifted inside, so
                `labels=input_ids` as in BLIP. The loss is the MGC loss (mean over labelled tokens), or with
                `question_ids` VALOR's QA loss ([`~transformers_valor.losses.QuestionAnsweringLoss`]: mean per
                answer, then over answers).
            video_states / audio_states (`torch.FloatTensor`, *optional*): precomputed decoder inputs from
                `encode_modalities`; used instead of `pixel_values_videos` / `input_features`.
            prompt_ids / prompt_attention_mask (*optional*): a composed decoder prompt (see [`decoder_prompt`]).
            question_ids / question_attention_mask (*optional*): a question `[CLS] q .. [SEP]` for QA, composed
                into the prompt by [`question_prompt`].
            use_task_prompt (`bool`, *optional*): the `captioning` / `qa` task prompts (default: the config's).
            generation_step (`bool`): set by `generate()`: with `unimlm`, append the transient [MASK], return its
                logits only and drop it from the cache.
            output_attentions / output_hidden_states (`bool`, *optional*): the decoder's self- and cross-attention
                weights (eager attention) / hidden states.
            return_dict (`bool`, *optional*): `False` returns a tuple.
        """
        if input_ids is None:
            raise ValueError(
                "`input_ids` are required (use `generate()` to caption from the modalities alone)."
            )
        if video_states is None and audio_states is None:
            if input_features_mask is not None and input_features is None:
                raise ValueError("`input_features_mask` was given without `input_features`.")
            video_states, audio_states = self.encode_modalities(pixel_values_videos, input_features)
        _check_batch_sizes(input_ids=input_ids, video_states=video_states, audio_states=audio_states)
        if cache is None or cache.get_seq_length() == 0 or question_ids is not None:
            # With a filled cache the prompt (if any) is cached already; the caller passes its mask.
            questions = (question_ids, question_attention_mask, use_task_prompt)
            prompt_ids, prompt_attention_mask = self.decoder_prompt(
                len(input_ids), input_ids.device, prompt_ids, prompt_attention_mask, *questions
            )
        unimlm_step = generation_step and self.config.caption_objective == "unimlm"
        if unimlm_step:
            input_ids, attention_mask = self._append_mask_slot(input_ids, attention_mask)
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
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden = text_output.last_hidden_state
        if unimlm_step:
            hidden = hidden[:, -1:]
            if text_output.cache is not None:
                text_output.cache.crop(-1)
        logits = self.cls(hidden)

        loss = self._loss(logits, labels, input_ids, question_ids is not None) if labels is not None else None
        return ValorCaptioningOutput(
            loss=loss,
            logits=logits,
            cache=text_output.cache,
            hidden_states=text_output.hidden_states,
            attentions=text_output.attentions,
            cross_attentions=text_output.cross_attentions,
        )

    def _append_mask_slot(self, input_ids, attention_mask):
        """`[.. ; MASK]`: the transient slot whose output predicts the next word (`unimlm` generation)."""
        mask_column = torch.full_like(input_ids[:, :1], self.config.text_config.mask_token_id)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        return torch.cat([input_ids, mask_column], dim=1), attention_mask

    def _loss(self, logits, labels, input_ids, answers: bool) -> torch.Tensor:
        """The MGC loss of `labels`, or VALOR's QA loss when the text `answers` questions."""
        if labels.shape != input_ids.shape:
            raise ValueError(
                f"`labels` shape {tuple(labels.shape)} differs from `input_ids` {tuple(input_ids.shape)}."
            )
        check_caption_labels(labels, self.config.caption_objective)
        if answers:
            return QuestionAnsweringLoss(self.config.caption_objective)(logits, labels)
        return CaptionLoss(self.config.caption_objective, self.config.label_smoothing)(logits, labels)

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
        question_ids: torch.LongTensor | None = None,
        question_attention_mask: torch.Tensor | None = None,
        use_task_prompt: bool | None = None,
        modalities: Literal["video", "audio", "both"] | None = None,
        video_states: torch.FloatTensor | None = None,
        audio_states: torch.FloatTensor | None = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """
        Caption (or answer) from video and/or audio. The encoders run once; decoding goes through
        `GenerationMixin.generate` (greedy, beam search, sampling, ...), with the model's generation config by
        default (VALOR's: beam 3, 30 new tokens). A beam search whose config has `beam_ranking="valor"` (VALOR's
        default) runs [`~transformers_valor.generation_valor.valor_beam_search`], the reference's ranking;
        `beam_ranking="transformers"` runs `transformers`' own beam search (with its `length_penalty`).

        Args:
            input_ids (`torch.LongTensor`, *optional*): a caption prefix starting with [CLS]; default [CLS]. A
                trailing [SEP] (what the processor's `text=` gives) is stripped, as BLIP does
                ([`strip_trailing_sep`]), so that decoding continues the prefix; the mask defaults to `!= pad`.
            prompt_ids / prompt_attention_mask (*optional*): a composed decoder prompt; the mask defaults to
                `prompt_ids != pad` (the reference's rule).
            question_ids / question_attention_mask (*optional*): a question to answer (see [`question_prompt`];
                VALOR answers greedily: pass `num_beams=1`).
            use_task_prompt (`bool`, *optional*): the `captioning` / `qa` task prompts (default: the config's).
            modalities (`str`, *optional*): condition on `"video"`, `"audio"` or `"both"`; default all given.
            video_states / audio_states (`torch.FloatTensor`, *optional*): decoder inputs precomputed with
                `encode_modalities` (to decode the same clips several times without re-encoding them).
            generate_kwargs: passed to `GenerationMixin.generate` (`num_beams`, `max_new_tokens`, `do_sample`...),
                plus `beam_ranking` (`"valor"` or `"transformers"`).

        Returns:
            `torch.LongTensor` of generated ids, starting with [CLS]; decode with `processor.batch_decode`. With
            `return_dict_in_generate=True`, `transformers`' output; with `output_attentions=True` too, a
            [`ValorGenerateOutput`] (or [`ValorGenerateBeamOutput`]) that also holds the decoder's
            `cross_attentions` per step (eager attention; VALOR's own beam ranking returns sequences and scores
            only, use `beam_ranking="transformers"`).
        """
        del input_features_mask  # cross-attention has no mask: silent clips are encoded from all-zero input
        if generate_kwargs.get("cache_implementation") not in (None, "dynamic"):
            raise NotImplementedError(
                f"cache_implementation={generate_kwargs['cache_implementation']!r} is not supported: the decoder "
                "builds its attention masks for the cached length and drops the transient [MASK] slot from the cache "
                "after every step, which a preallocated (static) cache does not allow. Use the default dynamic cache "
                "(`compile_valor` compiles the decoder step with it)."
            )
        if video_states is None and audio_states is None:
            video_states, audio_states = self.encode_modalities(
                pixel_values_videos, input_features, modalities
            )
        elif pixel_values_videos is not None or input_features is not None:
            raise ValueError("Pass either raw inputs or precomputed `video_states`/`audio_states`, not both.")
        reference = video_states if video_states is not None else audio_states
        _check_batch_sizes(
            video_states=video_states,
            audio_states=audio_states,
            input_ids=input_ids,
            prompt_ids=prompt_ids,
            question_ids=question_ids,
        )
        text_config = self.config.text_config
        if input_ids is None:
            input_ids = torch.full((reference.shape[0], 1), text_config.bos_token_id, device=reference.device)
        if attention_mask is None:
            attention_mask = (input_ids != text_config.pad_token_id).long()
        input_ids, attention_mask = strip_trailing_sep(
            input_ids, attention_mask, text_config.eos_token_id, text_config.pad_token_id
        )
        if prompt_ids is not None and prompt_attention_mask is None:
            prompt_attention_mask = (prompt_ids != text_config.pad_token_id).long()
        prompts = (prompt_ids, prompt_attention_mask, question_ids, question_attention_mask, use_task_prompt)
        prompt_ids, prompt_attention_mask = self.decoder_prompt(len(reference), reference.device, *prompts)
        resolved = self._select_beam_search(generate_kwargs)
        recording = bool(resolved.return_dict_in_generate and resolved.output_attentions)
        self._recorded_cross_attentions = [] if recording else None
        try:
            output = super().generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                video_states=video_states,
                audio_states=audio_states,
                prompt_ids=prompt_ids,
                prompt_attention_mask=prompt_attention_mask,
                use_task_prompt=False,  # the prompt is resolved above; the steps must not add the default one
                **generate_kwargs,
            )
        finally:
            recorded, self._recorded_cross_attentions = self._recorded_cross_attentions, None
        return with_cross_attentions(output, recorded) if recording else output

    # The decoder's cross-attentions of every step of the running `generate` call (`output_attentions` with
    # `return_dict_in_generate`): `GenerationMixin` keeps them for encoder-decoder models only.
    _recorded_cross_attentions: list | None = None

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """`GenerationMixin`'s update, recording the step's cross-attentions when `generate` asks for them."""
        if self._recorded_cross_attentions is not None:
            self._recorded_cross_attentions.append(outputs.cross_attentions)
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)

    def _select_beam_search(self, generate_kwargs: dict) -> GenerationConfig:
        """Default the special ids, pop `beam_ranking` from `generate_kwargs` and, for a plain beam search ranked
        VALOR's way, make [`valor_beam_search`] the decoding method. Returns the call's generation config."""
        text_config = self.config.text_config
        generate_kwargs.setdefault("eos_token_id", text_config.eos_token_id)
        generate_kwargs.setdefault("pad_token_id", text_config.pad_token_id)
        generate_kwargs.setdefault("bos_token_id", text_config.bos_token_id)
        ranking = generate_kwargs.pop("beam_ranking", None)
        resolved, _ = self._prepare_generation_config(
            generate_kwargs.get("generation_config"),
            **{k: v for k, v in generate_kwargs.items() if k != "generation_config"},
        )
        ranking = ranking or getattr(resolved, "beam_ranking", None) or "transformers"
        if ranking not in BEAM_RANKINGS:
            raise ValueError(f"`beam_ranking` must be one of {list(BEAM_RANKINGS)}, got {ranking!r}.")
        if (
            ranking == "valor"
            and generate_kwargs.get("custom_generate") is None
            and resolved.get_generation_mode(generate_kwargs.get("assistant_model"))
            == GenerationMode.BEAM_SEARCH
        ):
            generate_kwargs["custom_generate"] = valor_beam_search
        return resolved


class ValorForPreTraining(ValorWithMLMHeadPreTrainedModel):
    """
    VALOR pretraining: L = alpha * L_MGA + L_MGC (+ L_MLM) over modality groups (default T-AV, T-V and T-A).

    The third objective, conditioned masked language modelling (VALOR-L's recipe on its video-only corpora), runs
    when `mlm_labels` are given: the shared BERT BIDIRECTIONALLY over the 15 %-masked caption (`mlm_input_ids`),
    with cross-attention to the group's modality tokens and the group's MLM prompt (always, whatever
    `use_task_prompt` says), cross-entropy on the masked positions.

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
        mlm_input_ids: torch.LongTensor | None = None,
        mlm_labels: torch.LongTensor | None = None,
        mlm_groups: list[str] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ValorPreTrainingOutput | tuple:
        r"""
        Args:
            input_ids / attention_mask: the clean caption, for the text encoder (MGA).
            caption_input_ids (`torch.LongTensor`, *optional*): the decoder input for MGC (the masked caption for
                `unimlm`; defaults to `input_ids` for `lm`).
            labels (`torch.LongTensor`, *optional*): MGC targets (see [`ValorForConditionalGeneration`]). Without
                labels no MGC loss is computed.
            prompt_ids / prompt_attention_mask (*optional*): a prompt for the MGC decoder instead of the config's
                `captioning` task prompt (used with `use_task_prompt`).
            contrastive_groups / caption_groups / mlm_groups (`list[str]`, *optional*): groups to train; default
                the config's groups restricted to the modalities present.
            mlm_input_ids / mlm_labels (`torch.LongTensor`, *optional*): the caption masked for conditioned MLM
                (`data.masking.mask_captions` at `MLM_MASK_PROBABILITY`) and its targets (-100 where unmasked).
                Without `mlm_labels` no MLM loss is computed.
            output_attentions / output_hidden_states (`bool`, *optional*): the encoders' attention weights (eager
                attention) / hidden states in the `*_model_output`s, and the text transformer's output of every MGC
                and MLM pass (self- and cross-attentions, hidden states) in `decoder_outputs`.
            return_dict (`bool`, *optional*): `False` returns (nested) tuples.
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
            mlm_input_ids=mlm_input_ids,
            mlm_labels=mlm_labels,
            mlm_groups=mlm_groups,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
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
        mlm_input_ids: torch.LongTensor | None = None,
        mlm_labels: torch.LongTensor | None = None,
        mlm_groups: list[str] | None = None,
        mlm_loss: CaptionLoss | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ValorPreTrainingOutput:
        """
        The pretraining losses of one batch with the given loss objects (the inputs are those of `forward`).

        Args:
            mga_loss ([`~transformers_valor.losses.MultimodalGroupingAlignmentLoss`]): the MGA loss; with
                `gather_distributed=True` the negatives are the global batch.
            caption_loss ([`~transformers_valor.losses.CaptionLoss`]): the MGC loss.
            mlm_loss ([`~transformers_valor.losses.CaptionLoss`], *optional*): the MLM loss (cross-entropy on the
                masked positions, an `unimlm` `CaptionLoss`); default `CaptionLoss("unimlm")`.
        """
        _check_batch_sizes(
            input_ids=input_ids,
            pixel_values_videos=pixel_values_videos,
            input_features=input_features,
            labels=labels,
            mlm_labels=mlm_labels,
        )
        if labels is not None:
            check_caption_labels(labels, self.config.caption_objective)
        if (mlm_input_ids is None) != (mlm_labels is None):
            raise ValueError("Conditioned MLM needs both `mlm_input_ids` and `mlm_labels`.")
        groups = self._groups_to_train(
            pixel_values_videos is not None,
            input_features is not None,
            {"mga": contrastive_groups, "mgc": caption_groups, "mlm": mlm_groups},
            {"mgc": labels is not None, "mlm": mlm_labels is not None},
        )
        flags = {"output_attentions": output_attentions, "output_hidden_states": output_hidden_states}
        self.valor.check_output_attentions(output_attentions)
        tokens, features = self._encode_media(pixel_values_videos, input_features, input_features_mask, flags)
        logit_scale = self.valor.get_logit_scale()
        group_losses: dict[str, torch.Tensor] = {}
        if groups["mga"]:
            features["text"] = self.valor.get_text_features(
                input_ids, attention_mask, return_dict=True, **flags
            )
            group_losses.update(mga_loss(self.valor, features, groups["mga"], logit_scale))
        if not (groups["mgc"] or groups["mlm"]):
            return self._combine(group_losses, logit_scale, features)
        states = dict(zip(("video", "audio"), self.valor.decoder_inputs(tokens["video"], tokens["audio"])))
        prompt = (prompt_ids, prompt_attention_mask)
        if groups["mgc"]:
            prompt = self.valor.default_prompt("captioning", len(input_ids), input_ids.device, *prompt)
        decoding = {
            "mgc": (caption_loss, caption_input_ids if caption_input_ids is not None else input_ids, labels),
            "mlm": (mlm_loss or CaptionLoss("unimlm"), mlm_input_ids, mlm_labels),
        }
        decoder_outputs = {} if output_attentions or output_hidden_states else None
        for kind, (loss, ids, targets) in decoding.items():
            if groups[kind]:
                passes = self._text_losses(
                    kind, loss, groups[kind], states, ids, attention_mask, targets, prompt, flags
                )
                for key, (value, text_output) in passes.items():
                    group_losses[key] = value
                    if decoder_outputs is not None:
                        decoder_outputs[key] = text_output
        return self._combine(group_losses, logit_scale, features, decoder_outputs)

    def _groups_to_train(self, has_video: bool, has_audio: bool, requested: dict, has_targets: dict) -> dict:
        """The MGA, MGC and MLM groups of a batch: the requested ones (checked) or the config's defaults its
        modalities allow; MGC and MLM only when their targets are given."""
        available = {"text"} | ({"video"} if has_video else set()) | ({"audio"} if has_audio else set())
        if len(available) == 1:
            raise ValueError(
                "Pretraining needs `pixel_values_videos` and/or `input_features` besides the text."
            )
        config = self.config
        defaults = {"mga": config.contrastive_groups, "mgc": config.caption_groups, "mlm": config.mlm_groups}
        return {
            kind: self._active_groups(
                requested[kind], defaults[kind], available, "contrastive" if kind == "mga" else "caption"
            )
            if has_targets.get(kind, True)
            else []
            for kind in defaults
        }

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

    def _encode_media(self, pixel_values_videos, input_features, input_features_mask, flags):
        """Run the video and audio encoders once: decoder-side tokens and MGA features (with the towers' outputs
        that `flags` ask for) per modality."""
        valor = self.valor
        tokens: dict[str, torch.Tensor | None] = {"video": None, "audio": None}
        features: dict[str, ValorFeatures | None] = {"video": None, "audio": None}
        if pixel_values_videos is not None:
            tower = valor.video_tower(pixel_values_videos, **flags)
            tokens["video"] = tower.last_hidden_state
            features["video"] = valor._with_tower_output(
                valor.video_features_from_frames(tower.pooler_output), tower
            )
        if input_features is not None:
            valor._check_audio(input_features, input_features_mask)
            tower = valor.audio_tower(input_features, **flags)
            tokens["audio"] = tower.last_hidden_state
            clips = valor.audio_features_from_clips(tower.pooler_output, input_features_mask)
            features["audio"] = valor._with_tower_output(clips, tower)
        return tokens, features

    def _text_losses(
        self, kind, loss, groups, states, input_ids, attention_mask, labels, prompt, flags
    ) -> dict[str, tuple[torch.Tensor, ValorTextModelOutput]]:
        """
        The loss and the text transformer's output of every group of `kind`, conditioning the same text on each
        group's modality tokens: `mgc` decodes causally with `prompt` (`(ids, mask)`, or `(None, None)`), `mlm` runs
        bidirectionally with the group's MLM prompt. Keys `<kind>_<group>`.
        """
        losses = {}
        for group in groups:
            use = get_modality_group(group, "caption").decoder_modalities
            if kind == "mlm":
                prompt = self.valor.task_prompt_inputs(f"mlm_{group}", input_ids.shape[0], input_ids.device)
            text_output = self.valor.text_model(
                input_ids,
                attention_mask=attention_mask,
                prompt_ids=prompt[0],
                prompt_attention_mask=prompt[1],
                video_states=states["video"] if "video" in use else None,
                audio_states=states["audio"] if "audio" in use else None,
                is_decoder=kind == "mgc",
                use_cache=False,
                return_dict=True,
                **flags,
            )
            group_loss = loss.from_hidden_states(self.cls, text_output.last_hidden_state, labels)
            losses[f"{kind}_{group}"] = (group_loss, text_output)
        return losses

    def _combine(
        self,
        group_losses: dict[str, torch.Tensor],
        logit_scale: torch.Tensor,
        features: dict[str, ValorFeatures | None],
        decoder_outputs: dict[str, ValorTextModelOutput] | None = None,
    ) -> ValorPreTrainingOutput:
        """`alpha * mean(MGA) + mean(MGC) + mean(MLM)` (the reference's sum) with the per-component losses."""
        means = {}
        for kind in ("mga", "mgc", "mlm"):
            parts = [v for k, v in group_losses.items() if k.startswith(f"{kind}_")]
            means[kind] = torch.stack(parts).mean() if parts else None
        if all(value is None for value in means.values()):
            raise ValueError(
                "No objective is active: give `labels` for MGC, `mlm_labels` for MLM or enable contrastive groups."
            )
        weights = {"mga": self.config.contrastive_loss_weight, "mgc": 1.0, "mlm": 1.0}
        total = sum(weights[kind] * value for kind, value in means.items() if value is not None)
        return ValorPreTrainingOutput(
            loss=total,
            contrastive_loss=means["mga"],
            caption_loss=means["mgc"],
            mlm_loss=means["mlm"],
            group_losses=group_losses,
            logit_scale=logit_scale,
            text_model_output=features.get("text"),
            video_model_output=features["video"],
            audio_model_output=features["audio"],
            decoder_outputs=decoder_outputs,
        )
