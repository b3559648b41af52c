"""Pieces shared by the VALOR pipelines: argument validation, media preprocessing and the generation base class."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
from transformers import GenerationConfig, Pipeline
from transformers.feature_extraction_utils import BatchFeature

from ..media_io import check_path
from ..modeling_valor import ValorForConditionalGeneration

Modalities = Literal["video", "audio", "both"]
MODALITIES: tuple[str, ...] = ("video", "audio", "both")

# Every keyword `generate()` reads from a GenerationConfig; the pipelines route these to generation.
GENERATION_PARAMETERS = frozenset(
    name for name in vars(GenerationConfig()) if not name.startswith("_") and name != "transformers_version"
) | {"generation_config"}


def check_modalities(modalities: str) -> str:
    """Return `modalities` if it is `"video"`, `"audio"` or `"both"`, else raise a `ValueError` naming them."""
    if modalities not in MODALITIES:
        raise ValueError(f"`modalities` must be one of {list(MODALITIES)}, got {modalities!r}.")
    return modalities


def check_positive_int(name: str, value: int | None) -> int | None:
    """Return `value` if it is `None` or a positive `int`, else raise a `ValueError`."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return value


def check_video_path(video: Any) -> str:
    """Return a local media path as a string; `FileNotFoundError` (naming it) when there is no such file."""
    if not isinstance(video, (str, os.PathLike)):
        raise TypeError(f"Expected the path of a local video file, got a {type(video).__name__}.")
    return check_path(video)


def media_inputs(
    processor,
    paths: Sequence[str],
    modalities: Modalities,
    num_frames: int | None = None,
    num_clips: int | None = None,
    processor_kwargs: dict[str, Any] | None = None,
    **text_inputs: Any,
) -> BatchFeature:
    """
    Run the processor on video files, decoding only what `modalities` needs.

    Args:
        processor ([`ValorProcessor`]): the processor.
        paths (`list[str]`): existing media files.
        modalities (`str`): `"video"` (frames only), `"audio"` (soundtrack only) or `"both"`.
        num_frames / num_clips (`int`, *optional*): frames / audio clips per video (default: the processor's).
        processor_kwargs (`dict`, *optional*): further processor arguments (`size`, `video_backend`, ...).
        text_inputs: `text=` / `prompts=` passed through to the processor.

    Returns:
        `BatchFeature` with `pixel_values_videos` (video, both) and `input_features`, `input_features_mask`
        (audio, both), plus the text fields asked for.
    """
    kwargs = dict(processor_kwargs or {})
    if modalities in ("video", "both") and num_frames is not None:
        kwargs["num_frames"] = num_frames
    if modalities in ("audio", "both") and num_clips is not None:
        kwargs["num_clips"] = num_clips
    paths = list(paths)
    if modalities == "video":
        return processor(videos=paths, audio_from_video=False, return_tensors="pt", **text_inputs, **kwargs)
    if modalities == "audio":
        return processor(audios=paths, return_tensors="pt", **text_inputs, **kwargs)
    return processor(videos=paths, audio_from_video=True, return_tensors="pt", **text_inputs, **kwargs)


def split_generate_kwargs(
    kwargs: dict[str, Any], generate_kwargs: dict[str, Any] | None, pipeline_name: str
) -> dict[str, Any] | None:
    """
    Merge the generation parameters found in `kwargs` into a copy of `generate_kwargs`.

    Raises:
        TypeError: for a keyword that is neither a pipeline argument nor a generation parameter.
    """
    unknown = sorted(set(kwargs) - GENERATION_PARAMETERS)
    if unknown:
        raise TypeError(
            f"{pipeline_name} got unexpected arguments {unknown}; pass other `generate()` arguments in "
            "`generate_kwargs={...}`."
        )
    if not kwargs and generate_kwargs is None:
        return None
    merged = dict(generate_kwargs or {})
    for name, value in kwargs.items():
        if name in merged:
            raise ValueError(f"`{name}` was given both directly and in `generate_kwargs`; give it once.")
        merged[name] = value
    return merged


class ValorGenerationPipeline(Pipeline):
    """
    Base of the pipelines that decode text from a video's frames and/or soundtrack with
    [`ValorForConditionalGeneration`] (captioning and question answering).

    Subclasses implement `preprocess` (which calls `_encode_media`), `_sanitize_parameters` (with
    `_sanitize_common`) and `postprocess` (with `_decode`). `_forward` is shared: it calls `model.generate` once
    per batch with the generation parameters given at construction, at call time and the class defaults.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False
    _pipeline_calls_generate = True
    # Generation settings applied on top of the generation config's own (subclasses may force some per call).
    _forced_generation_defaults: dict[str, Any] = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, ValorForConditionalGeneration):
            raise TypeError(
                f"The {self.task or type(self).__name__} pipeline needs a ValorForConditionalGeneration model, got "
                f"{type(self.model).__name__}."
            )
        if self.processor is None:
            raise ValueError(
                f"The {self.task or type(self).__name__} pipeline needs a ValorProcessor: pass `processor=` or load "
                "a checkpoint that has processor_config.json."
            )

    def _sanitize_common(
        self,
        modalities: Modalities | None,
        num_frames: int | None,
        num_clips: int | None,
        processor_kwargs: dict[str, Any] | None,
        generate_kwargs: dict[str, Any] | None,
        kwargs: dict[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        preprocess_params: dict[str, Any] = {}
        forward_params: dict[str, Any] = {}
        if modalities is not None:
            preprocess_params["modalities"] = check_modalities(modalities)
            forward_params["modalities"] = modalities
        if num_frames is not None:
            preprocess_params["num_frames"] = check_positive_int("num_frames", num_frames)
        if num_clips is not None:
            preprocess_params["num_clips"] = check_positive_int("num_clips", num_clips)
        if processor_kwargs is not None:
            preprocess_params["processor_kwargs"] = dict(processor_kwargs)
        generate_kwargs = split_generate_kwargs(kwargs, generate_kwargs, type(self).__name__)
        if generate_kwargs is not None:
            forward_params["generate_kwargs"] = generate_kwargs
        return preprocess_params, forward_params

    def _encode_media(
        self,
        video: Any,
        modalities: Modalities,
        num_frames: int | None,
        num_clips: int | None,
        processor_kwargs: dict[str, Any] | None,
        prompt: str | None,
    ) -> dict[str, Any]:
        path = check_video_path(video)
        model_inputs = media_inputs(
            self.processor,
            [path],
            check_modalities(modalities),
            num_frames,
            num_clips,
            processor_kwargs,
            prompts=[prompt] if prompt else None,
        )
        return {**model_inputs, "video": path}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        modalities: Modalities = "both",
        generate_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        video = model_inputs.pop("video")
        generate_kwargs = dict(generate_kwargs or {})
        if "generation_config" not in generate_kwargs and "generation_config" not in self._generate_kwargs:
            for name, value in self._forced_generation_defaults.items():
                if name not in self._generate_kwargs:
                    generate_kwargs.setdefault(name, value)
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs, return_dict_in_generate=False)
        reference = model_inputs.get("pixel_values_videos", model_inputs.get("input_features"))
        batch_size = reference.shape[0]
        sequences = self.model.generate(**model_inputs, modalities=modalities, **generate_kwargs)
        sequences = sequences.view(batch_size, -1, sequences.shape[-1])  # (B, num_return_sequences, L)
        return {"sequences": sequences, "video": video}

    def _decode(self, model_outputs: dict[str, Any], skip_special_tokens: bool = True) -> list[str]:
        sequences: torch.Tensor = model_outputs["sequences"][0]  # (num_return_sequences, L)
        return self.processor.batch_decode(sequences, skip_special_tokens=skip_special_tokens)
