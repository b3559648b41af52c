"""Evaluation of VALOR on test sets: retrieval (MGA), captioning (MGC) and question answering.

One path serves the demo, the fine-tuning scripts and the benchmarks:

1. [`decode_evaluation_set`]: a test set (any `DatasetConfig` layout) is decoded once with the evaluation
   sampling (middle frames and clips), cached on disk; undecodable samples are reported and left out.
2. [`encode_media`] / [`encode_texts`]: every video, soundtrack and caption is encoded once into MGA features.
3. [`retrieval_metrics`]: any modality group is scored from those features with the chunked fine-grained scorer
   (R@1/5/10, median and mean rank in both directions, several captions per video supported);
   [`evaluate_retrieval`] runs steps 2 and 3 on a decoded set.
4. [`generate_texts`]: captions (or answers, with questions) generated for any caption group's conditioning;
   [`evaluate_captioning`] scores them with the COCO toolkit metrics, [`evaluate_question_answering`] with
   exact-match accuracy after VALOR's text cleaning ([`question_answering_accuracy`]).

[`evaluate_task`] runs the whole path on every test set of an [`EvaluationArguments`] (the YAML's `evaluation:`
section). Which modalities a group reads, how its metrics are named and what the decoder is conditioned on come
from `configuration_valor.MODALITY_GROUPS`.

Task prompts (VALOR-L) are added by the models themselves: `get_text_features` runs the text encoder with the
`retrieval` prompt, `generate` decodes captions with the `captioning` prompt and composes the QA prompt from the
question.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers.utils import logging as hf_logging

from ..configuration_valor import CAPTION_GROUPS, RETRIEVAL_GROUPS, get_modality_group
from ..data.collator import MEDIA_KEYS, build_decoded_cache
from ..data.datasets import DatasetConfig, load_video_text_dataset
from ..losses import DEFAULT_MAX_BLOCK_ELEMENTS
from ..metrics import compute_caption_metrics, compute_retrieval_metrics
from ..modeling_valor import ValorFeatures, ValorForConditionalGeneration, ValorModel, concat_feature_batches
from ..processing_valor import ValorProcessor
from ..tokenization_valor import clean_caption
from .corpus_split import ProcessShare, gather_features, gather_objects

logger = logging.getLogger(__name__)

# The model inputs that carry each media modality.
_MODALITY_INPUTS: dict[str, tuple[str, ...]] = {
    "video": ("pixel_values_videos",),
    "audio": ("input_features", "input_features_mask"),
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
        beam_ranking (`str`, defaults to `"valor"`): how beam search ranks hypotheses: `"valor"` (the reference's
            summed log-probabilities, `generation_valor.valor_beam_search`) or `"transformers"`.
        caption_metrics (`list[str]`, defaults to `["BLEU", "ROUGE-L", "CIDEr"]`): COCO toolkit metrics (add
            `METEOR` when Java is installed).
        max_block_elements (`int`, defaults to `losses.DEFAULT_MAX_BLOCK_ELEMENTS`): memory bound of the chunked
            fine-grained scorer.
        num_workers (`int`, defaults to 0): decoding processes.
        cache_dir (`str`, *optional*): where decoded test sets are cached (default `<output_dir>/eval_cache`).
    """

    datasets: list[DatasetConfig] = field(default_factory=list)
    batch_size: int = 32
    num_beams: int | None = None
    max_new_tokens: int = 30
    beam_ranking: Literal["valor", "transformers"] = "valor"
    caption_metrics: list[str] = field(default_factory=lambda: ["BLEU", "ROUGE-L", "CIDEr"])
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS
    num_workers: int = 0
    cache_dir: str | None = None


@dataclass
class EvaluationSet:
    """
    A test set decoded once: its decodable samples, their captions and media tensors.

    Args:
        name (`str`): the dataset's name.
        sample_ids (`list[str]`): one id per decodable sample, in dataset order.
        captions (`list[list[str]]`): every caption of each sample (retrieval queries and captioning references;
            the answer for question answering).
        media (`dict[str, torch.Tensor]`): `(N, ...)` model inputs: `pixel_values_videos` (absent for audio
            datasets), `input_features` and `input_features_mask` (absent for silent video).
        questions (`list[str]`, *optional*): the question of each sample (question answering sets).
        failed (`dict[str, str]`): sample id -> decoding error of the samples left out.
    """

    name: str
    sample_ids: list[str]
    captions: list[list[str]]
    media: dict[str, torch.Tensor]
    questions: list[str] | None = None
    failed: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The media modalities the set holds: `video` and/or `audio`."""
        return tuple(m for m, keys in _MODALITY_INPUTS.items() if keys[0] in self.media)

    def inputs(
        self,
        start: int,
        stop: int,
        modalities: Collection[str],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> dict[str, torch.Tensor]:
        """Model inputs of samples `start:stop` for the media `modalities` (`text` is ignored), floats cast to
        `dtype`; a ValueError names a modality the set does not hold."""
        out = {}
        for modality in _MODALITY_INPUTS:
            if modality not in modalities:
                continue
            if modality not in self.modalities:
                raise ValueError(f"Evaluation set {self.name!r} has no {modality}.")
            for key in _MODALITY_INPUTS[modality]:
                value = self.media[key][start:stop]
                out[key] = value.to(device=device, dtype=dtype if value.is_floating_point() else None)
        return out


def decode_evaluation_set(
    config: DatasetConfig,
    processor: ValorProcessor,
    cache_dir: str | os.PathLike,
    num_workers: int = 0,
    share: ProcessShare | None = None,
) -> EvaluationSet:
    """
    Load a test set's annotations and decode its media once (middle frames and clips, `config.num_frames` /
    `config.num_clips`), cached on disk (see `collator.build_decoded_cache`). Samples that cannot be decoded are
    logged and left out (listed in `failed`). With `share`, only this process's contiguous block of the set
    (`corpus_split.ProcessShare.block`) is loaded and decoded.
    """
    rows = load_video_text_dataset(config).to_dict()
    if share is not None and share.world_size > 1:
        count = len(rows["sample_id"])
        if count < share.world_size:
            raise ValueError(
                f"Evaluation set {config.name!r} has {count} samples, fewer than {share.world_size} processes."
            )
        block = share.block(count)
        rows = {key: values[block.start : block.stop] for key, values in rows.items()}
    decoded = build_decoded_cache(
        rows, config, processor, cache_dir, num_workers=num_workers, dtype="float32", progress=True
    )
    failed = {}
    for index, error in decoded["errors"].items():
        logger.warning(
            "Evaluation skips %s (%s): %s", rows["sample_id"][index], rows["video_path"][index], error
        )
        failed[rows["sample_id"][index]] = error
    kept = [i for i, ok in enumerate(decoded["ok"].tolist()) if ok]
    index = torch.tensor(kept, dtype=torch.long)
    return EvaluationSet(
        name=config.name,
        sample_ids=[rows["sample_id"][i] for i in kept],
        captions=[list(rows["captions"][i]) for i in kept],
        media={key: decoded[key][index] for key in MEDIA_KEYS if key in decoded},
        questions=[rows["question"][i] for i in kept] if "question" in rows else None,
        failed=failed,
    )


def batches(starts: range, desc: str):
    """The batch starts of an evaluation loop with a progress bar (transformers' tqdm: hidden by
    `transformers.utils.logging.disable_progress_bar()`)."""
    return hf_logging.tqdm(starts, desc=desc, unit="batch")


@torch.no_grad()
def encode_media(
    model: ValorModel,
    eval_set: EvaluationSet,
    modalities: Collection[str] | None = None,
    batch_size: int = 32,
) -> dict[str, ValorFeatures]:
    """
    MGA features of every video and/or soundtrack of a decoded set, each encoded once, in batches:
    `{"video": ..., "audio": ...}` for the requested media `modalities` (default: every modality the set holds).
    """
    model.eval()
    wanted = [m for m in eval_set.modalities if modalities is None or m in modalities]
    parts: dict[str, list[ValorFeatures]] = {m: [] for m in wanted}
    for start in batches(range(0, len(eval_set), batch_size), f"encoding {eval_set.name} media"):
        batch = eval_set.inputs(start, start + batch_size, wanted, model.device, model.dtype)
        if "video" in parts:
            parts["video"].append(model.get_video_features(batch["pixel_values_videos"]))
        if "audio" in parts:
            parts["audio"].append(
                model.get_audio_features(batch["input_features"], batch["input_features_mask"])
            )
    return {modality: concat_feature_batches(chunks) for modality, chunks in parts.items()}


@torch.no_grad()
def encode_texts(
    model: ValorModel,
    processor: ValorProcessor,
    texts: Sequence[str],
    batch_size: int = 32,
    max_text_length: int | None = None,
    rows: range | None = None,
) -> ValorFeatures:
    """MGA features of every text (or of the texts at `rows`), tokenised once (padded to the longest of all the
    texts, so that blocks encoded by several processes line up) and encoded in batches."""
    model.eval()
    max_length = None if max_text_length is None else max_text_length + 2
    tokens = processor(text=list(texts), padding="longest", max_length=max_length, return_tensors="pt")
    rows = range(len(texts)) if rows is None else rows
    parts = []
    for start in batches(range(rows.start, rows.stop, batch_size), "encoding texts"):
        stop = min(start + batch_size, rows.stop)
        ids = tokens["input_ids"][start:stop].to(model.device)
        mask = tokens["attention_mask"][start:stop].to(model.device)
        parts.append(model.get_text_features(ids, mask))
    return concat_feature_batches(parts)


def _ground_truth(group: str, text_to_video: Sequence[int], num_videos: int) -> tuple[list, list]:
    """Correct candidates of every query of a group's score matrix, in both directions."""
    spec = get_modality_group(group)
    if "text" not in spec.modalities:  # media against media: sample i matches sample i
        return list(range(num_videos)), list(range(num_videos))
    if spec.query != ("text",):
        raise ValueError(
            f"Retrieval evaluation scores the text-query groups {list(RETRIEVAL_GROUPS)} and groups without text; "
            f"{group!r} puts text beside another modality."
        )
    video_to_texts: dict[int, list[int]] = {}
    for text, video in enumerate(text_to_video):
        video_to_texts.setdefault(int(video), []).append(text)
    missing = [v for v in range(num_videos) if v not in video_to_texts]
    if missing:
        raise ValueError(f"videos {missing[:5]} have no text in the corpus.")
    return [int(v) for v in text_to_video], [video_to_texts[v] for v in range(num_videos)]


@torch.no_grad()
def retrieval_metrics(
    model: ValorModel,
    features: dict[str, ValorFeatures],
    text_to_video: Sequence[int] | None = None,
    groups: Sequence[str] = RETRIEVAL_GROUPS,
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
) -> dict[str, dict[str, float]]:
    """
    Retrieval metrics of a corpus whose texts, videos and soundtracks are encoded once.

    Args:
        features (`dict[str, ValorFeatures]`): `text`, `video` and/or `audio` features (from [`encode_texts`]
            and [`encode_media`]); each group needs the modalities it reads.
        text_to_video (`list[int]`, *optional*): the video each text describes (several texts may share a video,
            as in MSR-VTT's full test set or VATEX); default: text i describes video i.
        groups: modality groups to score (`tv`, `ta`, `tva`, or a group without text such as `va`).
        max_block_elements: memory bound of the fine-grained scorer, which runs in blocks of the score tensor.

    Returns:
        `{group: {"t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_median_rank", "t2v_mean_rank", "v2t_...": ...}}` with the
        group's direction names (`MODALITY_GROUPS[group].metric_names`: `t2v/v2t`, `t2a/a2t`, `t2va/va2t`, ...).
        Recalls are percentages. Text-to-video ranks the one correct video of every text; video-to-text ranks
        the best of a video's correct texts.
    """
    media = [features[m] for m in ("video", "audio") if m in features]
    if not media:
        raise ValueError("Retrieval needs `video` or `audio` features.")
    num_videos = len(media[0].mask)
    if text_to_video is None:
        text_to_video = range(len(features["text"].mask) if "text" in features else num_videos)
    results = {}
    for group in groups:
        forward_name, backward_name = get_modality_group(group).metric_names
        forward_truth, backward_truth = _ground_truth(group, text_to_video, num_videos)
        query, candidates = model.group_features(group, **features)
        scores = model.similarity(query, candidates, max_block_elements=max_block_elements).float().cpu()
        metrics = {
            f"{forward_name}_{k}": v for k, v in compute_retrieval_metrics(scores, forward_truth).items()
        }
        backward = compute_retrieval_metrics(scores.t(), backward_truth)
        metrics.update({f"{backward_name}_{k}": v for k, v in backward.items()})
        results[group] = metrics
    return results


def evaluate_retrieval(
    model: ValorModel,
    processor: ValorProcessor,
    eval_set: EvaluationSet,
    groups: Sequence[str] = RETRIEVAL_GROUPS,
    batch_size: int = 32,
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
    queries: Sequence[Sequence[str]] | None = None,
    share: ProcessShare | None = None,
) -> dict[str, dict[str, float]]:
    """
    Retrieval on a decoded set: the media each group needs encoded once, every query text encoded once, each
    group scored with the chunked fine-grained scorer, metrics in both directions (see [`retrieval_metrics`]).

    Args:
        queries (`list[list[str]]`, *optional*): the query texts of each sample of `eval_set`; default: all its
            captions (the demo passes one caption per clip).
        share ([`ProcessShare`], *optional*): `eval_set` is this process's block of the set (`decode_evaluation_set`
            with the same share): each process encodes its videos and their texts, the features of every process
            are gathered in set order, and every process scores the whole set (the same metrics everywhere).
    """
    if not groups:
        return {}
    queries = eval_set.captions if queries is None else queries
    if len(queries) != len(eval_set):
        raise ValueError(f"{len(queries)} query lists for the {len(eval_set)} samples of {eval_set.name!r}.")
    split = share is not None and share.world_size > 1
    local_texts = sum(len(sample) for sample in queries)
    first_text = sum(gather_objects([local_texts])[: share.rank]) if split else 0
    queries = gather_objects(queries) if split else queries
    texts = [text for sample in queries for text in sample]
    text_to_video = [video for video, sample in enumerate(queries) for _ in sample]
    modalities = set().union(*(get_modality_group(group).modalities for group in groups))
    features = encode_media(model, eval_set, modalities, batch_size)
    if "text" in modalities:
        rows = range(first_text, first_text + local_texts)
        features["text"] = encode_texts(model, processor, texts, batch_size, rows=rows)
    if split:
        features = {name: gather_features(value) for name, value in features.items()}
    return retrieval_metrics(model, features, text_to_video, groups, max_block_elements)


@torch.no_grad()
def generate_texts(
    model: ValorForConditionalGeneration,
    processor: ValorProcessor,
    eval_set: EvaluationSet,
    group: str,
    questions: Sequence[str] | None = None,
    batch_size: int = 32,
    **generate_kwargs,
) -> dict[str, str]:
    """
    Generate a caption (or, with `questions`, an answer to each sample's question) for every sample of a decoded
    set, conditioned on what caption group `group` gives the decoder (`tv`: video, `ta`: audio, `tva`: both);
    `generate_kwargs` go to `generate()` (`num_beams`, `max_new_tokens`, ...). The model adds its task prompts.

    Returns:
        `{sample_id: text}`, in the set's order.
    """
    model.eval()
    spec = get_modality_group(group, "caption")
    outputs: list[str] = []
    task = "answering" if questions is not None else "captioning"
    for start in batches(range(0, len(eval_set), batch_size), f"{task} {eval_set.name} ({group})"):
        inputs = eval_set.inputs(
            start, start + batch_size, spec.decoder_modalities, model.device, model.dtype
        )
        if questions is not None:
            tokens = processor(prompts=list(questions[start : start + batch_size]), return_tensors="pt")
            inputs["question_ids"] = tokens["prompt_ids"].to(model.device)
            inputs["question_attention_mask"] = tokens["prompt_attention_mask"].to(model.device)
        ids = model.generate(**inputs, modalities=spec.media, **generate_kwargs)
        outputs.extend(processor.batch_decode(ids, skip_special_tokens=True))
    return dict(zip(eval_set.sample_ids, outputs))


def evaluate_captioning(
    model: ValorForConditionalGeneration,
    processor: ValorProcessor,
    eval_set: EvaluationSet,
    groups: Sequence[str] = CAPTION_GROUPS,
    metrics: Sequence[str] = ("BLEU", "ROUGE-L", "CIDEr"),
    batch_size: int = 32,
    share: ProcessShare | None = None,
    **generate_kwargs,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """
    Caption every sample of a decoded set for each caption group and score the captions against all of the
    sample's captions (COCO toolkit `metrics`: `BLEU` gives BLEU-1..4, `METEOR` needs Java). With `share`,
    `eval_set` is this process's block: each process captions its block and the captions and references of
    every process are gathered, in set order, for scoring.

    Returns:
        `(metrics, predictions)`: `metrics[group]` (`BLEU-1`..`BLEU-4`, `ROUGE-L`, `CIDEr`, ...) and
        `predictions[group]` (`{sample_id: caption}`).
    """
    references = _gathered(eval_set.captions, share)
    scores, predictions = {}, {}
    for group in groups:
        local = generate_texts(model, processor, eval_set, group, None, batch_size, **generate_kwargs)
        predictions[group] = dict(_gathered(list(local.items()), share))
        scores[group] = compute_caption_metrics(
            list(predictions[group].values()), references, metrics=list(metrics)
        )
    return scores, predictions


def _gathered(values: list, share: ProcessShare | None) -> list:
    """`values` of every process of `share`, in set order (this process's `values` without a split)."""
    return gather_objects(values) if share is not None and share.world_size > 1 else list(values)


def question_answering_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """Share (0-1) of predictions equal to the answer after VALOR's text cleaning (`clean_caption`)."""
    if len(predictions) != len(answers) or not answers:
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers.")
    return sum(clean_caption(p) == clean_caption(a) for p, a in zip(predictions, answers)) / len(answers)


def evaluate_question_answering(
    model: ValorForConditionalGeneration,
    processor: ValorProcessor,
    eval_set: EvaluationSet,
    groups: Sequence[str] = ("tva",),
    batch_size: int = 32,
    share: ProcessShare | None = None,
    **generate_kwargs,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, str]]]:
    """
    Answer every question of a decoded QA set (each composed into the model's prompt) for each caption group and
    score the answers by exact match with the sample's answer (its first caption) after VALOR's text cleaning.
    With `share`, `eval_set` is this process's block and the answers of every process are gathered for scoring.

    Returns:
        `(metrics, predictions)`: `metrics[group]` = `{"accuracy": 0-1, "count": answers}`, `predictions[group]`
        = `{sample_id: answer}`.
    """
    if eval_set.questions is None:
        raise ValueError(f"Evaluation set {eval_set.name!r} has no questions (set `question_column`).")
    answers = _gathered([captions[0] for captions in eval_set.captions], share)
    scores, predictions = {}, {}
    for group in groups:
        local = generate_texts(
            model, processor, eval_set, group, eval_set.questions, batch_size, **generate_kwargs
        )
        predictions[group] = dict(_gathered(list(local.items()), share))
        accuracy = question_answering_accuracy(list(predictions[group].values()), answers)
        scores[group] = {"accuracy": accuracy, "count": len(answers)}
    return scores, predictions


def evaluate_task(
    task: Literal["retrieval", "captioning", "qa"],
    model,
    processor: ValorProcessor,
    args: EvaluationArguments,
    cache_dir: str | os.PathLike,
    share: ProcessShare | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    Evaluate a fine-tuned model on every test set of `args` for its task (each set decoded once).

    Args:
        task: `retrieval` (a model with a `.valor` `ValorModel`, or a `ValorModel`; the set's
            `contrastive_groups`), `captioning` or `qa` (a `ValorForConditionalGeneration`; the set's
            `caption_groups`).
        share ([`ProcessShare`], *optional*): split every set between the processes of a launch (every process
            calls this; each decodes, encodes or generates its block, the results are gathered for scoring and
            every process returns the same metrics, equal to one process's). Default: this process does it all.

    Returns:
        `(metrics, predictions)`: `metrics[dataset][group]` is the metric dict (retrieval: see
        [`retrieval_metrics`]; captioning: `BLEU-1`..`BLEU-4`, `ROUGE-L`, `CIDEr`, ...; qa: `accuracy` in [0, 1]
        and `count`), `predictions[dataset][group]` the generated texts by sample id (captioning and QA).
    """
    if task not in ("retrieval", "captioning", "qa"):
        raise ValueError(f"`task` must be 'retrieval', 'captioning' or 'qa', got {task!r}.")
    generate_kwargs = {
        "num_beams": args.num_beams or (1 if task == "qa" else 3),
        "max_new_tokens": args.max_new_tokens,
        "beam_ranking": args.beam_ranking,
    }
    if args.beam_ranking == "valor" and generate_kwargs["num_beams"] > 1:
        generate_kwargs["length_penalty"] = 0.0  # VALOR's ranking has no length normalisation
    metrics: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for config in args.datasets:
        eval_set = decode_evaluation_set(config, processor, cache_dir, args.num_workers, share)
        if task == "retrieval":
            valor = model if isinstance(model, ValorModel) else model.valor
            metrics[config.name] = evaluate_retrieval(
                valor,
                processor,
                eval_set,
                config.contrastive_groups,
                args.batch_size,
                args.max_block_elements,
                share=share,
            )
        elif task == "qa":
            metrics[config.name], predictions[config.name] = evaluate_question_answering(
                model, processor, eval_set, config.caption_groups, args.batch_size, share, **generate_kwargs
            )
        else:
            metrics[config.name], predictions[config.name] = evaluate_captioning(
                model,
                processor,
                eval_set,
                config.caption_groups,
                args.caption_metrics,
                args.batch_size,
                share,
                **generate_kwargs,
            )
    return metrics, predictions
