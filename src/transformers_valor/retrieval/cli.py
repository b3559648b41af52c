"""The command line of `examples/encode_videos.py`: encode a folder or a file list of videos into a saved
[`VideoGallery`] (resumable, with a failures file) and build its first-stage indexes.

    python examples/encode_videos.py --model path/to/valor --videos /data/videos --output /data/gallery
    python examples/encode_videos.py --model m --videos list.txt --output g --dtype float16 --num_workers 4

    accelerate launch --multi_gpu --num_processes 8 examples/encode_videos.py --model m --videos list.txt --output g

Across processes (`accelerate launch`, `torchrun`), the main process creates (or checks) the gallery folder, every
process encodes every `world_size`-th item into shards named by its rank, and the main process then commits them
and builds the indexes. Starting the same command again resumes.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

from ..configuration_valor import RETRIEVAL_GROUPS
from ..inference.cli import launched_state
from ..inference.dataset import list_media, shard_items
from ..inference.writer import write_atomic
from .encoding import encode_gallery, open_gallery_for_encoding
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
    parser.add_argument("--device", default=None, help="Default: this process's device in the launch.")
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


def encode_videos_main(argv: Sequence[str] | None = None) -> VideoGallery | None:
    """Run the command line on this process; returns the gallery on the main process, `None` on the others."""
    from ..modeling_valor import ValorModel
    from ..processing_valor import ValorProcessor

    args = parse_args(argv)
    state = launched_state()
    model = ValorModel.from_pretrained(args.model).to(args.device or state.device).eval()
    processor = ValorProcessor.from_pretrained(args.processor or args.model)
    settings = {
        "group": args.group,
        "dtype": args.dtype,
        "shard_size": args.shard_size,
        "num_frames": args.num_frames,
        "num_clips": args.num_clips,
    }
    if state.is_main_process:
        open_gallery_for_encoding(model, processor, args.output, **settings)
    state.wait_for_everyone()
    share = shard_items(list_media(args.videos), state.process_index, state.num_processes)
    gallery = encode_gallery(
        model,
        processor,
        share,
        path=args.output,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        resume=not args.no_resume,
        rank=state.process_index,
        progress=not args.no_progress and state.is_local_main_process,
        **settings,
    )
    state.wait_for_everyone()  # every rank's shards are written
    if state.is_main_process:
        gallery.refresh()
        _finish(gallery, args)
    state.wait_for_everyone()
    return gallery if state.is_main_process else None


def _finish(gallery: VideoGallery, args: argparse.Namespace) -> None:
    """The failures file and the first-stage indexes of the finished gallery (main process)."""
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
