"""Captioning a collection of media files into JSONL, resumable, one share per process (built on `runner`).

Each process captions its share of the items ([`shard_items`]) and writes its captions as sidecar-only shards
(`<output>/shards/captions-r<rank>-<index>.json`, see `writer.ShardedWriter`): an interrupted run, started again
with the same arguments (and any number of processes), skips every item a finished shard holds. When every
process is done, the main process merges the shards into `<output>/captions.jsonl` (one `{"id", "path",
"caption"}` line per item, in input order) and `<output>/failures.jsonl` (`{"id", "path", "error"}` of every item
that could not be decoded, and of shards that could not be read), both written atomically. The settings of the
run (model, group, decoding, generation) are kept in `<output>/caption_settings.json`; resuming with other
settings is refused, so one output never mixes captions of two models or two decodings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..configuration_valor import get_modality_group
from .dataset import MediaDataset, MediaItem
from .runner import InferenceSummary, run_inference
from .writer import ShardedWriter, read_shards, write_atomic

CAPTIONS_FILE = "captions.jsonl"
FAILURES_FILE = "failures.jsonl"
SETTINGS_FILE = "caption_settings.json"
SHARD_DIR = "shards"
SHARD_PREFIX = "captions"


def caption_step(model, processor, group: str, generate_kwargs: dict[str, Any] | None = None):
    """The batch step of [`run_inference`]: one generated caption per decoded item, conditioned on what caption
    group `group` gives the decoder (`tv`: frames, `ta`: soundtrack, `tva`: both)."""
    media = get_modality_group(group, "caption").media
    kwargs = dict(generate_kwargs or {})

    def step(batch: dict[str, Any]) -> tuple[None, list[dict[str, Any]]]:
        inputs = {
            key: value.to(model.device, model.dtype if value.is_floating_point() else None)
            for key, value in batch["inputs"].items()
        }
        ids = model.generate(**inputs, modalities=media, **kwargs)
        captions = processor.batch_decode(ids, skip_special_tokens=True)
        return None, [{"path": p, "caption": c} for p, c in zip(batch["paths"], captions)]

    return step


def check_settings(output: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Record the run's `settings` in a new output folder, or check that they are those of the run that made it.

    Raises:
        ValueError: the folder holds captions made with other settings (the message names what differs).
    """
    path = Path(output) / SETTINGS_FILE
    settings = json.loads(json.dumps(settings))
    if not path.is_file():
        Path(output).mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(settings, indent=1, sort_keys=True))
        return
    recorded = json.loads(path.read_text())
    changed = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
    if changed:
        details = ", ".join(f"{k}: {recorded.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        raise ValueError(
            f"{output} holds captions made with other settings ({details}); use another folder, or the same "
            "settings to resume."
        )


def caption_media(
    model,
    processor,
    dataset: MediaDataset,
    output: str | os.PathLike,
    group: str = "tva",
    rank: int = 0,
    batch_size: int = 8,
    num_workers: int = 0,
    shard_size: int = 256,
    resume: bool = True,
    progress: bool = True,
    generate_kwargs: dict[str, Any] | None = None,
) -> InferenceSummary:
    """
    Caption the items of `dataset` (this process's share) into shards under `<output>/shards`, named by `rank`;
    items already in a finished shard of any process are skipped when `resume` is set. Items that cannot be
    decoded are recorded as failures, never raised. Call [`merge_outputs`] on one process once all are done.

    Args:
        model ([`ValorForConditionalGeneration`]): the captioner, on its device.
        processor ([`ValorProcessor`]): decodes the media and the generated ids.
        dataset ([`MediaDataset`]): the items, decoded with the modalities `group` reads.
        group (`str`, defaults to `"tva"`): the caption group (`tv`, `ta`, `tva`).
        shard_size (`int`, defaults to 256): captions per output shard (what an interruption can cost).
        generate_kwargs (`dict`, *optional*): `generate()` arguments (default: the model's generation config,
            VALOR's beam 3 and 30 new tokens).
    """
    writer = ShardedWriter(Path(output) / SHARD_DIR, rank=rank, shard_size=shard_size, prefix=SHARD_PREFIX)
    step = caption_step(model, processor, group, generate_kwargs)
    return run_inference(dataset, step, writer, batch_size, num_workers, resume, "captioning", progress)


def merge_outputs(
    output: str | os.PathLike, items: Sequence[MediaItem], extra_failures: Sequence[dict[str, str]] = ()
) -> tuple[int, int]:
    """
    Merge every process's shards into `captions.jsonl` (in the order of `items`; captions of items no longer
    listed follow, by id) and `failures.jsonl` (`extra_failures` first, e.g. unreadable input shards), atomically.

    Returns:
        `(captions, failures)`: the lines written to each file.
    """
    captions: dict[str, dict[str, Any]] = {}
    failures: dict[str, dict[str, str]] = {}
    for shard in read_shards(Path(output) / SHARD_DIR, SHARD_PREFIX):
        for item_id, record in zip(shard.ids, shard.records):
            captions[item_id] = {"id": item_id, **record}
        failures.update((failure["id"], failure) for failure in shard.failures)
    order = {item.id: position for position, item in enumerate(items)}
    ranked = sorted(captions, key=lambda i: (order.get(i, len(order)), i))
    write_atomic(Path(output) / CAPTIONS_FILE, "".join(json.dumps(captions[i]) + "\n" for i in ranked))
    failed = [
        *extra_failures,
        *(failures[i] for i in sorted(failures, key=lambda i: order.get(i, len(order)))),
    ]
    write_atomic(Path(output) / FAILURES_FILE, "".join(json.dumps(f) + "\n" for f in failed))
    return len(ranked), len(failed)


def read_captions(output: str | os.PathLike) -> dict[str, str]:
    """`{id: caption}` from a finished output folder's `captions.jsonl`."""
    lines = (Path(output) / CAPTIONS_FILE).read_text().splitlines()
    return {row["id"]: row["caption"] for row in map(json.loads, lines)}
