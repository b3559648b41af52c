"""PyTorch Video Swin Transformer: the 3D shifted-window video encoder of VALOR-B.

The layout follows the published Video Swin checkpoints (`patch_embed`, `layers.S.blocks.K`, `layers.S.downsample`,
`norm`), so their state dicts load 1:1 once the `relative_position_index` buffers are dropped (they are rebuilt
here). Input frames are `pixel_values_videos` of shape (batch, frames, channels, height, width); the output keeps
one temporal slot per input frame (with the default temporal stride of 1).
"""

from dataclasses import dataclass
from math import prod

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_valor import ValorVideoSwinConfig
from .modeling_attention import check_attention_weights_available, eager_attention_forward

__all__ = ["ValorVideoSwinModel", "ValorVideoSwinModelOutput", "ValorVideoSwinPreTrainedModel"]

# Additive score for key tokens outside the query's region in a shifted window. Video Swin adds -100: those keys get
# weights of about e^-100 of the others, denormal floats that vanish in the rounding of every sum they enter, so
# the outputs and gradients are those of exact zeros (test_modeling_video_swin.py compares the two). Denormal
# operands make a CPU's products slow (on Intel, the probabilities' batched products run 20-50x slower), so the
# mask is -1e4, whose weights underflow to exact zeros in float32, bfloat16 and float16 alike.
REFERENCE_SHIFTED_WINDOW_MASK_VALUE = -100.0
SHIFTED_WINDOW_MASK_VALUE = -1e4

Size3D = tuple[int, int, int]


@dataclass
class ValorVideoSwinModelOutput(ModelOutput):
    r"""
    Output of [`ValorVideoSwinModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, temporal_slots, tokens_per_slot, hidden_size)`):
            Tokens of the last stage after the final LayerNorm, `tokens_per_slot = height' * width'` in row-major
            order (49 for 224-px frames). `temporal_slots` equals the number of input frames with the default
            temporal stride of 1.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, temporal_slots, hidden_size)`):
            Mean of `last_hidden_state` over the spatial tokens of each slot: VALOR's per-frame video feature.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
            The input of every stage (the patch embeddings, then the output of each patch merging) followed by the
            output of the last stage before the final LayerNorm. Entry `i` has shape
            `(batch_size, temporal_slots, tokens_i, width_i)` with the token grid and width of that stage.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
            The window attention weights of every block, in order, each `(batch_size, num_windows, heads,
            window_tokens, window_tokens)` over that block's (zero-padded, for shifted blocks rolled) window
            partition, as transformers' Swin returns per-window weights. Eager attention only.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def get_window_and_shift(
    input_size: Size3D, window_size: Size3D, shift_size: Size3D
) -> tuple[Size3D, Size3D]:
    """
    Clamp a 3D window and shift to an input volume, as Video Swin does.

    Along every axis where the input is not larger than the window, the window shrinks to the input size and the
    shift becomes 0 (one window covers that axis, so there is nothing to shift).

    Args:
        input_size: (depth, height, width) of the token volume.
        window_size: configured (depth, height, width) window.
        shift_size: configured shift for this block (all zeros for non-shifted blocks).

    Returns:
        The effective `(window, shift)` pair.
    """
    window = tuple(size if size <= win else win for size, win in zip(input_size, window_size))
    shift = tuple(0 if size <= win else sh for size, win, sh in zip(input_size, window_size, shift_size))
    return window, shift


def window_partition(hidden_states: torch.Tensor, window: Size3D) -> torch.Tensor:
    """
    Cut a token volume into non-overlapping 3D windows.

    Args:
        hidden_states: `(batch, depth, height, width, channels)`, each spatial size a multiple of `window`.
        window: (depth, height, width) of one window.

    Returns:
        `(batch, num_windows, window_tokens, channels)`; windows are ordered depth-major, then height, then width,
        and the tokens inside a window in the same order.
    """
    batch, depth, height, width, channels = hidden_states.shape
    wd, wh, ww = window
    hidden_states = hidden_states.view(
        batch, depth // wd, wd, height // wh, wh, width // ww, ww, channels
    )  # (B, nD, wd, nH, wh, nW, ww, C)
    hidden_states = hidden_states.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, nD, nH, nW, wd, wh, ww, C)
    return hidden_states.reshape(batch, -1, wd * wh * ww, channels)  # (B, num_windows, N, C)


def window_merge(windows: torch.Tensor, window: Size3D, volume: Size3D) -> torch.Tensor:
    """
    Inverse of [`window_partition`].

    Args:
        windows: `(batch, num_windows, window_tokens, channels)`.
        window: (depth, height, width) of one window.
        volume: (depth, height, width) of the token volume the windows tile.

    Returns:
        `(batch, depth, height, width, channels)`.
    """
    batch, _, _, channels = windows.shape
    depth, height, width = volume
    wd, wh, ww = window
    windows = windows.view(
        batch, depth // wd, height // wh, width // ww, wd, wh, ww, channels
    )  # (B, nD, nH, nW, wd, wh, ww, C)
    windows = windows.permute(0, 1, 4, 2, 5, 3, 6, 7)  # (B, nD, wd, nH, wh, nW, ww, C)
    return windows.reshape(batch, depth, height, width, channels)  # (B, D, H, W, C)


def relative_position_index(
    window: Size3D, table_window: Size3D | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """
    Index into a relative position bias table for every (query, key) pair of tokens in one window.

    The table has `(2*Td - 1) * (2*Th - 1) * (2*Tw - 1)` rows for a table window `(Td, Th, Tw)`, laid out
    depth-major; the row of a pair is given by the offset `query - key` along each axis.

    Args:
        window: (depth, height, width) of the window whose tokens are indexed.
        table_window: the window the table was built for; defaults to `window`. A smaller `window` (clamped to a
            small input) reads the matching sub-block of the larger table.
        device: where to build the index.

    Returns:
        `torch.LongTensor` of shape `(window_tokens, window_tokens)`.
    """
    table_window = window if table_window is None else table_window
    axes = [torch.arange(size, device=device) for size in window]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")).flatten(1)  # (3, N)
    offsets = coords[:, :, None] - coords[:, None, :]  # (3, N, N): query minus key along each axis
    _, th, tw = table_window
    return (
        (offsets[0] + table_window[0] - 1) * (2 * th - 1) * (2 * tw - 1)
        + (offsets[1] + th - 1) * (2 * tw - 1)
        + (offsets[2] + tw - 1)
    )


def shifted_window_mask(
    padded_size: Size3D,
    window: Size3D,
    shift: Size3D,
    device: torch.device | None = None,
    mask_value: float | None = None,
) -> torch.Tensor:
    """
    Additive attention mask of the shifted windows of one stage.

    After the volume is rolled by `-shift`, the last window along a shifted axis holds tokens from both ends of
    the volume. Every position is labelled by its region along each axis (before the last window, inside it but
    not wrapped around, wrapped around); tokens attend only to tokens with the same label.

    Args:
        padded_size: (depth, height, width) of the padded token volume, multiples of `window`.
        window: effective window.
        shift: effective shift.
        device: where to build the mask.
        mask_value: the score added outside the query's region; default `SHIFTED_WINDOW_MASK_VALUE` (-1e4),
            read when called (`REFERENCE_SHIFTED_WINDOW_MASK_VALUE` is the reference's -100).

    Returns:
        `torch.FloatTensor` of shape `(num_windows, window_tokens, window_tokens)` holding 0 (attend) or
        `mask_value`.
    """
    labels = []
    for size, win, sh in zip(padded_size, window, shift):
        position = torch.arange(size, device=device)
        if sh > 0:
            labels.append((position >= size - win).long() + (position >= size - sh).long())  # 0, 1 or 2
        else:
            labels.append(torch.zeros_like(position))
    region = (
        labels[0][:, None, None] * 9 + labels[1][None, :, None] * 3 + labels[2][None, None, :]
    )  # (Dp, Hp, Wp)
    region = window_partition(region[None, ..., None], window)[0, ..., 0]  # (num_windows, N)
    different = region[:, :, None] != region[:, None, :]  # (num_windows, N, N)
    return different.float() * (SHIFTED_WINDOW_MASK_VALUE if mask_value is None else mask_value)


class ValorVideoSwinDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability `drop_prob` in training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Scale kept samples by `1 / keep_prob` and zero the others (identity in eval mode)."""
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)  # one draw per sample
        keep = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device).bernoulli_(
            keep_prob
        )
        return hidden_states * keep / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class ValorVideoSwinPatchEmbeddings(nn.Module):
    """
    3D patch embedding: `Conv3d` with kernel `patch_size` and stride `(temporal_stride, patch_h, patch_w)`.

    One zero frame is appended at the end of the clip and the frames are zero-padded to a multiple of the patch
    size, so with a temporal stride of 1 and a temporal kernel of 2, `T` frames give `T` temporal slots.
    """

    def __init__(self, config: ValorVideoSwinConfig):
        super().__init__()
        self.patch_size = tuple(config.patch_size)
        stride = (config.temporal_stride, self.patch_size[1], self.patch_size[2])
        self.proj = nn.Conv3d(
            config.num_channels, config.embed_dim, kernel_size=self.patch_size, stride=stride
        )
        self.norm = (
            nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps) if config.patch_norm else nn.Identity()
        )

    def forward(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """Map `(B, T, C, H, W)` frames to a `(B, T', H', W', embed_dim)` token volume."""
        pixels = pixel_values_videos.transpose(1, 2)  # (B, C, T, H, W)
        height, width = pixels.shape[-2:]
        pad_h = -height % self.patch_size[1]
        pad_w = -width % self.patch_size[2]
        pixels = F.pad(pixels, (0, pad_w, 0, pad_h, 0, 1))  # (B, C, T + 1, H + pad_h, W + pad_w)
        embeddings = self.proj(pixels)  # (B, embed_dim, T', H', W')
        embeddings = embeddings.permute(0, 2, 3, 4, 1)  # (B, T', H', W', embed_dim)
        return self.norm(embeddings)


class ValorVideoSwinWindowAttention(nn.Module):
    """
    Multi-head self-attention inside 3D windows with a learned relative position bias.

    All windows of all samples are processed in one batched call. The bias (plus the shifted-window mask when
    given) is added to the scores as a float mask; the kernel comes from `config._attn_implementation`
    (`"eager"` or `"sdpa"`) through the `transformers` attention interface.
    """

    def __init__(self, config: ValorVideoSwinConfig, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Stage width {dim} is not divisible by its number of heads {num_heads}.")
        self.config = config
        self.window_size: Size3D = tuple(config.window_size)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False

        table_rows = prod(2 * size - 1 for size in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows, num_heads))
        self.register_buffer(
            "relative_position_index", relative_position_index(self.window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(config.hidden_dropout_prob)

    def relative_position_bias(self, window: Size3D) -> torch.Tensor:
        """Bias of shape `(num_heads, N, N)` for an effective `window` (possibly smaller than the configured one)."""
        if window == self.window_size:
            index = self.relative_position_index
        else:
            index = relative_position_index(
                window, self.window_size, device=self.relative_position_bias_table.device
            )
        tokens = prod(window)
        bias = self.relative_position_bias_table[index.reshape(-1)]  # (N * N, heads)
        # Contiguous so that SDPA's memory-efficient kernel accepts it as a mask (it needs a unit last stride).
        return bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1).contiguous()  # (heads, N, N)

    def forward(
        self, windows: torch.Tensor, window: Size3D, shift_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            windows: `(batch, num_windows, window_tokens, dim)` tokens, already partitioned.
            window: the effective window the tokens were partitioned with.
            shift_mask: `(num_windows, window_tokens, window_tokens)` additive mask of shifted windows, or `None`.

        Returns:
            `(batch, num_windows, window_tokens, dim)` and the attention weights `(batch, num_windows, heads,
            window_tokens, window_tokens)` (`None` when the kernel computes none).
        """
        batch, num_windows, tokens, dim = windows.shape
        qkv = self.qkv(windows).view(
            batch, num_windows, tokens, 3, self.num_heads, self.head_dim
        )  # (B, nW, N, 3, heads, hd)
        query, key, value = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # 3 x (B, nW, heads, N, hd)

        bias = self.relative_position_bias(window)  # (heads, N, N)
        if shift_mask is not None:
            # Fold the windows into the head axis so that one mask serves every sample without a batch copy.
            bias = (bias[None] + shift_mask[:, None]).flatten(0, 1)  # (nW * heads, N, N)
            windows_per_row, rows = num_windows, 1
        else:
            windows_per_row, rows = 1, num_windows
        groups = windows_per_row * self.num_heads
        bias = bias[None].to(query.dtype)  # (1, G, N, N)
        query = query.reshape(-1, groups, tokens, self.head_dim)  # (B * rows, G, N, hd)
        key = key.reshape(-1, groups, tokens, self.head_dim)  # (B * rows, G, N, hd)
        value = value.reshape(-1, groups, tokens, self.head_dim)  # (B * rows, G, N, hd)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        context, weights = attention_interface(
            self,
            query,
            key,
            value,
            bias,
            scaling=self.scale,
            dropout=self.attention_dropout if self.training else 0.0,
            scale_query=True,
        )  # (B * rows, N, G, hd)
        context = context.reshape(
            batch, rows, tokens, windows_per_row, self.num_heads, self.head_dim
        )  # (B, rows, N, windows_per_row, heads, hd)
        context = context.permute(0, 1, 3, 2, 4, 5).reshape(
            batch, num_windows, tokens, dim
        )  # (B, nW, N, dim)
        if weights is not None:
            # (B * rows, windows_per_row * heads, N, N) -> (B, nW, heads, N, N) in both foldings
            weights = weights.reshape(batch, num_windows, self.num_heads, tokens, tokens)
        return self.proj_drop(self.proj(context)), weights


class ValorVideoSwinMlp(nn.Module):
    """Feed-forward block: Linear, exact GELU, dropout, Linear, dropout."""

    def __init__(self, config: ValorVideoSwinConfig, dim: int):
        super().__init__()
        hidden = int(dim * config.mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Apply the MLP on the last dimension."""
        hidden_states = self.drop(self.act(self.fc1(hidden_states)))
        return self.drop(self.fc2(hidden_states))


class ValorVideoSwinBlock(GradientCheckpointingLayer):
    """
    One pre-norm Video Swin block: (shifted) window attention and an MLP, each in a residual branch.

    The volume is zero-padded to a multiple of the window after `norm1`; the padded tokens take part in the
    attention (as in the reference implementation) and are cropped afterwards.
    """

    def __init__(
        self, config: ValorVideoSwinConfig, dim: int, num_heads: int, shifted: bool, drop_path: float
    ):
        super().__init__()
        self.window_size: Size3D = tuple(config.window_size)
        self.shift_size: Size3D = tuple(size // 2 for size in self.window_size) if shifted else (0, 0, 0)
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = ValorVideoSwinWindowAttention(config, dim, num_heads)
        self.drop_path = ValorVideoSwinDropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = ValorVideoSwinMlp(config, dim)

    def forward(
        self, hidden_states: torch.Tensor, shift_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            hidden_states: `(batch, depth, height, width, dim)` token volume.
            shift_mask: the stage's shifted-window mask (see [`shifted_window_mask`]); used only when this block's
                effective shift is non-zero.

        Returns:
            `(batch, depth, height, width, dim)` and the window attention weights (see
            [`ValorVideoSwinWindowAttention`]).
        """
        _, depth, height, width, _ = hidden_states.shape
        window, shift = get_window_and_shift((depth, height, width), self.window_size, self.shift_size)
        is_shifted = any(shift)

        attn_input = self.norm1(hidden_states)
        pad_d, pad_h, pad_w = (-size % win for size, win in zip((depth, height, width), window))
        attn_input = F.pad(attn_input, (0, 0, 0, pad_w, 0, pad_h, 0, pad_d))  # (B, Dp, Hp, Wp, dim)
        padded = (depth + pad_d, height + pad_h, width + pad_w)
        if is_shifted:
            attn_input = torch.roll(attn_input, shifts=tuple(-s for s in shift), dims=(1, 2, 3))

        windows = window_partition(attn_input, window)  # (B, num_windows, N, dim)
        windows, weights = self.attn(windows, window, shift_mask if is_shifted else None)  # (B, nW, N, dim)
        attn_output = window_merge(windows, window, padded)  # (B, Dp, Hp, Wp, dim)

        if is_shifted:
            attn_output = torch.roll(attn_output, shifts=shift, dims=(1, 2, 3))
        attn_output = attn_output[:, :depth, :height, :width]  # (B, D, H, W, dim)

        hidden_states = hidden_states + self.drop_path(attn_output)
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states))), weights


class ValorVideoSwinPatchMerging(nn.Module):
    """Halve the spatial grid (2x2 neighbours concatenated), then LayerNorm(4C) and Linear(4C -> 2C, no bias)."""

    def __init__(self, config: ValorVideoSwinConfig, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Map `(B, D, H, W, C)` to `(B, D, ceil(H / 2), ceil(W / 2), 2C)`; odd sizes are zero-padded first."""
        height, width = hidden_states.shape[2:4]
        hidden_states = F.pad(hidden_states, (0, 0, 0, width % 2, 0, height % 2))  # (B, D, H even, W even, C)
        hidden_states = torch.cat(
            [
                hidden_states[:, :, 0::2, 0::2],
                hidden_states[:, :, 1::2, 0::2],
                hidden_states[:, :, 0::2, 1::2],
                hidden_states[:, :, 1::2, 1::2],
            ],
            dim=-1,
        )  # (B, D, H / 2, W / 2, 4C)
        return self.reduction(self.norm(hidden_states))  # (B, D, H / 2, W / 2, 2C)


class ValorVideoSwinStage(nn.Module):
    """A stage of Video Swin blocks (alternately plain and shifted windows), optionally followed by patch merging."""

    def __init__(
        self,
        config: ValorVideoSwinConfig,
        dim: int,
        depth: int,
        num_heads: int,
        drop_path: list[float],
        downsample: bool,
    ):
        super().__init__()
        self.window_size: Size3D = tuple(config.window_size)
        self.shift_size: Size3D = tuple(size // 2 for size in self.window_size)
        self.blocks = nn.ModuleList(
            [
                ValorVideoSwinBlock(
                    config, dim, num_heads, shifted=index % 2 == 1, drop_path=drop_path[index]
                )
                for index in range(depth)
            ]
        )
        self.downsample = ValorVideoSwinPatchMerging(config, dim) if downsample else None

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        """Map `(B, D, H, W, C)` to `(B, D, H', W', C')` (halved grid and doubled width when downsampling); also
        returns every block's attention weights."""
        size = tuple(hidden_states.shape[1:4])
        window, shift = get_window_and_shift(size, self.window_size, self.shift_size)
        shift_mask = None
        if any(shift) and len(self.blocks) > 1:
            padded = tuple(-(-s // w) * w for s, w in zip(size, window))
            # Built once per stage call and shared by its shifted blocks.
            shift_mask = shifted_window_mask(padded, window, shift, device=hidden_states.device)
        weights = ()
        for block in self.blocks:
            hidden_states, block_weights = block(hidden_states, shift_mask=shift_mask)
            weights += (block_weights,)
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        return hidden_states, weights


class ValorVideoSwinPreTrainedModel(PreTrainedModel):
    """Base class of the Video Swin models: configuration, weight initialisation and loading."""

    config: ValorVideoSwinConfig
    base_model_prefix = "video_swin"
    main_input_name = "pixel_values_videos"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ValorVideoSwinBlock"]
    _supports_sdpa = True
    _input_embed_layer = "patch_embed"
    # The published checkpoints store the index as a buffer; it is rebuilt from the window size here.
    _keys_to_ignore_on_load_unexpected = [r"relative_position_index"]

    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-normal Linear/Conv3d weights, unit LayerNorms and the rebuilt relative position index."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ValorVideoSwinWindowAttention):
            init.trunc_normal_(module.relative_position_bias_table, std=0.02)
            init.copy_(module.relative_position_index, relative_position_index(module.window_size))


class ValorVideoSwinModel(ValorVideoSwinPreTrainedModel):
    """
    Video Swin Transformer (3D shifted windows) returning one grid of tokens per temporal slot.

    Example:

    ```python
    >>> import torch
    >>> from transformers_valor import ValorVideoSwinConfig, ValorVideoSwinModel
    >>> model = ValorVideoSwinModel(ValorVideoSwinConfig(embed_dim=16, depths=[1, 1], num_heads=[2, 4]))
    >>> out = model(torch.randn(1, 4, 3, 32, 32))
    >>> out.last_hidden_state.shape, out.pooler_output.shape
    (torch.Size([1, 4, 16, 32]), torch.Size([1, 4, 32]))
    ```
    """

    def __init__(self, config: ValorVideoSwinConfig):
        super().__init__(config)
        self.patch_embed = ValorVideoSwinPatchEmbeddings(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Stochastic depth rising linearly over all blocks (plain Python so that meta-device construction works).
        num_blocks = sum(config.depths)
        drop_path = [config.drop_path_rate * index / max(num_blocks - 1, 1) for index in range(num_blocks)]
        num_stages = len(config.depths)
        self.layers = nn.ModuleList()
        for index, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
            start = sum(config.depths[:index])
            self.layers.append(
                ValorVideoSwinStage(
                    config,
                    dim=config.embed_dim * 2**index,
                    depth=depth,
                    num_heads=heads,
                    drop_path=drop_path[start : start + depth],
                    downsample=index < num_stages - 1,
                )
            )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def freeze_stages(self, num_stages: int) -> None:
        """
        Stop gradients into the lowest layers, with Video Swin's `frozen_stages` numbering: `-1` freezes
        nothing, `0` the patch embedding, `k > 0` the patch embedding and the first `k` stages (each with its
        patch merging). Like `transformers`' `freeze_feature_encoder`, only `requires_grad` changes: no backward
        runs below the first trainable layer, and dropout keeps the module's train/eval mode.
        """
        if not -1 <= num_stages <= len(self.layers):
            raise ValueError(
                f"`num_stages` must be between -1 and the number of stages ({len(self.layers)}), got {num_stages}."
            )
        frozen = [] if num_stages < 0 else [self.patch_embed, *self.layers[:num_stages]]
        for module in frozen:
            module.requires_grad_(False)

    def forward(
        self,
        pixel_values_videos: torch.Tensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ValorVideoSwinModelOutput | tuple[torch.Tensor, ...]:
        r"""
        Args:
            pixel_values_videos (`torch.FloatTensor` of shape `(batch_size, num_frames, num_channels, height, width)`):
                Normalised frames. Heights and widths that are not a multiple of the patch size are zero-padded.
            output_hidden_states (`bool`, *optional*): also return the input of every stage and the last stage's
                output (see [`ValorVideoSwinModelOutput`]). Defaults to `config.output_hidden_states`.
            output_attentions (`bool`, *optional*): also return every block's window attention weights (eager
                attention only). Defaults to `config.output_attentions`.
            return_dict (`bool`, *optional*): return a [`ValorVideoSwinModelOutput`] instead of a plain tuple.
                Defaults to `config.return_dict`.

        Returns:
            [`ValorVideoSwinModelOutput`] or a tuple `(last_hidden_state, pooler_output[, hidden_states][,
            attentions])`.
        """
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        if output_attentions:
            check_attention_weights_available({"video": self.config})
        if return_dict is None:
            return_dict = self.config.return_dict
        if pixel_values_videos is None or pixel_values_videos.ndim != 5:
            shape = None if pixel_values_videos is None else tuple(pixel_values_videos.shape)
            raise ValueError(
                "`pixel_values_videos` must have shape (batch_size, num_frames, num_channels, height, width), "
                f"got {shape}."
            )
        if pixel_values_videos.shape[2] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values_videos` has {pixel_values_videos.shape[2]} channels (dim 2), the model expects "
                f"{self.config.num_channels}."
            )

        pixel_values_videos = pixel_values_videos.to(self.patch_embed.proj.weight.dtype)
        hidden_states = self.dropout(self.patch_embed(pixel_values_videos))  # (B, T', H', W', C)

        all_hidden_states, all_attentions = [], ()
        for stage in self.layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states.flatten(2, 3))  # (B, T', H' * W', C)
            hidden_states, stage_attentions = stage(hidden_states)  # (B, T', H'', W'', C'')
            all_attentions += stage_attentions
        if output_hidden_states:
            all_hidden_states.append(hidden_states.flatten(2, 3))  # (B, T', H' * W', hidden_size)

        last_hidden_state = self.norm(hidden_states).flatten(2, 3)  # (B, T', H' * W', hidden_size)
        pooler_output = last_hidden_state.mean(dim=2)  # (B, T', hidden_size)

        output = ValorVideoSwinModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=pooler_output,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=all_attentions if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()
