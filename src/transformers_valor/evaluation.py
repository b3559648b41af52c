"""Evaluation helpers shared by the example scripts: retrieval (MGA), captioning (MGC) and question answering.

The media of an evaluation set are decoded once ([`decode_media`], evaluation-style middle frames and clips) and
reused by every metric: retrieval encodes the set once per modality and scores any modality group with
`ValorModel.group_features` / `ValorModel.similarity`; captioning runs `ValorForConditionalGeneration.generate`
conditioned on video, audio or both. [`attribute_accuracy`] reads colour, shape, direction and sound back from
generated captions of the synthetic corpus.

The downstream benchmarks go through [`evaluate_task`]: a test set (any `DatasetConfig` layout) is decoded once
([`decode_dataset`], cached on disk); retrieval encodes every video/soundtrack and every caption once and scores
the groups with the chunked fine-grained scorer ([`evaluate_retrieval_dataset`]: R@1/5/10, median and mean rank in
both directions, several captions per video supported); captioning and QA generate from the decoded media
([`generate_for_dataset`]) and score with the COCO toolkit metrics or exact-match accuracy after VALOR's text
cleaning ([`question_answering_accuracy`]).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from .data.collator import DECODE_ERRORS, MEDIA_KEYS, build_decoded_cache
from .data.datasets import DatasetConfig, load_video_text_dataset
from .metrics import compute_caption_metrics, compute_retrieval_metrics
from .modeling_valor import ValorFeatures, ValorForConditionalGeneration, ValorModel
from .processing_valor import ValorProcessor
from .tokenization_valor import clean_caption

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


# --------------------------------------------------------------------------------------------------------------
# Downstream evaluation on benchmark datasets (retrieval, captioning, question answering)
# --------------------------------------------------------------------------------------------------------------

# Names of the two directions of each retrieval group in the metric keys.
RETRIEVAL_DIRECTIONS: dict[str, tuple[str, str]] = {
    "tv": ("t2v", "v2t"),
    "ta": ("t2a", "a2t"),
    "tva": ("t2va", "va2t"),
}


@dataclass
class EvaluationArguments:
    """
    Test sets and settings of the downstream evaluation (the YAML's `evaluation:` section).

    Args:
        datasets (`list[DatasetConfig]`): the test sets, in the same format as the training `datasets:` (their
            `contrastive_groups` / `caption_groups` say which groups are evaluated; `num_frames`/`num_clips` are
            the test-time counts, 8 frames in VALOR).
        batch_size (`int`, defaults to 32): videos (or texts) encoded or decoded at once.
        num_beams (`int`, *optional*): beam size of generation; default 3 for captioning, 1 (greedy) for QA.
        max_new_tokens (`int`, defaults to 30): generation length limit.
        caption_metrics (`list[str]`, defaults to `["BLEU", "ROUGE-L", "CIDEr"]`): COCO toolkit metrics (add
            `METEOR` when Java is installed).
        max_block_elements (`int`, defaults to 2**26): memory bound of the chunked fine-grained scorer.
        num_workers (`int`, defaults to 0): decoding processes.
        cache_dir (`str`, *optional*): where decoded test sets are cached (default `<output_dir>/eval_cache`).
    """

    datasets: list[DatasetConfig] = field(default_factory=list)
    batch_size: int = 32
    num_beams: int | None = None
    max_new_tokens: int = 30
    caption_metrics: list[str] = field(default_factory=lambda: ["BLEU", "ROUGE-L", "CIDEr"])
    max_block_elements: int = 2**26
    num_workers: int = 0
    cache_dir: str | None = None


def decode_dataset(
    rows: dict[str, list],
    config: DatasetConfig,
    processor: ValorProcessor,
    cache_dir: str | os.PathLike,
    num_workers: int = 0,
) -> dict[str, Any]:
    """
    Decode a test set once (middle frames and clips) into `(N, ...)` tensors, cached on disk (see
    `collator.build_decoded_cache`): `pixel_values_videos` (absent for audio datasets), `input_features`,
    `input_features_mask` (absent for silent video), `ok` (N,) and `errors` (row -> message).
    """
    return build_decoded_cache(
        rows, config, processor, cache_dir, num_workers=num_workers, dtype="float32", progress=False
    )


def _media_slice(
    media: dict[str, Any], index: torch.Tensor, keys: Sequence[str], device
) -> dict[str, torch.Tensor]:
    return {k: media[k][index].to(device) for k in keys if k in media}


@torch.no_grad()
def encode_media_features(
    model: ValorModel, media: dict[str, Any], batch_size: int = 32
) -> dict[str, ValorFeatures]:
    """MGA features of every video and soundtrack of a decoded set, each encoded once: `{"video", "audio"}`."""
    model.eval()
    count = len(media["ok"])
    video_parts, audio_parts = [], []
    for start in range(0, count, batch_size):
        index = torch.arange(start, min(start + batch_size, count))
        if "pixel_values_videos" in media:
            video_parts.append(
                model.get_video_features(media["pixel_values_videos"][index].to(model.device, model.dtype))
            )
        if "input_features" in media:
            audio_parts.append(
                model.get_audio_features(
                    media["input_features"][index].to(model.device, model.dtype),
                    media["input_features_mask"][index].to(model.device),
                )
            )
    out = {}
    if video_parts:
        out["video"] = _cat_features(video_parts)
    if audio_parts:
        out["audio"] = _cat_features(audio_parts)
    return out


@torch.no_grad()
def encode_texts(
    model: ValorModel,
    processor: ValorProcessor,
    texts: Sequence[str],
    batch_size: int = 32,
    max_text_length: int | None = None,
) -> ValorFeatures:
    """MGA features of every text, tokenised once (padded to the longest) and encoded in batches."""
    model.eval()
    tokens = processor(
        text=list(texts), padding="longest", max_text_length=max_text_length, return_tensors="pt"
    )
    parts = []
    for start in range(0, len(texts), batch_size):
        ids = tokens["input_ids"][start : start + batch_size].to(model.device)
        mask = tokens["attention_mask"][start : start + batch_size].to(model.device)
        parts.append(model.get_text_features(ids, mask))
    return _cat_features(parts)


@torch.no_grad()
def retrieval_metrics_for_corpus(
    model: ValorModel,
    text_features: ValorFeatures,
    media_features: dict[str, ValorFeatures],
    text_to_video: Sequence[int],
    groups: Sequence[str] = ("tv", "ta", "tva"),
    max_block_elements: int = 2**26,
) -> dict[str, dict[str, float]]:
    """
    Retrieval metrics of a corpus whose texts and videos are encoded once.

    Args:
        text_features / media_features: from [`encode_texts`] and [`encode_media_features`].
        text_to_video (`list[int]`): the video each text describes (several texts may share a video, as in
            MSR-VTT's full test set or VATEX).
        groups: `tv`, `ta`, `tva`.
        max_block_elements: memory bound of the fine-grained scorer, which runs in blocks of the score tensor.

    Returns:
        `{group: {"t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_median_rank", "t2v_mean_rank", "v2t_...": ...}}` with
        direction names `t2v/v2t`, `t2a/a2t`, `t2va/va2t`. Text-to-video ranks the one correct video of every
        text; video-to-text ranks the best of a video's correct texts.
    """
    video_to_texts: dict[int, list[int]] = {}
    for text, video in enumerate(text_to_video):
        video_to_texts.setdefault(int(video), []).append(text)
    num_videos = len(next(iter(media_features.values())).mask)
    missing = [v for v in range(num_videos) if v not in video_to_texts]
    if missing:
        raise ValueError(f"videos {missing[:5]} have no text in the corpus.")
    results = {}
    for group in groups:
        query, candidates = model.group_features(
            group, text=text_features, video=media_features.get("video"), audio=media_features.get("audio")
        )
        scores = model.similarity(query, candidates, max_block_elements=max_block_elements).float().cpu()
        forward, backward = RETRIEVAL_DIRECTIONS.get(group, (f"{group}_q2c", f"{group}_c2q"))
        metrics = {
            f"{forward}_{k}": v
            for k, v in compute_retrieval_metrics(scores, [int(v) for v in text_to_video]).items()
        }
        metrics.update(
            {
                f"{backward}_{k}": v
                for k, v in compute_retrieval_metrics(
                    scores.t(), [video_to_texts[v] for v in range(num_videos)]
                ).items()
            }
        )
        results[group] = metrics
    return results


def _kept_rows(rows: dict[str, list], media: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
    """Indices of the decodable rows and the media restricted to them (undecodable samples are reported)."""
    kept = [i for i, ok in enumerate(media["ok"].tolist()) if ok]
    for index, error in media["errors"].items():
        logger.warning(
            "Evaluation skips %s (%s): %s", rows["sample_id"][index], rows["video_path"][index], error
        )
    index = torch.tensor(kept, dtype=torch.long)
    restricted = {k: v[index] for k, v in media.items() if isinstance(v, torch.Tensor)}
    return kept, restricted


def evaluate_retrieval_dataset(
    model: ValorModel,
    processor: ValorProcessor,
    rows: dict[str, list],
    media: dict[str, Any],
    groups: Sequence[str],
    batch_size: int = 32,
    max_block_elements: int = 2**26,
) -> dict[str, dict[str, float]]:
    """
    Text-to-video/audio/audiovisual retrieval on a decoded test set: every video and soundtrack encoded once, every
    caption of every video encoded once (all captions are queries), scored for each group with the chunked
    fine-grained scorer, metrics in both directions (see [`retrieval_metrics_for_corpus`]).
    """
    kept, media = _kept_rows(rows, media)
    texts, text_to_video = [], []
    for position, row in enumerate(kept):
        for caption in rows["captions"][row]:
            texts.append(caption)
            text_to_video.append(position)
    media_features = encode_media_features(model, media, batch_size)
    text_features = encode_texts(model, processor, texts, batch_size)
    return retrieval_metrics_for_corpus(
        model, text_features, media_features, text_to_video, groups, max_block_elements
    )


@torch.no_grad()
def generate_for_dataset(
    model: ValorForConditionalGeneration,
    processor: ValorProcessor,
    media: dict[str, Any],
    modalities: Literal["video", "audio", "both"],
    prompts: Sequence[str] | None = None,
    batch_size: int = 32,
    **generate_kwargs,
) -> list[str]:
    """
    Generate a caption (or, with `prompts`, an answer to each question) for every sample of a decoded set,
    conditioned on `modalities`; `generate_kwargs` go to `generate()` (`num_beams`, `max_new_tokens`, ...).
    """
    model.eval()
    keys = {"video": ("pixel_values_videos",), "audio": ("input_features",)}.get(
        modalities, ("pixel_values_videos", "input_features")
    )
    count = len(media["ok"])
    outputs: list[str] = []
    for start in range(0, count, batch_size):
        index = torch.arange(start, min(start + batch_size, count))
        inputs = _media_slice(media, index, keys, model.device)
        if prompts is not None:
            questions = processor(prompts=[prompts[i] for i in index.tolist()], return_tensors="pt")
            inputs["prompt_ids"] = questions["prompt_ids"].to(model.device)
            inputs["prompt_attention_mask"] = questions["prompt_attention_mask"].to(model.device)
        ids = model.generate(**inputs, modalities=modalities, **generate_kwargs)
        outputs.extend(processor.batch_decode(ids, skip_special_tokens=True))
    return outputs


def question_answering_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Share (0-1) of predictions equal to the answer after VALOR's text cleaning (`clean_caption`)."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers.")
    return sum(clean_caption(p) == clean_caption(a) for p, a in zip(predictions, answers)) / len(answers)


_GROUP_MODALITIES = {"tv": "video", "ta": "audio", "tva": "both"}


def evaluate_task(
    task: Literal["retrieval", "captioning", "qa"],
    model,
    processor: ValorProcessor,
    args: EvaluationArguments,
    cache_dir: str | os.PathLike,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    Evaluate a fine-tuned model on every test set of `args` for its task.

    Args:
        task: `retrieval` (a model with a `.valor` `ValorModel`, or a `ValorModel`), `captioning` or `qa` (a
            `ValorForConditionalGeneration`).

    Returns:
        `(metrics, predictions)`: `metrics[dataset][group]` is the metric dict (retrieval: see
        [`retrieval_metrics_for_corpus`]; captioning: `BLEU-1`..`BLEU-4`, `ROUGE-L`, `CIDEr`, ...; qa:
        `accuracy` in [0, 1] and `count`), `predictions[dataset][group]` the generated texts by sample id
        (captioning and QA).
    """
    metrics: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for config in args.datasets:
        rows = load_video_text_dataset(config).to_dict()
        media = decode_dataset(rows, config, processor, cache_dir, args.num_workers)
        if task == "retrieval":
            valor = model if isinstance(model, ValorModel) else model.valor
            metrics[config.name] = evaluate_retrieval_dataset(
                valor,
                processor,
                rows,
                media,
                config.contrastive_groups,
                args.batch_size,
                args.max_block_elements,
            )
            continue
        kept, kept_media = _kept_rows(rows, media)
        metrics[config.name], predictions[config.name] = {}, {}
        for group in config.caption_groups:
            generate_kwargs = {
                "num_beams": args.num_beams or (1 if task == "qa" else 3),
                "max_new_tokens": args.max_new_tokens,
            }
            prompts = [rows["question"][i] for i in kept] if task == "qa" else None
            outputs = generate_for_dataset(
                model,
                processor,
                kept_media,
                _GROUP_MODALITIES[group],
                prompts=prompts,
                batch_size=args.batch_size,
                **generate_kwargs,
            )
            ids = [rows["sample_id"][i] for i in kept]
            predictions[config.name][group] = dict(zip(ids, outputs))
            if task == "qa":
                answers = [rows["captions"][i][0] for i in kept]
                metrics[config.name][group] = {
                    "accuracy": question_answering_accuracy(outputs, answers),
                    "count": len(answers),
                }
            else:
                references = [rows["captions"][i] for i in kept]
                metrics[config.name][group] = compute_caption_metrics(
                    outputs, references, metrics=list(args.caption_metrics)
                )
    return metrics, predictions
