"""VALOR's objectives: Multimodal Grouping Alignment (MGA) scoring and loss, the caption (MGC) loss, and the
cross-process gather they use in distributed training.

The scoring functions are pure functions on tensors, so a corpus can be encoded once and scored many times
(`fine_grained_similarity` works on precomputed features). The two loss objects own every distributed concern:
[`MultimodalGroupingAlignmentLoss`] all-gathers the features (with gradients) when asked to, so the negatives of
a step are the global batch, and [`CaptionLoss`] can normalise by the global number of labelled tokens. Model
forwards never gather; the training objectives decide (open_clip's `ClipLoss` works the same way).
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

# Upper bound on the elements of one (rows x cols x t x v) similarity block; 2**26 float32 values = 256 MiB.
DEFAULT_MAX_BLOCK_ELEMENTS = 2**26


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    Softmax of `logits` over the last dimension restricted to `mask`; rows without any valid entry are all zero.

    Masked entries get exactly zero weight (as with `-inf`), but a fully masked row yields zeros instead of
    NaN, so a sample without audio neither poisons the scores nor the gradients.
    """
    mask = mask.bool()
    weights = torch.softmax(logits.float().masked_fill(~mask, torch.finfo(torch.float32).min), dim=-1)
    return (weights * mask.any(dim=-1, keepdim=True)).to(logits.dtype)


def _fine_block(feats_a, mask_a, weights_a, feats_b, mask_b, weights_b):
    # VALOR's formulation: s[i,j,x,y] = <A_ix, B_jy> * maskA[i,x] * maskB[j,y]; the max runs over the zeros
    # of masked positions too, exactly as the reference does.
    sim = torch.einsum("atd,bvd->abtv", feats_a, feats_b)  # (a, b, t, v)
    sim = sim * mask_a[:, None, :, None] * mask_b[None, :, None, :]
    a_to_b = torch.einsum("abt,at->ab", sim.amax(dim=3), weights_a)
    b_to_a = torch.einsum("abv,bv->ab", sim.amax(dim=2), weights_b)
    return (a_to_b + b_to_a) / 2


def fine_grained_similarity(
    feats_a: torch.Tensor,
    mask_a: torch.Tensor,
    weight_logits_a: torch.Tensor,
    feats_b: torch.Tensor,
    mask_b: torch.Tensor,
    weight_logits_b: torch.Tensor,
    max_block_elements: int | None = DEFAULT_MAX_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """
    VALOR's fine-grained MGA score between every sequence of A and every sequence of B.

    score(i, j) = 1/2 * (sum_x wA[i,x] max_y s[i,j,x,y] + sum_y wB[j,y] max_x s[i,j,x,y]), with
    s[i,j,x,y] = <A_ix, B_jy> on valid positions and 0 on masked ones, and w = masked softmax of the
    per-token weight logits.

    The computation runs over blocks of rows and columns so that no block holds more than
    `max_block_elements` similarity values: peak memory is bounded whatever the corpus size, and every entry is
    computed by the same arithmetic as the unchunked version.

    Args:
        feats_a (`torch.Tensor` of shape `(num_a, t, dim)`): L2-normalised token features of A.
        mask_a (`torch.Tensor` of shape `(num_a, t)`): 1 for valid positions.
        weight_logits_a (`torch.Tensor` of shape `(num_a, t)`): output of A's weight MLP.
        feats_b, mask_b, weight_logits_b: the same for B, with `v` positions.
        max_block_elements (`int`, *optional*): size bound of one block; `None` computes everything at once.

    Returns:
        `torch.Tensor` of shape `(num_a, num_b)`.
    """
    if feats_a.dim() != 3 or feats_b.dim() != 3:
        raise ValueError(
            f"features must have shape (batch, positions, dim), got {tuple(feats_a.shape)} and {tuple(feats_b.shape)}."
        )
    if feats_a.shape[-1] != feats_b.shape[-1]:
        raise ValueError(f"feature widths differ: {feats_a.shape[-1]} vs {feats_b.shape[-1]}.")
    for name, mask, feats in (("mask_a", mask_a, feats_a), ("mask_b", mask_b, feats_b)):
        if mask.shape != feats.shape[:2]:
            raise ValueError(f"`{name}` has shape {tuple(mask.shape)}, expected {tuple(feats.shape[:2])}.")
    mask_a = mask_a.to(feats_a.dtype)
    mask_b = mask_b.to(feats_b.dtype)
    weights_a = masked_softmax(weight_logits_a, mask_a)
    weights_b = masked_softmax(weight_logits_b, mask_b)
    num_a, t = feats_a.shape[:2]
    num_b, v = feats_b.shape[:2]
    if max_block_elements is None or num_a * num_b * t * v <= max_block_elements:
        return _fine_block(feats_a, mask_a, weights_a, feats_b, mask_b, weights_b)

    cols = max(1, min(num_b, max_block_elements // (t * v)))
    rows = max(1, min(num_a, max_block_elements // (cols * t * v)))
    out = feats_a.new_empty(num_a, num_b)
    for r in range(0, num_a, rows):
        for c in range(0, num_b, cols):
            out[r : r + rows, c : c + cols] = _fine_block(
                feats_a[r : r + rows],
                mask_a[r : r + rows],
                weights_a[r : r + rows],
                feats_b[c : c + cols],
                mask_b[c : c + cols],
                weights_b[c : c + cols],
            )
    return out


def coarse_similarity(pooled_a: torch.Tensor, pooled_b: torch.Tensor) -> torch.Tensor:
    """Coarse MGA score: dot product of pooled, L2-normalised features, `(num_a, dim) x (num_b, dim)`."""
    return pooled_a @ pooled_b.t()


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """
    Symmetric InfoNCE on a square logit matrix whose diagonal holds the positive pairs: the mean of the
    row-wise and the column-wise cross-entropy.
    """
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"contrastive logits must be a square matrix, got shape {tuple(logits.shape)}.")
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def is_distributed() -> bool:
    """Whether a torch.distributed process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """
    Concatenate `tensor` from every process along dim 0, keeping the autograd graph.

    The backward pass sends each process the summed gradient of its own slice; under DDP, which averages
    gradients, this gives the gradient of the loss on the global batch. Works on any backend (gloo included).
    Without an active multi-process group the tensor is returned unchanged.
    """
    if not is_distributed():
        return tensor
    from torch.distributed._functional_collectives import all_gather_single, wait_tensor

    # Wait at once: an async result that is never read (e.g. a gathered field the loss does not use) would be
    # freed while gloo still writes into it, corrupting the heap.
    return wait_tensor(all_gather_single(tensor.contiguous(), 0, dist.group.WORLD))


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a (non-differentiable) tensor over processes; identity without an active multi-process group."""
    if not is_distributed():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value


def temperature_to_logit_scale(temperature: float) -> float:
    """The `log_scale` parameter value equivalent to a temperature: log(1 / temperature)."""
    return math.log(1.0 / temperature)


def gather_features(features, contrastive_type: str):
    """
    All-gather, with gradients, the fields of a `ValorFeatures` that the MGA score of `contrastive_type` reads
    (the pooled vector for `coarse`; embeddings, mask and weight logits for `fine`). Other fields are dropped.
    """
    keys = ("pooled_embeds",) if contrastive_type == "coarse" else ("embeds", "mask", "weight_logits")
    gathered = {field.name: None for field in dataclasses.fields(features)}
    gathered.update({key: gather_with_grad(getattr(features, key)) for key in keys})
    return type(features)(**gathered)


class MultimodalGroupingAlignmentLoss:
    """
    VALOR's MGA loss: for each modality group, the symmetric InfoNCE of the group's score matrix (query side x
    candidate side, scaled by 1 / tau), with the paired samples on the diagonal.

    Args:
        gather_distributed (`bool`, defaults to `False`): under an active multi-process group, all-gather the
            features (with gradients) first, so that every process scores its samples against the global batch;
            DDP's gradient average then equals the gradient of the global-batch loss.

    Calling it with `(scorer, features, groups, logit_scale)` returns `{"mga_<group>": loss}`. `scorer` is a
    [`ValorModel`] (its `group_features` arranges the sides, its `similarity` scores them); `features` maps
    `"text"`, `"video"` and `"audio"` to `ValorFeatures` (or `None`).
    """

    def __init__(self, gather_distributed: bool = False):
        self.gather_distributed = gather_distributed

    def __call__(
        self, scorer, features: Mapping[str, object], groups: Sequence[str], logit_scale: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The loss of every group in `groups`, keyed `mga_<group>`."""
        if self.gather_distributed and is_distributed():
            contrastive_type = scorer.config.contrastive_type
            features = {
                name: gather_features(value, contrastive_type) if value is not None else None
                for name, value in features.items()
            }
        losses = {}
        for group in groups:
            query, candidates = scorer.group_features(group, **features)
            losses[f"mga_{group}"] = contrastive_loss(scorer.similarity(query, candidates) * logit_scale)
        return losses


def caption_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, objective: str, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    MGC cross-entropy summed over the labelled positions, and their count.

    `unimlm`: `labels[i]` is the target of position `i` (-100 elsewhere). `lm`: labels are the input ids and
    position `i` predicts token `i + 1` (the shift happens here, as in `transformers` causal LMs).
    """
    if objective == "lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    return loss_sum, (labels != -100).sum()


class CaptionLoss:
    """
    VALOR's caption (MGC) loss: token cross-entropy averaged over the labelled positions.

    Args:
        objective (`str`): `"unimlm"` (targets at masked positions) or `"lm"` (next token; shifted inside).
        label_smoothing (`float`, defaults to 0.0).
        normalize_across_processes (`bool`, defaults to `False`): under an active multi-process group, divide by
            the GLOBAL labelled-token count (times the world size), so that DDP's gradient average equals the
            gradient of the mean over the global batch rather than a mean of per-process means.
    """

    def __init__(
        self, objective: str, label_smoothing: float = 0.0, normalize_across_processes: bool = False
    ):
        self.objective = objective
        self.label_smoothing = label_smoothing
        self.normalize_across_processes = normalize_across_processes

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean loss of `logits` `(batch, length, vocab)` against `labels` `(batch, length)`."""
        loss_sum, count = caption_loss_sum(logits, labels, self.objective, self.label_smoothing)
        if self.normalize_across_processes and is_distributed():
            return loss_sum * dist.get_world_size() / all_reduce_sum(count).clamp(min=1)
        return loss_sum / count.clamp(min=1)
