"""Batch assembly for VALOR training: decoding through `ValorProcessor`, caption masking, undecodable samples.

[`ValorTrainingCollator`] runs inside the DataLoader workers. For one batch (all rows from one dataset, see
`datasets.MixedBatchSampler`) it decodes every video (and soundtrack, for audiovisual datasets) with the
processor, drops the samples that cannot be decoded (reporting their ids, paths and errors), picks one caption per
sample, tokenises, and applies VALOR's caption masking. All randomness (caption choice, training-time frame and
clip choice, masking) comes from a generator seeded with the batch's seed, so a resumed run rebuilds exactly the
batches of the uninterrupted one.

[`build_decoded_cache`] runs the decoding once over a whole dataset and stores the processor's outputs in a
safetensors file keyed by the content of the dataset's files ([`file_fingerprint`]) and the processor settings;
training then reads tensors instead of videos (evaluation-style "middle" frame/clip choice, decoded once).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import xxhash
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from transformers.utils import logging as hf_logging

from .datasets import DatasetConfig, torch_generator
from .masking import (
    ANSWER_MASK_PROBABILITY,
    MLM_MASK_PROBABILITY,
    CaptionMaskingConfig,
    mask_captions,
    next_token_labels,
)

logger = logging.getLogger(__name__)

# What a failed decode raises: MediaBatchError/EmptyVideoError/MediaDecodeError are ValueErrors; PyAV and decord
# raise OSError/RuntimeError subclasses on damaged containers.
DECODE_ERRORS = (ValueError, FileNotFoundError, OSError, RuntimeError)
MEDIA_KEYS = ("pixel_values_videos", "input_features", "input_features_mask")


@dataclass
class DecodeFailure:
    """A sample that could not be decoded: its id, file and the error message."""

    sample_id: str
    path: str
    error: str

    def __str__(self) -> str:
        return f"{self.sample_id} ({self.path}): {self.error}"


def decode_sample(
    processor,
    path: str,
    config: DatasetConfig,
    sampling: Literal["middle", "random"] = "middle",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """
    Decode one video file with the processor, with the dataset's frame and clip counts.

    Returns:
        `pixel_values_videos` `(frames, 3, H, W)` (not for audio datasets) and, for audiovisual and audio datasets,
        `input_features` `(clips, mel, time)` and `input_features_mask` `(clips,)`.

    Raises:
        One of `DECODE_ERRORS` when the file is missing or cannot be decoded.
    """
    kwargs: dict[str, Any] = {"num_frames": config.num_frames} if config.uses_video else {}
    if config.uses_audio:
        kwargs["num_clips"] = config.num_clips
    media: dict[str, Any] = {"videos": [path]} if config.uses_video else {"audio": [path]}
    with warnings.catch_warnings():
        # A video without a soundtrack is a valid sample (masked audio); the extractor warns about it every call.
        warnings.simplefilter("ignore", UserWarning)
        out = processor(
            **media,
            audio_from_video=config.uses_audio,
            sampling=sampling,
            generator=generator,
            return_tensors="pt",
            **kwargs,
        )
    return {key: out[key][0] for key in MEDIA_KEYS if key in out}


class ValorTrainingCollator:
    """
    Turn a list of dataset items (from `MixedVideoTextDataset`) into a training batch: the inputs of
    `ValorForPreTraining` and of every fine-tuning objective (`transformers_valor.training.objectives`).

    Args:
        processor ([`ValorProcessor`]): tokenizer, video processor and feature extractor.
        dataset_configs (`list[DatasetConfig]`): the mix, indexed by the items' `dataset_index`.
        masking ([`CaptionMaskingConfig`]): `unimlm` masking parameters (ignored for `lm`); answers of question
            answering rows are masked at `ANSWER_MASK_PROBABILITY` (0.99) and conditioned-MLM captions at
            `MLM_MASK_PROBABILITY` (0.15), the reference's rates, with the same special ids.
        max_text_length (`int`, *optional*): word pieces per caption (default: the processor's). Captions are
            always padded to this length so that every process gathers MGA text features of the same shape.
        caption_objective (`str`, defaults to `"unimlm"`): `"unimlm"` (masked captions + labels) or `"lm"`.
        training (`bool`, defaults to `True`): random frame/clip choice (VALOR's training sampling) instead of
            the middle of each segment; irrelevant for cached samples.

    Returns (from `__call__`): a dict with `input_ids`, `attention_mask` (clean caption, for MGA),
    `caption_input_ids`, `labels` (MGC), `pixel_values_videos` (not for audio datasets), and for audiovisual and
    audio datasets `input_features`, `input_features_mask`; for question answering rows (with a `question`),
    `question_ids` and `question_attention_mask` (`[CLS] question [SEP]`; the model composes the decoder prompt
    from it, see `ValorForConditionalGeneration.question_prompt`); for datasets with `mlm_groups`,
    `mlm_input_ids` and `mlm_labels` (the caption masked for conditioned MLM); plus `references` (every caption of
    every kept sample, for SCST rewards), `sample_ids` (list of str), `dataset` (name), `contrastive_groups`,
    `caption_groups`, `mlm_groups`, `failures` (list of [`DecodeFailure`]) and `num_items` (samples before
    dropping). When every sample fails, the media and text keys are absent.
    """

    def __init__(
        self,
        processor,
        dataset_configs: Sequence[DatasetConfig],
        masking: CaptionMaskingConfig,
        max_text_length: int | None = None,
        caption_objective: Literal["unimlm", "lm"] = "unimlm",
        training: bool = True,
    ):
        self.processor = processor
        self.dataset_configs = list(dataset_configs)
        self.masking = masking
        self.max_text_length = max_text_length if max_text_length is not None else processor.max_text_length
        self.caption_objective = caption_objective
        self.training = training

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("Empty batch.")
        indices = {item["dataset_index"] for item in items}
        if len(indices) != 1:
            raise ValueError(f"A batch must come from one dataset, got dataset indices {sorted(indices)}.")
        config = self.dataset_configs[indices.pop()]
        generator = torch_generator(items[0]["batch_seed"])
        sampling = "random" if self.training else "middle"

        media: list[dict[str, torch.Tensor]] = []
        kept: list[dict[str, Any]] = []
        failures: list[DecodeFailure] = []
        for item in items:
            # `source` names a streamed sample (`<shard>#<key>`), whose `video_path` is a temporary file.
            where = item.get("source", item["video_path"])
            if item.get("decode_error") is not None:  # known unusable: a failed cache entry or shard sample
                failures.append(DecodeFailure(item["sample_id"], where, item["decode_error"]))
                continue
            if "decoded" in item:
                sample = {k: v.float() if v.is_floating_point() else v for k, v in item["decoded"].items()}
            else:
                try:
                    sample = decode_sample(self.processor, item["video_path"], config, sampling, generator)
                except DECODE_ERRORS as err:
                    failures.append(DecodeFailure(item["sample_id"], where, f"{type(err).__name__}: {err}"))
                    continue
            media.append(sample)
            kept.append(item)
        for failure in failures:
            logger.warning("Skipping undecodable sample %s", failure)

        batch: dict[str, Any] = {
            "sample_ids": [item["sample_id"] for item in kept],
            "dataset": config.name,
            "contrastive_groups": list(config.contrastive_groups),
            "caption_groups": list(config.caption_groups),
            "mlm_groups": list(config.mlm_groups),
            "failures": failures,
            "num_items": len(items),
        }
        if not kept:
            return batch
        for key in MEDIA_KEYS:
            if key in media[0] and (key == "pixel_values_videos" or config.uses_audio):
                batch[key] = torch.stack([m[key] for m in media])

        # One caption per sample per step, drawn from the sample's references (VALOR-1M has one, MSR-VTT 20).
        choices = [int(torch.randint(len(item["captions"]), (1,), generator=generator)) for item in kept]
        text = self.processor(
            text=[item["captions"][c] for item, c in zip(kept, choices)],
            padding="max_length",
            max_length=self.max_text_length + 2,
            return_tensors="pt",
        )
        batch["input_ids"] = text["input_ids"]
        batch["attention_mask"] = text["attention_mask"]
        batch["references"] = [list(item["captions"]) for item in kept]
        batch.update(self._text_targets(text["input_ids"], kept, config, generator))
        return batch

    def _text_targets(self, input_ids, kept, config: DatasetConfig, generator) -> dict[str, torch.Tensor]:
        """The question of QA rows, the MGC decoder input and labels, and the conditioned-MLM input and labels."""
        out = {}
        questions = "question" in kept[0]
        if questions:
            tokens = self.processor(
                prompts=[item["question"] for item in kept],
                padding="max_length",
                max_length=self.max_text_length + 2,
                return_tensors="pt",
            )
            out["question_ids"] = tokens["prompt_ids"]
            out["question_attention_mask"] = tokens["prompt_attention_mask"]
        if self.caption_objective == "unimlm":
            masking = self.masking
            if questions:
                masking = dataclasses.replace(masking, mask_probability=ANSWER_MASK_PROBABILITY)
            out["caption_input_ids"], out["labels"] = mask_captions(input_ids, masking, generator)
        else:
            out["caption_input_ids"] = input_ids
            out["labels"] = next_token_labels(input_ids, self.masking.pad_token_id)
        if config.mlm_groups:
            mlm = dataclasses.replace(self.masking, mask_probability=MLM_MASK_PROBABILITY)
            out["mlm_input_ids"], out["mlm_labels"] = mask_captions(input_ids, mlm, generator)
        return out


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The subset of a collated batch that the training objectives (and `ValorForPreTraining.forward`) take."""
    keys = (
        "input_ids",
        "attention_mask",
        "caption_input_ids",
        "labels",
        *MEDIA_KEYS,
        "prompt_ids",
        "prompt_attention_mask",
        "question_ids",
        "question_attention_mask",
        "mlm_input_ids",
        "mlm_labels",
        "contrastive_groups",
        "caption_groups",
        "mlm_groups",
    )
    return {k: batch[k] for k in keys if k in batch}


def truncate_batch(batch: dict[str, Any], size: int) -> dict[str, Any]:
    """Keep the first `size` samples of a collated batch (processes must agree on the batch size)."""
    out = dict(batch)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            out[key] = value[:size]
    out["sample_ids"] = batch["sample_ids"][:size]
    if "references" in batch:
        out["references"] = batch["references"][:size]
    return out


# --------------------------------------------------------------------------------------------------------------
# Decoded cache
# --------------------------------------------------------------------------------------------------------------


def _processor_settings(processor) -> dict[str, Any]:
    video = processor.video_processor.to_dict()
    audio = processor.feature_extractor.to_dict()
    return {"video": video, "audio": audio}


# What the fingerprint of a file reads: the whole file up to twice this size, else its first and last chunk.
FINGERPRINT_CHUNK = 1 << 20
CACHE_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32")


def file_fingerprint(path: str | os.PathLike, chunk: int = FINGERPRINT_CHUNK) -> str:
    """
    A content fingerprint of a file: the 128-bit xxHash (XXH3, the hash `datasets` fingerprints with) of its size,
    its first `chunk` bytes and its last `chunk` bytes (the whole file when it is at most `2 * chunk` bytes), or
    `"missing"`. Unlike size + mtime, it changes when a file
    is replaced by another of the same size whose old mtime was restored (`cp -p`, `rsync -t`); an edit inside
    the unread middle of a file larger than `2 * chunk` that keeps its size goes unseen. Cost: two reads of
    `chunk` bytes per file (measured in benchmarks/bench_cache_fingerprint.py).
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest = xxhash.xxh3_128(str(size).encode())
            digest.update(handle.read(chunk if size > 2 * chunk else size))
            if size > 2 * chunk:
                handle.seek(size - chunk)
                digest.update(handle.read(chunk))
    except OSError:
        return "missing"
    return digest.hexdigest()


def decoded_cache_key(rows: dict[str, list], config: DatasetConfig, processor, dtype: str) -> str:
    """Hash of everything the decoded tensors depend on: the files' content fingerprints, settings, dtype."""
    digest = hashlib.sha256()
    for sample_id, path in zip(rows["sample_id"], rows["video_path"]):
        digest.update(f"{sample_id}\0{path}\0{file_fingerprint(path)}\n".encode())
    settings = {
        "processor": _processor_settings(processor),
        "num_frames": config.num_frames,
        "num_clips": config.num_clips,
        "audio": config.uses_audio,
        "dtype": dtype,
        "version": 2,
    }
    if not config.uses_video:  # added only for audio datasets, so existing cache keys stay valid
        settings["video"] = False
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


class _DecodeAll(torch.utils.data.Dataset):
    def __init__(self, rows, config, processor):
        self.rows, self.config, self.processor = rows, config, processor

    def __len__(self):
        return len(self.rows["video_path"])

    def __getitem__(self, index):
        path = self.rows["video_path"][index]
        try:
            return index, decode_sample(self.processor, path, self.config, "middle"), None
        except DECODE_ERRORS as err:
            return index, None, f"{type(err).__name__}: {err}"


def build_decoded_cache(
    rows: dict[str, list],
    config: DatasetConfig,
    processor,
    cache_dir: str | os.PathLike,
    num_workers: int = 0,
    dtype: Literal["float16", "bfloat16", "float32"] = "float16",
    progress: bool = False,
) -> dict[str, Any]:
    """
    Decode a whole dataset once (evaluation-style "middle" frames and clips) and cache the processor outputs.

    The cache is `<cache_dir>/<name>-<key>.safetensors` plus a `.json` with the failures, where the key hashes
    the files (paths and content fingerprints, see [`file_fingerprint`]), the processor settings, the frame/clip
    counts and `dtype`; a later call with the same inputs loads it instead of decoding. Files are written to a
    temporary name and renamed, so an interrupted run never leaves a truncated cache; a cache file that cannot be
    read back (damaged on disk) is named in a warning, deleted and rebuilt.

    Args:
        rows (`dict[str, list]`): the dataset's columns (`sample_id`, `video_path`).
        config ([`DatasetConfig`]), processor ([`ValorProcessor`]): what and how to decode.
        cache_dir: where cache files live.
        num_workers (`int`): DataLoader workers for the decoding pass.
        dtype (`str`, defaults to `"float16"`): storage type of the float tensors, `"float16"` (halves memory and
            disk), `"bfloat16"` or `"float32"`.
        progress (`bool`): show a progress bar.

    Returns:
        `{"pixel_values_videos": (N, T, 3, H, W), "input_features": ..., "input_features_mask": ...,
        "ok": (N,) bool, "errors": {row: message}}`; failed rows hold zeros.
    """
    if dtype not in CACHE_DTYPES:
        raise ValueError(
            f"The decoded cache's dtype must be a floating type, one of {list(CACHE_DTYPES)}; got {dtype!r}."
        )
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = decoded_cache_key(rows, config, processor, dtype)
    tensor_file = cache_dir / f"{config.name}-{key}.safetensors"
    meta_file = tensor_file.with_suffix(".json")
    if tensor_file.is_file() and meta_file.is_file():
        try:
            tensors = _read_cache(tensor_file, meta_file, len(rows["video_path"]))
            logger.info("Loaded the decoded cache %s", tensor_file)
            return tensors
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
            logger.warning(
                "The decoded cache %s cannot be read (%s); deleting and rebuilding it.", tensor_file, err
            )
            tensor_file.unlink(missing_ok=True)
            meta_file.unlink(missing_ok=True)

    out, errors = _decode_rows(rows, config, processor, num_workers, getattr(torch, dtype), progress)
    _write_cache(out, errors, tensor_file, meta_file)
    out["errors"] = errors
    for index, error in errors.items():
        logger.warning(
            "Undecodable sample %s (%s): %s", rows["sample_id"][index], rows["video_path"][index], error
        )
    return out


def _read_cache(tensor_file: Path, meta_file: Path, count: int) -> dict[str, Any]:
    """A cache written by `_write_cache`, checked to hold `count` rows in every tensor."""
    tensors = load_file(str(tensor_file))
    meta = json.loads(meta_file.read_text())
    sizes = {name: value.shape[0] if value.dim() else None for name, value in tensors.items()}
    if "ok" not in tensors or set(sizes.values()) != {count} or meta["paths"] != count:
        raise ValueError(f"expected {count} rows in every tensor, found {sizes} and paths={meta['paths']}")
    tensors["errors"] = {int(k): str(v) for k, v in meta["errors"].items()}
    return tensors


def _decode_rows(rows, config, processor, num_workers: int, store_dtype: torch.dtype, progress: bool):
    """Decode every row in DataLoader workers into `(N, ...)` tensors (zeros and an error for failed rows)."""
    loader = DataLoader(
        _DecodeAll(rows, config, processor),
        batch_size=None,
        num_workers=num_workers,
        multiprocessing_context="fork" if num_workers and os.name == "posix" else None,
        # Its own generator: building a cache must not draw from the global RNG (dropout), or a run that builds
        # the cache would train differently from the same run loading it.
        generator=torch.Generator(),
    )
    # transformers' tqdm: hidden by `transformers.utils.logging.disable_progress_bar()`.
    iterator = hf_logging.tqdm(loader, desc=f"decoding {config.name}", unit="clip", disable=not progress)
    count = len(rows["video_path"])
    out: dict[str, torch.Tensor] = {}
    ok = torch.zeros(count, dtype=torch.bool)
    errors: dict[int, str] = {}
    for index, sample, error in iterator:
        if sample is None:
            errors[index] = error
            continue
        if not out:
            for name, value in sample.items():
                out[name] = torch.zeros(
                    (count, *value.shape), dtype=store_dtype if value.is_floating_point() else value.dtype
                )
        for name, value in sample.items():
            out[name][index] = value
        ok[index] = True
    if not out:
        raise RuntimeError(
            f"No sample of dataset {config.name!r} could be decoded; first errors: {list(errors.values())[:3]}"
        )
    out["ok"] = ok
    return out, errors


def _write_cache(
    out: dict[str, torch.Tensor], errors: dict[int, str], tensor_file: Path, meta_file: Path
) -> None:
    """Write the tensors and the failures under temporary names, then rename (the tensors last); a failed write
    (a full disk) leaves no partial file behind."""
    tmp = tensor_file.with_name(f".{tensor_file.name}.{os.getpid()}.partial")
    meta_tmp = meta_file.with_name(f".{meta_file.name}.{os.getpid()}.partial")
    try:
        save_file(out, str(tmp))
        meta_tmp.write_text(
            json.dumps({"errors": {str(k): v for k, v in errors.items()}, "paths": len(out["ok"])})
        )
        os.replace(meta_tmp, meta_file)
        os.replace(tmp, tensor_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        meta_tmp.unlink(missing_ok=True)
        raise
