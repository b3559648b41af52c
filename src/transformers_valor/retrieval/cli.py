"""The command line of `examples/encode_videos.py`: encode a folder or a file list of videos into a saved
[`VideoGallery`] (resumable, with a failures file) and build its first-stage indexes.

    python examples/encode_videos.py --model path/to/valor --videos /data/videos --output /data/gallery
    python examples/encode_videos.py --model m --videos list.txt --output g --dtype float16 --num_workers 4

One process; the shard names already carry the process rank for the multi-process launch (issue #12).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import torch

from ..configuration_valor import RETRIEVAL_GROUPS
from ..inference.writer import write_atomic
from .encoding import encode_gallery
from .gallery import DEFAULT_SHARD_SIZE, STORAGE_DTYPES, VideoGallery
from .index import INDEX_TYPES

FAILURES_FILE = "failures.jsonl"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line arguments."""
    parser = argparse.ArgumentParser(description="Encode videos into a saved VALOR retrieval gallery.")
    parser.add_argument("--model", required=True, help="A VALOR checkpoint (folder or hub id).")
    parser.add_argument("--processor", default=None, help="The processor (default: the model's).")
    parser.add_argument("--videos", required=True, help="A folder of media files, or a text file of paths.")
    parser.add_argument("--output", required=True, help="The gallery folder (created, or resumed).")
    parser.add_argument("--group", default="tva", choices=RETRIEVAL_GROUPS, help="Groups the gallery serves.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=2, help="Decoding processes.")
    parser.add_argument("--dtype", default="float32", choices=list(STORAGE_DTYPES))
    parser.add_argument("--shard_size", type=int, default=DEFAULT_SHARD_SIZE)
    parser.add_argument("--num_frames", type=int, default=None)
    parser.add_argument("--num_clips", type=int, default=None)
    parser.add_argument(
        "--index", default="hnsw", choices=[*INDEX_TYPES, "none"], help="First-stage index type."
    )
    parser.add_argument("--rebuild_index", action="store_true", help="Rebuild indexes that already exist.")
    parser.add_argument("--no_resume", action="store_true", help="Refuse a folder that already holds shards.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bar.")
    return parser.parse_args(argv)


def served_groups(gallery: VideoGallery) -> list[str]:
    """The retrieval groups the gallery's modalities serve (`tv`, `ta`, `tva`)."""
    groups = []
    for group in RETRIEVAL_GROUPS:
        try:
            gallery.check_group(group)
        except ValueError:
            continue
        groups.append(group)
    return groups


def encode_videos_main(argv: Sequence[str] | None = None) -> VideoGallery:
    """Run the command line; returns the gallery."""
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise NotImplementedError(
            f"encode_videos runs in one process (WORLD_SIZE={world_size}); the multi-process launch is issue #12."
        )
    from ..modeling_valor import ValorModel
    from ..processing_valor import ValorProcessor

    model = ValorModel.from_pretrained(args.model).to(args.device).eval()
    processor = ValorProcessor.from_pretrained(args.processor or args.model)
    gallery = encode_gallery(
        model,
        processor,
        args.videos,
        path=args.output,
        group=args.group,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        dtype=args.dtype,
        shard_size=args.shard_size,
        num_frames=args.num_frames,
        num_clips=args.num_clips,
        resume=not args.no_resume,
        progress=not args.no_progress,
    )
    failures = gallery.failures()
    write_atomic(os.path.join(args.output, FAILURES_FILE), "".join(json.dumps(f) + "\n" for f in failures))
    if args.index != "none" and len(gallery):
        for group in served_groups(gallery):
            if group not in gallery.indexes or args.rebuild_index:
                gallery.build_index(group, index_type=args.index)
    print(
        f"gallery {args.output}: {len(gallery)} items, {len(failures)} failed (listed in {FAILURES_FILE}), "
        f"indexes {sorted(gallery.indexes) or 'none'}"
    )
    return gallery
