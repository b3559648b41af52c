"""The batch-inference loop: DataLoader workers decode, one step function runs the model on each batch, a writer
keeps the results, a progress bar shows the way, and a resumed run skips what was already written."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader
from transformers.utils import logging

from .dataset import MediaDataset, collate_media

logger = logging.get_logger(__name__)

# step(batch) -> (tensors with one row per decoded item or None, one JSON-able record per item or None)
StepFunction = Callable[[dict[str, Any]], tuple[dict[str, torch.Tensor] | None, list[dict[str, Any]] | None]]


class ResultWriter(Protocol):
    """What `run_inference` writes to: [`ShardedWriter`] (files, resumable) or [`MemoryWriter`]."""

    def done_ids(self) -> set[str]: ...

    def add(self, ids, tensors=None, records=None, failures=()) -> str | None: ...

    def close(self) -> str | None: ...


@dataclass
class InferenceSummary:
    """What one `run_inference` call did: items in the dataset, skipped as already written, processed now (decoded
    and written), and the failures of this call (`{"id", "path", "error"}`)."""

    total: int
    skipped: int
    processed: int
    failures: list[dict[str, str]] = field(default_factory=list)


class MemoryWriter:
    """A [`ResultWriter`] that keeps every batch in memory (nothing to resume): `ids`, `records`, `failures` and
    `tensors()` (the batches concatenated)."""

    def __init__(self):
        self.ids: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.failures: list[dict[str, str]] = []
        self._parts: list[dict[str, torch.Tensor]] = []

    def done_ids(self) -> set[str]:
        """Nothing is ever done before a run."""
        return set()

    def add(self, ids, tensors=None, records=None, failures=()) -> None:
        """Keep one batch."""
        self.ids.extend(ids)
        self.records.extend(records if records is not None else [{} for _ in ids])
        if ids and tensors:
            self._parts.append(dict(tensors))
        self.failures.extend(failures)

    def close(self) -> None:
        """Nothing to write."""

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every batch's tensors concatenated along the rows (empty when nothing was kept)."""
        if not self._parts:
            return {}
        return {key: torch.cat([part[key] for part in self._parts]) for key in self._parts[0]}


def run_inference(
    dataset: MediaDataset,
    step: StepFunction,
    writer: ResultWriter,
    batch_size: int = 8,
    num_workers: int = 0,
    resume: bool = True,
    desc: str = "inference",
    progress: bool = True,
) -> InferenceSummary:
    """
    Decode `dataset` in DataLoader workers, run `step` on every batch (under `torch.no_grad`) and give the results
    to `writer`, with a progress bar (hidden by `transformers.utils.logging.disable_progress_bar()`).

    Args:
        dataset ([`MediaDataset`]): the items (for a multi-process launch, this process's share: `shard_items`).
        step (`Callable`): `step(batch) -> (tensors, records)`; `batch` is `collate_media`'s output with at least
            one decoded item; `tensors` have one row per decoded item, `records` one dict per item (either may
            be `None`).
        writer: where results go; its `done_ids()` are skipped when `resume` is set.
        batch_size (`int`, defaults to 8): items per batch.
        num_workers (`int`, defaults to 0): decoding processes (0 decodes in this process).
        resume (`bool`, defaults to `True`): skip the items the writer already holds. With `False`, a writer that
            already holds results is an error (nothing is overwritten).
        desc (`str`): the progress bar's label.
        progress (`bool`, defaults to `True`): show the progress bar.

    Returns:
        An [`InferenceSummary`]. Items that fail to decode are given to the writer as failures, not raised
        (unless the dataset was built with `capture_errors=False`).
    """
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"Need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}.")
    done = writer.done_ids()
    if done and not resume:
        raise ValueError(
            f"The output already holds {len(done)} results; pass resume=True to continue it or use an empty folder."
        )
    pending = [item for item in dataset.items if item.id not in done]
    skipped = len(dataset.items) - len(pending)
    if skipped:
        logger.info("Resuming: %d of %d items are already written.", skipped, len(dataset.items))
    loader = DataLoader(
        dataset.subset(pending),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_media,
        # fork keeps the processor without pickling it; spawn elsewhere.
        multiprocessing_context="fork" if num_workers and os.name == "posix" else None,
    )
    summary = InferenceSummary(total=len(dataset.items), skipped=skipped, processed=0)
    bar = logging.tqdm(
        total=len(dataset.items), initial=skipped, desc=desc, unit="item", disable=not progress
    )
    try:
        with torch.no_grad():
            for batch in loader:
                tensors, records = step(batch) if batch["inputs"] is not None else (None, None)
                writer.add(batch["ids"], tensors, records, batch["failures"])
                summary.processed += len(batch["ids"]) + len(batch["failures"])
                summary.failures.extend(batch["failures"])
                bar.update(len(batch["ids"]) + len(batch["failures"]))
    finally:
        bar.close()
        # Also on an interruption: the finished batches are written, so a resumed run starts after them.
        writer.close()
    for failure in summary.failures:
        logger.warning("Could not decode %s (%s): %s", failure["id"], failure["path"], failure["error"])
    return summary
