"""Media inputs for batch inference: listing files, splitting them between processes, decoding them in DataLoader
workers through [`ValorProcessor`] with per-item error capture."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..data.collator import DECODE_ERRORS

Modalities = Literal["video", "audio", "both"]
MEDIA_EXTENSIONS: tuple[str, ...] = (
    ".mp4",
    ".mkv",
    ".webm",
    ".avi",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".wav",
    ".flac",
    ".mp3",
    ".m4a",
    ".ogg",
)
"""File extensions `list_media` picks up in a folder."""


@dataclass(frozen=True)
class MediaItem:
    """One input: a unique id and the media file it is decoded from."""

    id: str
    path: str


def list_media(
    source: str | os.PathLike | Sequence[str | os.PathLike], extensions=MEDIA_EXTENSIONS
) -> list[MediaItem]:
    """
    The media items of a folder, a file list or a sequence of paths; an item's id is its path.

    Args:
        source: a folder (every file with one of `extensions` below it, recursively, in sorted order), a text file
            with one path per line (relative paths are read against the file's folder; blank lines and lines
            starting with `#` are skipped), or a sequence of paths.
        extensions: the file extensions taken from a folder (lower case, with the dot).

    Raises:
        FileNotFoundError: `source` is a path that does not exist.
        ValueError: the same path is listed twice, or there is nothing to list.
    """
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if root.is_dir():
            paths = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        elif root.is_file():
            lines = [line.strip() for line in root.read_text().splitlines()]
            paths = [str(root.parent / line) for line in lines if line and not line.startswith("#")]
        else:
            raise FileNotFoundError(f"No such folder or file list: {os.fspath(source)!r}")
    else:
        paths = [os.fspath(p) for p in source]
    if not paths:
        raise ValueError(f"No media found in {source!r}.")
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise ValueError(f"{path!r} is listed twice; every item needs a unique path.")
        seen.add(path)
    return [MediaItem(id=path, path=path) for path in paths]


def shard_items(items: Sequence[MediaItem], rank: int, world_size: int) -> list[MediaItem]:
    """The items process `rank` of `world_size` handles: every `world_size`-th item starting at `rank`."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"Need 0 <= rank < world_size, got rank {rank} and world_size {world_size}.")
    return list(items[rank::world_size])


class MediaDataset(torch.utils.data.Dataset):
    """
    Decode media items with a [`ValorProcessor`] (middle frames and clips, as in evaluation), one item per index,
    so that DataLoader workers decode in parallel.

    Args:
        items (`list[MediaItem]`): what to decode.
        processor ([`ValorProcessor`]): the processor.
        modalities (`str`): `"video"` (frames only), `"audio"` (soundtrack only) or `"both"`.
        num_frames / num_clips (`int`, *optional*): frames / audio clips per item (default: the processor's).
        processor_kwargs (`dict`, *optional*): further processor arguments (`size`, `video_backend`, ...).
        capture_errors (`bool`, defaults to `True`): return a failed item with its error message instead of
            raising (the error types of `data.collator.DECODE_ERRORS`).

    An item is `{"id", "path", "inputs", "error"}`: `inputs` holds the processor outputs without the batch
    axis (`pixel_values_videos`, `input_features`, `input_features_mask`), or `None` with the error message.
    Subclasses may override `media` to decode something other than a file (e.g. rendered arrays).
    """

    def __init__(
        self,
        items: Sequence[MediaItem],
        processor,
        modalities: Modalities = "both",
        num_frames: int | None = None,
        num_clips: int | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        capture_errors: bool = True,
    ):
        if modalities not in ("video", "audio", "both"):
            raise ValueError(f"`modalities` must be 'video', 'audio' or 'both', got {modalities!r}.")
        self.items = list(items)
        self.processor = processor
        self.modalities = modalities
        self.capture_errors = capture_errors
        self.kwargs = dict(processor_kwargs or {})
        if modalities != "audio" and num_frames is not None:
            self.kwargs["num_frames"] = num_frames
        if modalities != "video" and num_clips is not None:
            self.kwargs["num_clips"] = num_clips

    def __len__(self) -> int:
        return len(self.items)

    def media(self, item: MediaItem) -> dict[str, Any]:
        """The processor's media arguments for `item` (`videos=` and/or `audio=`, as one-element lists)."""
        if self.modalities == "audio":
            return {"audio": [item.path]}
        return {"videos": [item.path], "audio_from_video": self.modalities == "both"}

    def decode(self, item: MediaItem) -> dict[str, torch.Tensor]:
        """The processor's outputs for one item, without the batch axis."""
        with warnings.catch_warnings():
            # A video without a soundtrack is a valid item (masked audio); the extractor warns on every call.
            warnings.simplefilter("ignore", UserWarning)
            out = self.processor(**self.media(item), return_tensors="pt", **self.kwargs)
        return {key: value[0] for key, value in out.items()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        try:
            inputs, error = self.decode(item), None
        except DECODE_ERRORS as err:
            if not self.capture_errors:
                raise
            inputs, error = None, f"{type(err).__name__}: {err}"
        return {"id": item.id, "path": item.path, "inputs": inputs, "error": error}

    def subset(self, keep: Sequence[MediaItem]) -> MediaDataset:
        """The same dataset over `keep` (for example the items a resumed run has still to do)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.items = list(keep)
        return clone


def collate_media(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """
    Stack the decoded items of a batch; failed items go to `failures`.

    Returns:
        `{"ids", "paths", "inputs", "failures"}`: the ids and paths of the decoded items, their stacked inputs
        (`None` when every item failed) and `[{"id", "path", "error"}, ...]`.
    """
    kept = [item for item in batch if item["error"] is None]
    failures = [
        {"id": i["id"], "path": i["path"], "error": i["error"]} for i in batch if i["error"] is not None
    ]
    inputs = None
    if kept:
        inputs = {key: torch.stack([item["inputs"][key] for item in kept]) for key in kept[0]["inputs"]}
    return {
        "ids": [item["id"] for item in kept],
        "paths": [item["path"] for item in kept],
        "inputs": inputs,
        "failures": failures,
    }
