"""Media items read from WebDataset tar shards (`data.shards`) for batch inference.

A packed dataset's shards are listed once: every tar member's header gives where its bytes start and how long they
are, and the sample's JSON gives its id. Decoding an item then reads its media bytes straight from that offset
(no scan of the tar), writes them to a temporary file with the media's extension, and decodes that file as
[`MediaDataset`] decodes any file. An item's path is `<shard>#<key>`, as the training stream reports it.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data.shards import ShardIndex, read_shard_index
from .dataset import MediaDataset, MediaItem


@dataclass(frozen=True)
class ShardMember:
    """Where one sample's media bytes are: the shard file, the byte offset and size, the media's extension."""

    shard: str
    offset: int
    size: int
    extension: str


# What reading a shard's headers and JSON members can raise on a damaged shard.
SHARD_LIST_ERRORS = (tarfile.TarError, OSError, UnicodeDecodeError, json.JSONDecodeError)


def _shard_members(shard: str) -> tuple[list[tuple[str, str, ShardMember]], str | None]:
    """`(sample_id, key, member)` of the samples of one shard read before any damage, and the error that stopped
    the reading (None for a whole shard)."""
    media: dict[str, tarfile.TarInfo] = {}
    metas: list[tuple[str, object]] = []
    error = None
    try:
        with tarfile.open(shard) as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if ext == "json":
                    metas.append((key, json.loads(tar.extractfile(info).read())))
                else:
                    media[key] = info
    except SHARD_LIST_ERRORS as err:
        error = f"unreadable shard: {type(err).__name__}: {err}"
    out = []
    for key, meta in metas:
        info = media.get(key)
        if info is None or not isinstance(meta, dict) or "sample_id" not in meta:
            raise ValueError(f"{shard}: sample {key} has no media member or no `sample_id` in its JSON.")
        member = ShardMember(shard, info.offset_data, info.size, info.name.partition(".")[2])
        out.append((str(meta["sample_id"]), key, member))
    return out, error


def list_shard_media(
    source: str | os.PathLike | ShardIndex,
) -> tuple[list[MediaItem], dict[str, ShardMember], list[dict[str, str]]]:
    """
    The items of a packed dataset (a folder with `shards.json`, or its [`ShardIndex`]), where each one's bytes
    are (by item id, the sample id), and the shards that could not be read to the end (`{"id", "path", "error"}`,
    the id and path being the shard's; the samples read before the damage are listed).

    Raises:
        ShardIndexError: no index, or a listed shard is missing.
        ValueError: a sample id occurs twice, or a sample has no media.
    """
    index = source if isinstance(source, ShardIndex) else read_shard_index(source)
    items, members, damaged = [], {}, []
    for shard in index.paths():
        samples, error = _shard_members(shard)
        if error is not None:
            damaged.append({"id": shard, "path": shard, "error": error})
        for sample_id, key, member in samples:
            if sample_id in members:
                raise ValueError(f"Sample id {sample_id!r} occurs twice in the shards of {index.root}.")
            members[sample_id] = member
            items.append(MediaItem(id=sample_id, path=f"{shard}#{key}"))
    return items, members, damaged


class ShardMediaDataset(MediaDataset):
    """
    A [`MediaDataset`] over samples packed in tar shards (see [`list_shard_media`]); the other arguments are
    [`MediaDataset`]'s.

    Args:
        members (`dict[str, ShardMember]`): where each item's bytes are, by item id.
    """

    def __init__(self, items: Sequence[MediaItem], members: dict[str, ShardMember], *args, **kwargs):
        super().__init__(items, *args, **kwargs)
        missing = [item.id for item in self.items if item.id not in members]
        if missing:
            raise ValueError(f"No shard member for items {missing[:5]}.")
        self.members = members

    def decode(self, item: MediaItem) -> dict[str, torch.Tensor]:
        """Read the item's bytes from its shard into a temporary file and decode that file."""
        member = self.members[item.id]
        with open(member.shard, "rb") as handle:
            handle.seek(member.offset)
            payload = handle.read(member.size)
        if len(payload) != member.size:
            raise OSError(f"{item.path}: the shard ends {member.size - len(payload)} bytes early")
        with tempfile.NamedTemporaryFile(suffix=f".{member.extension}") as media:
            media.write(payload)
            media.flush()
            return super().decode(MediaItem(item.id, media.name))
