"""Encoding a video collection into a [`VideoGallery`]: decoding in DataLoader workers, batched encoding, a progress
bar, resumable shards (built on `transformers_valor.inference`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..configuration_valor import get_modality_group
from ..inference.dataset import MediaDataset, MediaItem, list_media
from ..inference.runner import MemoryWriter, run_inference
from ..inference.writer import ShardedWriter
from .fingerprint import processor_description, settings_differences
from .gallery import DEFAULT_SHARD_SIZE, MANIFEST, SHARD_DIR, StorageDtype, VideoGallery, features_to_tensors


def _encode_step(model, modalities: tuple[str, ...], dtype: StorageDtype):
    """The batch step: MGA features of the decoded items as storage tensors, and each item's path."""

    def step(batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
        inputs = {
            k: v.to(model.device, model.dtype if v.is_floating_point() else None)
            for k, v in batch["inputs"].items()
        }
        tensors: dict[str, torch.Tensor] = {}
        if "video" in modalities:
            features = model.get_video_features(inputs["pixel_values_videos"])
            tensors.update(features_to_tensors("video", features, dtype))
        if "audio" in modalities:
            features = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
            tensors.update(features_to_tensors("audio", features, dtype))
        return tensors, [{"path": path} for path in batch["paths"]]

    return step


def _open_for_encoding(
    path: Path, model, modalities, dtype, processor_info, shard_size, rank
) -> VideoGallery:
    """The gallery in `path`, created (rank 0) or checked against this encoding's model, modalities, settings."""
    if not (path / MANIFEST).is_file():
        if rank != 0:
            raise FileNotFoundError(
                f"No gallery in {path}: rank 0 creates it before the other processes start."
            )
        return VideoGallery.create(model, modalities, path, dtype, processor_info, shard_size)
    gallery = VideoGallery.load(path, model=model, load_indexes=rank == 0)
    recorded = (gallery.processor_info or {}).get("settings", {})
    changed = settings_differences(recorded, processor_info["settings"])
    if gallery.modalities != tuple(modalities) or gallery.dtype != dtype or changed:
        raise ValueError(
            f"The gallery in {path} was encoded with modalities {list(gallery.modalities)} and dtype "
            f"{gallery.dtype}; this run asks for {list(modalities)} and {dtype}"
            + (f", and other decoding settings: {', '.join(changed)}" if changed else "")
            + ". Use another folder, or the same settings."
        )
    return gallery


def open_gallery_for_encoding(
    model,
    processor,
    path: str | os.PathLike,
    group: str = "tva",
    dtype: StorageDtype = "float32",
    shard_size: int = DEFAULT_SHARD_SIZE,
    num_frames: int | None = None,
    num_clips: int | None = None,
    processor_kwargs: dict[str, Any] | None = None,
) -> VideoGallery:
    """
    Create the gallery folder `path` for an encoding with these settings, or check that the gallery already there
    was encoded with them (the same model, modalities, storage type and decoding settings). A multi-process
    encoding calls this on the main process before the others start [`encode_gallery`] with their `rank`.

    Raises:
        ValueError: the folder holds a gallery encoded otherwise.
    """
    modalities = get_modality_group(group, "retrieval").candidates
    processor_info = processor_description(processor, num_frames, num_clips, processor_kwargs)
    return _open_for_encoding(Path(path), model, modalities, dtype, processor_info, shard_size, rank=0)


def encode_gallery(
    model,
    processor,
    items: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[MediaItem] | MediaDataset,
    path: str | os.PathLike | None = None,
    group: str = "tva",
    batch_size: int = 8,
    num_workers: int = 0,
    dtype: StorageDtype = "float32",
    shard_size: int = DEFAULT_SHARD_SIZE,
    num_frames: int | None = None,
    num_clips: int | None = None,
    processor_kwargs: dict[str, Any] | None = None,
    resume: bool = True,
    rank: int = 0,
    progress: bool = True,
    capture_errors: bool = True,
) -> VideoGallery:
    """
    Decode and encode media into a gallery, `batch_size` items at a time, decoding in `num_workers` DataLoader
    workers.

    With `path`, features are written to the gallery folder as shards of about `shard_size` items, named by
    `rank`; a run interrupted at any point resumes where it stopped when called again with the same arguments
    (finished shards are kept, their items skipped). Items that cannot be decoded are recorded (see
    `VideoGallery.failures()`) and skipped, or raised with `capture_errors=False`. Without `path` the gallery is
    kept in memory.

    Args:
        model ([`ValorModel`]): the encoder (its fingerprint is recorded; a resumed run must use the same).
        processor ([`ValorProcessor`]): decodes the media (middle frames and clips).
        items: a folder, a file list, paths, [`MediaItem`]s (ids and paths), or a ready [`MediaDataset`] (for
            media that are not files: override `MediaDataset.media`).
        path (`str`, *optional*): the gallery folder.
        group (`str`, defaults to `"tva"`): the retrieval group(s) to serve: `"tv"` encodes frames, `"ta"`
            soundtracks, `"tva"` both (every group).
        dtype (`str`, defaults to `"float32"`): feature storage type (`"float16"` halves the size).
        num_frames / num_clips / processor_kwargs: decoding settings (default: the processor's); recorded.
        resume (`bool`, defaults to `True`): continue a folder that already holds shards of this encoding.
        rank (`int`, defaults to 0): this process's rank in a multi-process launch (give each process its share
            of `items`); only rank 0 creates the gallery and commits shards, so call
            `VideoGallery.load(path).refresh()` on rank 0 once every process has finished.
        progress (`bool`, defaults to `True`): show a progress bar.

    Returns:
        The [`VideoGallery`] (for a saved one on rank 0, with every shard written so far committed).
    """
    spec = get_modality_group(group, "retrieval")
    modalities = spec.candidates
    if isinstance(items, MediaDataset):
        dataset = items
        processor_info = processor_description(dataset.processor, num_frames, num_clips, dataset.kwargs)
    else:
        if isinstance(items, (str, os.PathLike)) or not all(isinstance(i, MediaItem) for i in items):
            items = list_media(items)
        dataset = MediaDataset(
            items,
            processor,
            spec.media,
            num_frames,
            num_clips,
            processor_kwargs,
            capture_errors=capture_errors,
        )
        processor_info = processor_description(processor, num_frames, num_clips, processor_kwargs)
    step = _encode_step(model, modalities, dtype)
    if path is None:
        gallery = VideoGallery.create(model, modalities, None, dtype, processor_info, shard_size)
        writer = MemoryWriter()
        run_inference(dataset, step, writer, batch_size, num_workers, resume, "encoding gallery", progress)
        gallery.add_storage(
            writer.ids, [r["path"] for r in writer.records], writer.tensors(), writer.failures
        )
        return gallery
    path = Path(path)
    gallery = _open_for_encoding(path, model, modalities, dtype, processor_info, shard_size, rank)
    writer = ShardedWriter(path / SHARD_DIR, rank=rank, shard_size=shard_size)
    run_inference(dataset, step, writer, batch_size, num_workers, resume, "encoding gallery", progress)
    if rank == 0:
        gallery.refresh()
    return gallery
