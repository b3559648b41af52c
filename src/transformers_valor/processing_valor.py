"""`ValorProcessor`: text, video files and soundtracks to VALOR model inputs in one call."""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.video_processing_utils import VideoProcessorMixin

from .feature_extraction_valor import AudioSample
from .tokenization_valor import clean_caption
from .video_processing_valor import VIDEO_CALL_KWARGS, VideoSample

_AUDIO_CALL_KWARGS = ("sampling_rate", "num_clips")


def _split_media_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The call's keyword arguments for the video processor and for the feature extractor."""
    unknown = set(kwargs) - set(VIDEO_CALL_KWARGS) - set(_AUDIO_CALL_KWARGS)
    if unknown:
        raise TypeError(f"Unexpected keyword arguments for ValorProcessor: {sorted(unknown)}")
    video_kwargs = {k: v for k, v in kwargs.items() if k in VIDEO_CALL_KWARGS}
    audio_kwargs = {k: v for k, v in kwargs.items() if k in _AUDIO_CALL_KWARGS}
    return video_kwargs, audio_kwargs


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
        self, texts: str | list[str], max_length: int, padding: bool | str, return_tensors: str | None
    ) -> dict[str, Any]:
        """Clean and tokenise to `[CLS] ... [SEP]`, truncated to `max_length` word pieces and padded with 0."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer(
            [clean_caption(t) for t in texts],
            padding=padding,
            truncation=True,
            max_length=max_length + 2,
            return_token_type_ids=False,
            return_attention_mask=True,
            return_tensors=return_tensors,
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def __call__(
        self,
        text: str | list[str] | None = None,
        videos: VideoSample | list[VideoSample] | None = None,
        audios: AudioSample | list[AudioSample] | None = None,
        prompts: str | list[str] | None = None,
        return_tensors: Literal["pt", "np"] | None = "pt",
        padding: bool | Literal["longest", "max_length"] = "longest",
        max_text_length: int | None = None,
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
            audios: audio per sample: a path to an audio or video file, a waveform (at `sampling_rate`), or `None`
                for "no audio". When `audios` is not given and `audio_from_video` is set, the soundtrack of each
                video path is used (decoded videos get no audio).
            prompts: task prompt(s) or question(s), tokenised like `text` into `prompt_ids`.
            return_tensors: `"pt"` (default) or `"np"`.
            padding: `"longest"` (default) pads the text to the longest in the batch; `"max_length"` to
                `max_text_length + 2` as the reference does.
            max_text_length: override of `self.max_text_length` (word pieces, without `[CLS]`/`[SEP]`).
            training: shortcut for `sampling="random"` (VALOR's training-time frame/clip choice).
            sampling: `"middle"` (evaluation) or `"random"`; overrides `training`.
            seed / generator: make random sampling reproducible (one generator serves video then audio).
            audio_from_video: take the soundtrack from the video files when `audios` is `None`.
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
        if text is None and videos is None and audios is None and prompts is None:
            raise ValueError("Give at least one of `text`, `videos`, `audios` or `prompts`.")
        video_kwargs, audio_kwargs = _split_media_kwargs(kwargs)
        sampling = sampling or ("random" if training else "middle")
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        max_length = self.max_text_length if max_text_length is None else max_text_length

        data: dict[str, Any] = {}
        if text is not None:
            data.update(self._tokenize(text, max_length, padding, return_tensors))
        if prompts is not None:
            encoded = self._tokenize(prompts, max_length, padding, return_tensors)
            data["prompt_ids"] = encoded["input_ids"]
            data["prompt_attention_mask"] = encoded["attention_mask"]

        video_list = None
        if videos is not None:
            video_list = self._as_video_list(videos)
            data.update(
                self.video_processor(
                    video_list,
                    sampling=sampling,
                    generator=generator,
                    return_tensors=return_tensors,
                    **video_kwargs,
                )
            )
        if audios is None and video_list is not None and audio_from_video:
            from_paths = [v if isinstance(v, (str, os.PathLike)) else None for v in video_list]
            audios = from_paths if any(a is not None for a in from_paths) else None
        if audios is not None:
            data.update(
                self._audio_features(audios, video_list, sampling, generator, return_tensors, audio_kwargs)
            )
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _as_video_list(videos) -> list:
        """One video (a path or a `(frames, H, W, 3)` array) or a list of them, as a list."""
        single = isinstance(videos, (str, os.PathLike)) or (
            isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 4
        )
        return [videos] if single else list(videos)

    def _audio_features(self, audios, video_list, sampling, generator, return_tensors, audio_kwargs) -> dict:
        """The feature extractor's output, checked to hold one audio per video when videos were given."""
        audio_out = self.feature_extractor(
            audios, sampling=sampling, generator=generator, return_tensors=return_tensors, **audio_kwargs
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
