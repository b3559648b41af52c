"""The `audiovisual-retrieval` pipeline: rank videos for text queries with VALOR's MGA scores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from transformers import Pipeline

from ..configuration_valor import ModalityGroup, get_modality_group
from ..modeling_valor import ValorModel
from ..retrieval.encoding import encode_gallery
from ..retrieval.gallery import MANIFEST, StorageDtype, VideoGallery
from ..retrieval.search import DEFAULT_NUM_CANDIDATES, SearchHits, search
from .base import check_positive_int, check_video_paths, raise_for_failed_inputs

RetrievalGroup = Literal["tv", "ta", "tva"]


def check_group(group: str) -> ModalityGroup:
    """The text-query group called `group` (`"tv"`, `"ta"` or `"tva"`); a `ValueError` names them otherwise."""
    return get_modality_group(group, "retrieval")


def is_gallery_folder(videos: Any) -> bool:
    """Whether `videos` is the path of a saved [`VideoGallery`] folder."""
    return isinstance(videos, (str, os.PathLike)) and (Path(videos) / MANIFEST).is_file()


class AudioVisualRetrievalPipeline(Pipeline):
    """
    Text-to-video retrieval with [`ValorModel`] (or any VALOR head holding one, e.g. [`ValorForRetrieval`]):
    text queries are scored against a collection of videos with VALOR's MGA similarity for the chosen modality
    group, and the videos are returned best first.

    `videos` is a list of video files (each decoded and encoded once per call, whatever the number of queries),
    a [`VideoGallery`] (from `encode_videos` or `VideoGallery.load`), or the folder of a saved gallery (loaded
    and checked against the pipeline's model). A gallery with a first-stage index for the group
    (`gallery.build_index(group)`) is searched in two stages: the index proposes `num_candidates` videos, the
    exact fine-grained score re-ranks them. Otherwise every video is scored (exhaustive search).

    Call arguments (also accepted when the pipeline is built):
        videos (`list[str]`, [`VideoGallery`] or a gallery folder): the collection to search (required).
        group (`str`, defaults to `"tva"`): `"tv"` text-video, `"ta"` text-audio, `"tva"` text-audiovisual.
        top_k (`int`, *optional*): number of matches per query (default: every video; with two stages, every
            re-ranked candidate).
        num_candidates (`int`, defaults to 1000): first-stage candidates re-ranked per query (two stages only).
        exhaustive (`bool`, *optional*): `True` scores every video even when the gallery has an index; `False`
            requires the index; default: two stages exactly when the gallery has an index for `group`.
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
    >>> retriever("a dog barks", videos="my_gallery/", top_k=10)  # doctest: +SKIP
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

    def _collection(self, videos: Any) -> list[str] | VideoGallery:
        """A gallery object, a loaded gallery folder (checked against the model), or checked video paths."""
        if isinstance(videos, VideoGallery):
            return videos
        if is_gallery_folder(videos):
            return VideoGallery.load(videos, model=self.valor)
        if isinstance(videos, (str, os.PathLike)):
            if Path(videos).is_dir():
                raise FileNotFoundError(
                    f"{os.fspath(videos)!r} is a folder without {MANIFEST}: not a saved gallery."
                )
            videos = [videos]
        return check_video_paths(videos)

    def __call__(
        self, text: str | list[str], videos: Sequence[str] | VideoGallery | str | None = None, **kwargs
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """
        Rank `videos` for each text query.

        Returns:
            For one query (a `str`), `[{"video": path, "score": float}, ...]` best first; for a list of queries,
            one such list per query.

        Raises:
            FileNotFoundError: a video path is not an existing file (the message names it).
            GalleryMismatchError: a saved gallery was built with another model.
            ValueError: no videos or no queries, an unknown `group`, a non-positive `top_k`, or a `top_k` above
                `num_candidates` in a two-stage search.
        """
        if videos is None:
            if is_gallery_folder(self._default_videos):  # given when the pipeline was built: loaded once
                self._default_videos = self._collection(self._default_videos)
            videos = self._default_videos
        if videos is None:
            raise ValueError("Give the videos to search: `pipe(queries, videos=[path, ...])` or a gallery.")
        single = isinstance(text, str)
        queries = [text] if single else list(text)
        if not queries or not all(isinstance(q, str) for q in queries):
            raise ValueError("`text` must be a query string or a non-empty list of query strings.")
        videos = self._collection(videos)
        if len(videos) == 0:
            raise ValueError("`videos` is empty: give at least one video to search.")
        ranked = super().__call__({"queries": queries, "videos": videos}, **kwargs)
        return ranked[0] if single else ranked

    def _sanitize_parameters(
        self,
        videos: Sequence[str] | VideoGallery | str | None = None,
        group: RetrievalGroup | None = None,
        top_k: int | None = None,
        num_candidates: int | None = None,
        exhaustive: bool | None = None,
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
        for name, value in (
            ("top_k", top_k),
            ("num_candidates", num_candidates),
            ("num_frames", num_frames),
            ("num_clips", num_clips),
            ("video_batch_size", video_batch_size),
        ):
            if value is not None:
                forward_params[name] = check_positive_int(name, value)
        if exhaustive is not None:
            if not isinstance(exhaustive, bool):
                raise ValueError(f"`exhaustive` must be True, False or None, got {exhaustive!r}.")
            forward_params["exhaustive"] = exhaustive
        if processor_kwargs is not None:
            forward_params["processor_kwargs"] = dict(processor_kwargs)
        return {}, forward_params, {}

    def encode_videos(
        self,
        videos: Sequence[str],
        group: RetrievalGroup = "tva",
        num_frames: int | None = None,
        num_clips: int | None = None,
        video_batch_size: int = 8,
        processor_kwargs: dict[str, Any] | None = None,
        path: str | os.PathLike | None = None,
        num_workers: int = 0,
        dtype: StorageDtype = "float32",
        progress: bool = False,
        return_errors: bool = False,
    ) -> VideoGallery:
        """
        Decode and encode a collection of videos once, `video_batch_size` at a time (see
        `transformers_valor.retrieval.encode_gallery`, which this calls with the pipeline's model and processor).

        Args:
            videos (`list[str]`): video file paths.
            group (`str`, defaults to `"tva"`): the group(s) the gallery will serve: `"tv"` encodes frames only,
                `"ta"` soundtracks only, `"tva"` both (usable for every group).
            num_frames / num_clips / processor_kwargs: as for the call.
            video_batch_size (`int`, defaults to 8): videos per encoder batch.
            path (`str`, *optional*): save the gallery in this folder (resumable: a second call continues it).
            num_workers (`int`, defaults to 0): DataLoader processes that decode the videos.
            dtype (`str`, defaults to `"float32"`): feature storage type (`"float16"` halves it).
            progress (`bool`, defaults to `False`): show a progress bar.
            return_errors (`bool`, defaults to `False`): return the gallery of the videos that could be decoded,
                the others listed by `gallery.failures()`, instead of raising.

        Returns:
            A [`VideoGallery`]. Without `return_errors`, a video that cannot be decoded raises a
            `PipelineInputError` naming its position in `videos` and its path, with the gallery of the other
            videos (already encoded) as its `.results`.
        """
        check_positive_int("video_batch_size", video_batch_size)
        paths = check_video_paths(videos)
        if not paths:
            raise ValueError("`videos` is empty: give at least one video to encode.")
        with self.device_placement():
            gallery = encode_gallery(
                self.valor,
                self.processor,
                paths,
                path=path,
                group=check_group(group).name,
                batch_size=video_batch_size,
                num_workers=num_workers,
                dtype=dtype,
                num_frames=num_frames,
                num_clips=num_clips,
                processor_kwargs=processor_kwargs,
                progress=progress,
                capture_errors=True,
            )
        if not return_errors:
            raise_for_failed_inputs(paths, gallery.failures(), gallery)
        return gallery

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
        top_k: int | None = None,
        num_candidates: int = DEFAULT_NUM_CANDIDATES,
        exhaustive: bool | None = None,
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
        hits = search(self.valor, gallery, text, group, top_k, num_candidates, exhaustive)
        return {"hits": hits, "videos": gallery.videos}

    def postprocess(self, model_outputs: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """Each query's matches, best first, as `{"video": path, "score": float}`."""
        videos = model_outputs["videos"]
        hits: list[SearchHits] = model_outputs["hits"]
        return [
            [
                {"video": videos[row], "score": float(score)}
                for row, score in zip(h.rows.tolist(), h.scores.tolist())
            ]
            for h in hits
        ]
