"""The training data of a run: the DataLoader over the dataset mix and where a run stands in it.

Two kinds, chosen by the datasets' formats (a run reads all of its datasets one way):

- map-style ([`MapStyleData`]): annotation tables (`metadata`, `valor_json`, `hub`, ...) behind a
  `MixedBatchSampler`, optionally a decoded cache; a position is the number of batches consumed (the order is a
  pure function of `(seed, epoch)`, resumed with `accelerator.skip_first_batches`);
- streamed ([`StreamingData`]): `format: webdataset` shards (`data.streaming.StreamingMixture`); a position is the
  place of every worker's streams, saved with the checkpoint.

Both give batches forever (epoch after epoch) through `batches(accelerator, consumed)`; the loop calls `record`
with every batch it trains on, and a checkpoint stores the streamed data's `state_dict()` (per process, JSON).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..configuration_valor import ValorConfig
from ..data.collator import ValorTrainingCollator, build_decoded_cache
from ..data.datasets import STREAMED_FORMATS, MixedBatchSampler, MixedVideoTextDataset, load_mixture
from ..data.masking import CaptionMaskingConfig
from ..data.shards import read_shard_index
from ..data.streaming import StreamingMixture, streaming_collate, worker_states_from_dict
from ..processing_valor import ValorProcessor
from .config import RunConfig
from .safe_state import StateFileError

logger = logging.getLogger(__name__)


def _attach_decoded_caches(
    mix: MixedVideoTextDataset, config: RunConfig, processor: ValorProcessor, accelerator: Accelerator
) -> None:
    """Decode every dataset once (the main process first; the others then load its files) and serve the tensors."""
    data = config.data
    cache_dir = data.cache_dir or os.path.join(config.training.output_dir, "decoded_cache")
    num_workers = data.cache_num_workers if data.cache_num_workers is not None else os.cpu_count() or 1
    with accelerator.main_process_first():
        for index, dataset_config in enumerate(config.datasets):
            cache = build_decoded_cache(
                mix.rows(index),
                dataset_config,
                processor,
                cache_dir,
                num_workers=num_workers,
                dtype=data.cache_dtype,
                progress=accelerator.is_local_main_process,
            )
            mix.attach_cache(index, cache)


def _collator(
    config: RunConfig, processor: ValorProcessor, model_config: ValorConfig
) -> ValorTrainingCollator:
    return ValorTrainingCollator(
        processor,
        config.datasets,
        CaptionMaskingConfig.from_model_config(model_config.text_config),
        max_text_length=config.data.max_text_length,
        caption_objective=model_config.caption_objective,
        training=True,
    )


class MapStyleData:
    """
    Annotation tables behind a [`MixedBatchSampler`] (this process's slice of every global batch) and the
    collator. The DataLoader has its own `torch.Generator`, so creating its iterator never consumes the global RNG
    (which drives dropout): a resumed run keeps the same random stream as the uninterrupted one.
    """

    def __init__(self, loader: DataLoader, sampler: MixedBatchSampler, mix: MixedVideoTextDataset):
        self.loader, self.sampler, self.mix = loader, sampler, mix

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches in an epoch of the mix."""
        return len(self.sampler)

    def batches(self, accelerator: Accelerator, consumed: int) -> Iterator[dict[str, Any]]:
        """Batches from the one after the first `consumed`, epoch after epoch (skipped ones are not decoded)."""
        while True:
            epoch, offset = divmod(consumed, len(self.sampler))
            self.sampler.set_epoch(epoch)
            for batch in accelerator.skip_first_batches(self.loader, offset) if offset else self.loader:
                consumed += 1
                yield batch

    def record(self, batch: dict[str, Any]) -> None:
        """Nothing to record: the position is the number of batches consumed."""

    def references(self) -> list[list[str]]:
        """The captions of every training sample (SCST's CIDEr-D document frequencies)."""
        return [captions for i in range(len(self.mix.tables)) for captions in self.mix.rows(i)["captions"]]


class StreamingData:
    """Batches streamed from WebDataset shards ([`StreamingMixture`]); `state_dict` is the position of every
    worker's streams after the last batch the loop took from it."""

    def __init__(self, loader: DataLoader, mixture: StreamingMixture, num_workers: int):
        self.loader, self.mixture, self.num_workers = loader, mixture, num_workers
        self.worker_states: dict[int, dict[str, Any]] = {}

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches in an epoch of the mix (the shards' sample counts over the global batch)."""
        return self.mixture.batches_per_epoch

    def batches(self, accelerator: Accelerator, consumed: int) -> Iterator[dict[str, Any]]:
        """Batches from step `consumed` on, from the recorded positions (an endless stream)."""
        self.mixture.resume(consumed, self.worker_states)
        yield from self.loader

    def record(self, batch: dict[str, Any]) -> None:
        """Keep the position of the worker that built `batch`."""
        state = batch["stream_state"]
        self.worker_states[int(state["worker"])] = {
            "next_step": state["next_step"],
            "streams": state["streams"],
        }

    def state_dict(self) -> dict[str, Any]:
        """The workers' positions (plain data)."""
        workers = {str(w): s for w, s in sorted(self.worker_states.items())}
        return {"num_workers": max(self.num_workers, 1), "workers": workers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` of a checkpoint (same number of workers)."""
        try:
            self.worker_states = worker_states_from_dict(state, self.num_workers)
        except ValueError as err:
            raise StateFileError(f"data_state: {err}") from err

    def references(self) -> list[list[str]]:
        """SCST needs every training caption in memory, which streaming avoids."""
        raise NotImplementedError(
            "SCST computes CIDEr-D document frequencies from every training caption; streamed datasets "
            "(format: webdataset) are not held in memory. Fine-tune with SCST on an annotation format."
        )


def _streaming_data(config: RunConfig, collator, accelerator: Accelerator) -> StreamingData:
    data = config.data
    if data.cache_decoded:
        raise ValueError("`data.cache_decoded` decodes tables once; it does not apply to streamed datasets.")
    indexes = [read_shard_index(d.path) for d in config.datasets]
    for d, index in zip(config.datasets, indexes):
        logger.info("Streaming %s: %d samples in %d shards", d.name, index.num_samples, len(index.shards))
        if d.max_samples is not None:
            raise ValueError(f"dataset {d.name!r}: `max_samples` does not apply to streamed datasets.")
    global_batch = data.per_device_batch_size * accelerator.num_processes
    batches_per_epoch = data.batches_per_epoch or max(1, sum(i.num_samples for i in indexes) // global_batch)
    mixture = StreamingMixture(
        indexes,
        config.datasets,
        data.per_device_batch_size,
        batches_per_epoch,
        rank=accelerator.process_index,
        num_processes=accelerator.num_processes,
        num_workers=data.num_workers,
        seed=config.training.seed,
        shuffle_buffer=data.shuffle_buffer,
    )
    loader = DataLoader(
        mixture,
        batch_size=None,
        collate_fn=streaming_collate(collator),
        num_workers=data.num_workers,
        generator=torch.Generator().manual_seed(config.training.seed),
    )
    return StreamingData(loader, mixture, data.num_workers)


def build_training_data(
    config: RunConfig,
    processor: ValorProcessor,
    model_config: ValorConfig,
    accelerator: Accelerator,
) -> MapStyleData | StreamingData:
    """
    The training data of `config`: [`StreamingData`] when its datasets are `format: webdataset` shards, else
    [`MapStyleData`] (decoded cache attached when `data.cache_decoded`).

    Raises:
        ValueError: streamed and table datasets in one run.
    """
    collator = _collator(config, processor, model_config)
    streamed = [d.format in STREAMED_FORMATS for d in config.datasets]
    if any(streamed) and not all(streamed):
        names = [d.name for d, s in zip(config.datasets, streamed) if s]
        raise ValueError(
            f"datasets {names} are streamed (format: webdataset) and the others are tables; a run streams all of "
            "its datasets or none: pack the others with `python -m transformers_valor.data.shards`."
        )
    if all(streamed):
        return _streaming_data(config, collator, accelerator)
    data = config.data
    mix, summary = load_mixture(config.datasets)
    logger.info("Training mix: %s", summary)
    if data.cache_decoded:
        _attach_decoded_caches(mix, config, processor, accelerator)
    sampler = MixedBatchSampler(
        mix.sizes,
        [d.ratio for d in config.datasets],
        data.per_device_batch_size,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
        seed=config.training.seed,
        batches_per_epoch=data.batches_per_epoch,
    )
    loader = DataLoader(
        mix,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=data.num_workers,
        generator=torch.Generator().manual_seed(config.training.seed),
        persistent_workers=False,
    )
    return MapStyleData(loader, sampler, mix)
