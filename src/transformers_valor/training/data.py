"""The training DataLoader of a run: the dataset mix, its optional decoded cache, the sampler and the collator."""

from __future__ import annotations

import logging
import os

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..configuration_valor import ValorConfig
from ..data.collator import ValorTrainingCollator, build_decoded_cache
from ..data.datasets import MixedBatchSampler, MixedVideoTextDataset, load_mixture
from ..data.masking import CaptionMaskingConfig
from ..processing_valor import ValorProcessor
from .config import RunConfig

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


def build_dataloader(
    config: RunConfig,
    processor: ValorProcessor,
    model_config: ValorConfig,
    accelerator: Accelerator,
) -> tuple[DataLoader, MixedBatchSampler, MixedVideoTextDataset]:
    """
    The training DataLoader: the dataset mix (decoded cache attached when `data.cache_decoded`), a
    [`MixedBatchSampler`] giving this process its slice of every global batch, and the collator.

    The DataLoader has its own `torch.Generator`, so creating its iterator never consumes the global RNG (which
    drives dropout): a resumed run keeps the same random stream as the uninterrupted one.
    """
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
    collator = ValorTrainingCollator(
        processor,
        config.datasets,
        CaptionMaskingConfig.from_model_config(model_config.text_config),
        max_text_length=data.max_text_length,
        caption_objective=model_config.caption_objective,
        training=True,
    )
    loader = DataLoader(
        mix,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=data.num_workers,
        generator=torch.Generator().manual_seed(config.training.seed),
        persistent_workers=False,
    )
    return loader, sampler, mix
