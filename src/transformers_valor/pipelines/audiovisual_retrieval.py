"""The `audiovisual-retrieval` pipeline: rank videos for text queries with VALOR's MGA scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import Pipeline

from ..configuration_valor import ModalityGroup, get_modality_group
from ..modeling_valor import ValorFeatures, ValorModel, concat_feature_batches
from .base import check_positive_int, check_video_path, media_inputs

RetrievalGroup = Literal["tv", "ta", "tva"]


def check_group(group: str) -> ModalityGroup:
    """The text-query group called `group` (`"tv"`, `"ta"` or `"tva"`); a `ValueError` names them otherwise."""
    return get_modality_group(group, "retrieval")


def _mga_only(features: ValorFeatures) -> ValorFeatures:
    """Keep what scoring needs (drop the encoder tokens) and move it to the CPU."""
    return ValorFeatures(
        embeds=features.embeds.cpu(),
        mask=features.mask.cpu(),
        weight_logits=None if features.weight_logits is None else features.weight_logits.cpu(),
        pooled_embeds=features.pooled_embeds.cpu(),
    )


def _to_device(features: ValorFeatures | None, device: torch.device) -> ValorFeatures | None:
    if features is None:
        return None
    return ValorFeatures(**{name: value.to(device) for name, value in features.items()})


@dataclass
class VideoGallery:
    """
    Videos encoded once for retrieval, from [`AudioVisualRetrievalPipeline.encode_videos`]; pass it as `videos=`
    to search the same collection with many calls without decoding or encoding the videos again.

    Args:
        videos (`list[str]`): the video paths, in order.
        video_features ([`ValorFeatures`], *optional*): per-frame MGA features `(num_videos, frames, dim)`.
        audio_features ([`ValorFeatures`], *optional*): per-clip MGA features `(num_videos, clips, dim)`.
    """

    videos: list[str]
    video_features: ValorFeatures | None = None
    audio_features: ValorFeatures | None = None

    def __len__(self) -> int:
        return len(self.videos)

    def check_group(self, group: RetrievalGroup) -> None:
        """Raise a `ValueError` when the gallery lacks a modality that `group` compares with."""
        present = {"video": self.video_features is not None, "audio": self.audio_features is not None}
        missing = [m for m in check_group(group).candidates if not present[m]]
        if missing:
            raise ValueError(
                f"Group {group!r} needs {' and '.join(missing)} features, which this gallery was not encoded with; "
                f"encode it with `group={group!r}` (or 'tva', which serves every group)."
            )


class AudioVisualRetrievalPipeline(Pipeline):
    """
    Text-to-video retrieval with [`ValorModel`] (or any VALOR head holding one, e.g. [`ValorForRetrieval`]):
    every text query is scored against every video of a collection with VALOR's MGA similarity for the chosen
    modality group, and the videos are returned best first.

    Each video is decoded and encoded once per call, whatever the number of queries; `encode_videos` returns
    a [`VideoGallery`] that can be passed as `videos=` to reuse the encodings across calls.

    Call arguments (also accepted when the pipeline is built):
        videos (`list[str]` or [`VideoGallery`]): the collection to search (required at call time).
        group (`str`, defaults to `"tva"`): `"tv"` text-video, `"ta"` text-audio, `"tva"` text-audiovisual.
        top_k (`int`, *optional*): number of matches per query (default: every video).
        num_frames / num_clips (`int`, *optional*): frames and audio clips per video (default: the processor's).
        video_batch_size (`int`, defaults to 8): videos decoded and encoded together.
        processor_kwargs (`dict`, *optional*): further [`ValorProcessor`] arguments for the videos.

    Scores are the raw MGA similarities (the model's `similarity`, before the logit scale), not probabilities.

    Example:

    ```python
    >>> import transformers_valor  # registers the pipeline
    >>> from transformers import pipeline
    >>> retriever = pipeline("audiovisual-retrieval", model="path/or/repo")  # doctest: +SKIP
    >>> retriever(["a dog barks", "a man plays guitar"], videos=["dog.mp4", "guitar.mp4"], top_k=1)  # doctest: +SKIP
    [[{'video': 'dog.mp4', 'score': 0.41}], [{'video': 'guitar.mp4', 'score': 0.38}]]
    ```
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        valor = self.model if isinstance(self.model, ValorModel) else getattr(self.model, "valor", None)
        if not isinstance(valor, ValorModel):
            raise TypeError(
                f"The audiovisual-retrieval pipeline needs a ValorModel (or a VALOR head with `.valor`), got "
                f"{type(self.model).__name__}."
            )
        if self.processor is None:
            raise ValueError(
                "The audiovisual-retrieval pipeline needs a ValorProcessor: pass `processor=` or load a checkpoint "
                "that has processor_config.json."
            )
        self.valor = valor

    def __call__(
        self, text: str | list[str], videos: Sequence[str] | VideoGallery | None = None, **kwargs
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """
        Rank `videos` for each text query.

        Returns:
            For one query (a `str`), `[{"video": path, "score": float}, ...]` best first; for a list of queries,
            one such list per query.

        Raises:
            FileNotFoundError: a video path is not an existing file (the message names it).
            ValueError: no videos or no queries, an unknown `group`, or a non-positive `top_k`.
        """
        if videos is None:
            videos = self._default_videos
        if videos is None:
            raise ValueError("Give the videos to search: `pipe(queries, videos=[path, ...])`.")
        single = isinstance(text, str)
        queries = [text] if single else list(text)
        if not queries or not all(isinstance(q, str) for q in queries):
            raise ValueError("`text` must be a query string or a non-empty list of query strings.")
        if not isinstance(videos, VideoGallery):
            videos = [check_video_path(v) for v in videos]
        if len(videos) == 0:
            raise ValueError("`videos` is empty: give at least one video to search.")
        ranked = super().__call__({"queries": queries, "videos": videos}, **kwargs)
        return ranked[0] if single else ranked

    def _sanitize_parameters(
        self,
        videos: Sequence[str] | VideoGallery | None = None,
        group: RetrievalGroup | None = None,
        top_k: int | None = None,
        num_frames: int | None = None,
        num_clips: int | None = None,
        video_batch_size: int | None = None,
        processor_kwargs: dict[str, Any] | None = None,
    ):
        # Videos given when the pipeline is built become the default collection.
        if videos is not None:
            self._default_videos = videos
        elif not hasattr(self, "_default_videos"):
            self._default_videos = None
        forward_params: dict[str, Any] = {}
        if group is not None:
            forward_params["group"] = check_group(group).name
        if num_frames is not None:
            forward_params["num_frames"] = check_positive_int("num_frames", num_frames)
        if num_clips is not None:
            forward_params["num_clips"] = check_positive_int("num_clips", num_clips)
        if video_batch_size is not None:
            forward_params["video_batch_size"] = check_positive_int("video_batch_size", video_batch_size)
        if processor_kwargs is not None:
            forward_params["processor_kwargs"] = dict(processor_kwargs)
        postprocess_params = {}
        if top_k is not None:
            postprocess_params["top_k"] = check_positive_int("top_k", top_k)
        return {}, forward_params, postprocess_params

    def encode_videos(
        self,
        videos: Sequence[str],
        group: RetrievalGroup = "tva",
        num_frames: int | None = None,
        num_clips: int | None = None,
        video_batch_size: int = 8,
        processor_kwargs: dict[str, Any] | None = None,
    ) -> VideoGallery:
        """
        Decode and encode a collection of videos once, `video_batch_size` at a time.

        Args:
            videos (`list[str]`): video file paths.
            group (`str`, defaults to `"tva"`): the group(s) the gallery will serve: `"tv"` encodes frames only,
                `"ta"` soundtracks only, `"tva"` both (usable for every group).
            num_frames / num_clips / processor_kwargs: as for the call.
            video_batch_size (`int`, defaults to 8): videos per encoder batch.

        Returns:
            A [`VideoGallery`] holding the MGA features on the CPU.
        """
        spec = check_group(group)
        modalities = spec.candidates
        check_positive_int("video_batch_size", video_batch_size)
        paths = [check_video_path(v) for v in videos]
        if not paths:
            raise ValueError("`videos` is empty: give at least one video to encode.")
        video_chunks: list[ValorFeatures] = []
        audio_chunks: list[ValorFeatures] = []
        with self.device_placement(), torch.no_grad():
            for start in range(0, len(paths), video_batch_size):
                chunk = paths[start : start + video_batch_size]
                inputs = media_inputs(
                    self.processor, chunk, spec.media, num_frames, num_clips, processor_kwargs
                )
                inputs = self._ensure_tensor_on_device(dict(inputs), device=self.device)
                if "video" in modalities:
                    video_chunks.append(
                        _mga_only(self.valor.get_video_features(inputs["pixel_values_videos"]))
                    )
                if "audio" in modalities:
                    features = self.valor.get_audio_features(
                        inputs["input_features"], inputs["input_features_mask"]
                    )
                    audio_chunks.append(_mga_only(features))
        return VideoGallery(
            videos=paths,
            video_features=concat_feature_batches(video_chunks) if video_chunks else None,
            audio_features=concat_feature_batches(audio_chunks) if audio_chunks else None,
        )

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Tokenise the queries; the videos are decoded in `_forward`, a batch at a time."""
        text = self.processor(text=inputs["queries"], return_tensors="pt")
        return {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "videos": inputs["videos"],
        }

    def _forward(
        self,
        model_inputs: dict[str, Any],
        group: RetrievalGroup = "tva",
        num_frames: int | None = None,
        num_clips: int | None = None,
        video_batch_size: int = 8,
        processor_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        gallery = model_inputs["videos"]
        if isinstance(gallery, VideoGallery):
            if num_frames is not None or num_clips is not None or processor_kwargs is not None:
                raise ValueError(
                    "`num_frames`, `num_clips` and `processor_kwargs` apply when videos are encoded; this "
                    "VideoGallery is already encoded."
                )
            gallery.check_group(group)
        else:
            gallery = self.encode_videos(
                gallery, group, num_frames, num_clips, video_batch_size, processor_kwargs
            )
        text = self.valor.get_text_features(model_inputs["input_ids"], model_inputs["attention_mask"])
        needed = check_group(group).candidates
        query, candidates = self.valor.group_features(
            group,
            text=text,
            video=_to_device(gallery.video_features, self.device) if "video" in needed else None,
            audio=_to_device(gallery.audio_features, self.device) if "audio" in needed else None,
        )
        scores = self.valor.similarity(query, candidates)  # (num_queries, num_videos)
        return {"scores": scores, "videos": list(gallery.videos)}

    def postprocess(
        self, model_outputs: dict[str, Any], top_k: int | None = None
    ) -> list[list[dict[str, Any]]]:
        """Sort each query's scores, best first, and keep `top_k` matches."""
        scores = model_outputs["scores"].float()
        videos = model_outputs["videos"]
        k = len(videos) if top_k is None else min(top_k, len(videos))
        values, order = torch.sort(scores, dim=-1, descending=True, stable=True)
        return [
            [
                {"video": videos[j], "score": float(v)}
                for v, j in zip(row_values[:k].tolist(), row_order[:k].tolist())
            ]
            for row_values, row_order in zip(values, order)
        ]
