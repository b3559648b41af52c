"""Pieces shared by the VALOR pipelines: argument validation, media preprocessing, per-input error handling and
the generation base class."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
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


class PipelineInputError(ValueError):
    """
    One input of a pipeline call could not be processed (a missing or undecodable file, a bad question).

    Attributes:
        index (`int`): its position in the list the caller passed (0 for a single input).
        input: the input itself (a path, or a `{"video", "question"}` dict).
        results (`list`): when raised, the results of the call so far, in input order, `None` for the inputs
            not finished: the work done before the bad input is kept.
    """

    def __init__(
        self, message: str, index: int | None = None, input: Any = None, results: list | None = None
    ):
        super().__init__(message)
        self.index, self.input, self.results = index, input, results


class PipelineInputNotFoundError(PipelineInputError, FileNotFoundError):
    """A [`PipelineInputError`] whose cause is a missing file (also a `FileNotFoundError`)."""


@dataclass
class PositionedInput:
    """An input of a pipeline call with its position in the caller's list."""

    index: int
    total: int
    value: Any

    def describe(self) -> str:
        """`input <index> of <total> (<path>)`."""
        video = self.value.get("video") if isinstance(self.value, dict) else self.value
        shown = os.fspath(video) if isinstance(video, (str, os.PathLike)) else repr(self.value)[:200]
        return f"input {self.index} of {self.total} ({shown!r})"

    def error(self, cause: Exception) -> PipelineInputError:
        """The [`PipelineInputError`] of this input failing with `cause`."""
        kind = PipelineInputNotFoundError if isinstance(cause, FileNotFoundError) else PipelineInputError
        return kind(f"{self.describe()}: {type(cause).__name__}: {cause}", self.index, self.value)


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


def check_video_paths(videos: Sequence[Any]) -> list[str]:
    """`check_video_path` of every entry; a bad one raises a [`PipelineInputError`] naming its position."""
    paths = []
    for index, video in enumerate(videos):
        try:
            paths.append(check_video_path(video))
        except (TypeError, FileNotFoundError) as err:
            raise PositionedInput(index, len(videos), video).error(err) from err
    return paths


def raise_for_failed_inputs(paths: Sequence[str], failures: Sequence[dict[str, str]], finished: Any) -> None:
    """
    Raise the [`PipelineInputError`] of the first of `failures` (`{"path", "error"}` records of a batch job over
    `paths`), named by its position in `paths`, with the work that did finish (`finished`) as its `.results`.
    """
    if not failures:
        return
    positions = {path: i for i, path in enumerate(paths)}
    first = min(failures, key=lambda f: positions.get(f["path"], len(paths)))
    index = positions.get(first["path"])
    more = f" ({len(failures) - 1} other input(s) failed too)" if len(failures) > 1 else ""
    message = f"input {index} of {len(paths)} ({first['path']!r}): {first['error']}{more}"
    raise PipelineInputError(message, index, first["path"], finished)


@dataclass
class MediaInput:
    """The media of one pipeline input: a video (a file path or decoded frames `(frames, height, width, 3)`) and/or
    a soundtrack (a file path or a waveform at `sampling_rate`)."""

    video: Any = None
    audio: Any = None
    sampling_rate: int | None = None

    def describe(self) -> str | None:
        """The input's file path (`None` for decoded media)."""
        for value in (self.video, self.audio):
            if isinstance(value, (str, os.PathLike)):
                return os.fspath(value)
        return None


MEDIA_INPUT_KEYS: tuple[str, ...] = ("video", "audio", "sampling_rate")
_ARRAYS = (np.ndarray, torch.Tensor)


def _media_from_value(value: Any, modalities: Modalities, extra_keys: Sequence[str]) -> MediaInput:
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(MEDIA_INPUT_KEYS) - set(extra_keys))
        if unknown:
            raise ValueError(
                f"Unknown input keys {unknown}: an input dict holds {list(MEDIA_INPUT_KEYS) + list(extra_keys)}."
            )
        return MediaInput(value.get("video"), value.get("audio"), value.get("sampling_rate"))
    if isinstance(value, (str, os.PathLike)):
        return MediaInput(video=value, audio=value)  # a video file: its frames and its soundtrack
    if isinstance(value, _ARRAYS):
        if modalities == "both":
            raise ValueError(
                "A decoded array holds one modality; for modalities='both' give "
                "`{'video': frames, 'audio': waveform, 'sampling_rate': rate}`."
            )
        return MediaInput(**{modalities: value})
    raise TypeError(
        "An input must be a media file path, a decoded array/tensor (frames `(T, H, W, 3)` or a waveform) or a dict "
        f"with keys {list(MEDIA_INPUT_KEYS)}, got a {type(value).__name__}."
    )


def media_input(value: Any, modalities: Modalities, extra_keys: Sequence[str] = ()) -> MediaInput:
    """
    The [`MediaInput`] of one pipeline input, checked for what `modalities` needs: a path (its frames and
    soundtrack), a decoded video (`modalities="video"`) or waveform (`"audio"`), as a numpy array or torch tensor,
    or a dict `{"video": ..., "audio": ..., "sampling_rate": ...}` (plus `extra_keys`, such as QA's `"question"`).

    Raises:
        FileNotFoundError: a path is not an existing file (the message names it).
        TypeError / ValueError: the input or a dict key is of no known kind, or a needed modality is missing.
    """
    media = _media_from_value(value, check_modalities(modalities), extra_keys)
    for name in ("video", "audio"):
        item = getattr(media, name)
        if isinstance(item, (str, os.PathLike)):
            setattr(media, name, check_path(item))
        elif item is not None and not isinstance(item, _ARRAYS):
            raise TypeError(
                f"`{name}` must be a file path or a numpy array / torch tensor, got {type(item).__name__}."
            )
    if modalities in ("video", "both") and media.video is None:
        raise ValueError(f"modalities={modalities!r} needs a video: give a path or `{{'video': frames}}`.")
    if modalities in ("audio", "both") and media.audio is None:
        raise ValueError(
            f"modalities={modalities!r} needs audio: give a path or `{{'audio': waveform, 'sampling_rate': rate}}`"
            + (" (or modalities='video')." if modalities == "both" else ".")
        )
    return media


def media_model_inputs(
    processor,
    media: MediaInput,
    modalities: Modalities,
    num_frames: int | None = None,
    num_clips: int | None = None,
    processor_kwargs: dict[str, Any] | None = None,
    **text_inputs: Any,
) -> BatchFeature:
    """
    Run the processor on one [`MediaInput`], decoding only what `modalities` needs.

    Args:
        processor ([`ValorProcessor`]): the processor.
        media ([`MediaInput`]): checked by [`media_input`] for `modalities`.
        modalities (`str`): `"video"` (frames only), `"audio"` (soundtrack only) or `"both"`.
        num_frames / num_clips (`int`, *optional*): frames / audio clips (default: the processor's).
        processor_kwargs (`dict`, *optional*): further processor arguments (`size`, `video_backend`, ...).
        text_inputs: `text=` / `prompts=` passed through to the processor.

    Returns:
        `BatchFeature` (batch 1) with `pixel_values_videos` (video, both) and `input_features`,
        `input_features_mask` (audio, both), plus the text fields asked for.
    """
    kwargs = dict(processor_kwargs or {})
    uses_video, uses_audio = modalities in ("video", "both"), modalities in ("audio", "both")
    if uses_video and num_frames is not None:
        kwargs["num_frames"] = num_frames
    if uses_audio and num_clips is not None:
        kwargs["num_clips"] = num_clips
    if uses_audio and media.sampling_rate is not None:
        kwargs["sampling_rate"] = media.sampling_rate
    return processor(
        videos=[media.video] if uses_video else None,
        audio=[media.audio] if uses_audio else None,
        audio_from_video=False,
        return_tensors="pt",
        **text_inputs,
        **kwargs,
    )


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


def sequence_log_probs(model, output) -> torch.Tensor:
    """
    The summed log-probability of each generated sequence of a dict `generate` output: a beam search's
    `sequences_scores` (VALOR's ranking: summed, not length-normalised), or for greedy search / sampling the sum of
    the chosen tokens' log-probabilities up to [SEP] (`output_scores=True`).
    """
    if getattr(output, "sequences_scores", None) is not None:
        return output.sequences_scores
    steps = model.compute_transition_scores(
        output.sequences, output.scores, normalize_logits=True
    )  # (N, steps)
    generated = output.sequences[:, -steps.shape[1] :]
    pad = model.generation_config.pad_token_id
    return steps.masked_fill(generated == pad, 0.0).sum(dim=1)


class ValorGenerationPipeline(Pipeline):
    """
    Base of the pipelines that decode text from a video's frames and/or soundtrack with
    [`ValorForConditionalGeneration`] (captioning and question answering).

    Subclasses implement `preprocess_input` (which calls `_encode_media`), `_sanitize_parameters` (with
    `_sanitize_common`) and `postprocess` (with `_decode`). `_forward` is shared: it calls `model.generate` once
    per batch with the generation parameters given at construction, at call time and the class defaults.

    Bad inputs: by default the first input that cannot be processed raises a [`PipelineInputError`] naming its
    position in the caller's list and its path, with the results finished before it in `.results`. With
    `return_errors=True` every input is tried and the returned list holds, at the position of each bad input,
    its `PipelineInputError` instead of a result (as `asyncio.gather(return_exceptions=True)` does). Errors of
    the model itself are raised in both modes. With `num_workers > 0` inputs are processed in DataLoader worker
    processes, which cannot report the position; the first bad input then always raises.
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

    def __call__(self, inputs, return_errors: bool = False, **kwargs):
        """Run the pipeline on one input or a list; see the class docstring for bad inputs and `return_errors`."""
        if isinstance(inputs, list):
            return self._call_on_list(inputs, return_errors, kwargs)
        if return_errors:
            return self._call_on_list([inputs], return_errors, kwargs)[0]
        return super().__call__(inputs, **kwargs)

    def _call_on_list(self, inputs: list, return_errors: bool, kwargs: dict[str, Any]) -> list:
        results: list = [None] * len(inputs)
        pending = list(range(len(inputs)))
        while pending:
            items = [PositionedInput(i, len(inputs), inputs[i]) for i in pending]
            self._finished: dict[int, Any] = {}
            try:
                for item, output in zip(items, super().__call__(items, **kwargs)):
                    results[item.index] = output
                pending = []
            except PipelineInputError as err:
                for index, output in self._finished.items():
                    results[index] = output
                if err.index is None or not return_errors:
                    err.results = results
                    raise
                results[err.index] = err
                pending = [i for i in pending if i not in self._finished and i != err.index]
            finally:
                self._finished = {}
        return results

    def get_iterator(self, inputs, *args, **kwargs):
        """`Pipeline.get_iterator`; for a call's list of inputs, every finished output is recorded by its position
        (so that it is kept when a later input fails)."""
        outputs = super().get_iterator(inputs, *args, **kwargs)
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], PositionedInput):
            return self._recording(inputs, outputs)
        return outputs

    def _recording(self, inputs: list[PositionedInput], outputs: Iterator) -> Iterator:
        for item, output in zip(inputs, outputs):  # outputs come in input order, one per input
            self._finished[item.index] = output
            yield output

    def preprocess(self, inputs: Any, **params) -> dict[str, Any]:
        """`preprocess_input` of the input, an error of which becomes a [`PipelineInputError`] naming it."""
        if not isinstance(inputs, PositionedInput):
            return self.preprocess_input(inputs, **params)
        try:
            return self.preprocess_input(inputs.value, **params)
        except Exception as err:  # anything an input's own processing raises is that input's error
            raise inputs.error(err) from err

    def preprocess_input(self, inputs: Any, **params) -> dict[str, Any]:
        """Process one input into model inputs (implemented by each pipeline)."""
        raise NotImplementedError

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
        value: Any,
        modalities: Modalities,
        num_frames: int | None,
        num_clips: int | None,
        processor_kwargs: dict[str, Any] | None,
        prompt: str | None,
        extra_keys: Sequence[str] = (),
    ) -> dict[str, Any]:
        media = media_input(value, modalities, extra_keys)
        model_inputs = media_model_inputs(
            self.processor,
            media,
            modalities,
            num_frames,
            num_clips,
            processor_kwargs,
            prompts=[prompt] if prompt else None,
        )
        return {**model_inputs, "video": media.describe()}

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
        return_dict = bool(generate_kwargs.pop("return_dict_in_generate", False))
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs, return_dict_in_generate=return_dict)
        reference = model_inputs.get("pixel_values_videos", model_inputs.get("input_features"))
        batch_size = reference.shape[0]
        output = self.model.generate(**model_inputs, modalities=modalities, **generate_kwargs)
        sequences = output.sequences if return_dict else output
        result = {"sequences": sequences.view(batch_size, -1, sequences.shape[-1]), "video": video}
        if return_dict:  # (B, num_return_sequences, L) and their summed log-probabilities
            result["sequence_log_probs"] = sequence_log_probs(self.model, output).view(batch_size, -1)
        return result

    def _decode(self, model_outputs: dict[str, Any], skip_special_tokens: bool = True) -> list[str]:
        sequences: torch.Tensor = model_outputs["sequences"][0]  # (num_return_sequences, L)
        return self.processor.batch_decode(sequences, skip_special_tokens=skip_special_tokens)
