"""Retrieval at scale: a [`VideoGallery`] of encoded videos saved as memory-mapped safetensors shards (`gallery`),
the model fingerprint that ties it to its model (`fingerprint`), a faiss first-stage index (`index`), exhaustive and
two-stage search with VALOR's exact fine-grained re-rank (`search`), and resumable gallery encoding with DataLoader
workers (`encoding`)."""

from .encoding import encode_gallery, open_gallery_for_encoding
from .fingerprint import model_fingerprint, processor_description
from .gallery import GalleryMismatchError, VideoGallery
from .index import GalleryIndex, candidate_vectors, query_vectors, require_faiss, weighted_mean
from .search import SearchHits, exhaustive_search, score_rows, search, two_stage_search

__all__ = [
    "GalleryIndex",
    "GalleryMismatchError",
    "SearchHits",
    "VideoGallery",
    "candidate_vectors",
    "encode_gallery",
    "exhaustive_search",
    "model_fingerprint",
    "open_gallery_for_encoding",
    "processor_description",
    "query_vectors",
    "require_faiss",
    "score_rows",
    "search",
    "two_stage_search",
    "weighted_mean",
]
