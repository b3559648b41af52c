"""`ValorProcessor`: text, video files and soundtracks to VALOR model inputs in one call."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.video_processing_utils import VideoProcessorMixin

from .feature_extraction_valor import AudioSample
from .tokenization_valor import clean_caption
from .video_processing_valor import VIDEO_CALL_KWARGS, VideoSample, as_video_batch

_AUDIO_CALL_KWARGS = ("sampling_rate", "num_clips")


def _split_media_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The call's keyword arguments for the video processor and for the feature extractor."""
    unknown = set(kwargs) - set(VIDEO_CALL_KWARGS) - set(_AUDIO_CALL_KWARGS)
    if unknown:
        hint = ""
        if "max_text_length" in unknown:
            hint = (
                " (`max_text_length` is the processor's setting, in word pieces; per call, pass the tokenizer's "
                "`max_length`, which counts [CLS] and [SEP] too)"
            )
        raise TypeError(f"Unexpected keyword arguments for ValorProcessor: {sorted(unknown)}{hint}")
    video_kwargs = {k: v for k, v in kwargs.items() if k in VIDEO_CALL_KWARGS}
    audio_kwargs = {k: v for k, v in kwargs.items() if k in _AUDIO_CALL_KWARGS}
    return video_kwargs, audio_kwargs


def _as_text_batch(texts: str | list[str], name: str) -> list[str]:
    """One string or a non-empty list of strings, as a list; a `TypeError`/`ValueError` names what is wrong."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"`{name}` must be a string or a list of strings, got a {type(texts).__name__}.")
    if not texts:
        raise ValueError(f"`{name}` is an empty list; give at least one string.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"`{name}[{i}]` is {text!r}, not a string.")
    return list(texts)


class ValorProcessor(ProcessorMixin):
    r"""
    Wraps a BERT WordPiece tokenizer, a [`ValorVideoProcessor`] and a [`ValorFeatureExtractor`] into one
    processor that turns captions, prompts, video files and soundtracks into the inputs of the VALOR models.

    Args:
        tokenizer ([`~transformers.BertTokenizerFast`]): BERT-base-uncased WordPiece tokenizer.
        video_processor ([`ValorVideoProcessor`]): frame sampling and normalisation.
        feature_extractor ([`ValorFeatureExtractor`]): multi-clip log-mel fbank.
        max_text_length (`int`, defaults to 40): word pieces kept per text, before `[CLS]` and `[SEP]` are
            added (VALOR: 40 in pretraining, 30 for captioning).

    Example:

    ```python
    >>> processor = ValorProcessor.from_pretrained("path/to/valor")
    >>> inputs = processor(text=["a dog barks"], videos=["dog.mp4"], return_tensors="pt")
    >>> sorted(inputs.keys())
    ['attention_mask', 'input_features', 'input_features_mask', 'input_ids', 'pixel_values_videos']
    ```
    """

    def __init__(
        self,
        tokenizer=None,
        video_processor=None,
        feature_extractor=None,
        max_text_length: int = 40,
        **kwargs,
    ):
        self.max_text_length = max_text_length
        super().__init__(tokenizer, video_processor, feature_extractor, **kwargs)

    def check_argument_for_proper_class(self, argument_name: str, argument: Any):
        """Type-check a component. The video processor is checked against `VideoProcessorMixin` directly: the
        generic check goes through the image-processor auto mapping, which is unusable without torchvision."""
        if argument_name == "video_processor":
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(
                    f"Received a {type(argument).__name__} for argument video_processor, but a VideoProcessorMixin "
                    "was expected."
                )
            return VideoProcessorMixin
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """
        `ProcessorMixin.from_pretrained`, except that a local path that does not exist (absolute, starting with `.`
        or `~`, or with more than one `/`) raises a `FileNotFoundError` naming it instead of being tried as a Hub id.
        """
        source = os.fspath(pretrained_model_name_or_path)
        local = os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1
        if local and not os.path.isdir(os.path.expanduser(source)):
            raise FileNotFoundError(
                f"No processor folder {source!r}: it is not a directory (nor a Hub repo id)."
            )
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        """Every key `__call__` can return."""
        return [
            "input_ids",
            "attention_mask",
            "prompt_ids",
            "prompt_attention_mask",
            "pixel_values_videos",
            "input_features",
            "input_features_mask",
        ]

    def _tokenize(
        self,
        texts: str | list[str],
        text_kwargs: dict[str, Any],
        return_tensors: str | None,
        name: str = "text",
    ) -> dict[str, Any]:
        """Clean and tokenise to `[CLS] ... [SEP]` with the tokenizer arguments `text_kwargs` (`padding`,
        `truncation`, `max_length`), padded with 0."""
        texts = _as_text_batch(texts, name)
        encoded = self.tokenizer(
            [clean_caption(t) for t in texts],
            **text_kwargs,
            return_token_type_ids=False,
            return_attention_mask=True,
            return_tensors=return_tensors,
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def __call__(
        self,
        text: str | list[str] | None = None,
        videos: VideoSample | list[VideoSample] | None = None,
        audio: AudioSample | list[AudioSample] | None = None,
        prompts: str | list[str] | None = None,
        return_tensors: Literal["pt", "np"] | None = "pt",
        padding: bool | Literal["longest", "max_length", "do_not_pad"] = "longest",
        truncation: bool | Literal["longest_first", "do_not_truncate"] = True,
        max_length: int | None = None,
        training: bool = False,
        sampling: Literal["middle", "random"] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        audio_from_video: bool = True,
        **kwargs,
    ) -> BatchFeature:
        """Prepare any combination of text, prompts, videos and audio for the VALOR models.

        Args:
            text: caption(s); cleaned with `clean_caption`, tokenised as `[CLS] ... [SEP]`.
            videos: video path(s), or decoded video(s) (`(frames, H, W, 3)` uint8 arrays).
            audio: audio per sample: a path to an audio or video file, a waveform (at `sampling_rate`), or `None`
                for "no audio" (the `audio=` of `ProcessorMixin`, CLAP and PE-Audio-Video). When `audio` is not
                given and `audio_from_video` is set, the soundtrack of each video path is used (decoded videos get
                no audio).
            prompts: task prompt(s) or question(s), tokenised like `text` into `prompt_ids`.
            return_tensors: `"pt"` (default) or `"np"`.
            padding / truncation / max_length: the tokenizer's arguments, with the tokenizer's meaning, for `text`
                and `prompts`. `padding="longest"` (default) pads to the longest text of the batch,
                `"max_length"` to `max_length` (as the reference does); `truncation=True` (default) cuts texts to
                `max_length` tokens. `max_length` counts every token, `[CLS]` and `[SEP]` included, and defaults
                to `self.max_text_length + 2`.
            training: shortcut for `sampling="random"` (VALOR's training-time frame/clip choice).
            sampling: `"middle"` (evaluation) or `"random"`; overrides `training`.
            seed / generator: make random sampling reproducible (one generator serves video then audio).
            audio_from_video: take the soundtrack from the video files when `audio` is `None`.
            kwargs: `num_frames`, `video_backend`, `size`, `image_mean`, ... (video processor) and `num_clips`,
                `sampling_rate` (feature extractor).

        Returns:
            `BatchFeature` with, for what was given:
            - `input_ids`, `attention_mask`: int64 `(batch, text_length)`, padded with 0;
            - `prompt_ids`, `prompt_attention_mask`: int64 `(batch, prompt_length)`;
            - `pixel_values_videos`: float32 `(batch, num_frames, 3, height, width)`;
            - `input_features`: float32 `(batch, num_clips, 64, 512)` (mel, time per clip);
            - `input_features_mask`: int64 `(batch, num_clips)`, 0 for samples without audio.
        """
        video_kwargs, audio_kwargs = _split_media_kwargs(kwargs)
        if text is None and videos is None and audio is None and prompts is None:
            raise ValueError("Give at least one of `text`, `videos`, `audio` or `prompts`.")
        sampling = sampling or ("random" if training else "middle")
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        text_kwargs = {
            "padding": padding,
            "truncation": truncation,
            "max_length": self.max_text_length + 2 if max_length is None else max_length,
        }

        data: dict[str, Any] = {}
        if text is not None:
            data.update(self._tokenize(text, text_kwargs, return_tensors))
        if prompts is not None:
            encoded = self._tokenize(prompts, text_kwargs, return_tensors, name="prompts")
            data["prompt_ids"] = encoded["input_ids"]
            data["prompt_attention_mask"] = encoded["attention_mask"]

        video_list = None
        if videos is not None:
            video_list = as_video_batch(videos)
            data.update(
                self.video_processor(
                    video_list,
                    sampling=sampling,
                    generator=generator,
                    return_tensors=return_tensors,
                    **video_kwargs,
                )
            )
        if audio is None and video_list is not None and audio_from_video:
            from_paths = [v if isinstance(v, (str, os.PathLike)) else None for v in video_list]
            audio = from_paths if any(a is not None for a in from_paths) else None
        if audio is not None:
            data.update(
                self._audio_features(audio, video_list, sampling, generator, return_tensors, audio_kwargs)
            )
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _audio_features(self, audio, video_list, sampling, generator, return_tensors, audio_kwargs) -> dict:
        """The feature extractor's output, checked to hold one audio per video when videos were given."""
        audio_out = self.feature_extractor(
            audio, sampling=sampling, generator=generator, return_tensors=return_tensors, **audio_kwargs
        )
        if video_list is not None and audio_out["input_features"].shape[0] != len(video_list):
            raise ValueError(
                f"Got {len(video_list)} videos but {audio_out['input_features'].shape[0]} audios; give one audio "
                "(or `None`) per video."
            )
        return audio_out

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Decode generated token ids (`(batch, length)`) to text, dropping `[CLS]`, `[SEP]`, `[MASK]`, `[PAD]`."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, token_ids, skip_special_tokens: bool = True, **kwargs) -> str:
        """Decode one generated sequence to text (special tokens dropped by default)."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)
