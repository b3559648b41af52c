"""Downstream fine-tuning objectives: retrieval (MGA), captioning (MGC, optionally SCST) and question answering.

`training.train` runs every task with the same loop (data mix, Accelerate, checkpoints, exact resume, NaN guard);
the YAML's `task:` picks the model class and the objective:

| task | model | objective per batch |
| --- | --- | --- |
| `pretrain` | `ValorForPreTraining` | `alpha * L_MGA + L_MGC` (unchanged, not wrapped) |
| `retrieval` | `ValorForRetrieval` | mean over the dataset's `contrastive_groups` of the MGA loss |
| `captioning` | `ValorForConditionalGeneration` | mean over `caption_groups` of the MGC loss; with `scst.enabled`, the SCST loss |
| `qa` | `ValorForConditionalGeneration` | MGC loss on the answer, the question fed as the decoder's prompt |

[`ValorFinetuningModule`] holds the task's model and computes the objective in ONE `forward`, so that DDP (which
wraps this module) sees one forward per backward even when several groups are trained. Groups are computed one
after the other through the model's own `forward`; each group runs the encoders it needs again (VALOR's
fine-tuning recipes train one group per dataset, e.g. `tva` for VALOR-32K and `tv` for MSR-VTT, where nothing
runs twice).

SCST (self-critical sequence training, as VALOR does after cross-entropy captioning fine-tuning): for each video,
`num_samples` captions are sampled and one greedy caption decoded from the same precomputed decoder states; the
reward of a sample is its CIDEr-D minus the greedy caption's ([`~transformers_valor.metrics.CiderD`] with document
frequencies from the training references) and the loss is `-mean(reward * log p(sample))`. The log-probabilities
are exact for both caption objectives ([`sequence_log_probs`]).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import CiderD
from .modeling_valor import (
    CAPTION_GROUP_MODALITIES,
    ValorForConditionalGeneration,
    ValorForPreTraining,
    ValorForRetrieval,
)

Task = Literal["pretrain", "retrieval", "captioning", "qa"]
TASKS: tuple[str, ...] = ("pretrain", "retrieval", "captioning", "qa")
# The model class each task trains and saves.
TASK_MODEL_CLASSES: dict[str, type] = {
    "pretrain": ValorForPreTraining,
    "retrieval": ValorForRetrieval,
    "captioning": ValorForConditionalGeneration,
    "qa": ValorForConditionalGeneration,
}


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


@dataclass
class FinetuningOutput:
    """
    What [`ValorFinetuningModule.forward`] returns.

    Args:
        loss (`torch.FloatTensor`): the objective to back-propagate.
        components (`dict[str, torch.Tensor]`): logged parts, e.g. `mga_tva`, `mgc_tv`, `scst_reward`,
            `scst_sample_cider`, `scst_greedy_cider`.
    """

    loss: torch.Tensor
    components: dict[str, torch.Tensor]


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


class ValorFinetuningModule(nn.Module):
    """
    A task's model plus its objective, as one module for Accelerate/DDP to wrap.

    Args:
        model: [`ValorForRetrieval`] (`task="retrieval"`) or [`ValorForConditionalGeneration`] (`captioning`,
            `qa`).
        task (`str`): `"retrieval"`, `"captioning"` or `"qa"`.
        scst ([`SCSTArguments`], *optional*): SCST settings (captioning); active when `scst.enabled`.
        scorer ([`CiderD`], *optional*): the SCST reward, required with SCST.
        tokenizer (*optional*): decodes sampled captions for the reward (required with SCST).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        scst: SCSTArguments | None = None,
        scorer: CiderD | None = None,
        tokenizer=None,
    ):
        super().__init__()
        if task not in ("retrieval", "captioning", "qa"):
            raise ValueError(f"ValorFinetuningModule trains retrieval, captioning or qa, not {task!r}.")
        expected = TASK_MODEL_CLASSES[task]
        if not isinstance(model, expected):
            raise TypeError(f"task {task!r} trains a {expected.__name__}, got {type(model).__name__}.")
        self.model = model
        self.task = task
        self.scst = scst if scst is not None and scst.enabled else None
        if self.scst is not None:
            if task != "captioning":
                raise ValueError("SCST applies to `task: captioning` only.")
            if scorer is None or tokenizer is None:
                raise ValueError("SCST needs a CiderD `scorer` and a `tokenizer`.")
        self.scorer = scorer
        self.tokenizer = tokenizer

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
        contrastive_groups: Sequence[str] | None = None,
        caption_groups: Sequence[str] | None = None,
        references: Sequence[Sequence[str]] | None = None,
    ) -> FinetuningOutput:
        """
        The task's loss on one collated batch (see `data.collator.ValorPretrainingCollator` for the inputs).

        Retrieval trains `contrastive_groups`; captioning and QA train `caption_groups` (QA with the question
        as `prompt_ids`); SCST uses the first caption group and needs `references`.
        """
        media = {
            "pixel_values_videos": pixel_values_videos,
            "input_features": input_features,
            "input_features_mask": input_features_mask,
        }
        if self.task == "retrieval":
            if not contrastive_groups:
                raise ValueError("Retrieval fine-tuning needs at least one contrastive group.")
            losses = {
                f"mga_{group}": self.model(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    **media,
                    group=group,
                    return_loss=True,
                    return_dict=True,
                ).loss
                for group in contrastive_groups
            }
            return FinetuningOutput(torch.stack(list(losses.values())).mean(), losses)
        if not caption_groups:
            raise ValueError(f"{self.task} fine-tuning needs at least one caption group.")
        if self.task == "qa" and prompt_ids is None:
            raise ValueError(
                "Question answering needs the questions as `prompt_ids` (set `question_column`)."
            )
        if self.scst is not None:
            return self._scst_step(media, caption_groups[0], references, prompt_ids, prompt_attention_mask)
        losses = {}
        for group in caption_groups:
            use = CAPTION_GROUP_MODALITIES[group]
            losses[f"mgc_{group}"] = self.model(
                input_ids=caption_input_ids if caption_input_ids is not None else input_ids,
                attention_mask=attention_mask,
                pixel_values_videos=pixel_values_videos if "video" in use else None,
                input_features=input_features if "audio" in use else None,
                prompt_ids=prompt_ids,
                prompt_attention_mask=prompt_attention_mask,
                labels=labels,
                return_dict=True,
            ).loss
        return FinetuningOutput(torch.stack(list(losses.values())).mean(), losses)

    def _scst_step(self, media, group, references, prompt_ids, prompt_attention_mask) -> FinetuningOutput:
        if references is None:
            raise ValueError("SCST needs the batch's `references`.")
        args = self.scst
        model = self.model
        use = CAPTION_GROUP_MODALITIES[group]
        # Encoded once, with gradients (the SCST gradient reaches the encoders through cross-attention).
        video_states, audio_states = model.encode_modalities(
            media["pixel_values_videos"] if "video" in use else None,
            media["input_features"] if "audio" in use else None,
        )
        detached = {
            "video_states": video_states.detach() if video_states is not None else None,
            "audio_states": audio_states.detach() if audio_states is not None else None,
            "prompt_ids": prompt_ids,
            "prompt_attention_mask": prompt_attention_mask,
        }
        was_training = model.training
        model.eval()  # sample and decode the baseline without dropout
        common = {"max_new_tokens": args.max_new_tokens, "num_beams": 1}
        greedy = model.generate(**detached, do_sample=False, **common)
        sampled = model.generate(
            **detached,
            do_sample=True,
            num_return_sequences=args.num_samples,
            temperature=args.temperature,
            top_k=0,
            top_p=1.0,
            **common,
        )
        model.train(was_training)
        decode = self.tokenizer.batch_decode
        rewards, stats = scst_rewards(
            self.scorer,
            decode(sampled, skip_special_tokens=True),
            decode(greedy, skip_special_tokens=True),
            references,
            args.num_samples,
        )
        k = args.num_samples

        def repeat(t):
            return t.repeat_interleave(k, dim=0) if t is not None else None

        token_log_probs, _ = sequence_log_probs(
            model,
            sampled,
            repeat(video_states),
            repeat(audio_states),
            repeat(prompt_ids),
            repeat(prompt_attention_mask),
            chunk_size=args.log_prob_chunk_size,
        )
        rewards = rewards.to(token_log_probs.device)
        loss = -(rewards * token_log_probs.sum(dim=1)).mean()
        components = {
            "scst_loss": loss.detach(),
            "scst_reward": rewards.mean(),
            "scst_sample_cider": torch.tensor(stats["sample_cider"]),
            "scst_greedy_cider": torch.tensor(stats["greedy_cider"]),
        }
        return FinetuningOutput(loss, components)
