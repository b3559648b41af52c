"""Configuration classes for VALOR (the composite `ValorConfig`, its text, Video Swin and audio towers) and the one
table of modality groups (`MODALITY_GROUPS`) that every module reads."""

import logging
from dataclasses import dataclass
from typing import Any, Literal, get_args

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, CLIPVisionConfig, PreTrainedConfig, ViTConfig
from transformers.configuration_utils import SubConfigSpec

logger = logging.getLogger(__name__)

Modality = Literal["text", "video", "audio"]
GroupName = Literal["tv", "ta", "tva", "va", "vta", "atv"]
CaptionGroupName = Literal["tv", "ta", "tva"]
ContrastiveType = Literal["fine", "coarse"]
CaptionObjective = Literal["unimlm", "lm"]
CrossAttentionLayout = Literal["concat", "parallel", "video_first", "audio_first"]
LogitScaleType = Literal["temperature", "log_scale"]

TaskPromptName = Literal["retrieval", "captioning", "qa", "mlm_tva", "mlm_tv", "mlm_ta"]

CONTRASTIVE_TYPES: tuple[str, ...] = get_args(ContrastiveType)
CAPTION_OBJECTIVES: tuple[str, ...] = get_args(CaptionObjective)
CROSS_ATTENTION_LAYOUTS: tuple[str, ...] = get_args(CrossAttentionLayout)
LOGIT_SCALE_TYPES: tuple[str, ...] = get_args(LogitScaleType)

# VALOR's task prompts (reference `model/pretrain.py`), tokenised as `[CLS] prompt [SEP]`. `retrieval` (the text
# encoder of MGA and retrieval), `captioning` (MGC, caption fine-tuning and generation) and `qa` (put between
# [CLS] and the question) apply only with `use_task_prompt`; the conditioned-MLM prompts apply always.
DEFAULT_TASK_PROMPTS: dict[str, str] = {
    "retrieval": "project language in common space",
    "captioning": "describe the video with natural language",
    "qa": "answer the question",
    "mlm_tva": "predict masked tokens with visual and audio cues",
    "mlm_tv": "predict masked tokens with visual cues",
    "mlm_ta": "predict masked tokens with audio cues",
}
TASK_PROMPT_NAMES: tuple[str, ...] = get_args(TaskPromptName)


@dataclass(frozen=True)
class ModalityGroup:
    """
    One of VALOR's modality groups: which sides Multimodal Grouping Alignment compares, which modalities the
    decoder is conditioned on when the group is also a captioning (MGC) group, and how metrics name it.

    Args:
        name (`str`): `tv`, `ta`, `tva`, `va`, `vta` or `atv`.
        query (`tuple[str, ...]`): the modalities of the first MGA side (the queries in retrieval).
        candidates (`tuple[str, ...]`): the modalities of the second side, concatenated along positions.
        decoder_modalities (`tuple[str, ...]`, *optional*): what the decoder cross-attends to for MGC; `None` for
            groups that are not captioning groups.
        metric_names (`tuple[str, str]`): short names of the two retrieval directions (`t2v`, `v2t`).
        label (`str`): a readable name for tables (`text -> video`).
    """

    name: str
    query: tuple[str, ...]
    candidates: tuple[str, ...]
    decoder_modalities: tuple[str, ...] | None
    metric_names: tuple[str, str]
    label: str

    @property
    def modalities(self) -> frozenset[str]:
        """Every modality the group's MGA score reads."""
        return frozenset(self.query + self.candidates)

    @property
    def media(self) -> str:
        """The group's non-text modalities as the `modalities=` arguments of the processor, `generate()` and the
        pipelines name them: `"video"`, `"audio"` or `"both"`."""
        non_text = sorted(self.modalities - {"text"}, reverse=True)  # ["video", "audio"] order
        return "both" if len(non_text) == 2 else non_text[0]

    @property
    def logits_names(self) -> tuple[str, str]:
        """The retrieval output fields of the group's score matrix, as X-CLIP and CLAP name theirs:
        `logits_per_<first query modality>` (queries x candidates) and `logits_per_<first candidate modality>`
        (its transpose), e.g. `("logits_per_text", "logits_per_video")` for `tv` and `tva`."""
        return f"logits_per_{self.query[0]}", f"logits_per_{self.candidates[0]}"


# The one table of modality groups; every module reads it.
MODALITY_GROUPS: dict[str, ModalityGroup] = {
    group.name: group
    for group in (
        ModalityGroup("tv", ("text",), ("video",), ("video",), ("t2v", "v2t"), "text -> video"),
        ModalityGroup("ta", ("text",), ("audio",), ("audio",), ("t2a", "a2t"), "text -> audio"),
        ModalityGroup(
            "tva", ("text",), ("video", "audio"), ("video", "audio"), ("t2va", "va2t"), "text -> audio+video"
        ),
        ModalityGroup("va", ("video",), ("audio",), None, ("v2a", "a2v"), "video -> audio"),
        ModalityGroup("vta", ("video",), ("text", "audio"), None, ("v2ta", "ta2v"), "video -> text+audio"),
        ModalityGroup("atv", ("audio",), ("text", "video"), None, ("a2tv", "tv2a"), "audio -> text+video"),
    )
}
CONTRASTIVE_GROUPS: tuple[str, ...] = tuple(MODALITY_GROUPS)
CAPTION_GROUPS: tuple[str, ...] = tuple(g.name for g in MODALITY_GROUPS.values() if g.decoder_modalities)
# Groups whose queries are text: what retrieval evaluation and the retrieval pipeline serve.
RETRIEVAL_GROUPS: tuple[str, ...] = tuple(g.name for g in MODALITY_GROUPS.values() if g.query == ("text",))
_GROUPS_BY_KIND = {
    "contrastive": CONTRASTIVE_GROUPS,
    "caption": CAPTION_GROUPS,
    "retrieval": RETRIEVAL_GROUPS,
}


def get_modality_group(
    name: str, kind: Literal["contrastive", "caption", "retrieval"] = "contrastive"
) -> ModalityGroup:
    """The [`ModalityGroup`] called `name`; a ValueError lists the groups allowed for `kind` otherwise."""
    allowed = _GROUPS_BY_KIND[kind]
    if name not in allowed:
        raise ValueError(f"Unknown {kind} group {name!r}; choose one of {list(allowed)}.")
    return MODALITY_GROUPS[name]


def _check_choice(field: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"`{field}` must be one of {list(allowed)}, got {value!r}.")


def _check_positive(field: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"`{field}` must be > 0, got {value!r}.")


@strict
class ValorVideoSwinConfig(PreTrainedConfig):
    r"""
    Configuration of [`ValorVideoSwinModel`], the 3D shifted-window transformer VALOR-B uses as its video
    encoder. The defaults are Video Swin-B as VALOR-B uses it (Kinetics-600 checkpoint layout).

    Args:
        image_size (`int`, defaults to 224): frame height and width the model is built for.
        patch_size (`list[int]`, defaults to `[2, 4, 4]`): Conv3d kernel (time, height, width) of the patch embedding.
        temporal_stride (`int`, defaults to 1): temporal stride of the patch embedding. With stride 1 and one
            zero frame padded at the end, `T` input frames give `T` temporal slots.
        num_channels (`int`, defaults to 3): input channels.
        embed_dim (`int`, defaults to 128): width after the patch embedding; doubles at every stage.
        depths (`list[int]`, defaults to `[2, 2, 18, 2]`): blocks per stage.
        num_heads (`list[int]`, defaults to `[4, 8, 16, 32]`): attention heads per stage.
        window_size (`list[int]`, defaults to `[8, 7, 7]`): attention window (time, height, width).
        mlp_ratio (`float`, defaults to 4.0): MLP width over the block width.
        qkv_bias (`bool`, defaults to `True`): bias on the query/key/value projection.
        hidden_dropout_prob (`float`, defaults to 0.0): dropout after the patch embedding, projections and MLP.
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on the attention weights.
        drop_path_rate (`float`, defaults to 0.2): stochastic depth, increasing linearly to this value.
        patch_norm (`bool`, defaults to `True`): LayerNorm after the patch embedding.
        layer_norm_eps (`float`, defaults to 1e-5): LayerNorm epsilon.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal weight init.

    Example:

    ```python
    >>> from transformers_valor import ValorVideoSwinConfig, ValorVideoSwinModel
    >>> model = ValorVideoSwinModel(ValorVideoSwinConfig(embed_dim=32, depths=[1, 1], num_heads=[2, 4]))
    ```
    """

    model_type = "valor_video_swin"
    base_config_key = "vision_config"

    image_size: int = 224
    patch_size: list[int] | tuple[int, ...] = (2, 4, 4)
    temporal_stride: int = 1
    num_channels: int = 3
    embed_dim: int = 128
    depths: list[int] | tuple[int, ...] = (2, 2, 18, 2)
    num_heads: list[int] | tuple[int, ...] = (4, 8, 16, 32)
    window_size: list[int] | tuple[int, ...] = (8, 7, 7)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.2
    patch_norm: bool = True
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.patch_size = list(self.patch_size)
        self.depths = list(self.depths)
        self.num_heads = list(self.num_heads)
        self.window_size = list(self.window_size)
        if len(self.patch_size) != 3 or len(self.window_size) != 3:
            raise ValueError(
                f"`patch_size` and `window_size` must have 3 entries (time, height, width), got "
                f"{self.patch_size} and {self.window_size}."
            )
        if len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"`depths` ({self.depths}) and `num_heads` ({self.num_heads}) must have the same length."
            )
        super().__post_init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Width of the last stage, i.e. of the tokens the model outputs."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)


@strict
class ValorTextConfig(PreTrainedConfig):
    r"""
    Configuration of [`ValorTextModel`], the BERT-compatible transformer VALOR shares between its text encoder
    (bidirectional) and its multimodal decoder (causal, with cross-attention). Defaults are BERT-base uncased.

    Args:
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, hidden_act,
        hidden_dropout_prob, attention_probs_dropout_prob, max_position_embeddings, type_vocab_size,
        initializer_range, layer_norm_eps: as in [`~transformers.BertConfig`].
        add_cross_attention (`bool`, defaults to `True`): build the cross-attention sub-blocks the decoder uses.
        cross_attention_layout (`str`, defaults to `"concat"`): how the decoder attends to video and audio
            tokens. `"concat"`: one cross-attention over `[video ; audio]` (VALOR's `va_concate`);
            `"parallel"`: one block per modality on the same input, outputs summed (`va_parallel`);
            `"video_first"` / `"audio_first"`: one block per modality, applied one after the other.
        pad_token_id, bos_token_id (= [CLS]), eos_token_id (= [SEP]), mask_token_id (= [MASK]): special ids of
            the BERT uncased vocabulary.
        random_token_start (`int`, defaults to 106): smallest id drawn when masking replaces a token by a random
            one (ids below are special or unused in the BERT vocabulary).
    """

    model_type = "valor_text_model"
    base_config_key = "text_config"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    add_cross_attention: bool = True
    cross_attention_layout: CrossAttentionLayout = "concat"
    pad_token_id: int | None = 0
    bos_token_id: int | None = 101
    eos_token_id: int | None = 102
    mask_token_id: int | None = 103
    random_token_start: int = 106
    is_decoder: bool = False
    use_cache: bool = True
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by `num_attention_heads` "
                f"({self.num_attention_heads})."
            )
        super().__post_init__(**kwargs)


@strict
class ValorAudioConfig(ViTConfig):
    r"""
    Configuration of [`ValorAudioModel`], VALOR's AST-style audio encoder: a plain ViT-B/16 over Kaldi fbank
    clips of 64 mel bins x 512 frames (one input channel, one CLS token, no pooler). Every field is a
    [`~transformers.ViTConfig`] field; only the defaults differ (`image_size=[64, 512]`, `num_channels=1`).

    Example:

    ```python
    >>> from transformers_valor import ValorAudioConfig, ValorAudioModel
    >>> model = ValorAudioModel(ValorAudioConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                                          intermediate_size=37, image_size=[16, 32], patch_size=8))
    ```
    """

    model_type = "valor_audio"
    base_config_key = "audio_config"

    image_size: int | list[int] | tuple[int, int] = (64, 512)
    num_channels: int = 1

    def __post_init__(self, **kwargs):
        if not isinstance(self.image_size, int):
            self.image_size = list(self.image_size)
        super().__post_init__(**kwargs)


def _as_audio_config(value: Any) -> Any:
    """Accept the audio tower's earlier form, a ViT config (`model_type: vit`), as a `ValorAudioConfig`."""
    if isinstance(value, ValorAudioConfig) or value is None:
        return value
    if isinstance(value, ViTConfig):
        value = value.to_dict()
    if isinstance(value, dict) and value.get("model_type", "vit") == "vit":
        return {**value, "model_type": ValorAudioConfig.model_type}
    return value


@strict
class ValorConfig(PreTrainedConfig):
    r"""
    Configuration of the VALOR models ([`ValorModel`], [`ValorForRetrieval`], [`ValorForConditionalGeneration`],
    [`ValorForPreTraining`]). The defaults reproduce VALOR-B: BERT-base text, Video Swin-B video, AST-style
    ViT-B/16 audio, 512-d contrastive space, fine-grained MGA and alpha 1.5.

    Args:
        text_config (`dict` or [`ValorTextConfig`]): the shared text encoder / multimodal decoder.
        vision_config (`dict`, [`ValorVideoSwinConfig`] or [`~transformers.CLIPVisionConfig`]): the video
            encoder. A `CLIPVisionConfig` encodes each frame with `CLIPVisionModel` (VALOR-L).
        audio_config (`dict` or [`ValorAudioConfig`]): the AST-style audio encoder (1 channel, 64 x 512
            input, patch 16, one CLS token). A ViT config (`model_type: vit`, the earlier form) is accepted.
        projection_dim (`int`, defaults to 512): width of the contrastive (MGA) space.
        contrastive_type (`str`, defaults to `"fine"`): `"fine"` (token-wise weighted max-similarity, VALOR's
            default) or `"coarse"` (mean-pooled features and a dot product).
        contrastive_groups (`list[str]`, defaults to `["tva", "tv", "ta"]`): MGA groups trained by
            [`ValorForPreTraining`]: `tv` text-video, `ta` text-audio, `tva` text-audiovisual, and the optional
            `va` video-audio, `vta` video-(text+audio), `atv` audio-(text+video).
        caption_groups (`list[str]`, defaults to `["tva", "tv", "ta"]`): MGC groups (`tv`, `ta`, `tva`).
        contrastive_loss_weight (`float`, defaults to 1.5): alpha in `L = alpha * L_MGA + L_MGC`.
        logit_scale_type (`str`, *optional*): `"temperature"` divides scores by a learnable temperature
            initialised to `temperature_init` (VALOR-B); `"log_scale"` multiplies them by `exp(logit_scale)` as
            CLIP does (VALOR-L, which reuses CLIP's `logit_scale`). Defaults to `"log_scale"` for a CLIP video
            encoder and `"temperature"` otherwise.
        temperature_init (`float`, defaults to 0.07): initial temperature for either parameterisation.
        caption_objective (`str`, defaults to `"unimlm"`): `"unimlm"` (causal masked language modelling,
            VALOR's default) or `"lm"` (plain next-token prediction).
        cross_attention_layout (`str`, defaults to `"concat"`): see [`ValorTextConfig`]; copied into it.
        mlm_groups (`list[str]`, defaults to `["tva", "tv", "ta"]`): groups of the conditioned masked language
            modelling objective (`tv`, `ta`, `tva`), trained by [`ValorForPreTraining`] when `mlm_labels` are given.
        use_task_prompt (`bool`, defaults to `False`): VALOR-L's task prompts (on in VALOR-L): the text encoder
            runs with the `retrieval` prompt appended, the decoder with the `captioning` prompt, and QA
            prompts are `[CLS] + qa prompt + question`. The MLM prompts are used whatever this flag says.
        task_prompts (`dict[str, str]`, *optional*): the prompt text per use (`retrieval`, `captioning`, `qa`,
            `mlm_tva`, `mlm_tv`, `mlm_ta`); defaults to the reference's sentences (`DEFAULT_TASK_PROMPTS`).
        task_prompt_ids (`dict[str, list[int]]`, *optional*): each prompt as `[CLS] ... [SEP]` ids of the model's
            vocabulary, set from a tokenizer with [`~ValorConfig.set_task_prompt_ids`] (the converter and the
            training scripts do it); a model that needs a prompt raises a ValueError while they are missing.
        max_video_frames (`int`, defaults to 32): learned frame-position slots of the video tokens.
        max_audio_clips (`int`, defaults to 32): learned clip-position slots of the audio tokens.
        label_smoothing (`float`, defaults to 0.0): label smoothing of the MGC cross-entropy.
        initializer_range (`float`, defaults to 0.02): std of the initialisation of VALOR's own weights.

    Example:

    ```python
    >>> from transformers import CLIPVisionConfig
    >>> from transformers_valor import ValorConfig
    >>> valor_b = ValorConfig()
    >>> valor_l = ValorConfig(
    ...     vision_config=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
    ...                                    num_attention_heads=16, patch_size=14, image_size=224),
    ...     use_task_prompt=True,
    ... )
    ```
    """

    model_type = "valor"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=ValorTextConfig),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="valor_video_swin"),
        "audio_config": SubConfigSpec(config_class=AutoConfig, model_type="valor_audio"),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 512
    contrastive_type: ContrastiveType = "fine"
    contrastive_groups: list[GroupName] | tuple[GroupName, ...] = ("tva", "tv", "ta")
    caption_groups: list[CaptionGroupName] | tuple[CaptionGroupName, ...] = ("tva", "tv", "ta")
    contrastive_loss_weight: float = 1.5
    logit_scale_type: LogitScaleType | None = None
    temperature_init: float = 0.07
    caption_objective: CaptionObjective = "unimlm"
    cross_attention_layout: CrossAttentionLayout = "concat"
    mlm_groups: list[CaptionGroupName] | tuple[CaptionGroupName, ...] = ("tva", "tv", "ta")
    use_task_prompt: bool = False
    task_prompts: dict[str, str] | None = None
    task_prompt_ids: dict[str, list[int]] | None = None
    max_video_frames: int = 32
    max_audio_clips: int = 32
    label_smoothing: float = 0.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        self.audio_config = _as_audio_config(self.audio_config)
        legacy_prompt = kwargs.pop("task_prompt", None)  # the single captioning prompt of earlier configs
        super().__post_init__(**kwargs)
        self.task_prompts = _check_task_prompts(self.task_prompts, legacy_prompt)
        if self.task_prompt_ids is not None:
            self.task_prompt_ids = _check_task_prompt_ids(self.task_prompt_ids)
        if self.vision_config.model_type not in ("valor_video_swin", "clip_vision_model"):
            raise ValueError(
                "`vision_config` must be a ValorVideoSwinConfig or a CLIPVisionConfig, got model_type "
                f"{self.vision_config.model_type!r}."
            )
        if not isinstance(self.audio_config, ValorAudioConfig):
            raise ValueError(
                "`audio_config` must be a ValorAudioConfig (or a ViT config), got model_type "
                f"{self.audio_config.model_type!r}."
            )
        if self.logit_scale_type is None:
            self.logit_scale_type = "log_scale" if self.is_clip_vision else "temperature"
        self.contrastive_groups = list(self.contrastive_groups)
        self.caption_groups = list(self.caption_groups)
        self.mlm_groups = list(self.mlm_groups)
        for group in self.contrastive_groups:
            _check_choice("contrastive_groups", group, CONTRASTIVE_GROUPS)
        for field in ("caption_groups", "mlm_groups"):
            for group in getattr(self, field):
                _check_choice(field, group, CAPTION_GROUPS)
        for field in ("projection_dim", "temperature_init", "max_video_frames", "max_audio_clips"):
            _check_positive(field, getattr(self, field))
        if self.contrastive_loss_weight < 0:
            raise ValueError(f"`contrastive_loss_weight` must be >= 0, got {self.contrastive_loss_weight}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"`label_smoothing` must lie in [0, 1), got {self.label_smoothing}.")
        # One source of truth: the decoder's cross-attention layout is a VALOR-level choice.
        self.text_config.cross_attention_layout = self.cross_attention_layout

    @property
    def is_clip_vision(self) -> bool:
        """Whether the video encoder is CLIP's vision tower applied per frame (VALOR-L)."""
        return isinstance(self.vision_config, CLIPVisionConfig)

    def set_task_prompt_ids(self, tokenizer) -> dict[str, list[int]]:
        """
        Tokenise every prompt of `task_prompts` with `tokenizer` (the model's BERT WordPiece tokenizer) as the
        reference does, `[CLS] prompt [SEP]`, store the ids in `task_prompt_ids` and return them. A prompt word
        outside the vocabulary is logged (it becomes [UNK]).
        """
        self.task_prompt_ids = _check_task_prompt_ids(tokenize_task_prompts(tokenizer, self.task_prompts))
        return self.task_prompt_ids


def tokenize_task_prompts(tokenizer, prompts: dict[str, str]) -> dict[str, list[int]]:
    """Each prompt as `[CLS] prompt [SEP]` ids of `tokenizer`; a word outside the vocabulary is logged."""
    ids = {}
    for name, text in prompts.items():
        tokens = [int(token) for token in tokenizer(text, add_special_tokens=True)["input_ids"]]
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in tokens:
            logger.warning("Task prompt %r (%r) has words outside the vocabulary.", name, text)
        ids[name] = tokens
    return ids


def _check_task_prompts(prompts: dict[str, str] | None, legacy_caption_prompt: str | None) -> dict[str, str]:
    """The prompt texts: the reference's defaults, updated by `prompts`; unknown names are an error."""
    given = dict(prompts or {})
    if legacy_caption_prompt is not None:
        given.setdefault("captioning", legacy_caption_prompt)
    unknown = sorted(set(given) - set(TASK_PROMPT_NAMES))
    if unknown:
        raise ValueError(f"`task_prompts` has unknown names {unknown}; known: {list(TASK_PROMPT_NAMES)}.")
    for name, text in given.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"`task_prompts[{name!r}]` must be a non-empty string, got {text!r}.")
    return {**DEFAULT_TASK_PROMPTS, **given}


def _check_task_prompt_ids(ids: dict[str, list[int]]) -> dict[str, list[int]]:
    """Prompt token ids: known names, each a list of at least three ints (`[CLS] word.. [SEP]`)."""
    unknown = sorted(set(ids) - set(TASK_PROMPT_NAMES))
    if unknown:
        raise ValueError(f"`task_prompt_ids` has unknown names {unknown}; known: {list(TASK_PROMPT_NAMES)}.")
    checked = {}
    for name, tokens in ids.items():
        tokens = list(tokens)
        if len(tokens) < 3 or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise ValueError(
                f"`task_prompt_ids[{name!r}]` must be `[CLS] word.. [SEP]` ids (at least 3 ints), got {tokens!r}."
            )
        checked[name] = tokens
    return checked
