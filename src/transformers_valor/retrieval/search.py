"""Ranking a [`VideoGallery`] for text queries with VALOR's MGA score: exhaustively, or in two stages (a faiss
first stage picks candidates, the exact fine-grained score re-ranks them).

Both return, per query, the gallery rows best first with their exact scores (`ValorModel.similarity` on
`ValorModel.group_features`, the fine-grained score of `losses.fine_grained_similarity`); ties keep the gallery's
row order. When the first stage returns every row, the two-stage result is the exhaustive one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..configuration_valor import get_modality_group
from ..modeling_valor import ValorFeatures
from .gallery import FINE_FIELDS, VideoGallery
from .index import query_vectors

DEFAULT_BLOCK_SIZE = 16384
DEFAULT_NUM_CANDIDATES = 1000


@dataclass
class SearchHits:
    """One query's results: gallery `rows` `(n,)` and their MGA `scores` `(n,)`, best first."""

    rows: torch.Tensor
    scores: torch.Tensor


def _query_row(text: ValorFeatures, i: int) -> ValorFeatures:
    return ValorFeatures(
        **{name: value[i : i + 1] for name, value in text.items() if name != "last_hidden_state"}
    )


def _check_queries(model, gallery: VideoGallery, text: ValorFeatures, group: str) -> None:
    gallery.check_group(group)
    if text.embeds is None or text.mask is None:
        raise ValueError("The queries must be `ValorModel.get_text_features` outputs (`embeds` and `mask`).")
    if text.embeds.shape[-1] != gallery.model_info["projection_dim"]:
        raise ValueError(
            f"Query width {text.embeds.shape[-1]} differs from the gallery's {gallery.model_info['projection_dim']}."
        )
    if model.config.contrastive_type != gallery.model_info["contrastive_type"]:
        raise ValueError(
            f"A {model.config.contrastive_type} model cannot score a gallery of a "
            f"{gallery.model_info['contrastive_type']} model."
        )


def score_rows(model, gallery: VideoGallery, text: ValorFeatures, group: str, rows) -> torch.Tensor:
    """MGA scores `(queries, len(rows))` of text features against gallery `rows` (a slice or row numbers)."""
    spec = get_modality_group(group, "retrieval")
    fields = FINE_FIELDS if model.config.contrastive_type == "fine" else ("pooler_output",)
    media = {m: gallery.features(m, rows, dtype=model.dtype, fields=fields) for m in spec.candidates}
    media = {m: ValorFeatures(**{k: v.to(model.device) for k, v in f.items()}) for m, f in media.items()}
    query, candidates = model.group_features(group, text=text, **media)
    return model.similarity(query, candidates).float().cpu()


def _best_first(rows: torch.Tensor, scores: torch.Tensor, top_k: int | None) -> SearchHits:
    # Rows come in ascending order, so the stable sort keeps the gallery order among equal scores.
    order = torch.sort(scores, descending=True, stable=True).indices[:top_k]
    return SearchHits(rows=rows[order], scores=scores[order])


@torch.no_grad()
def exhaustive_search(
    model,
    gallery: VideoGallery,
    text: ValorFeatures,
    group: str = "tva",
    top_k: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[SearchHits]:
    """
    Score every gallery row for every query, `block_size` rows at a time (memory stays bounded: the gallery
    is read block by block from its memory-mapped shards), keeping the `top_k` best (default: every row).

    Args:
        model ([`ValorModel`]): the model that built the gallery.
        gallery ([`VideoGallery`]): what to search.
        text ([`ValorFeatures`]): `model.get_text_features(...)` of the queries.
        group (`str`, defaults to `"tva"`): `"tv"`, `"ta"` or `"tva"`.
        top_k (`int`, *optional*): results per query.
        block_size (`int`): gallery rows scored at once.

    Returns:
        One [`SearchHits`] per query.
    """
    _check_queries(model, gallery, text, group)
    num_queries = text.embeds.shape[0]
    if top_k is None:
        scores = torch.cat(
            [score_rows(model, gallery, text, group, b) for b in gallery.blocks(block_size)], dim=1
        )
        return [_best_first(torch.arange(len(gallery)), row, None) for row in scores]
    kept_rows = torch.empty(num_queries, 0, dtype=torch.long)
    kept_scores = torch.empty(num_queries, 0)
    for block in gallery.blocks(block_size):
        scores = torch.cat([kept_scores, score_rows(model, gallery, text, group, block)], dim=1)
        rows = torch.cat([kept_rows, torch.arange(block.start, block.stop).expand(num_queries, -1)], dim=1)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top_k]
        kept_scores, kept_rows = scores.gather(1, order), rows.gather(1, order)
    return [SearchHits(rows=kept_rows[i], scores=kept_scores[i]) for i in range(num_queries)]


@torch.no_grad()
def two_stage_search(
    model,
    gallery: VideoGallery,
    text: ValorFeatures,
    group: str = "tva",
    top_k: int | None = 10,
    num_candidates: int = DEFAULT_NUM_CANDIDATES,
) -> list[SearchHits]:
    """
    The first-stage index of `group` proposes `num_candidates` rows per query, the exact MGA score re-ranks them
    and the `top_k` best are returned (default 10; `None` returns every candidate).

    Raises:
        ValueError: the gallery has no index for `group` (build one with `gallery.build_index(group)`), or
            `top_k` exceeds `num_candidates`.
    """
    _check_queries(model, gallery, text, group)
    if group not in gallery.indexes:
        raise ValueError(
            f"The gallery has no first-stage index for group {group!r} (it has {sorted(gallery.indexes)}); build "
            f"one with `gallery.build_index({group!r})` or search exhaustively."
        )
    if top_k is not None and top_k > num_candidates:
        raise ValueError(f"`top_k` ({top_k}) cannot exceed `num_candidates` ({num_candidates}).")
    candidates = gallery.indexes[group].search(query_vectors(text), num_candidates)
    hits = []
    for i in range(candidates.shape[0]):
        rows = candidates[i][candidates[i] >= 0].sort().values
        scores = score_rows(model, gallery, _query_row(text, i), group, rows)[0]
        hits.append(_best_first(rows, scores, top_k))
    return hits


def search(
    model,
    gallery: VideoGallery,
    text: ValorFeatures,
    group: str = "tva",
    top_k: int | None = None,
    num_candidates: int = DEFAULT_NUM_CANDIDATES,
    exhaustive: bool | None = None,
) -> list[SearchHits]:
    """
    Two-stage search when the gallery has an index for `group` (and `exhaustive` is not `True`), exhaustive
    search otherwise. With two stages, `top_k=None` returns the `num_candidates` re-ranked candidates.

    Raises:
        ValueError: `exhaustive=False` on a gallery without an index for `group`.
    """
    if exhaustive is None:
        exhaustive = group not in gallery.indexes
    if exhaustive:
        return exhaustive_search(model, gallery, text, group, top_k)
    return two_stage_search(model, gallery, text, group, top_k, num_candidates)
