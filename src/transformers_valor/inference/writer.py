"""Sharded, resumable output for batch inference: each process writes its own shards, atomically.

A shard is `<prefix>-r<rank:05d>-<index:06d>`: a safetensors file with the batch tensors of its rows (absent when
the shard has no tensors or no rows) and a JSON sidecar written after it with the row ids, one record per row
(captions, paths, ...) and the items that failed. A shard counts as written once its sidecar exists, so an
interrupted run leaves at most one unfinished shard per process, which the next run ignores and overwrites.
Shard names carry the process rank, so processes of a multi-process launch never write the same file; the ids
of every complete shard of every rank are what a resumed run skips.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

SIDECAR_FORMAT = "valor-shard"
SIDECAR_VERSION = 1


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder, synced, then renamed over `path`:
    readers see the old file or the new one, never a truncated one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(tmp, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class ShardInfo:
    """A complete shard: its name, its folder, the ids of its rows and their records, and its failures."""

    name: str
    directory: Path
    ids: list[str]
    records: list[dict[str, Any]]
    failures: list[dict[str, str]]
    has_tensors: bool

    @property
    def tensor_path(self) -> Path:
        """The safetensors file of the shard's rows."""
        return self.directory / f"{self.name}.safetensors"


def shard_name(prefix: str, rank: int, index: int) -> str:
    """The name of shard `index` of process `rank`: `<prefix>-r<rank:05d>-<index:06d>`."""
    return f"{prefix}-r{rank:05d}-{index:06d}"


def _shard_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(prefix)}-r(\d{{5}})-(\d{{6}})")


def read_shards(directory: str | os.PathLike, prefix: str = "shard") -> list[ShardInfo]:
    """Every complete shard in `directory` (those with a sidecar), ordered by rank then index.

    Raises:
        ValueError: a sidecar that is not a shard sidecar, or whose tensors file is missing.
    """
    directory = Path(directory)
    pattern = _shard_pattern(prefix)
    found = []
    for sidecar in directory.glob(f"{prefix}-r*.json") if directory.is_dir() else ():
        match = pattern.fullmatch(sidecar.stem)
        if match:
            found.append((int(match.group(1)), int(match.group(2)), sidecar))
    shards = []
    for _, _, sidecar in sorted(found):
        meta = json.loads(sidecar.read_text())
        if meta.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"{sidecar} is not a shard sidecar (format {meta.get('format')!r}).")
        info = ShardInfo(
            name=sidecar.stem,
            directory=directory,
            ids=list(meta["ids"]),
            records=list(meta["records"]),
            failures=list(meta["failures"]),
            has_tensors=bool(meta["has_tensors"]),
        )
        if info.has_tensors and not info.tensor_path.is_file():
            raise ValueError(
                f"Shard {info.name} in {directory} lists tensors but {info.tensor_path} is missing."
            )
        shards.append(info)
    return shards


class ShardedWriter:
    """
    Buffer per-row results of one process and write them as shards of about `shard_size` rows.

    Args:
        directory (`str` or `os.PathLike`): the output folder (created if missing), shared by every process.
        rank (`int`, defaults to 0): this process's rank; it is part of every shard name.
        shard_size (`int`, defaults to 1024): rows buffered before a shard is written (a shard holds whole
            batches, so it may be slightly larger).
        prefix (`str`, defaults to `"shard"`): the shard name prefix.

    `add` buffers a batch; `flush` (called by `add` when the buffer is full, and by `close`) writes one shard and
    returns its name. `done_ids()` lists the ids already written by any rank, for resuming.
    """

    def __init__(
        self, directory: str | os.PathLike, rank: int = 0, shard_size: int = 1024, prefix: str = "shard"
    ):
        if rank < 0:
            raise ValueError(f"`rank` must be >= 0, got {rank}.")
        if shard_size < 1:
            raise ValueError(f"`shard_size` must be >= 1, got {shard_size}.")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rank, self.shard_size, self.prefix = rank, shard_size, prefix
        self._ids: list[str] = []
        self._records: list[dict[str, Any]] = []
        self._tensors: list[dict[str, torch.Tensor]] = []
        self._failures: list[dict[str, str]] = []
        self._next_index = self._first_free_index()

    def _first_free_index(self) -> int:
        # Unfinished shards of an interrupted run (tensors without a sidecar) keep their number: they are rewritten.
        pattern = _shard_pattern(self.prefix)
        indices = [-1]
        for path in self.directory.glob(f"{self.prefix}-r{self.rank:05d}-*.json"):
            match = pattern.fullmatch(path.stem)
            if match:
                indices.append(int(match.group(2)))
        return max(indices) + 1

    def done_ids(self) -> set[str]:
        """Ids written by any rank, successes and failures: what a resumed run skips."""
        done: set[str] = set()
        for shard in read_shards(self.directory, self.prefix):
            done.update(shard.ids)
            done.update(failure["id"] for failure in shard.failures)
        return done

    @property
    def buffered(self) -> int:
        """Rows waiting to be written."""
        return len(self._ids)

    def add(
        self,
        ids: Sequence[str],
        tensors: dict[str, torch.Tensor] | None = None,
        records: Sequence[dict[str, Any]] | None = None,
        failures: Sequence[dict[str, str]] = (),
    ) -> str | None:
        """
        Buffer one batch: `tensors` with `len(ids)` rows each (*optional*), one JSON-able record per row
        (*optional*) and the batch's failures (`{"id", "path", "error"}` dicts). Returns the name of the shard
        written when the buffer reached `shard_size`, else `None`.
        """
        ids = [str(i) for i in ids]
        for name, value in (tensors or {}).items():
            if value.shape[0] != len(ids):
                raise ValueError(f"Tensor {name!r} has {value.shape[0]} rows for {len(ids)} ids.")
        if records is not None and len(records) != len(ids):
            raise ValueError(f"Got {len(records)} records for {len(ids)} ids.")
        if self._tensors and ids and set(tensors or {}) != set(self._tensors[0]):
            raise ValueError(f"Tensor names {sorted(tensors or {})} differ from {sorted(self._tensors[0])}.")
        self._ids.extend(ids)
        self._records.extend(records if records is not None else [{} for _ in ids])
        if ids and tensors:
            self._tensors.append({name: value.detach().cpu().contiguous() for name, value in tensors.items()})
        self._failures.extend({k: str(failure[k]) for k in ("id", "path", "error")} for failure in failures)
        return self.flush() if len(self._ids) >= self.shard_size else None

    def flush(self) -> str | None:
        """Write the buffered rows and failures as one shard (tensors first, then the sidecar); return its name,
        or `None` when nothing is buffered."""
        if not self._ids and not self._failures:
            return None
        name = shard_name(self.prefix, self.rank, self._next_index)
        has_tensors = bool(self._tensors)
        if has_tensors:
            merged = {key: torch.cat([part[key] for part in self._tensors]) for key in self._tensors[0]}
            write_atomic(self.directory / f"{name}.safetensors", save(merged))
        sidecar = {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "ids": self._ids,
            "records": self._records,
            "failures": self._failures,
            "has_tensors": has_tensors,
        }
        write_atomic(self.directory / f"{name}.json", json.dumps(sidecar))
        self._next_index += 1
        self._ids, self._records, self._tensors, self._failures = [], [], [], []
        return name

    def close(self) -> str | None:
        """Write what is still buffered (see `flush`)."""
        return self.flush()
