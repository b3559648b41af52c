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
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

# Upper bound on the elements of one (rows x cols x t x v) similarity block; 2**26 float32 values = 256 MiB.
DEFAULT_MAX_BLOCK_ELEMENTS = 2**26
# Block size on a CPU: 2**22 float32 similarity values (16 MiB). The two GEMM sides are then about 2,000 wide, where
# MKL's GEMM runs near its 4096^3 rate on the 2-core CPU; at 2**20 (about 1,000 wide, 4 MiB) the GEMM itself ran at
# 58-81 % of that rate; the max reductions took 3 % of the GEMM's time at 2**20 and 12 % at 2**22
# (benchmarks/results/cpu_scorer.txt). Accelerators take the largest block allowed (fewer, larger kernels).
CPU_BLOCK_ELEMENTS = 2**22


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    Softmax of `logits` over the last dimension restricted to `mask`; rows without any valid entry are all zero.

    Masked entries get exactly zero weight (as with `-inf`), but a fully masked row yields zeros instead of
    NaN, so a sample without audio neither poisons the scores nor the gradients.
    """
    mask = mask.bool()
    weights = torch.softmax(logits.float().masked_fill(~mask, torch.finfo(torch.float32).min), dim=-1)
    return (weights * mask.any(dim=-1, keepdim=True)).to(logits.dtype)


def _block_shape(num_a: int, t: int, num_b: int, v: int, budget: int) -> tuple[int, int]:
    """
    Rows and columns of a block of at most `budget` similarity values (one pair at least), with the GEMM sides
    `rows * t` and `cols * v` about equal: the shape that does the most arithmetic per byte it moves.
    """
    cols = max(1, min(num_b, math.isqrt(budget) // v))
    rows = max(1, min(num_a, budget // (cols * v * t)))
    cols = max(1, min(num_b, budget // (rows * t * v)))  # widen when A ran out of rows
    return rows, cols


def _masked_block(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    `(n, positions, dim)` features as the `(positions * n, dim)` matrix of one GEMM side, positions outermost,
    with masked positions as zero vectors: their similarity is then exactly 0, the reference's masking (`s * mask`),
    zeros that still take part in the max.
    """
    return (feats * mask[:, :, None]).transpose(0, 1).reshape(-1, feats.shape[-1])


def _masked_rows(feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """
    `(n, positions, dim)` features as the `(n * positions, dim)` matrix of the other GEMM side, in their own
    layout: a view (no copy) on a CPU when no position is masked, else masked positions as zero vectors. The
    check reads the mask's values, so compiled graphs (and accelerators, where it would synchronise) always mask.
    """
    if feats.device.type == "cpu" and not torch.compiler.is_compiling() and bool(mask.all()):
        return feats.reshape(-1, feats.shape[-1])
    return (feats * mask[:, :, None]).reshape(-1, feats.shape[-1])


def _fine_block(block_a, weights_a, block_b, weights_b):
    """
    Fine-grained scores `(rows, cols)` of one block: one `(rows*t, dim) @ (dim, v*cols)` GEMM of a `_masked_rows`
    and a `_masked_block`, then both max reductions over views of its output. `weights_a` is `(rows, t)`,
    `weights_b` `(v, cols)`.
    """
    (rows, t), (v, cols) = weights_a.shape, weights_b.shape
    # B's positions outermost: both maxima reduce strided axes over contiguous runs of columns (vectorised),
    # and the weighted sums are plain broadcasts.
    sim = (block_a @ block_b.t()).view(rows, t, v, cols)
    a_to_b = (sim.amax(dim=2) * weights_a[:, :, None]).sum(dim=1)  # (rows, t, cols) -> (rows, cols)
    b_to_a = (sim.amax(dim=1) * weights_b[None]).sum(dim=1)  # (rows, v, cols) -> (rows, cols)
    return (a_to_b + b_to_a) / 2


def naive_fine_grained_similarity(feats_a, mask_a, weight_logits_a, feats_b, mask_b, weight_logits_b):
    """
    The fine-grained score as the original VALOR code computes it, the ground truth of the tests and benchmarks:
    the whole `(num_a, num_b, t, v)` similarity tensor, multiplied by both masks, then two max passes. Memory
    grows as `num_a * num_b * t * v`; use [`fine_grained_similarity`] for anything else.
    """
    mask_a = mask_a.to(feats_a.dtype)
    mask_b = mask_b.to(feats_b.dtype)
    weights_a = masked_softmax(weight_logits_a, mask_a)
    weights_b = masked_softmax(weight_logits_b, mask_b)
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

    The computation runs over blocks of rows and columns, each one `(rows*t, dim) @ (dim, cols*v)` GEMM whose
    output the two max reductions read while it is still in cache. No block holds more than `max_block_elements`
    similarity values (on a CPU at most `CPU_BLOCK_ELEMENTS`, a cache-sized block), so peak memory is bounded
    whatever the corpus size: the blocks, one masked copy of B and the scores. Every entry equals the naive
    formulation's ([`naive_fine_grained_similarity`]) up to float rounding, and so do the gradients.

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
    num_a, t = feats_a.shape[:2]
    num_b, v = feats_b.shape[:2]
    if num_a * t < num_b * v:
        # The score is symmetric in A and B; B is the side laid out again (one copy), so make it the smaller
        # one. A gallery re-rank (one query against thousands of candidates) then copies only the query.
        return fine_grained_similarity(
            feats_b, mask_b, weight_logits_b, feats_a, mask_a, weight_logits_a, max_block_elements
        ).t()
    mask_a = mask_a.to(feats_a.dtype)
    mask_b = mask_b.to(feats_b.dtype)
    weights_a = masked_softmax(weight_logits_a, mask_a)
    weights_b = masked_softmax(weight_logits_b, mask_b)
    budget = num_a * num_b * t * v if max_block_elements is None else max_block_elements
    if feats_a.device.type == "cpu":
        budget = min(budget, CPU_BLOCK_ELEMENTS)
    rows, cols = _block_shape(num_a, t, num_b, v, budget)
    # B's blocks are laid out once (one copy of B), A's are views or one masked copy per row of blocks: the
    # copies cost as much per element as the GEMM per ~100 FLOP, so they must not be repeated for every block.
    col_starts = range(0, num_b, cols)
    blocks_b = [_masked_block(feats_b[c : c + cols], mask_b[c : c + cols]) for c in col_starts]
    weights_b = weights_b.t()  # (v, num_b)
    out = feats_a.new_empty(num_a, num_b)
    for r in range(0, num_a, rows):
        block_a = _masked_rows(feats_a[r : r + rows], mask_a[r : r + rows])
        for c, block_b in zip(col_starts, blocks_b):
            out[r : r + rows, c : c + cols] = _fine_block(
                block_a, weights_a[r : r + rows], block_b, weights_b[:, c : c + cols]
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
    keys = ("pooler_output",) if contrastive_type == "coarse" else ("embeds", "mask", "weight_logits")
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
    logits, labels = _aligned_targets(logits, labels, objective)
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    return loss_sum, (labels != -100).sum()


def _aligned_targets(logits: torch.Tensor, labels: torch.Tensor, objective: str):
    """Logits and the labels they predict: as given for `unimlm`, shifted by one for `lm`."""
    if objective == "lm":
        return logits[:, :-1], labels[:, 1:]
    return logits, labels


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
        return self._mean(*caption_loss_sum(logits, labels, self.objective, self.label_smoothing))

    def from_hidden_states(
        self, head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """
        The same loss as `self(head(hidden), labels)`, with the vocabulary head `head` applied only to the
        labelled positions of `hidden` `(batch, length, width)`, as the reference does (`self.cls` on
        `output[txt_labels != -1]`): the other positions' logits are never computed.
        """
        hidden, labels = _aligned_targets(hidden, labels, self.objective)
        labelled = labels != -100
        # The selected positions are aligned already: "unimlm" scores them as they are (no second shift).
        logits = head(hidden[labelled])
        return self._mean(*caption_loss_sum(logits, labels[labelled], "unimlm", self.label_smoothing))

    def _mean(self, loss_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        if self.normalize_across_processes and is_distributed():
            return loss_sum * dist.get_world_size() / all_reduce_sum(count).clamp(min=1)
        return loss_sum / count.clamp(min=1)


class QuestionAnsweringLoss:
    """
    VALOR's question-answering loss (reference `forward_qa_single`): the token cross-entropy averaged within each
    answer, then over the answers. When several answers of one question are tiled as rows, `answer_weights`
    weight the rows and the sum is divided by the number of questions.

    Args:
        objective (`str`): `"unimlm"` (targets at masked positions) or `"lm"` (next token; shifted inside).
    """

    def __init__(self, objective: str):
        self.objective = objective

    def __call__(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        answer_weights: torch.Tensor | None = None,
        num_questions: int | None = None,
    ) -> torch.Tensor:
        """
        The loss of `logits` `(answers, length, vocab)` against `labels` `(answers, length)`; with
        `answer_weights` `(answers,)`, `sum(weight * answer loss) / num_questions`.
        """
        logits, labels = _aligned_targets(logits, labels, self.objective)
        token_losses = F.cross_entropy(
            logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none"
        )  # (answers, length)
        counts = (labels != -100).sum(dim=1)
        if not bool((counts > 0).all()):
            empty = (counts == 0).nonzero().flatten().tolist()
            raise ValueError(f"Answers at batch indices {empty} have no labelled token.")
        per_answer = token_losses.sum(dim=1) / counts
        if answer_weights is None:
            return per_answer.mean()
        if num_questions is None or answer_weights.shape != per_answer.shape:
            raise ValueError(
                f"`answer_weights` must have shape {tuple(per_answer.shape)} and come with `num_questions`."
            )
        return (per_answer * answer_weights.to(per_answer.dtype)).sum() / num_questions
