"""Video processing for VALOR: segment-rule frame sampling, resizing and normalisation in pure torch.

torchvision cannot be installed beside this CPU torch, so `transformers.BaseVideoProcessor` (which needs it) is
not used; `ValorVideoProcessor` builds on `VideoProcessorMixin`, which gives `save_pretrained`/`from_pretrained`
and `AutoVideoProcessor` support, and does its own decoding (decord by default, PyAV as fallback).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import is_scaled_image
from transformers.video_processing_utils import VideoProcessorMixin
from transformers.video_utils import VideoMetadata

from .media_io import (
    VIDEO_BACKENDS,
    SampleError,
    SamplingMode,
    VideoBackend,
    raise_for_sample_errors,
    read_video,
    segment_indices,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VideoSample = str | os.PathLike | np.ndarray | torch.Tensor

# Keyword arguments `preprocess` accepts (also what `ValorProcessor` routes to the video processor).
VIDEO_CALL_KWARGS = (
    "num_frames",
    "sampling",
    "seed",
    "generator",
    "video_backend",
    "size",
    "do_resize",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "return_metadata",
)


class ValorVideoProcessor(VideoProcessorMixin):
    r"""
    Samples `num_frames` frames per video with VALOR's segment rule, resizes them to `size` (bilinear with
    antialiasing, no crop) and normalises them.

    Frame sampling (`media_io.segment_indices`): the frames are split into `num_frames` equal segments; `"middle"`
    (evaluation) takes each segment's middle frame, `"random"` (training) a random one; a video shorter than
    `num_frames` repeats its last frame.

    Args:
        num_frames (`int`, defaults to 8): frames per video.
        size (`dict[str, int]`, defaults to `{"height": 224, "width": 224}`): output frame size.
        do_resize (`bool`, defaults to `True`), do_rescale (`bool`, defaults to `True`),
        rescale_factor (`float`, defaults to 1/255), do_normalize (`bool`, defaults to `True`).
        image_mean / image_std (`tuple[float, float, float]`): ImageNet's by default (Video Swin, VALOR-B); use
            `CLIP_MEAN`/`CLIP_STD` (or `ValorVideoProcessor.for_vision_tower("clip")`) for VALOR-L.
        sampling (`str`, defaults to `"middle"`): `"middle"` or `"random"`.
        video_backend (`str`, defaults to `"decord"`): `"decord"` or `"pyav"` for decoding files.
        resample (`int`, defaults to 2): informational (2 = bilinear); resizing is always bilinear.
    """

    model_input_names = ["pixel_values_videos"]

    def __init__(
        self,
        num_frames: int = 8,
        size: dict[str, int] | None = None,
        do_resize: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: tuple[float, ...] | list[float] = IMAGENET_MEAN,
        image_std: tuple[float, ...] | list[float] = IMAGENET_STD,
        sampling: SamplingMode = "middle",
        video_backend: VideoBackend = "decord",
        resample: int = 2,
        **kwargs,
    ):
        kwargs.pop("video_processor_type", None)
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        self.num_frames = num_frames
        self.size = self._check_size(size if size is not None else {"height": 224, "width": 224})
        self.do_resize = do_resize
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.sampling = self._check_choice("sampling", sampling, ("middle", "random"))
        self.video_backend = self._check_choice("video_backend", video_backend, VIDEO_BACKENDS)
        self.resample = resample

    @classmethod
    def for_vision_tower(cls, tower: Literal["video_swin", "clip"], **kwargs) -> ValorVideoProcessor:
        """A processor with the normalisation of VALOR-B's Video Swin (`"video_swin"`, ImageNet statistics) or
        VALOR-L's CLIP (`"clip"`); other settings are passed through."""
        if tower not in ("video_swin", "clip"):
            raise ValueError(f"`tower` must be 'video_swin' or 'clip', got {tower!r}.")
        mean, std = (CLIP_MEAN, CLIP_STD) if tower == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
        return cls(image_mean=mean, image_std=std, **kwargs)

    @staticmethod
    def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
        return value

    @staticmethod
    def _check_size(size: int | dict[str, int]) -> dict[str, int]:
        if isinstance(size, int):
            return {"height": size, "width": size}
        if not isinstance(size, dict) or set(size) != {"height", "width"}:
            raise ValueError(f"`size` must be an int or a dict with 'height' and 'width', got {size!r}.")
        return {"height": int(size["height"]), "width": int(size["width"])}

    def to_dict(self) -> dict[str, Any]:
        """Serialisable settings, with `video_processor_type`."""
        output = super().to_dict()
        output.pop("_valid_kwargs_names", None)
        return output

    # ------------------------------------------------------------------------------------------------------------
    # Sampling and decoding
    # ------------------------------------------------------------------------------------------------------------

    def sample_frames(
        self,
        metadata: VideoMetadata | int,
        num_frames: int | None = None,
        sampling: SamplingMode | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Indices of the frames to keep for a video of `metadata.total_num_frames` frames (or an int count).

        Returns:
            `np.ndarray` `(num_frames,)` int64, VALOR's segment rule (see the class docstring).
        """
        total = metadata if isinstance(metadata, int) else metadata.total_num_frames
        return segment_indices(
            int(total),
            self.num_frames if num_frames is None else num_frames,
            self.sampling if sampling is None else sampling,
            generator,
        )

    def _decode_one(
        self, video: VideoSample, num_frames: int, sampling: str, generator, backend: str
    ) -> tuple[torch.Tensor, VideoMetadata | None]:
        """One video -> (frames uint8 or float `(T, 3, H, W)`, metadata)."""
        if isinstance(video, (str, os.PathLike)):
            frames, metadata = read_video(
                video,
                lambda meta: self.sample_frames(
                    meta, num_frames=num_frames, sampling=sampling, generator=generator
                ),
                backend=backend,
            )
            return torch.from_numpy(frames).permute(0, 3, 1, 2), metadata  # (T, 3, H, W)
        # Decoded frames: (T, H, W, C) or (T, C, H, W) array/tensor; sample them with the same rule.
        frames = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video)
        if frames.ndim != 4:
            raise ValueError(
                f"A decoded video must be 4-D (frames, height, width, 3), got shape {tuple(frames.shape)}."
            )
        if frames.shape[-1] in (1, 3) and frames.shape[1] not in (1, 3):
            frames = frames.permute(0, 3, 1, 2)
        if frames.shape[0] == 0:
            raise ValueError("Empty video: the array has 0 frames.")
        if frames.shape[1] == 1:
            frames = frames.expand(-1, 3, -1, -1)
        indices = self.sample_frames(
            frames.shape[0], num_frames=num_frames, sampling=sampling, generator=generator
        )
        return frames[torch.from_numpy(indices)], None

    # ------------------------------------------------------------------------------------------------------------
    # Preprocessing
    # ------------------------------------------------------------------------------------------------------------

    def _transform(
        self,
        frames: torch.Tensor,
        size: dict[str, int],
        do_resize: bool,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        mean: torch.Tensor,
        std: torch.Tensor,
    ) -> torch.Tensor:
        """(T, 3, H, W) uint8/float -> (T, 3, size) float32, resized then rescaled and normalised in one step."""
        frames = frames.float()
        if do_resize and tuple(frames.shape[-2:]) != (size["height"], size["width"]):
            frames = F.interpolate(
                frames,
                size=(size["height"], size["width"]),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        scale = rescale_factor if do_rescale else 1.0
        if do_normalize:
            # ((x * scale) - mean) / std == x * (scale / std) - mean / std
            return torch.addcmul((-mean / std).view(3, 1, 1), frames, (scale / std).view(3, 1, 1))
        return frames * scale if do_rescale else frames

    def _call_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's settings: keyword arguments over the instance's, checked, with a generator and tensors."""
        unknown = set(kwargs) - set(VIDEO_CALL_KWARGS)
        if unknown:
            raise TypeError(f"Unexpected keyword arguments for ValorVideoProcessor: {sorted(unknown)}")
        opts = {name: kwargs.get(name) for name in VIDEO_CALL_KWARGS}
        for name in VIDEO_CALL_KWARGS:
            if opts[name] is None and hasattr(self, name):
                opts[name] = getattr(self, name)
        opts["sampling"] = self._check_choice("sampling", opts["sampling"], ("middle", "random"))
        opts["video_backend"] = self._check_choice("video_backend", opts["video_backend"], VIDEO_BACKENDS)
        opts["size"] = self._check_size(opts["size"])
        if opts["generator"] is None and opts["seed"] is not None:
            opts["generator"] = torch.Generator().manual_seed(opts["seed"])
        opts["image_mean"] = torch.tensor(opts["image_mean"], dtype=torch.float32)
        opts["image_std"] = torch.tensor(opts["image_std"], dtype=torch.float32)
        return opts

    def preprocess(self, videos: VideoSample | list[VideoSample], **kwargs) -> BatchFeature:
        """Decode, sample, resize and normalise one video or a batch.

        Args:
            videos: a path (decoded with `video_backend`), a decoded video (`(frames, H, W, 3)` uint8 array or
                `(frames, 3, H, W)` tensor; frames are sampled with the same rule), or a list of these.
            num_frames, sampling, video_backend, size, do_resize, do_rescale, rescale_factor, do_normalize,
                image_mean, image_std: override the instance settings for this call.
            seed (`int`) / generator (`torch.Generator`): make `sampling="random"` reproducible.
            return_metadata (`bool`): also return `video_metadata` (list of `VideoMetadata`, `None` for arrays).
            return_tensors (`str`): `"pt"` (default) or `"np"`.

        Returns:
            `BatchFeature` with `pixel_values_videos`: float32 `(batch, num_frames, 3, height, width)`.

        Raises:
            FileNotFoundError: every failing sample is a missing file (index and path listed).
            MediaBatchError (`ValueError`): a video could not be decoded or is empty (index, path and backend).
            TypeError / ValueError: `videos` is empty, or an entry is neither a path nor a 4-D array (e.g. `None`).

        Float frames already in [0, 1] with `do_rescale=True` are rescaled as asked, with a `UserWarning`
        (as transformers' image processors warn), since they were most likely rescaled before.
        """
        return_tensors = kwargs.pop("return_tensors", "pt")
        opts = self._call_options(kwargs)
        sampling, backend, generator = opts["sampling"], opts["video_backend"], opts["generator"]
        size, mean, std = opts["size"], opts["image_mean"], opts["image_std"]

        samples = as_video_batch(videos)
        out = None
        rescaled_twice: list[str] = []
        metadata: list[VideoMetadata | None] = []
        errors: list[SampleError] = []
        for i, video in enumerate(samples):
            source = repr(os.fspath(video)) if isinstance(video, (str, os.PathLike)) else type(video).__name__
            try:
                frames, meta = self._decode_one(video, opts["num_frames"], sampling, generator, backend)
            except (FileNotFoundError, ValueError) as err:
                errors.append(SampleError(i, source, err))
                metadata.append(None)
                continue
            if opts["do_rescale"] and frames.is_floating_point() and is_scaled_image(frames.numpy()):
                rescaled_twice.append(str(i))
            pixels = self._transform(
                frames,
                size,
                opts["do_resize"],
                opts["do_rescale"],
                opts["rescale_factor"],
                opts["do_normalize"],
                mean,
                std,
            )  # (T, 3, H, W)
            if out is None:
                out = pixels.new_zeros((len(samples), *pixels.shape))  # (B, T, 3, H, W)
            if pixels.shape != out.shape[1:]:
                raise ValueError(
                    f"Video {i} ({source}) gives frames of shape {tuple(pixels.shape)}, unlike the batch's "
                    f"{tuple(out.shape[1:])}; set `do_resize=True` to batch videos of different sizes."
                )
            out[i] = pixels
            metadata.append(meta)
        raise_for_sample_errors(errors, "video")
        if rescaled_twice:
            warnings.warn(
                f"Video(s) {', '.join(rescaled_twice)} are float frames already in [0, 1], and `do_rescale` "
                f"multiplies them by {opts['rescale_factor']:.4g} again. If their values are already between 0 and 1, "
                "pass `do_rescale=False`.",
                UserWarning,
                stacklevel=2,
            )

        data: dict[str, Any] = {"pixel_values_videos": out}
        if return_tensors != "pt":
            data["pixel_values_videos"] = out.numpy()
        result = BatchFeature(data=data, tensor_type=return_tensors)
        if opts["return_metadata"]:
            result["video_metadata"] = metadata
        return result

    def __call__(self, videos: VideoSample | list[VideoSample], **kwargs) -> BatchFeature:
        """Alias of `preprocess`."""
        return self.preprocess(videos, **kwargs)


def as_video_batch(videos: VideoSample | list[VideoSample]) -> list[VideoSample]:
    """
    The samples of `videos`: one path or one 4-D decoded video is one sample, a list/tuple (or a 5-D array) is a
    batch. Raises a `TypeError`/`ValueError` naming the position of an entry that is neither a path nor a 4-D
    array (such as `None`), and for an empty batch.
    """
    single = isinstance(videos, (str, os.PathLike)) or (
        isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 4
    )
    if videos is None or not (single or isinstance(videos, (list, tuple, np.ndarray, torch.Tensor))):
        raise TypeError(
            f"`videos` must be a video path, a decoded video or a list of them, got a {type(videos).__name__}."
        )
    if isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim != 5 and not single:
        raise ValueError(
            f"`videos` has shape {tuple(videos.shape)}; a decoded video is (frames, height, width, 3) or (frames, 3, "
            "height, width), and a batch a list of them (or a 5-D array)."
        )
    samples = [videos] if single else list(videos)
    if not samples:
        raise ValueError("`videos` is empty; give at least one video.")
    for i, video in enumerate(samples):
        where = "`videos`" if single else f"`videos[{i}]`"
        if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim != 4:
            raise ValueError(
                f"{where} has shape {tuple(video.shape)}; a decoded video is (frames, height, width, 3) or "
                "(frames, 3, height, width)."
            )
        if not isinstance(video, (str, os.PathLike, np.ndarray, torch.Tensor)):
            raise TypeError(
                f"{where} is {'None' if video is None else 'a ' + type(video).__name__}; every video must be a file "
                "path or a decoded (frames, height, width, 3) array."
            )
    return samples
