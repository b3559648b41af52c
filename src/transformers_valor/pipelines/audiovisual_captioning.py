"""The `audiovisual-captioning` pipeline: describe a video from its frames, its soundtrack or both."""

from __future__ import annotations

from typing import Any

from transformers import GenerationConfig

from ..generation_valor import VALOR_CAPTION_DECODING
from .base import Modalities, ValorGenerationPipeline


class AudioVisualCaptioningPipeline(ValorGenerationPipeline):
    """
    Captions videos with [`ValorForConditionalGeneration`] and a [`ValorProcessor`].

    Each input is the path of a video file, decoded frames `(frames, height, width, 3)` (a numpy array or torch
    tensor, with `modalities="video"`), a waveform (with `modalities="audio"`), or a dict `{"video": path or
    frames, "audio": path or waveform, "sampling_rate": int}`; a list of inputs gives one result per input. Each
    gives `[{"generated_text": str}]` (one dict per returned sequence). When the model's config has `use_task_prompt` (VALOR-L), the model decodes with
    its `captioning` task prompt. Decoding defaults to VALOR's: beam search of 3 ranked by the summed
    log-probability (`beam_ranking="valor"`, `length_penalty=0.0`) and at most 30 new tokens, unless the model's
    generation config or the caller sets them.

    Call arguments (also accepted when the pipeline is built):
        modalities (`str`, defaults to `"both"`): condition on the `"video"` frames, the `"audio"` soundtrack or
            `"both"`. A video without a soundtrack gets silent (all-zero) audio under `"both"`.
        num_frames / num_clips (`int`, *optional*): frames and audio clips sampled per video (default: the
            processor's settings).
        prompt (`str`, *optional*): a prompt for the decoder, replacing the config's task prompt; `""` for none
            (not even the task prompt).
        processor_kwargs (`dict`, *optional*): further [`ValorProcessor`] arguments (`size`, `video_backend`, ...).
        generate_kwargs (`dict`, *optional*) and any generation parameter (`num_beams`, `max_new_tokens`,
            `do_sample`, `num_return_sequences`, ...): passed to `generate()`.
        skip_special_tokens (`bool`, defaults to `True`): drop [CLS]/[SEP]/[PAD] when decoding.

    Example:

    ```python
    >>> import transformers_valor  # registers the pipeline
    >>> from transformers import pipeline
    >>> captioner = pipeline("audiovisual-captioning", model="path/or/repo")  # doctest: +SKIP
    >>> captioner("dog.mp4", modalities="both", num_beams=3, max_new_tokens=20)  # doctest: +SKIP
    [{'generated_text': 'a dog is barking at a man'}]
    ```
    """

    _default_generation_config = GenerationConfig(**VALOR_CAPTION_DECODING)

    def __call__(self, inputs, **kwargs) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        """
        Caption one input (a path, an array or a media dict: see the class docstring) or a list of them.

        Returns:
            For one input, `[{"generated_text": str}, ...]`; for a list, one such list per input.

        Raises:
            FileNotFoundError: a path is not an existing file (the message names it).
            ValueError: `modalities` is not `"video"`, `"audio"` or `"both"`.
        """
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        modalities: Modalities | None = None,
        num_frames: int | None = None,
        num_clips: int | None = None,
        prompt: str | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        generate_kwargs: dict[str, Any] | None = None,
        skip_special_tokens: bool | None = None,
        **kwargs,
    ):
        preprocess_params, forward_params = self._sanitize_common(
            modalities, num_frames, num_clips, processor_kwargs, generate_kwargs, kwargs
        )
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"`prompt` must be a string, got a {type(prompt).__name__}.")
            preprocess_params["prompt"] = prompt
            if not prompt:
                forward_params.setdefault("generate_kwargs", {})["use_task_prompt"] = False
        postprocess_params = {}
        if skip_special_tokens is not None:
            postprocess_params["skip_special_tokens"] = skip_special_tokens
        return preprocess_params, forward_params, postprocess_params

    def preprocess_input(
        self,
        inputs: Any,
        modalities: Modalities = "both",
        num_frames: int | None = None,
        num_clips: int | None = None,
        prompt: str | None = None,
        processor_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Decode and process one input's media (and tokenise `prompt`; the model adds its own task prompt)."""
        return self._encode_media(inputs, modalities, num_frames, num_clips, processor_kwargs, prompt)

    def postprocess(
        self, model_outputs: dict[str, Any], skip_special_tokens: bool = True
    ) -> list[dict[str, str]]:
        """Decode the generated ids to `[{"generated_text": str}, ...]`."""
        texts = self._decode(model_outputs, skip_special_tokens=skip_special_tokens)
        return [{"generated_text": text} for text in texts]
