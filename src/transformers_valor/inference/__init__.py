"""Batch inference over media files: listing inputs and splitting them between processes (`dataset`), decoding in
DataLoader workers with per-item error capture, the loop with a progress bar and resume (`runner`), and sharded,
atomic, per-rank output (`writer`). The gallery encoder (`retrieval.encode_gallery`) and
`examples/encode_videos.py` are built on it, and so are `shard_media` (items read from WebDataset shards),
`captioning` (captions to JSONL, resumable, merged across processes) and `cli` (`examples/caption_videos.py`)."""

from .dataset import MEDIA_EXTENSIONS, MediaDataset, MediaItem, collate_media, list_media, shard_items
from .runner import InferenceSummary, MemoryWriter, run_inference
from .writer import ShardedWriter, ShardInfo, read_shards, shard_name, write_atomic

__all__ = [
    "MEDIA_EXTENSIONS",
    "InferenceSummary",
    "MediaDataset",
    "MediaItem",
    "MemoryWriter",
    "ShardInfo",
    "ShardedWriter",
    "collate_media",
    "list_media",
    "read_shards",
    "run_inference",
    "shard_items",
    "shard_name",
    "write_atomic",
]
