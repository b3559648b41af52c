"""Evaluation helpers shared by the example scripts: retrieval (MGA) and captioning (MGC) on a video-text set.

The media of an evaluation set are decoded once ([`decode_media`], evaluation-style middle frames and clips) and
reused by every metric: retrieval encodes the set once per modality and scores any modality group with
`ValorModel.group_features` / `ValorModel.similarity`; captioning runs `ValorForConditionalGeneration.generate`
conditioned on video, audio or both. [`attribute_accuracy`] reads colour, shape, direction and sound back from
generated captions of the synthetic corpus.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from .data.collator import DECODE_ERRORS, MEDIA_KEYS
from .metrics import compute_caption_metrics, compute_retrieval_metrics
from .modeling_valor import ValorFeatures, ValorForConditionalGeneration, ValorModel
from .processing_valor import ValorProcessor

logger = logging.getLogger(__name__)


@dataclass
class DecodedMedia:
    """Decoded inputs of an evaluation set: `(N, ...)` tensors and the indices of the samples that failed."""

    pixel_values_videos: torch.Tensor
    input_features: torch.Tensor | None
    input_features_mask: torch.Tensor | None
    failed: dict[int, str]

    def __len__(self) -> int:
        return self.pixel_values_videos.shape[0]

    def batch(self, start: int, stop: int, use_audio: bool = True) -> dict[str, torch.Tensor]:
        """Model inputs of samples `start:stop`."""
        out = {"pixel_values_videos": self.pixel_values_videos[start:stop]}
        if use_audio and self.input_features is not None:
            out["input_features"] = self.input_features[start:stop]
            out["input_features_mask"] = self.input_features_mask[start:stop]
        return out


class _DecodeOne(torch.utils.data.Dataset):
    def __init__(self, processor, paths, num_frames, num_clips, use_audio):
        self.processor, self.paths = processor, list(paths)
        self.num_frames, self.num_clips, self.use_audio = num_frames, num_clips, use_audio

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        kwargs: dict[str, Any] = {"num_frames": self.num_frames}
        if self.use_audio:
            kwargs["num_clips"] = self.num_clips
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                out = self.processor(
                    videos=[self.paths[index]], audio_from_video=self.use_audio, sampling="middle", **kwargs
                )
            return index, {k: out[k][0] for k in MEDIA_KEYS if k in out}, None
        except DECODE_ERRORS as err:
            return index, None, f"{type(err).__name__}: {err}"


def decode_media(
    processor: ValorProcessor,
    video_paths: Sequence[str],
    num_frames: int | None = None,
    num_clips: int | None = None,
    use_audio: bool = True,
    num_workers: int = 0,
) -> DecodedMedia:
    """
    Decode every video (and its soundtrack) of an evaluation set with the processor's evaluation sampling.

    Samples that cannot be decoded get zeros and are listed in `failed` (index -> error) and logged.
    """
    loader = DataLoader(
        _DecodeOne(
            processor, video_paths, num_frames or processor.video_processor.num_frames, num_clips, use_audio
        ),
        batch_size=None,
        num_workers=num_workers,
    )
    tensors: dict[str, torch.Tensor] = {}
    failed: dict[int, str] = {}
    count = len(video_paths)
    for index, sample, error in loader:
        if sample is None:
            failed[index] = error
            logger.warning("Could not decode %s: %s", video_paths[index], error)
            continue
        for key, value in sample.items():
            if key not in tensors:
                tensors[key] = torch.zeros((count, *value.shape), dtype=value.dtype)
            tensors[key][index] = value
    if "pixel_values_videos" not in tensors:
        raise RuntimeError(f"None of the {count} evaluation videos could be decoded.")
    return DecodedMedia(
        tensors["pixel_values_videos"],
        tensors.get("input_features"),
        tensors.get("input_features_mask"),
        failed,
    )


def _cat_features(parts: list[ValorFeatures]) -> ValorFeatures:
    keys = ("embeds", "mask", "weight_logits", "pooled_embeds")
    return ValorFeatures(
        **{k: torch.cat([getattr(p, k) for p in parts]) for k in keys if getattr(parts[0], k) is not None}
    )


@torch.no_grad()
def encode_retrieval_set(
    model: ValorModel,
    processor: ValorProcessor,
    texts: Sequence[str],
    media: DecodedMedia,
    batch_size: int = 32,
) -> dict[str, ValorFeatures]:
    """
    MGA features of every text, video and soundtrack of a set, each encoded once: `{"text", "video", "audio"}`
    (`audio` absent when the media have no audio).
    """
    model.eval()
    device = model.device
    text_inputs = processor(text=list(texts), padding="longest", return_tensors="pt")
    text_parts, video_parts, audio_parts = [], [], []
    for start in range(0, len(texts), batch_size):
        ids = text_inputs["input_ids"][start : start + batch_size].to(device)
        mask = text_inputs["attention_mask"][start : start + batch_size].to(device)
        text_parts.append(model.get_text_features(ids, mask))
    for start in range(0, len(media), batch_size):
        inputs = {k: v.to(device) for k, v in media.batch(start, start + batch_size).items()}
        video_parts.append(model.get_video_features(inputs["pixel_values_videos"]))
        if "input_features" in inputs:
            audio_parts.append(
                model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
            )
    out = {"text": _cat_features(text_parts), "video": _cat_features(video_parts)}
    if audio_parts:
        out["audio"] = _cat_features(audio_parts)
    return out


@torch.no_grad()
def evaluate_retrieval(
    model: ValorModel,
    features: dict[str, ValorFeatures],
    groups: Sequence[str] = ("tv", "ta", "tva"),
) -> dict[str, dict[str, float]]:
    """
    Text-to-X retrieval metrics per modality group (R@1/5/10 in percent, median and mean rank), the i-th text
    matching the i-th video.
    """
    results = {}
    for group in groups:
        query, candidates = model.group_features(
            group, text=features["text"], video=features["video"], audio=features.get("audio")
        )
        scores = model.similarity(query, candidates)
        results[group] = compute_retrieval_metrics(scores.float().cpu())
    return results


@torch.no_grad()
def generate_captions(
    model: ValorForConditionalGeneration,
    processor: ValorProcessor,
    media: DecodedMedia,
    modalities: Literal["video", "audio", "both"] = "both",
    batch_size: int = 32,
    **generate_kwargs,
) -> list[str]:
    """Caption every sample of `media` conditioned on `modalities`; `generate_kwargs` go to `generate()`."""
    model.eval()
    generate_kwargs.setdefault("max_new_tokens", 30)
    generate_kwargs.setdefault("num_beams", 3)
    captions: list[str] = []
    for start in range(0, len(media), batch_size):
        inputs = media.batch(start, start + batch_size, use_audio=modalities != "video")
        if modalities == "audio":
            inputs.pop("pixel_values_videos")
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        ids = model.generate(**inputs, modalities=modalities, **generate_kwargs)
        captions.extend(processor.batch_decode(ids, skip_special_tokens=True))
    return captions


ATTRIBUTES = ("color", "shape", "direction", "sound")


def attribute_accuracy(predictions: Sequence[str], rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """
    Share of generated captions naming each attribute of the synthetic corpus correctly (read with
    `synthetic.parse_attributes`), and `all`: the share with every attribute right. Fractions in [0, 1].
    """
    from .data.synthetic import parse_attributes

    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows.")
    correct = {a: 0 for a in ATTRIBUTES}
    all_right = 0
    for text, row in zip(predictions, rows):
        parsed = parse_attributes(text)
        hits = [parsed[a] == row[a] for a in ATTRIBUTES]
        for attribute, hit in zip(ATTRIBUTES, hits):
            correct[attribute] += hit
        all_right += all(hits)
    n = max(len(rows), 1)
    out = {a: correct[a] / n for a in ATTRIBUTES}
    out["all"] = all_right / n
    return out


def evaluate_captioning(
    model: ValorForConditionalGeneration,
    processor: ValorProcessor,
    media: DecodedMedia,
    references: Sequence[Sequence[str]],
    modalities: Literal["video", "audio", "both"] = "both",
    rows: Sequence[dict[str, Any]] | None = None,
    metrics: Sequence[str] = ("BLEU", "CIDEr"),
    **generate_kwargs,
) -> tuple[dict[str, float], list[str]]:
    """
    Generate captions and score them against `references` (COCO toolkit metrics; by default BLEU and CIDEr, which
    need no Java), plus attribute accuracy when the corpus `rows` (with colour/shape/direction/sound) are given.

    Returns:
        `(metrics, predictions)`.
    """
    predictions = generate_captions(model, processor, media, modalities, **generate_kwargs)
    scores = compute_caption_metrics(predictions, [list(r) for r in references], metrics=list(metrics))
    if rows is not None:
        scores.update({f"attr_{k}": v for k, v in attribute_accuracy(predictions, rows).items()})
    return scores, predictions
