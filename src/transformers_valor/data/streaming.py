"""Training batches streamed from WebDataset tar shards (`data.shards`), with exact resume.

Memory does not grow with the corpus: only the shard index (one count per shard) and a shuffle window of
`shuffle_buffer` samples per stream are held; rows are never copied into lists.

Layout of the streams. A run's processes and their DataLoader workers form `num_processes * num_workers` slots;
slot `rank * num_workers + worker` reads every `num_slots`-th shard of a dataset (`files[slot::num_slots]`), after
a seeded shuffle of the shard order per pass, so no two slots read the same shard and a dataset needs at least
`num_slots` shards. (`datasets.distributed.split_dataset_by_node` assigns shards the same way when their number is
a multiple of the slots, and otherwise has every slot read every shard and keep one sample in `num_slots`; the
assignment here never reads a shard twice.) Each shard is read with `datasets.load_dataset("webdataset",
streaming=True)` with feature decoding off (the media bytes are written to a temporary file that the collator
decodes as it decodes a video file, then deleted).

Shuffling is a window shuffle: `shuffle_buffer` samples are read, yielded in a seeded random order, then the next
window is read. A position is therefore small and exact: (pass, shard, sample within the shard where the window
starts, window number, samples of the window already used); resuming re-reads at most one window (and skips into
one shard) instead of saving the buffer's videos. `datasets`' own `shuffle(buffer_size)` cannot resume exactly:
its `state_dict` does not hold the buffer, which is refilled from the resume point.

Mixing follows the map-style rule (`datasets.MixedBatchSampler`): each global batch comes from ONE dataset, drawn
with the configured ratios by `datasets.dataset_choices` from `(seed, epoch)`, the same on every process. Batch
`k` of a run is built by worker `k % num_workers` (the DataLoader's round robin), which knows the dataset of every
step it builds, so all processes train the same dataset (and groups) at every step.

Every yielded batch carries the position of its worker's streams after it; the training loop keeps the position
of the last batch it took from each worker and saves them with the checkpoint (JSON), so a resumed run continues
with exactly the batches the uninterrupted run would have used. Samples that cannot be used are passed on as
failures and counted by the collator like undecodable videos: an unreadable media payload fails when decoded, a
JSON without captions at once, and when `datasets` cannot read on in a shard (a truncated tar, JSON that does not
parse) the samples of that shard not read yet are reported as lost (their number from the index) and the stream
moves to the next shard.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow
from torch.utils.data import IterableDataset, get_worker_info

from .datasets import DatasetConfig, batch_seed, dataset_choices
from .shards import ShardIndex

logger = logging.getLogger(__name__)

# What `datasets` raises when it cannot read on in a shard (a truncated tar, bad JSON, a type it cannot cast).
SHARD_READ_ERRORS = (tarfile.TarError, OSError, ValueError, TypeError, pyarrow.ArrowException)


@dataclass
class StreamPosition:
    """Where one dataset's stream of one slot stands: the pass, the shard and sample where the current shuffle
    window starts (in this slot's shard order of that pass), the window's number, and how many of the window's
    samples were used."""

    epoch: int = 0
    shard: int = 0
    sample: int = 0
    window: int = 0
    used: int = 0

    def state_dict(self) -> dict[str, int]:
        """Plain data."""
        return dict(vars(self))


class ShardStream:
    """
    The samples of one dataset for one slot, pass after pass, window-shuffled, from a resumable position.

    Args:
        index ([`ShardIndex`]): the dataset's shards.
        dataset_index (`int`): its position in the mix (part of the shuffling seeds).
        slot / num_slots (`int`): this (process, worker) slot and their number.
        seed (`int`): the run's seed.
        window (`int`): the shuffle window (`data.shuffle_buffer`).
        position ([`StreamPosition`], *optional*): where to start (a resumed run).
    """

    def __init__(
        self, index: ShardIndex, dataset_index: int, slot: int, num_slots: int, seed: int, window: int
    ):
        if len(index.shards) < num_slots:
            raise ValueError(
                f"{index.root} has {len(index.shards)} shard(s) but the run reads with {num_slots} streams "
                "(processes x DataLoader workers); each stream needs a shard of its own: pack it with a smaller "
                "--samples_per_shard, or use fewer `data.num_workers`."
            )
        self.index, self.dataset_index, self.slot, self.num_slots = index, dataset_index, slot, num_slots
        self.seed, self.window = seed, window
        self.position = StreamPosition()

    def shard_order(self, epoch: int) -> list[int]:
        """This slot's shards (indices into the index) in pass `epoch`."""
        order = np.random.default_rng([self.seed, self.dataset_index, epoch, 1]).permutation(
            len(self.index.shards)
        )
        return [int(i) for i in order[self.slot :: self.num_slots]]

    def _read_shard(self, shard: int, skip: int) -> Iterator[dict[str, Any]]:
        """The samples of shard `shard` from sample `skip` on; lost-sample markers for what cannot be read."""
        path = self.index.paths()[shard]
        read = skip
        try:
            table = datasets.load_dataset("webdataset", data_files=[path], split="train", streaming=True)
            # `iter`, not `for example in table`: inside a DataLoader worker the latter splits the shards between
            # the workers once more (each worker reads its own shards already), leaving all but one with nothing.
            for batch in table.decode(False).skip(skip).iter(batch_size=1):
                read += 1
                yield {key: values[0] for key, values in batch.items()}
        except SHARD_READ_ERRORS as err:
            lost = max(self.index.counts[shard] - read, 0)
            logger.error(
                "Shard %s cannot be read after sample %d (%s); %d sample(s) lost.", path, read, err, lost
            )
            for number in range(read, read + lost):
                yield {"__lost__": f"{type(err).__name__}: {err}", "__url__": path, "__key__": f"#{number}"}

    def _read_pass(self, epoch: int, shard_position: int, sample: int) -> Iterator[tuple[int, int, dict]]:
        """`(shard position, samples read in that shard, example)` from a position to the end of pass `epoch`."""
        for position, shard in enumerate(self.shard_order(epoch)[shard_position:], start=shard_position):
            for count, example in enumerate(self._read_shard(shard, sample), start=sample + 1):
                yield position, count, example
            sample = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Samples forever (pass after pass), from `self.position`; `self.position` follows every sample given."""
        while True:
            pos = self.position
            reader = self._read_pass(pos.epoch, pos.shard, pos.sample)
            produced = False
            while True:
                window = [next(reader, None) for _ in range(self.window)]
                window = [entry for entry in window if entry is not None]
                if not window:
                    break
                produced = True
                order = np.random.default_rng(
                    [self.seed, self.dataset_index, self.slot, pos.epoch, pos.window]
                ).permutation(len(window))
                end_shard, end_sample, _ = window[-1]
                for i in order[pos.used :]:
                    pos.used += 1
                    if pos.used == len(window):
                        pos.shard, pos.sample, pos.window, pos.used = end_shard, end_sample, pos.window + 1, 0
                    yield window[int(i)][2]
                if len(window) < self.window:
                    break
            if not produced and pos.shard == 0 and pos.sample == 0:
                raise ValueError(f"{self.index.root}: stream {self.slot} read no sample in pass {pos.epoch}.")
            self.position = StreamPosition(epoch=pos.epoch + 1)


def _load_position(state: dict[str, int]) -> StreamPosition:
    fields = set(StreamPosition().state_dict())
    if (
        not isinstance(state, dict)
        or set(state) != fields
        or not all(isinstance(v, int) and v >= 0 for v in state.values())
    ):
        raise ValueError(
            f"A stream position needs the non-negative integers {sorted(fields)}, got {state!r}."
        )
    return StreamPosition(**state)


class StreamingMixture(IterableDataset):
    """
    Training batches (lists of collator items) streamed from the shards of several datasets, one dataset per global
    batch, for DataLoader workers (use `batch_size=None`); see the module doc for the layout, shuffling and resume.

    Args:
        indexes (`list[ShardIndex]`) / configs (`list[DatasetConfig]`): the datasets of the mix.
        batch_size (`int`): per-process batch size.
        batches_per_epoch (`int`): global batches in an epoch of the mix (the mixing draws are per epoch).
        rank / num_processes (`int`): this process and the number of processes.
        num_workers (`int`): the DataLoader's workers (0: the main process reads).
        seed (`int`): the run's seed.
        shuffle_buffer (`int`): the shuffle window.

    Each yielded object is `{"items": [...], "state": {...}}`; `state` is the position of this worker's streams after
    the batch. Set `resume` ([`StreamingMixture.resume`]) before the DataLoader's iterator is created.
    """

    def __init__(
        self,
        indexes: Sequence[ShardIndex],
        configs: Sequence[DatasetConfig],
        batch_size: int,
        batches_per_epoch: int,
        rank: int = 0,
        num_processes: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 64,
    ):
        super().__init__()
        if len(indexes) != len(configs) or not indexes:
            raise ValueError("Give one shard index per dataset config, and at least one.")
        self.indexes, self.configs = list(indexes), list(configs)
        ratios = np.asarray([c.ratio for c in configs], dtype=np.float64)
        self.probabilities = ratios / ratios.sum()
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.rank, self.num_processes, self.seed, self.shuffle_buffer = (
            rank,
            num_processes,
            seed,
            shuffle_buffer,
        )
        self.num_workers = max(num_workers, 1)
        self.first_step = 0
        self.worker_states: dict[int, dict[str, Any]] = {}

    def resume(self, first_step: int, worker_states: dict[int, dict[str, Any]]) -> None:
        """Start at global step `first_step` with the workers' saved positions (`{worker: state}`)."""
        self.first_step, self.worker_states = first_step, dict(worker_states)

    def _worker(self) -> int:
        """This iterator's logical worker: the one that builds step `first_step` is started first."""
        info = get_worker_info()
        physical = info.id if info is not None else 0
        return (physical + self.first_step) % self.num_workers

    def _streams(self, worker: int, positions: dict[str, Any]) -> list[ShardStream]:
        slot = self.rank * self.num_workers + worker
        num_slots = self.num_processes * self.num_workers
        streams = []
        for d, index in enumerate(self.indexes):
            stream = ShardStream(index, d, slot, num_slots, self.seed, self.shuffle_buffer)
            if str(d) in positions:
                stream.position = _load_position(positions[str(d)])
            streams.append(stream)
        return streams

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = self._worker()
        state = self.worker_states.get(worker, {"next_step": worker, "streams": {}})
        streams = self._streams(worker, state["streams"])
        readers = [iter(s) for s in streams]
        step = int(state["next_step"])
        choices: dict[int, np.ndarray] = {}
        scratch = Path(tempfile.mkdtemp(prefix="valor-stream-"))
        try:
            while True:
                epoch, k = divmod(step, self.batches_per_epoch)
                if epoch not in choices:
                    choices = {
                        epoch: dataset_choices(self.seed, epoch, self.batches_per_epoch, self.probabilities)
                    }
                d = int(choices[epoch][k])
                seed = batch_seed(self.seed, epoch, k, self.rank)
                examples = [next(readers[d]) for _ in range(self.batch_size)]
                items = [self._item(example, d, seed, scratch, i) for i, example in enumerate(examples)]
                step += self.num_workers
                positions = {str(i): s.position.state_dict() for i, s in enumerate(streams)}
                yield {"items": items, "state": {"worker": worker, "next_step": step, "streams": positions}}
                # The collator has decoded the batch (it runs before the next item is asked for).
                for item in items:
                    if item.get("video_path", "").startswith(str(scratch)):
                        Path(item["video_path"]).unlink(missing_ok=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _item(self, example: dict[str, Any], d: int, seed: int, scratch: Path, i: int) -> dict[str, Any]:
        """A collator item from a shard sample: media bytes written to `scratch`, or the reason it is unusable."""
        source = f"{example.get('__url__')}#{example.get('__key__')}"
        meta = example.get("json") or {}
        item = {"sample_id": str(meta.get("sample_id") or source), "video_path": source, "source": source}
        item.update(dataset_index=d, batch_seed=seed, captions=[])
        if "__lost__" in example:
            return {**item, "decode_error": f"unreadable shard: {example['__lost__']}"}
        captions = [c for c in meta.get("captions") or [] if isinstance(c, str) and c.strip()]
        media = example.get(str(meta.get("media")))
        payload = media.get("bytes") if isinstance(media, dict) else media
        if not captions or not isinstance(payload, (bytes, bytearray)):
            return {**item, "decode_error": "the sample has no caption or no media payload in its shard"}
        path = scratch / f"{i}.{meta['media']}"
        path.write_bytes(payload)
        item.update(video_path=str(path), captions=captions)
        if meta.get("question") is not None:
            item["question"] = str(meta["question"])
        return item


def worker_states_from_dict(state: dict[str, Any], num_workers: int) -> dict[int, dict[str, Any]]:
    """The workers' positions of a saved stream state, checked against this run's number of workers."""
    if not isinstance(state, dict) or state.get("num_workers") != max(num_workers, 1):
        saved = state.get("num_workers") if isinstance(state, dict) else None
        raise ValueError(
            f"The checkpoint's data streams were read by {saved} worker(s) per process; this run has "
            f"{max(num_workers, 1)}: resume with the same `data.num_workers`."
        )
    workers = {}
    for key, value in state.get("workers", {}).items():
        streams = value.get("streams", {}) if isinstance(value, dict) else None
        if not isinstance(streams, dict) or not isinstance(value.get("next_step"), int):
            raise ValueError(f"Bad stream state of worker {key}: {value!r}.")
        for position in streams.values():
            _load_position(position)
        workers[int(key)] = copy.deepcopy(value)
    return workers


def streaming_collate(collator):
    """A DataLoader `collate_fn` for [`StreamingMixture`]: the collator's batch plus its `stream_state`."""

    def collate(batch: dict[str, Any]) -> dict[str, Any]:
        return {**collator(batch["items"]), "stream_state": batch["state"]}

    return collate
