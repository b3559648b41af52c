"""The shared eager attention function: both scaling orders, the additive mask, and agreement with SDPA."""

import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from helpers import seeded_floats
from transformers_valor.modeling_attention import eager_attention_forward


class _Caller(nn.Module):
    is_causal = False


@pytest.mark.parametrize("scale_query", [False, True])
def test_matches_a_naive_softmax_and_sdpa(scale_query):
    query, key, value = (seeded_floats((2, 3, 5, 8), seed) for seed in range(3))
    mask = torch.zeros(2, 1, 5, 5)
    mask[1, :, :, -2:] = torch.finfo(torch.float32).min
    caller = _Caller().eval()
    context, weights = eager_attention_forward(
        caller, query, key, value, mask, 8**-0.5, scale_query=scale_query
    )
    naive = torch.softmax(query @ key.transpose(-1, -2) / 8**0.5 + mask, dim=-1)
    torch.testing.assert_close(weights, naive, rtol=0, atol=1e-6)
    torch.testing.assert_close(context, (naive @ value).transpose(1, 2), rtol=0, atol=1e-6)
    assert torch.all(weights[1, :, :, -2:] == 0)
    sdpa, _ = sdpa_attention_forward(caller, query, key, value, mask, scaling=8**-0.5)
    torch.testing.assert_close(context, sdpa, rtol=0, atol=1e-5)
