"""The command line of `examples/caption_videos.py`: caption a folder, a file list or WebDataset shards of videos
into `<output>/captions.jsonl`, on one process or many (`accelerate launch`, `torchrun`).

    python examples/caption_videos.py --model path/to/valor --videos /data/videos --output /data/captions
    accelerate launch --multi_gpu --num_processes 8 examples/caption_videos.py --model m --videos list.txt \
        --output out --num_workers 4
    python examples/caption_videos.py --model m --videos /data/valor1m_shards --output out   # has shards.json

Every process takes every `world_size`-th item and writes its own shards (see `inference.captioning`); starting the
same command again resumes. Undecodable files are listed by path in `<output>/failures.jsonl`.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import PartialState

from ..configuration_valor import CAPTION_GROUPS, get_modality_group
from ..data.shards import INDEX_NAME
from .captioning import CAPTIONS_FILE, FAILURES_FILE, caption_media, check_settings, merge_outputs
from .dataset import MediaDataset, list_media, shard_items
from .shard_media import ShardMediaDataset, list_shard_media

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line arguments."""
    parser = argparse.ArgumentParser(description="Caption videos with VALOR into JSONL.")
    parser.add_argument("--model", required=True, help="A VALOR checkpoint (folder or hub id).")
    parser.add_argument("--processor", default=None, help="The processor (default: the model's).")
    parser.add_argument(
        "--videos", required=True, help="A folder of media files, a text file of paths, or a shard folder."
    )
    parser.add_argument("--output", required=True, help="The output folder (created, or resumed).")
    parser.add_argument("--group", default="tva", choices=CAPTION_GROUPS, help="Conditioning: tv, ta or tva.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=2, help="Decoding processes per process.")
    parser.add_argument("--shard_size", type=int, default=256, help="Captions per output shard.")
    parser.add_argument("--num_frames", type=int, default=None)
    parser.add_argument("--num_clips", type=int, default=None)
    parser.add_argument("--num_beams", type=int, default=None, help="Default: the model's (VALOR: 3).")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="Default: the model's (VALOR: 30).")
    parser.add_argument(
        "--no_resume", action="store_true", help="Refuse a folder that already holds captions."
    )
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bar.")
    return parser.parse_args(argv)


def _dataset(args: argparse.Namespace, processor) -> tuple[MediaDataset, list[dict[str, str]]]:
    """Every item of `--videos` (folder, file list or shards) and the input shards that could not be read."""
    media = get_modality_group(args.group, "caption").media
    options = (processor, media, args.num_frames, args.num_clips)
    source = Path(args.videos)
    if (source / INDEX_NAME).is_file():
        items, members, damaged = list_shard_media(source)
        return ShardMediaDataset(items, members, *options), damaged
    return MediaDataset(list_media(source), *options), []


def launched_state() -> PartialState:
    """The process layout of the launch (`accelerate launch`, `torchrun` or one process), on the CPU where there is
    no GPU.

    Raises:
        RuntimeError: more processes were launched (`WORLD_SIZE`) than Accelerate counts: every rank would act as
            the main process and write the same shards.
    """
    state = PartialState(cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise RuntimeError(
            f"{launched} processes were launched (WORLD_SIZE) but Accelerate counts {state.num_processes}; "
            "launch with `accelerate launch --multi_gpu --num_processes N` or `torchrun --nproc_per_node N`."
        )
    return state


def caption_videos_main(argv: Sequence[str] | None = None) -> tuple[int, int]:
    """Run the command line on this process; returns `(captions, failures)` written (on every process)."""
    from ..modeling_valor import ValorForConditionalGeneration
    from ..processing_valor import ValorProcessor

    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    state = launched_state()
    processor = ValorProcessor.from_pretrained(args.processor or args.model)
    model = ValorForConditionalGeneration.from_pretrained(args.model).to(state.device).eval()
    generate_kwargs = {
        k: getattr(args, k) for k in ("num_beams", "max_new_tokens") if getattr(args, k) is not None
    }
    settings = {
        "model": args.model,
        "processor": args.processor or args.model,
        "group": args.group,
        "num_frames": args.num_frames,
        "num_clips": args.num_clips,
        "generate": generate_kwargs,
    }
    if state.is_main_process:
        check_settings(args.output, settings)
    state.wait_for_everyone()
    if not state.is_main_process:
        check_settings(args.output, settings)  # written by the main process: a check only
    dataset, damaged = _dataset(args, processor)
    share = dataset.subset(shard_items(dataset.items, state.process_index, state.num_processes))
    summary = caption_media(
        model,
        processor,
        share,
        args.output,
        args.group,
        state.process_index,
        args.batch_size,
        args.num_workers,
        args.shard_size,
        resume=not args.no_resume,
        progress=not args.no_progress and state.is_local_main_process,
        generate_kwargs=generate_kwargs,
    )
    logger.info(
        "process %d: %d items, %d already done, %d captioned now, %d failed",
        state.process_index,
        summary.total,
        summary.skipped,
        summary.processed - len(summary.failures),
        len(summary.failures),
    )
    state.wait_for_everyone()
    counts = merge_outputs(args.output, dataset.items, damaged) if state.is_main_process else (0, 0)
    if state.is_main_process:
        print(
            f"{args.output}: {counts[0]} captions in {CAPTIONS_FILE}, {counts[1]} failures in {FAILURES_FILE}"
        )
    state.wait_for_everyone()
    return counts
