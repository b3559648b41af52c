"""Self-critical sequence training (SCST) for captioning: settings, sampling, rewards and exact log-probabilities.

VALOR fine-tunes captioning with SCST after cross-entropy: for each video, `num_samples` captions are sampled and
one greedy caption is decoded from the same precomputed decoder states ([`sample_with_greedy_baseline`]); the
reward of a sample is its CIDEr-D minus the greedy caption's ([`scst_rewards`], with a
[`~transformers_valor.metrics.CiderD`] whose document frequencies come from the training references), and the loss
is `-mean(reward * log p(sample))`, with exact log-probabilities for both caption objectives
([`sequence_log_probs`]). The objective module that combines them is `objectives.SCSTObjective`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..metrics import CiderD
from ..modeling_valor import ValorForConditionalGeneration


@dataclass
class SCSTArguments:
    """
    Self-critical sequence training (the YAML's `scst:` section; `task: captioning` only).

    Args:
        enabled (`bool`, defaults to `False`): replace the cross-entropy objective by SCST. Start from a model
            fine-tuned with cross-entropy (`model.pretrained_model_name_or_path`), as VALOR does.
        num_samples (`int`, defaults to 5): captions sampled per video.
        max_new_tokens (`int`, defaults to 30): length limit of sampled and greedy captions (VALOR's 30).
        temperature (`float`, defaults to 1.0): sampling temperature (1.0 samples from the model's distribution,
            which is what the REINFORCE gradient assumes).
        log_prob_chunk_size (`int`, *optional*): rows of the `unimlm` log-probability expansion run at once (one
            row per scored token); all at once when unset.
        cider_sigma (`float`, defaults to 6.0): CIDEr-D's length-penalty width.
    """

    enabled: bool = False
    num_samples: int = 5
    max_new_tokens: int = 30
    temperature: float = 1.0
    log_prob_chunk_size: int | None = None
    cider_sigma: float = 6.0

    def __post_init__(self):
        if self.num_samples < 1 or self.max_new_tokens < 1:
            raise ValueError("`scst.num_samples` and `scst.max_new_tokens` must be >= 1.")
        if self.temperature <= 0:
            raise ValueError(f"`scst.temperature` must be > 0, got {self.temperature}.")

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dataclasses.asdict(self)


def scored_token_mask(sequences: torch.LongTensor, eos_token_id: int) -> torch.BoolTensor:
    """
    Which tokens of generated sequences `[CLS] w1 .. wn [SEP] [PAD] ..` carry a log-probability: every token after
    [CLS] up to and including the first [SEP] (the model chose to stop there); nothing after it.

    Args:
        sequences (`torch.LongTensor` of shape `(batch, length)`): generated ids, starting with [CLS].

    Returns:
        `torch.BoolTensor` of shape `(batch, length - 1)`, aligned with `sequences[:, 1:]`.
    """
    targets = sequences[:, 1:]  # (N, L-1)
    is_eos = (targets == eos_token_id).long()
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos  # (N, L-1) [SEP]s strictly before each target
    return eos_before == 0


def sequence_log_probs(
    model: ValorForConditionalGeneration,
    sequences: torch.LongTensor,
    video_states: torch.Tensor | None = None,
    audio_states: torch.Tensor | None = None,
    prompt_ids: torch.LongTensor | None = None,
    prompt_attention_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.BoolTensor]:
    """
    Exact log-probabilities of the tokens of generated sequences under the decoder, with gradients.

    - `caption_objective="lm"`: one teacher-forced causal pass; position `k - 1` predicts token `k`.
    - `caption_objective="unimlm"`: token `k` is predicted by a [MASK] at position `k` that sees
      `[CLS] w1 .. w(k-1)` (how `generate` decodes). One causal pass cannot hold a [MASK] at every position, so the
      sequences are expanded: for every scored token `(n, k)`, one row equal to sequence `n` with position `k`
      replaced by [MASK]. Attention is causal, so the row's output at `k` depends on `[CLS] w1 .. w(k-1) [MASK]`
      only and the tokens after `k` in the row are never seen: the result equals `n` separate decoding steps.
      The cost is one decoder row per scored token (bounded in memory by `chunk_size`).

    Args:
        model ([`ValorForConditionalGeneration`]): the decoder (its mode, train or eval, is kept).
        sequences (`torch.LongTensor` of shape `(batch, length)`): `[CLS] w1 .. [SEP] [PAD] ..` as `generate`
            returns them.
        video_states / audio_states (`torch.FloatTensor`, *optional*): the decoder's cross-attention inputs for
            each sequence (`encode_modalities`, repeated per sample).
        prompt_ids / prompt_attention_mask (*optional*): the task prompt or question of each sequence.
        chunk_size (`int`, *optional*): `unimlm` rows per decoder call.

    Returns:
        `(token_log_probs, mask)`, both `(batch, length - 1)` and aligned with `sequences[:, 1:]`; log-probabilities
        are 0 where `mask` (see [`scored_token_mask`]) is False.
    """
    text_config = model.config.text_config
    targets = sequences[:, 1:]  # (N, L-1)
    mask = scored_token_mask(sequences, text_config.eos_token_id)
    token_log_probs = torch.zeros(targets.shape, dtype=torch.float32, device=sequences.device)

    def decode(ids, rows):
        # All-ones attention: causality alone hides every position after the one read.
        return model.valor.text_model(
            ids,
            attention_mask=torch.ones_like(ids),
            prompt_ids=prompt_ids[rows] if prompt_ids is not None else None,
            prompt_attention_mask=prompt_attention_mask[rows] if prompt_attention_mask is not None else None,
            video_states=video_states[rows] if video_states is not None else None,
            audio_states=audio_states[rows] if audio_states is not None else None,
            is_decoder=True,
            use_cache=False,
            return_dict=True,
        ).last_hidden_state

    if model.config.caption_objective == "lm":
        rows = torch.arange(sequences.shape[0], device=sequences.device)
        logits = model.cls(decode(sequences, rows)[:, :-1])  # (N, L-1, V)
        picked = F.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
        return torch.where(mask, picked, token_log_probs), mask

    seq_index, position = mask.nonzero(as_tuple=True)  # (R,), (R,) one row per scored token
    position = position + 1  # index into `sequences`
    total = seq_index.shape[0]
    chunk = chunk_size or max(total, 1)
    values = []
    for start in range(0, total, chunk):
        rows = seq_index[start : start + chunk]
        pos = position[start : start + chunk]
        expanded = sequences[rows].clone()  # (r, L)
        expanded[torch.arange(rows.shape[0], device=rows.device), pos] = text_config.mask_token_id
        hidden = decode(expanded, rows)  # (r, L, H)
        at_mask = hidden[torch.arange(rows.shape[0], device=rows.device), pos]  # (r, H)
        log_probs = F.log_softmax(model.cls(at_mask).float(), dim=-1)  # (r, V)
        values.append(log_probs.gather(-1, sequences[rows, pos][:, None]).squeeze(-1))
    if values:
        token_log_probs = token_log_probs.index_put((seq_index, position - 1), torch.cat(values))
    return token_log_probs, mask


@torch.no_grad()
def sample_with_greedy_baseline(
    model: ValorForConditionalGeneration, args: SCSTArguments, **decoder_inputs: torch.Tensor | None
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """
    One greedy caption and `args.num_samples` sampled captions per video, decoded in eval mode (no dropout) from
    the same precomputed `video_states` / `audio_states` (and `prompt_ids` / `prompt_attention_mask`); the model's
    mode is restored afterwards.

    Returns:
        `(greedy (videos, L), sampled (videos * num_samples, L'))`, samples grouped by video.
    """
    was_training = model.training
    model.eval()
    common = {"max_new_tokens": args.max_new_tokens, "num_beams": 1}
    greedy = model.generate(**decoder_inputs, do_sample=False, **common)
    sampled = model.generate(
        **decoder_inputs,
        do_sample=True,
        num_return_sequences=args.num_samples,
        temperature=args.temperature,
        top_k=0,
        top_p=1.0,
        **common,
    )
    model.train(was_training)
    return greedy, sampled


def scst_rewards(
    scorer: CiderD,
    sampled: Sequence[str],
    greedy: Sequence[str],
    references: Sequence[Sequence[str]],
    num_samples: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """
    Self-critical rewards: CIDEr-D of every sampled caption minus that of its video's greedy caption.

    Args:
        scorer ([`CiderD`]): built once from the training references.
        sampled (`list[str]`): `num_samples` captions per video, grouped by video.
        greedy (`list[str]`): one greedy caption per video.
        references (`list[list[str]]`): the reference captions of every video.

    Returns:
        `(rewards (len(sampled),) float32, {"sample_cider": mean, "greedy_cider": mean})`.
    """
    repeated = [refs for refs in references for _ in range(num_samples)]
    sample_scores = scorer.score(list(sampled), repeated)
    greedy_scores = scorer.score(list(greedy), [list(r) for r in references])
    baseline = greedy_scores[:, None].repeat(num_samples, axis=1).reshape(-1)  # (videos * num_samples,)
    rewards = torch.as_tensor(sample_scores - baseline, dtype=torch.float32)
    return rewards, {"sample_cider": float(sample_scores.mean()), "greedy_cider": float(greedy_scores.mean())}
