"""Model cards (README.md with Hub metadata) for VALOR checkpoints.

[`create_model_card`] builds a card with `huggingface_hub`'s `ModelCard`/`ModelCardData`: pipeline tag, library,
tags, license, the datasets the model was trained on and its `model-index` evaluation results (only what the caller
states: nothing is claimed by default), a description of the architecture read off the config, and a usage snippet.
`save_pretrained` and `push_to_hub` write one into every saved folder; a training run states its datasets
(`training.checkpointing.save_final_model`) and its evaluation adds the results ([`add_eval_results`]); the
converter (`transformers_valor.conversion`) states the published checkpoints' pretraining corpora and MIT license.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_valor import ValorConfig

DEFAULT_TAGS = ("valor", "video-text", "audio", "audio-visual", "video-captioning", "video-retrieval")
# VALOR-B's pretraining corpora (the paper's recipe), stated by the converter for the published VALOR-B weights.
PRETRAINING_DATASETS = ("VALOR-1M", "WebVid-2.5M", "CC3M")
# This project's license (pyproject.toml); the original VALOR code and weights are MIT-licensed.
PROJECT_LICENSE = "apache-2.0"
ORIGINAL_LICENSE = "mit"
# Hub task type of each evaluated task (`model-index` results).
EVAL_TASK_TYPES = {
    "retrieval": "text-to-video-retrieval",
    "captioning": "video-captioning",
    "qa": "video-question-answering",
}
PAPER_URL = "https://arxiv.org/abs/2304.08345"
# Hub pipeline tag per saved head. The Hub has no retrieval task tag; the base model and the retrieval head are
# feature extractors (they return normalised embeddings and scores).
PIPELINE_TAGS = {
    "ValorModel": "feature-extraction",
    "ValorForRetrieval": "feature-extraction",
    "ValorForConditionalGeneration": "video-text-to-text",
    "ValorForPreTraining": "video-text-to-text",
}

_USAGE = """```python
import torch

import transformers_valor  # noqa: F401  (registers VALOR with the transformers Auto classes)
from transformers_valor import ValorForConditionalGeneration, ValorForRetrieval, ValorProcessor

repo = "{model_id}"
video = "video.mp4"  # any video file with or without a soundtrack

processor = ValorProcessor.from_pretrained(repo)
inputs = processor(text=["a man is playing the guitar"], videos=[video], return_tensors="pt")

# Captioning (from the frames and the soundtrack)
captioner = ValorForConditionalGeneration.from_pretrained(repo).eval()
ids = captioner.generate(
    pixel_values_videos=inputs["pixel_values_videos"],
    input_features=inputs["input_features"],
    num_beams=3,
    max_new_tokens=30,
)
print(processor.batch_decode(ids, skip_special_tokens=True))

# Text-to-audiovisual retrieval score
retriever = ValorForRetrieval.from_pretrained(repo).eval()
with torch.no_grad():
    logits_per_text = retriever(**inputs, group="tva").logits_per_text
print(logits_per_text.softmax(-1))
```"""


def _as_config(model_or_config: Any) -> ValorConfig:
    config = getattr(model_or_config, "config", model_or_config)
    if not isinstance(config, ValorConfig):
        raise TypeError(
            f"`model_or_config` must be a VALOR model or a ValorConfig, got {type(model_or_config).__name__}."
        )
    return config


def _eval_result(entry: EvalResult | Mapping[str, Any]) -> EvalResult:
    if isinstance(entry, EvalResult):
        return entry
    missing = [key for key in ("task", "dataset", "metric", "value") if key not in entry]
    if missing:
        raise ValueError(
            f"An evaluation result needs the keys task, dataset, metric and value; {missing} missing in {entry}."
        )
    return EvalResult(
        task_type=entry["task"],
        task_name=entry.get("task_name"),
        dataset_type=entry["dataset"],
        dataset_name=entry.get("dataset_name", entry["dataset"]),
        dataset_split=entry.get("split"),
        metric_type=entry["metric"],
        metric_name=entry.get("metric_name"),
        metric_value=entry["value"],
    )


def describe_architecture(config: ValorConfig) -> str:
    """A short Markdown description of the towers and objectives of a [`ValorConfig`]."""
    text = config.text_config
    vision = config.vision_config
    audio = config.audio_config
    if config.is_clip_vision:
        video = (
            f"CLIP ViT ({vision.num_hidden_layers} layers, width {vision.hidden_size}, patch {vision.patch_size}, "
            f"{vision.image_size} px) applied to every frame"
        )
    else:
        video = (
            f"Video Swin (depths {list(vision.depths)}, embed dim {vision.embed_dim}, window "
            f"{list(vision.window_size)}, output width {vision.hidden_size})"
        )
    image_size = audio.image_size if isinstance(audio.image_size, Sequence) else [audio.image_size] * 2
    lines = [
        f"- text encoder / multimodal decoder (one shared BERT): {text.num_hidden_layers} layers, width "
        f"{text.hidden_size}, vocabulary {text.vocab_size}, cross-attention layout `{config.cross_attention_layout}`",
        f"- video encoder: {video}",
        f"- audio encoder: AST-style ViT ({audio.num_hidden_layers} layers, width {audio.hidden_size}) on "
        f"{image_size[0]} mel bins x {image_size[1]} frames, patch {audio.patch_size}",
        f"- contrastive space: {config.projection_dim}-d, `{config.contrastive_type}` grouping alignment, "
        f"temperature as `{config.logit_scale_type}`",
        f"- captioning objective: `{config.caption_objective}`"
        + (f", task prompts {config.task_prompts}" if config.use_task_prompt else ""),
    ]
    return "\n".join(lines)


def create_model_card(
    model_or_config: Any,
    output_dir: str | os.PathLike | None = None,
    *,
    model_id: str | None = None,
    pipeline_tag: str | None = None,
    datasets: Sequence[str] | None = None,
    eval_results: Sequence[EvalResult | Mapping[str, Any]] | None = None,
    base_model: str | Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
    license: str = PROJECT_LICENSE,
    language: str = "en",
    description: str | None = None,
    overwrite: bool = True,
) -> ModelCard:
    """
    Build (and optionally write) the model card of a VALOR checkpoint.

    Args:
        model_or_config: a VALOR model (any head) or its [`ValorConfig`].
        output_dir (`str`, *optional*): write the card there as `README.md`.
        model_id (`str`, *optional*): Hub repository id (or local path) shown in the usage snippet; defaults to the
            model's `name_or_path`, else `"path/to/valor"`.
        pipeline_tag (`str`, *optional*): Hub pipeline tag; by default chosen from the model class
            (`video-text-to-text` for captioning and pretraining checkpoints, `feature-extraction` for
            retrieval ones).
        datasets (`list[str]`, *optional*): the datasets the model was trained on; none are stated by default.
        eval_results (`list`, *optional*): evaluation results for the `model-index`, each a `huggingface_hub`
            `EvalResult` or a dict with `task`, `dataset`, `metric`, `value` (and optional `dataset_name`,
            `split`, `metric_name`, `task_name`).
        base_model (`str` or `list[str]`, *optional*): checkpoint(s) the model was initialised or fine-tuned from.
        tags (`list[str]`, *optional*): extra tags added to the defaults (`valor`, `video-text`, `audio`, ...).
        license (`str`, defaults to `"apache-2.0"`): the project's license (converted original weights: `"mit"`).
        language (`str`, defaults to `"en"`).
        description (`str`, *optional*): extra Markdown inserted after the summary (e.g. the conversion report).
        overwrite (`bool`, defaults to `True`): replace an existing `README.md` in `output_dir`.

    Returns:
        The `huggingface_hub.ModelCard`.
    """
    config = _as_config(model_or_config)
    class_name = type(model_or_config).__name__ if model_or_config is not config else None
    architectures = list(getattr(config, "architectures", None) or [])
    head = class_name or (architectures[0] if architectures else "ValorForPreTraining")
    if model_id is None:
        model_id = getattr(config, "name_or_path", None) or "path/to/valor"
    model_name = str(model_id).rstrip("/").split("/")[-1]
    data = ModelCardData(
        language=language,
        license=license,
        library_name="transformers",
        pipeline_tag=pipeline_tag or PIPELINE_TAGS.get(head, "video-text-to-text"),
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *(tags or ())])),
        datasets=list(datasets) if datasets else None,
        base_model=list(base_model) if isinstance(base_model, (list, tuple)) else base_model,
        model_name=model_name,
        eval_results=[_eval_result(entry) for entry in eval_results] if eval_results else None,
    )
    body = _card_body(config, model_name, str(model_id), description, data)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    if output_dir is not None:
        path = os.path.join(os.fspath(output_dir), "README.md")
        if overwrite or not os.path.exists(path):
            _save_atomically(card, path)
    return card


def _save_atomically(card: ModelCard, path: str) -> None:
    """Write `card` to `path` through a temporary file in the same folder, renamed over it when complete."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".README.", suffix=".tmp")
    os.close(handle)
    try:
        card.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def eval_results_from_metrics(
    task: str, metrics: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> list[dict]:
    """
    `model-index` entries from the metrics of `training.evaluation.evaluate_task` (`metrics[dataset][group]` =
    `{metric: value}`): one per numeric metric, named `<group>/<metric>` (`tva/t2va_R@1`): the Hub's model-index
    groups results by task and dataset and keeps one task name per group, so the modality group is in the name.
    """
    if task not in EVAL_TASK_TYPES:
        raise ValueError(f"`task` must be one of {sorted(EVAL_TASK_TYPES)}, got {task!r}.")
    return [
        {
            "task": EVAL_TASK_TYPES[task],
            "dataset": dataset,
            "metric": f"{group}/{name}",
            "value": value,
        }
        for dataset, groups in metrics.items()
        for group, values in groups.items()
        for name, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]


def add_eval_results(
    model_or_config: Any, folder: str | os.PathLike, task: str, metrics: Mapping
) -> ModelCard:
    """
    Rewrite the card in `folder` with the evaluation `metrics` of `task` (see [`eval_results_from_metrics`]),
    keeping the datasets, base model, license and extra tags its metadata states.
    """
    path = os.path.join(os.fspath(folder), "README.md")
    previous = ModelCard.load(path).data if os.path.isfile(path) else ModelCardData()
    return create_model_card(
        model_or_config,
        folder,
        datasets=previous.datasets,
        base_model=previous.base_model,
        tags=previous.tags,
        license=previous.license or PROJECT_LICENSE,
        eval_results=eval_results_from_metrics(task, metrics),
    )


_CITATION = """```bibtex
@article{chen2023valor,
  title={VALOR: Vision-Audio-Language Omni-Perception Pretraining Model and Dataset},
  author={Chen, Sihan and He, Xingjian and Guo, Longteng and Zhu, Xinxin and Wang, Weining and Tang, Jinhui and Liu, Jing},
  journal={arXiv preprint arXiv:2304.08345},
  year={2023}
}
```"""


def _training_section(data: ModelCardData) -> list[str]:
    """What the card states about the training data and results: only what its metadata holds."""
    datasets = ", ".join(f"`{d}`" for d in data.datasets) if data.datasets else "not stated"
    lines = ["## Training and evaluation", "", f"Training data: {datasets}.", ""]
    if data.eval_results:
        lines += ["| task | dataset | metric | value |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {r.task_type} | {r.dataset_name} | {r.metric_type} | {r.metric_value:.4g} |"
            for r in data.eval_results
        ]
    else:
        lines.append("Evaluation results: none recorded for this checkpoint.")
    return [*lines, ""]


def _card_body(
    config: ValorConfig, model_name: str, model_id: str, description: str | None, data: ModelCardData
) -> str:
    """The Markdown of a card below its metadata: summary, architecture, training data and results, usage and
    citation."""
    sections = [
        f"# {model_name}",
        "",
        "VALOR (Vision-Audio-Language Omni-peRception, Chen, Liu et al., "
        f"[arXiv 2304.08345]({PAPER_URL})) encodes text, video frames and audio with three single-modality "
        "encoders, aligns them with Multimodal Grouping Alignment (text-video, text-audio and "
        "text-audiovisual retrieval) and captions or answers questions with a multimodal decoder (Multimodal "
        "Grouping Captioning). This checkpoint runs with the `transformers-valor` package on top of "
        "`transformers`.",
        "",
        "## Architecture",
        "",
        describe_architecture(config),
        "",
    ]
    if description:
        sections += [description.strip(), ""]
    sections += _training_section(data)
    sections += [
        "## Usage",
        "",
        "Install `transformers-valor`, then:",
        "",
        _USAGE.format(model_id=model_id),
        "",
        "Inputs: `input_ids`/`attention_mask` (BERT uncased WordPiece), `pixel_values_videos` "
        "(batch, frames, 3, height, width), `input_features` (batch, clips, mel bins, frames) with "
        "`input_features_mask`. `ValorProcessor` produces all of them from captions and video files.",
        "",
        "## Citation",
        "",
        _CITATION,
        "",
    ]
    return "\n".join(sections)
