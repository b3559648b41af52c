"""The `"eager"` attention function shared by VALOR's own towers (text, Video Swin), and the check that attention
weights can be returned."""

import torch
from torch import nn


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    scale_query: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Plain softmax attention with an additive float mask (the `"eager"` implementation; the others come from
    `transformers.modeling_utils.ALL_ATTENTION_FUNCTIONS`).

    Args:
        module: the calling attention module (for its training flag).
        query, key, value: `(batch, heads, tokens, head_dim)`.
        attention_mask: additive mask broadcastable to `(batch, heads, queries, keys)`, or `None`.
        scaling: factor applied to the scores.
        dropout: dropout probability on the attention weights.
        scale_query: scale the queries before the product (the reference Swin's order) instead of the scores
            after it (BERT's); the two differ only in rounding, and each tower keeps its reference's order.

    Returns:
        The context `(batch, queries, heads, head_dim)` and the weights `(batch, heads, queries, keys)`.
    """
    if scale_query:
        scores = torch.matmul(query * scaling, key.transpose(-1, -2))
    else:
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, heads, Lq, Lk)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    context = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, Lq, heads, d)
    return context, weights


def check_attention_weights_available(configs: dict) -> None:
    """
    A `ValueError` when attention weights are asked for (`output_attentions=True`) of a tower whose attention
    kernel computes none: only the eager implementation returns them (sdpa would give `None` in their place).

    Args:
        configs (`dict[str, PreTrainedConfig]`): the towers' configs by name (`"text"`, `"video"`, `"audio"`).
    """
    others = {
        name: c._attn_implementation for name, c in configs.items() if c._attn_implementation != "eager"
    }
    if others:
        towers = ", ".join(f"{name} ({impl})" for name, impl in others.items())
        raise ValueError(
            f"`output_attentions=True` needs the eager attention, which returns the weights; the {towers} tower(s) "
            "compute none. Load the model with `attn_implementation='eager'` or call "
            "`model.set_attn_implementation('eager')` first."
        )
