"""The first stage of the two-stage search: a faiss inner-product index built from a gallery's MGA features.

VALOR's fine-grained score is not a dot product, so it cannot be indexed as such. A query is the MGA-weighted
mean of its tokens, `q = sum_x a_x A_x` (`a = masked_softmax(weight logits)`), and an item is indexed in one of
two ways:

- `"mean"`: the weighted mean of the candidate side's positions (frames, clips, or both concatenated),
  `c = sum_y b_y B_y`; then `<q, c> = sum_x sum_y a_x b_y s_xy`, the fine-grained score with both maxima replaced
  by weighted means (a lower bound of it);
- `"positions"`: every position `B_y` (masked ones as zero vectors, whose similarity the fine score also counts
  as 0); an item scores `max_y <q, B_y>`, a lower bound of the text-to-media half `sum_x a_x max_y s_xy`.

`benchmarks/bench_gallery.py` measures both, and the model's pooled vectors, on a trained model: `"positions"`
keeps more of the exhaustive top-10 for text -> video, `"mean"` for text -> audiovisual (where the maximum over
frames and clips together picks one modality), and they coincide for text -> audio (one clip); `DEFAULT_VECTORS`
holds that choice. The exact fine-grained score then re-ranks the candidates (`retrieval.search`).

faiss is an optional dependency: `pip install "transformers-valor[retrieval]"` (faiss-cpu).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..configuration_valor import get_modality_group
from ..inference.writer import write_atomic
from ..losses import masked_softmax
from ..modeling_valor import ValorFeatures, concat_features
from .gallery import FINE_FIELDS

IndexType = Literal["flat", "ivf", "hnsw"]
INDEX_TYPES: tuple[str, ...] = ("flat", "ivf", "hnsw")
FirstStageVectors = Literal["mean", "positions"]
FIRST_STAGE_VECTORS: tuple[str, ...] = ("mean", "positions")
# Measured by benchmarks/bench_gallery.py (module docstring): the better first stage per retrieval group.
DEFAULT_VECTORS: dict[str, str] = {"tv": "positions", "ta": "mean", "tva": "mean"}
INDEX_FORMAT = "valor-gallery-index"
INDEX_VERSION = 1


def require_faiss():
    """Import faiss, or raise an `ImportError` that says how to install it."""
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            'The first-stage index needs faiss: `pip install "transformers-valor[retrieval]"` (or `pip install '
            "faiss-cpu`). Exhaustive search works without it (load a gallery that has indexes with "
            "`VideoGallery.load(path, load_indexes=False)`)."
        ) from err
    return faiss


def _require_fine(features: ValorFeatures) -> None:
    if features.weight_logits is None:
        raise NotImplementedError(
            "The first-stage index is defined for the fine-grained score (contrastive_type='fine'); a coarse "
            "model's score is already the dot product of `pooler_output`, which can be indexed directly."
        )


def weighted_mean(features: ValorFeatures) -> torch.Tensor:
    """The MGA-weighted mean of a side's position embeddings, `(batch, dim)`: `sum_y softmax_y(w) e_y` over the
    valid positions (zeros for a row without any)."""
    _require_fine(features)
    weights = masked_softmax(features.weight_logits.float(), features.mask)
    return torch.einsum("np,npd->nd", weights, features.embeds.float())


def candidate_vectors(gallery, group: str, rows, vectors: FirstStageVectors = "mean") -> torch.Tensor:
    """First-stage vectors of `rows` (a slice or row numbers) of `gallery` for retrieval group `group`, float32:
    `(rows, dim)` for `"mean"`, `(rows * positions, dim)` (item-major) for `"positions"`."""
    spec = get_modality_group(group, "retrieval")
    side = concat_features(*(gallery.features(m, rows, fields=FINE_FIELDS) for m in spec.candidates))
    if vectors == "mean":
        return weighted_mean(side)
    _require_fine(side)
    return (side.embeds.float() * side.mask[..., None]).reshape(-1, side.embeds.shape[-1])


def query_vectors(text: ValorFeatures) -> torch.Tensor:
    """First-stage vectors of text queries (`ValorModel.get_text_features` output), `(queries, dim)` float32."""
    return weighted_mean(text)


def _factory(
    index_type: str, dim: int, num_items: int, hnsw_m: int, ivf_lists: int | None
) -> tuple[str, int]:
    if index_type == "flat":
        return "Flat", 0
    if index_type == "hnsw":
        return f"HNSW{hnsw_m},Flat", 0
    lists = ivf_lists or max(1, int(4 * np.sqrt(max(num_items, 1))))
    return f"IVF{min(lists, max(num_items, 1))},Flat", min(lists, max(num_items, 1))


def _positions_per_item(gallery, group: str) -> int:
    spec = get_modality_group(group, "retrieval")
    return sum(gallery.features(m, slice(0, 1)).embeds.shape[1] for m in spec.candidates)


class GalleryIndex:
    """
    A faiss inner-product index over the first-stage vectors of one retrieval group of a [`VideoGallery`]: one
    vector per item (`"mean"`) or per item position (`"positions"`), in gallery row order.

    Build it with `VideoGallery.build_index(group, ...)` (or `GalleryIndex.build`); `search` returns the
    candidate rows of text queries; `extend` adds rows appended to the gallery since it was built.
    """

    def __init__(self, group: str, index: Any, index_type: str, params: dict[str, Any], fingerprint: str):
        self.group, self.index, self.index_type = group, index, index_type
        self.params, self.fingerprint = params, fingerprint
        self.vectors: str = params["vectors"]
        self.positions: int = params["positions"] if self.vectors == "positions" else 1

    @property
    def num_items(self) -> int:
        """Gallery rows in the index."""
        return int(self.index.ntotal) // self.positions

    @classmethod
    def build(
        cls,
        gallery,
        group: str,
        index_type: IndexType = "hnsw",
        vectors: FirstStageVectors | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 256,
        ivf_lists: int | None = None,
        nprobe: int = 32,
        probe_factor: float = 8.0,
        train_size: int = 65536,
        block_size: int = 65536,
        seed: int = 0,
    ) -> GalleryIndex:
        """
        Index every row of `gallery` for retrieval group `group`.

        Args:
            index_type (`str`, defaults to `"hnsw"`): `"flat"` (exact inner product over every vector), `"ivf"`
                (inverted lists: `ivf_lists` k-means cells, at least `nprobe` of them searched, and enough to
                hold `probe_factor` times the vectors a search returns) or `"hnsw"` (a graph of
                `hnsw_m` links per vector, `ef_construction` / `ef_search` candidate lists when building /
                searching; a search uses at least as many as the vectors it returns).
            vectors (`str`, *optional*): `"mean"` or `"positions"` (see the module docstring); default
                `DEFAULT_VECTORS[group]`.
            ivf_lists (`int`, *optional*): default `4 * sqrt(number of vectors)`.
            train_size (`int`): items (a seeded random sample) whose vectors train the IVF k-means.
            block_size (`int`): rows read from the gallery at a time while adding.
        """
        faiss = require_faiss()
        get_modality_group(group, "retrieval")
        vectors = vectors or DEFAULT_VECTORS[group]
        if index_type not in INDEX_TYPES:
            raise ValueError(f"`index_type` must be one of {list(INDEX_TYPES)}, got {index_type!r}.")
        if vectors not in FIRST_STAGE_VECTORS:
            raise ValueError(f"`vectors` must be one of {list(FIRST_STAGE_VECTORS)}, got {vectors!r}.")
        if len(gallery) == 0:
            raise ValueError("Cannot index an empty gallery.")
        positions = _positions_per_item(gallery, group) if vectors == "positions" else 1
        dim = gallery.model_info["projection_dim"]
        factory, lists = _factory(index_type, dim, len(gallery) * positions, hnsw_m, ivf_lists)
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        params = {
            "factory": factory,
            "vectors": vectors,
            "positions": positions,
            "ef_search": ef_search,
            "nprobe": min(nprobe, lists) if lists else None,
            "probe_factor": probe_factor,
        }
        if index_type == "hnsw":
            index.hnsw.efConstruction = ef_construction
        if index_type == "ivf":
            generator = torch.Generator().manual_seed(seed)
            sample = torch.randperm(len(gallery), generator=generator)[:train_size].sort().values
            index.train(np.ascontiguousarray(candidate_vectors(gallery, group, sample, vectors).numpy()))
        built = cls(group, index, index_type, params, gallery.model_info["fingerprint"])
        built.extend(gallery, block_size)
        return built

    def extend(self, gallery, block_size: int = 65536) -> None:
        """Add the gallery rows the index does not hold yet (rows are append-only, so those at the end)."""
        if gallery.model_info["fingerprint"] != self.fingerprint:
            raise ValueError(f"The {self.group} index was built for another model's gallery.")
        for rows in gallery.blocks(block_size):
            if rows.stop <= self.num_items:
                continue
            rows = slice(max(rows.start, self.num_items), rows.stop)
            added = candidate_vectors(gallery, self.group, rows, self.vectors)
            self.index.add(np.ascontiguousarray(added.numpy()))

    def search(self, queries: torch.Tensor, num_candidates: int) -> torch.Tensor:
        """The candidate rows `(queries, num_candidates)` of first-stage query vectors, best first; -1 pads a
        query for which the index returned fewer."""
        faiss = require_faiss()
        num_candidates = min(num_candidates, self.num_items)
        wanted = num_candidates * self.positions  # enough positions for `num_candidates` distinct items
        if self.index_type == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.params["ef_search"], wanted))
        elif self.index_type == "ivf":
            # Probe enough lists to hold `probe_factor` times the vectors asked for (a list holds ntotal / nlist):
            # the best vectors spread over more lists than the fewest that could hold them.
            lists = self.index.nlist
            enough = int(np.ceil(self.params["probe_factor"] * wanted * lists / max(self.index.ntotal, 1)))
            params = faiss.SearchParametersIVF(nprobe=min(lists, max(self.params["nprobe"], enough)))
        else:
            params = None
        vectors = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        _, found = self.index.search(vectors, wanted, params=params)
        if self.positions == 1:
            return torch.from_numpy(found)
        out = torch.full((found.shape[0], num_candidates), -1, dtype=torch.long)
        for i, row in enumerate(found):
            # Each item once, at the rank of its best position (np.unique's first index of each value).
            items = row[row >= 0] // self.positions
            _, first = np.unique(items, return_index=True)
            best = torch.from_numpy(items[np.sort(first)][:num_candidates])
            out[i, : best.numel()] = best
        return out

    def save(self, directory: str | os.PathLike) -> None:
        """Write `<group>.faiss` (faiss's own format) and `<group>.json` into `directory`, each atomically."""
        faiss = require_faiss()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{self.group}.faiss"
        tmp = directory / f".{target.name}.{os.getpid()}.partial"
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, target)
        meta = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "group": self.group,
            "index_type": self.index_type,
            "params": self.params,
            "model_fingerprint": self.fingerprint,
            "num_items": self.num_items,
        }
        write_atomic(directory / f"{self.group}.json", json.dumps(meta, indent=1))


def load_indexes(directory: str | os.PathLike, gallery) -> dict[str, GalleryIndex]:
    """
    The indexes saved in `directory` for `gallery`, extended in memory with the rows added since they were saved.

    Raises:
        ValueError: an index built for another model, or holding more rows than the gallery.
    """
    directory = Path(directory)
    indexes: dict[str, GalleryIndex] = {}
    for meta_path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != INDEX_FORMAT or meta.get("version") != INDEX_VERSION:
            raise ValueError(f"{meta_path} is not a {INDEX_FORMAT} v{INDEX_VERSION} file.")
        faiss = require_faiss()
        index = GalleryIndex(
            meta["group"],
            faiss.read_index(str(directory / f"{meta['group']}.faiss")),
            meta["index_type"],
            meta["params"],
            meta["model_fingerprint"],
        )
        if index.num_items > len(gallery):
            raise ValueError(
                f"The {index.group} index in {directory} holds {index.num_items} rows but the gallery has "
                f"{len(gallery)}: it belongs to another gallery; build it again."
            )
        index.extend(gallery)
        indexes[index.group] = index
    return indexes
