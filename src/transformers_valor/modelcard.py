"""Model cards (README.md with Hub metadata) for VALOR checkpoints.

[`create_model_card`] builds a card with `huggingface_hub`'s `ModelCard`/`ModelCardData`: pipeline tag, library,
tags, datasets, optional `model-index` evaluation results, a description of the architecture read off the config,
and a usage snippet. The converter (`transformers_valor.conversion`) writes one next to every converted
checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_valor import ValorConfig

DEFAULT_TAGS = ("valor", "video-text", "audio", "audio-visual", "video-captioning", "video-retrieval")
PRETRAINING_DATASETS = ("VALOR-1M", "WebVid-2.5M", "CC3M")
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
    license: str = "mit",
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
        datasets (`list[str]`, *optional*): training data; defaults to VALOR's pretraining corpora.
        eval_results (`list`, *optional*): evaluation results for the `model-index`, each a `huggingface_hub`
            `EvalResult` or a dict with `task`, `dataset`, `metric`, `value` (and optional `dataset_name`,
            `split`, `metric_name`, `task_name`).
        base_model (`str` or `list[str]`, *optional*): checkpoint(s) the model was initialised or fine-tuned from.
        tags (`list[str]`, *optional*): extra tags added to the defaults (`valor`, `video-text`, `audio`, ...).
        license (`str`, defaults to `"mit"`): the license of the original VALOR weights.
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
        datasets=list(datasets) if datasets is not None else list(PRETRAINING_DATASETS),
        base_model=list(base_model) if isinstance(base_model, (list, tuple)) else base_model,
        model_name=model_name,
        eval_results=[_eval_result(entry) for entry in eval_results] if eval_results else None,
    )
    body = _card_body(config, model_name, str(model_id), description)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    if output_dir is not None:
        path = os.path.join(os.fspath(output_dir), "README.md")
        if overwrite or not os.path.exists(path):
            os.makedirs(os.fspath(output_dir), exist_ok=True)
            card.save(path)
    return card


_CITATION = """```bibtex
@article{chen2023valor,
  title={VALOR: Vision-Audio-Language Omni-Perception Pretraining Model and Dataset},
  author={Chen, Sihan and He, Xingjian and Guo, Longteng and Zhu, Xinxin and Wang, Weining and Tang, Jinhui and Liu, Jing},
  journal={arXiv preprint arXiv:2304.08345},
  year={2023}
}
```"""


def _card_body(config: ValorConfig, model_name: str, model_id: str, description: str | None) -> str:
    """The Markdown of a card below its metadata: summary, architecture, usage and citation."""
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
