"""Retrieval metrics for VALOR: 1-based ranks, recall at K, median and mean rank of similarity matrices.

Plain numpy, no `evaluate` needed; the `valor_retrieval` `evaluate` module wraps [`compute_retrieval_metrics`].
See `docs/metrics.md`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "GroundTruth",
    "compute_retrieval_metrics",
    "compute_text_video_retrieval_metrics",
    "retrieval_ranks",
]

GroundTruth = Mapping[int, "int | Sequence[int]"] | Sequence["int | Sequence[int]"]


def _as_numpy_matrix(scores: torch.Tensor | np.ndarray, name: str = "scores") -> np.ndarray:
    """`scores` as a float64 numpy matrix, checked to be 2-D, non-empty and free of NaN."""
    if hasattr(scores, "detach"):  # a torch.Tensor; bfloat16 has no numpy dtype, hence float()
        scores = scores.detach().float().cpu().numpy()
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (queries x candidates) matrix, got shape {scores.shape}.")
    if scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {scores.shape}).")
    if np.isnan(scores).any():
        raise ValueError(f"{name} contains NaN.")
    return scores


def _ground_truth_items(ground_truth: GroundTruth, num_queries: int) -> list[tuple[int, int | Sequence[int]]]:
    """`(query, targets)` pairs of a mapping or per-query sequence, checked to cover every query."""
    if isinstance(ground_truth, Mapping):
        items = list(ground_truth.items())
        missing = sorted(set(range(num_queries)) - {int(q) for q, _ in items})
        if missing:
            raise ValueError(f"ground_truth has no entry for queries {missing[:10]}.")
        return items
    if len(ground_truth) != num_queries:
        raise ValueError(
            f"ground_truth has {len(ground_truth)} entries but scores has {num_queries} queries."
        )
    return list(enumerate(ground_truth))


def _query_targets(
    query: int, targets: int | Sequence[int], num_queries: int, num_candidates: int
) -> list[int]:
    """The candidate indices of one query, checked to be non-empty and within range."""
    if not 0 <= query < num_queries:
        raise ValueError(f"ground_truth names query {query}, outside [0, {num_queries}).")
    targets = [int(targets)] if np.isscalar(targets) else [int(t) for t in targets]
    if not targets:
        raise ValueError(f"ground_truth for query {query} is empty.")
    for target in targets:
        if not 0 <= target < num_candidates:
            raise ValueError(
                f"ground_truth for query {query} names candidate {target}, outside [0, {num_candidates})."
            )
    return targets


def _ground_truth_mask(ground_truth: GroundTruth | None, num_queries: int, num_candidates: int) -> np.ndarray:
    """Boolean (queries, candidates) mask of the correct candidates of every query."""
    if ground_truth is None:
        if num_queries != num_candidates:
            raise ValueError(
                f"Without ground_truth the diagonal is used, which needs a square matrix; got "
                f"{num_queries} queries x {num_candidates} candidates. Pass ground_truth."
            )
        return np.eye(num_queries, dtype=bool)
    mask = np.zeros((num_queries, num_candidates), dtype=bool)
    for query, targets in _ground_truth_items(ground_truth, num_queries):
        query = int(query)
        mask[query, _query_targets(query, targets, num_queries, num_candidates)] = True
    return mask


def retrieval_ranks(
    scores: torch.Tensor | np.ndarray, ground_truth: GroundTruth | None = None, chunk_size: int = 1024
) -> np.ndarray:
    """1-based rank of the best-scored correct candidate for every query.

    Ties are broken pessimistically: a wrong candidate whose score equals the best correct score is counted
    as ranked above it, so the rank is `1 + #(wrong candidates with score >= best correct score)`. This is
    independent of the candidate order, and a constant score matrix gives the worst rank rather than R@1 = 100.
    Other correct candidates (when a query has several) never push the rank down.

    Args:
        scores: (queries, candidates) similarity matrix, higher is better (torch or numpy, any float dtype).
        ground_truth: correct candidates per query: a mapping `query -> candidate` or `query -> [candidates]`,
            or a sequence with one entry per query. `None` means the diagonal (query i matches candidate i).
        chunk_size: queries processed at once, to bound memory on large matrices.

    Returns:
        `np.ndarray` of int64 ranks, shape (queries,).
    """
    scores = _as_numpy_matrix(scores)
    mask = _ground_truth_mask(ground_truth, *scores.shape)
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    for start in range(0, scores.shape[0], chunk_size):
        block = scores[start : start + chunk_size]  # (q, C)
        correct = mask[start : start + chunk_size]  # (q, C)
        best = np.where(correct, block, -np.inf).max(axis=1, keepdims=True)  # (q, 1)
        ranks[start : start + chunk_size] = 1 + ((block >= best) & ~correct).sum(axis=1)
    return ranks


def compute_retrieval_metrics(
    scores: torch.Tensor | np.ndarray,
    ground_truth: GroundTruth | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall at K, median and mean rank for one retrieval direction.

    Args:
        scores: (queries, candidates) similarity matrix, higher is better.
        ground_truth: correct candidates per query (see [`retrieval_ranks`]); `None` means the diagonal.
        ks: the cut-offs K of the recall values.

    Returns:
        `{"R@1": ..., "R@5": ..., "R@10": ..., "median_rank": ..., "mean_rank": ...}`. Recalls are percentages
        (0-100) of queries whose correct candidate ranks within the top K, as VALOR reports them; ranks are
        1-based (a perfect retrieval has median rank 1). Ties count against the query (see
        [`retrieval_ranks`]).
    """
    ranks = retrieval_ranks(scores, ground_truth)
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(np.mean(ranks))
    return out


def compute_text_video_retrieval_metrics(
    text_video_scores: torch.Tensor | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    prefixes: tuple[str, str] = ("t2v", "v2t"),
) -> dict[str, float]:
    """Both retrieval directions of a square text x video matrix whose diagonal holds the matching pairs.

    Args:
        text_video_scores: (N texts, N videos) similarity matrix; text i describes video i.
        ks: the cut-offs K of the recall values.
        prefixes: names of the two directions (rows as queries, then columns as queries); use
            `("t2a", "a2t")` or `("t2va", "va2t")` for audio or audio-visual retrieval.

    Returns:
        The keys of [`compute_retrieval_metrics`] prefixed per direction, e.g. `t2v_R@1`, `v2t_median_rank`.
    """
    scores = _as_numpy_matrix(text_video_scores, "text_video_scores")
    if scores.shape[0] != scores.shape[1]:
        raise ValueError(f"text_video_scores must be square, got shape {scores.shape}.")
    out = {}
    for prefix, matrix in zip(prefixes, (scores, scores.T)):
        out.update({f"{prefix}_{k}": v for k, v in compute_retrieval_metrics(matrix, None, ks).items()})
    return out
