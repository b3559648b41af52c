"""The `"eager"` attention function shared by VALOR's own towers (text, Video Swin)."""

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
