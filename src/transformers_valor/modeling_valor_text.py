"""The BERT-compatible transformer VALOR shares between its text encoder and its multimodal decoder.

Parameter names and maths are those of `transformers.BertModel`, so a BERT checkpoint loads into
[`ValorTextModel`]; the cross-attention sub-blocks and the prompt type embedding are VALOR's additions.
One set of weights runs either bidirectionally (text encoder, MGA) or causally with cross-attention over the
video/audio tokens (decoder, MGC, captioning, QA), chosen per call with `is_decoder`.

Sequence layout. An optional prompt (VALOR's task prompt, or a question for QA) is a block of its own positions
(restarting at 0) and token type (the prompt embedding). VALOR appends it after the text (reference
`model/bert.py`): in a causal call (the decoder) text tokens are causal among themselves and see the whole prompt,
and prompt tokens see only the prompt; in a bidirectional call (text encoder, conditioned MLM) every token sees
every non-padding token, prompt and text alike. Attention, the per-token layers and cross-attention are
permutation-equivariant given the mask and the position ids, so the prompt is placed FIRST internally, which lets
a key/value cache hold it as a prefix during generation. Outputs cover the text positions only.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_valor import ValorTextConfig
from .modeling_attention import check_attention_weights_available, eager_attention_forward

# Which cross-attention modules a layout builds, and in which order the decoder applies them.
_CROSS_ATTENTION_MODULES = {
    "concat": ("crossattention",),
    "parallel": ("crossattention_video", "crossattention_audio"),
    "video_first": ("crossattention_video", "crossattention_audio"),
    "audio_first": ("crossattention_audio", "crossattention_video"),
}


@dataclass
class ValorTextModelOutput(ModelOutput):
    """
    Output of [`ValorTextModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, text_length, hidden_size)`):
            hidden states of the text positions (prompt positions are not included).
        cache (`EncoderDecoderCache`, *optional*): key/value cache, returned when `use_cache=True` in decoder mode.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): embeddings plus every layer's output, text
            positions only, each `(batch_size, text_length, hidden_size)`; with `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*): self-attention weights per layer, each
            `(batch_size, heads, queries, keys)` over `[prompt ; text]` (the prompt block first, see the module
            docstring; with a cache, the queries are the new tokens and the keys every cached one), with
            `output_attentions=True` (eager attention only).
        cross_attentions (`tuple(torch.FloatTensor)`, *optional*): the decoder's cross-attention weights per layer,
            each `(batch_size, heads, queries, modality_tokens)` with the keys `[video ; audio]` tokens (those given);
            with `cross_attention_layout="concat"` a row sums to 1 over all of them, with the two-branch layouts to
            1 within each modality's block. With `output_attentions=True` in decoder mode (eager attention only).
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


def build_self_attention_mask(
    key_padding_mask: torch.Tensor,
    num_prompt_tokens: int,
    query_start: int,
    causal: bool,
) -> torch.Tensor:
    """
    Boolean self-attention mask (`True` = may attend) of shape `(batch, 1, queries, keys)`.

    The key sequence is `[prompt (num_prompt_tokens) ; text]`; the queries are the keys from `query_start` on.
    Bidirectional (`causal=False`): every query sees every valid key. Causal: prompt queries see valid prompt
    keys only, text queries see valid prompt keys and the valid text keys up to their own position. Each query
    also sees itself, so that no row is empty (rows of padding queries are ignored downstream).

    Args:
        key_padding_mask (`torch.Tensor` of shape `(batch, keys)`): 1/True for real tokens.
        num_prompt_tokens (`int`): length of the prompt block at the start of the keys.
        query_start (`int`): index in the key sequence of the first query.
        causal (`bool`): causal attention among text tokens.
    """
    num_keys = key_padding_mask.shape[1]
    device = key_padding_mask.device
    key_idx = torch.arange(num_keys, device=device)  # (K,)
    query_idx = torch.arange(query_start, num_keys, device=device)[:, None]  # (Q, 1)
    if causal:
        key_is_prompt = key_idx < num_prompt_tokens
        query_is_prompt = query_idx < num_prompt_tokens
        structure = key_is_prompt | (~query_is_prompt & (key_idx <= query_idx))  # (Q, K)
    else:
        structure = torch.ones(query_idx.shape[0], num_keys, dtype=torch.bool, device=device)
    allowed = structure[None] & key_padding_mask.bool()[:, None, :]  # (B, Q, K)
    allowed = allowed | (query_idx == key_idx)[None]
    return allowed[:, None]  # (B, 1, Q, K)


def _mask_for_implementation(mask: torch.Tensor | None, implementation: str, dtype: torch.dtype):
    """Turn a boolean mask into what the attention function takes: additive floats for eager, bool for sdpa."""
    if mask is None or implementation == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def check_embedding_range(ids: torch.Tensor, size: int, name: str, what: str, config_key: str) -> None:
    """A `ValueError` naming `name` when `ids` hold a value outside `[0, size)` (which `nn.Embedding` reports as a
    bare index error on the CPU and as a device-side assert on CUDA)."""
    # Reading the values needs them on the host: a graph break under torch.compile, so compiled code skips it.
    if ids.numel() == 0 or torch.compiler.is_compiling():
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= size:
        bad = low if low < 0 else high
        raise ValueError(
            f"`{name}` hold {what} {bad}, outside [0, {size}) ({config_key} = {size}); were they made by the "
            "tokenizer of this model?"
        )


class ValorTextEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm and dropout (BERT), plus VALOR's prompt type."""

    def __init__(self, config: ValorTextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        # Replaces the token-type embedding on prompt/question tokens.
        self.prompt_embedding = nn.Embedding(1, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_prompt: bool = False,
    ) -> torch.Tensor:
        """Embed `input_ids` (or `inputs_embeds`) at `position_ids`; prompt tokens use the prompt type embedding."""
        if inputs_embeds is None:
            name = "prompt_ids" if is_prompt else "input_ids"
            check_embedding_range(
                input_ids, self.word_embeddings.num_embeddings, name, "token id", "vocab_size"
            )
            inputs_embeds = self.word_embeddings(input_ids)
        batch_size, length = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device)[None]
        too_long = (
            position_ids.numel()
            and not torch.compiler.is_compiling()
            and int(position_ids.max()) >= self.position_embeddings.num_embeddings
        )
        if too_long:
            raise ValueError(
                f"The {'prompt' if is_prompt else 'text'} needs {int(position_ids.max()) + 1} text positions (cached "
                f"tokens included) but the model has max_position_embeddings = {self.position_embeddings.num_embeddings}."
            )
        if is_prompt:
            type_embeds = self.prompt_embedding.weight[None]  # (1, 1, H)
        else:
            if token_type_ids is None:
                token_type_ids = torch.zeros(length, dtype=torch.long, device=inputs_embeds.device)[None]
            type_embeds = self.token_type_embeddings(token_type_ids)
        embeddings = inputs_embeds + self.position_embeddings(position_ids) + type_embeds
        return self.dropout(self.LayerNorm(embeddings))


class ValorTextSelfAttention(nn.Module):
    """Multi-head attention with BERT's `query`/`key`/`value` names; self- or cross-attention, cache-aware."""

    def __init__(self, config: ValorTextConfig, cache_index: int, is_cross_attention: bool):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.cache_index = cache_index
        self.is_cross_attention = is_cross_attention
        # The mask always carries the structure; never let sdpa infer causality from a missing mask.
        self.is_causal = False

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, L, d)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from `hidden_states` to themselves, or to `key_value_states` for cross-attention."""
        query = self._split_heads(self.query(hidden_states))
        if self.is_cross_attention:
            if cache is not None and cache.is_updated.get(self.cache_index, False):
                layer = cache.cross_attention_cache.layers[self.cache_index]
                key, value = layer.keys, layer.values
            else:
                key = self._split_heads(self.key(key_value_states))
                value = self._split_heads(self.value(key_value_states))
                if cache is not None:
                    key, value = cache.cross_attention_cache.update(key, value, self.cache_index)
                    cache.is_updated[self.cache_index] = True
        else:
            key = self._split_heads(self.key(hidden_states))
            value = self._split_heads(self.value(hidden_states))
            if cache is not None:
                key, value = cache.self_attention_cache.update(key, value, self.cache_index)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout_prob if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        attn_output = attn_output.reshape(*hidden_states.shape[:2], -1).contiguous()  # (B, L, H)
        return attn_output, attn_weights


class ValorTextResidualOutput(nn.Module):
    """Projection to the hidden width, dropout and post-norm residual (BERT's `attention.output` and `output`)."""

    def __init__(self, config: ValorTextConfig, input_size: int):
        super().__init__()
        self.dense = nn.Linear(input_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """Project, drop out, add the residual and normalise."""
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class ValorTextAttention(nn.Module):
    """Attention sub-block: `self` (query/key/value) and `output` (dense + LayerNorm residual)."""

    def __init__(self, config: ValorTextConfig, cache_index: int, is_cross_attention: bool = False):
        super().__init__()
        self.self = ValorTextSelfAttention(config, cache_index, is_cross_attention)
        self.output = ValorTextResidualOutput(config, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the attention and its residual output block."""
        attn_output, attn_weights = self.self(hidden_states, attention_mask, key_value_states, cache)
        return self.output(attn_output, hidden_states), attn_weights


class ValorTextIntermediate(nn.Module):
    """First MLP projection and activation (BERT's `intermediate`)."""

    def __init__(self, config: ValorTextConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Project up and apply the activation."""
        return self.intermediate_act_fn(self.dense(hidden_states))


class ValorTextLayer(GradientCheckpointingLayer):
    """One BERT layer with VALOR's cross-attention sub-block(s) between self-attention and the MLP."""

    def __init__(self, config: ValorTextConfig, layer_idx: int):
        super().__init__()
        self.attention = ValorTextAttention(config, cache_index=layer_idx)
        self.cross_attention_order: tuple[str, ...] = ()
        self.cross_attention_layout = config.cross_attention_layout
        if config.add_cross_attention:
            self.cross_attention_order = _CROSS_ATTENTION_MODULES[config.cross_attention_layout]
            # Cross K/V live in the cache at 2 * layer + branch (branch 0 = concat/video, 1 = audio).
            for name in set(self.cross_attention_order):
                branch = 1 if name.endswith("audio") else 0
                module = ValorTextAttention(
                    config, cache_index=2 * layer_idx + branch, is_cross_attention=True
                )
                setattr(self, name, module)
        self.intermediate = ValorTextIntermediate(config)
        self.output = ValorTextResidualOutput(config, config.intermediate_size)

    def _cross_attend(self, hidden_states, video_states, audio_states, cache):
        """The cross-attention output and its weights over `[video ; audio]` (`None` under sdpa)."""
        if self.cross_attention_layout == "concat":
            present = [states for states in (video_states, audio_states) if states is not None]
            # A filled cache holds their keys and values: re-concatenating the states at every generation step
            # would copy all of them once per layer and token.
            if cache is not None and cache.is_updated.get(self.crossattention.self.cache_index, False):
                key_value_states = None
            else:  # (B, Nv+Na, H)
                key_value_states = present[0] if len(present) == 1 else torch.cat(present, dim=1)
            return self.crossattention(hidden_states, None, key_value_states, cache)
        states_by_module = {"crossattention_video": video_states, "crossattention_audio": audio_states}
        weights = {}
        if (
            self.cross_attention_layout == "parallel"
            and video_states is not None
            and audio_states is not None
        ):
            video_out, weights["video"] = self.crossattention_video(hidden_states, None, video_states, cache)
            audio_out, weights["audio"] = self.crossattention_audio(hidden_states, None, audio_states, cache)
            hidden_states = video_out + audio_out
        else:
            for name in self.cross_attention_order:
                if states_by_module[name] is not None:
                    module = getattr(self, name)
                    hidden_states, weights[name.rpartition("_")[2]] = module(
                        hidden_states, None, states_by_module[name], cache
                    )
        blocks = [weights[m] for m in ("video", "audio") if m in weights]
        if any(block is None for block in blocks):
            return hidden_states, None
        return hidden_states, torch.cat(blocks, dim=-1)  # (B, heads, Q, Nv + Na)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        video_states: torch.Tensor | None = None,
        audio_states: torch.Tensor | None = None,
        cache: EncoderDecoderCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Self-attention, cross-attention over the modality tokens that are given, then the MLP. Returns the
        output and the self- and cross-attention weights (`None` when not computed)."""
        attention_output, attn_weights = self.attention(hidden_states, attention_mask, None, cache)
        cross_weights = None
        if self.cross_attention_order and (video_states is not None or audio_states is not None):
            attention_output, cross_weights = self._cross_attend(
                attention_output, video_states, audio_states, cache
            )
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return layer_output, attn_weights, cross_weights


class ValorTextPreTrainedModel(PreTrainedModel):
    """Base class holding the weight initialisation and attention capabilities of the VALOR text tower."""

    config: ValorTextConfig
    base_model_prefix = "bert"
    input_modalities = ("text",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ValorTextLayer"]
    _supports_sdpa = True
    _supports_attention_backend = False
    # BERT checkpoints carry a pooler VALOR never uses.
    _keys_to_ignore_on_load_unexpected = [r"pooler\.", r"cls\.seq_relationship", r"position_ids"]

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, ValorTextEmbeddings):
            init.normal_(module.prompt_embedding.weight, mean=0.0, std=std)
        elif isinstance(module, ValorTextPredictionHead):
            init.zeros_(module.bias)


def _check_text_inputs(input_ids, inputs_embeds, prompt_ids) -> None:
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
    if prompt_ids is not None and prompt_ids.dim() != 2:
        raise ValueError(
            f"`prompt_ids` must have shape (batch, prompt_length), got {tuple(prompt_ids.shape)}."
        )


class ValorTextModel(ValorTextPreTrainedModel):
    """
    The shared VALOR text transformer: bidirectional text encoder (`is_decoder=False`) or causal multimodal
    decoder with cross-attention over video/audio tokens (`is_decoder=True`), with one set of weights.

    Example:

    ```python
    >>> import torch
    >>> from transformers_valor import ValorTextConfig, ValorTextModel
    >>> model = ValorTextModel(ValorTextConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    ...                                        intermediate_size=37, vocab_size=99))
    >>> ids = torch.tensor([[1, 5, 6, 2]])
    >>> encoded = model(ids).last_hidden_state  # bidirectional
    >>> decoded = model(ids, video_states=torch.randn(1, 8, 32), is_decoder=True).last_hidden_state
    ```
    """

    def __init__(self, config: ValorTextConfig):
        super().__init__(config)
        self.embeddings = ValorTextEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            [ValorTextLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        """The word embeddings."""
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding):
        """Replace the word embeddings."""
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        prompt_ids: torch.LongTensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        video_states: torch.FloatTensor | None = None,
        audio_states: torch.FloatTensor | None = None,
        is_decoder: bool = False,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> ValorTextModelOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, text_length)`): text token ids. With a cache,
                only the tokens not yet cached.
            attention_mask (`torch.Tensor` of shape `(batch_size, text_length)`): 1 for real tokens, 0 for
                padding. With a cache it covers the cached text tokens too (`(batch_size, past + new)`).
            token_type_ids (`torch.LongTensor`, *optional*): BERT token types of the text, default 0.
            inputs_embeds (`torch.FloatTensor`, *optional*): word embeddings instead of `input_ids`.
            prompt_ids (`torch.LongTensor` of shape `(batch_size, prompt_length)`, *optional*): task prompt or
                question, appended to the text with its own positions and the prompt token type (see the module
                docstring for who sees whom). Pass it on the first call only when a cache is used.
            prompt_attention_mask (`torch.Tensor` of shape `(batch_size, prompt_length)`, *optional*): its
                padding mask, by default `prompt_ids != pad_token_id` (the reference's rule). Pass it on every
                call when a prompt was used, also after it was cached.
            video_states / audio_states (`torch.FloatTensor` of shape `(batch_size, tokens, hidden_size)`,
                *optional*): modality tokens the decoder cross-attends to (VALOR's decoder inputs).
            is_decoder (`bool`, defaults to `False`): causal self-attention among text tokens and caching.
            cache (`EncoderDecoderCache`, *optional*): key/value cache (decoder mode).
            use_cache (`bool`, *optional*): return a cache (decoder mode only).
        """
        output_attentions = (
            output_attentions if output_attentions is not None else self.config.output_attentions
        )
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        _check_text_inputs(input_ids, inputs_embeds, prompt_ids)
        if output_attentions:
            check_attention_weights_available({"text": self.config})
        cache = self._prepare_cache(cache, use_cache, is_decoder)
        reference = input_ids if input_ids is not None else inputs_embeds
        text_length = reference.shape[1]
        if prompt_ids is not None and prompt_attention_mask is None:
            prompt_attention_mask = (prompt_ids != self.config.pad_token_id).long()
        key_padding, num_prompt, past_text = self._key_padding(
            reference, attention_mask, prompt_ids, prompt_attention_mask, cache
        )

        position_ids = torch.arange(past_text, past_text + text_length, device=reference.device)[None]
        hidden_states = self.embeddings(input_ids, position_ids, token_type_ids, inputs_embeds)
        if prompt_ids is not None:
            prompt_states = self.embeddings(prompt_ids, is_prompt=True)
            hidden_states = torch.cat([prompt_states, hidden_states], dim=1)  # (B, P + L, H)
        num_queries = hidden_states.shape[1]
        mask = build_self_attention_mask(
            key_padding, num_prompt, key_padding.shape[1] - num_queries, is_decoder
        )
        mask = _mask_for_implementation(mask, self.config._attn_implementation, hidden_states.dtype)

        all_hidden = (hidden_states[:, -text_length:],) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        cross_attends = is_decoder and (video_states is not None or audio_states is not None)
        all_cross = () if output_attentions and cross_attends and self.config.add_cross_attention else None
        for layer in self.encoder.layer:
            hidden_states, attn_weights, cross_weights = layer(
                hidden_states, mask, video_states, audio_states, cache
            )
            if output_hidden_states:
                all_hidden += (hidden_states[:, -text_length:],)
            if output_attentions:
                all_attentions += (attn_weights,)
            if all_cross is not None:
                all_cross += (cross_weights,)

        output = ValorTextModelOutput(
            last_hidden_state=hidden_states[:, -text_length:],
            cache=cache,
            hidden_states=all_hidden,
            attentions=all_attentions,
            cross_attentions=all_cross,
        )
        return output if return_dict else output.to_tuple()

    def _prepare_cache(self, cache: Cache | None, use_cache: bool | None, is_decoder: bool):
        """The `EncoderDecoderCache` to fill (decoder mode with caching on), or `None`."""
        use_cache = bool(use_cache if use_cache is not None else self.config.use_cache) and is_decoder
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            use_cache = False
        if not use_cache:
            return None
        if cache is None:
            return EncoderDecoderCache(DynamicCache(), DynamicCache())
        if isinstance(cache, DynamicCache):
            return EncoderDecoderCache(cache, DynamicCache())
        return cache

    @staticmethod
    def _key_padding(reference, attention_mask, prompt_ids, prompt_attention_mask, cache):
        """
        The key padding mask `[prompt ; cached text ; new text]`, the prompt length and the cached text length.

        The prompt is part of the keys whenever a prompt mask is given; it is embedded only when its ids are.
        """
        batch_size, text_length = reference.shape[:2]
        past_length = cache.get_seq_length() if cache is not None else 0
        num_prompt = prompt_attention_mask.shape[1] if prompt_attention_mask is not None else 0
        if prompt_ids is not None and past_length > 0:
            raise ValueError(
                "`prompt_ids` were given with a non-empty cache; the cache already holds the prompt."
            )
        if prompt_attention_mask is not None and prompt_ids is None and past_length == 0:
            raise ValueError("`prompt_attention_mask` was given without `prompt_ids` and without a cache.")
        past_text = past_length - num_prompt if past_length > 0 else 0

        text_mask = attention_mask
        if text_mask is None:
            text_mask = torch.ones(
                batch_size, past_text + text_length, dtype=torch.long, device=reference.device
            )
        elif text_mask.shape[1] == text_length and past_text > 0:
            text_mask = torch.cat([text_mask.new_ones(batch_size, past_text), text_mask], dim=1)
        if text_mask.shape[1] != past_text + text_length:
            raise ValueError(
                f"`attention_mask` covers {text_mask.shape[1]} tokens, but there are {past_text} cached and "
                f"{text_length} new text tokens."
            )
        if num_prompt:
            text_mask = torch.cat([prompt_attention_mask.to(text_mask), text_mask], 1)
        return text_mask, num_prompt, past_text


class ValorTextPredictionHeadTransform(nn.Module):
    """Dense, activation and LayerNorm before the vocabulary projection (BERT's `predictions.transform`)."""

    def __init__(self, config: ValorTextConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Transform hidden states before the vocabulary projection."""
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class ValorTextPredictionHead(nn.Module):
    """BERT's MLM head (`cls.predictions`): transform, then a decoder tied to the word embeddings plus a bias."""

    def __init__(self, config: ValorTextConfig):
        super().__init__()
        self.transform = ValorTextPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits."""
        return self.decoder(self.transform(hidden_states)) + self.bias


class ValorTextOnlyMLMHead(nn.Module):
    """Holds the prediction head under BERT's `cls.predictions` name."""

    def __init__(self, config: ValorTextConfig):
        super().__init__()
        self.predictions = ValorTextPredictionHead(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits."""
        return self.predictions(hidden_states)
