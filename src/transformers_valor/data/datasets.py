"""Video-caption datasets for VALOR training: annotation loading, per-dataset settings and dataset mixing.

A dataset is a folder (or a Hub dataset) of video files plus annotations in one of these formats:

- `metadata` (the `datasets` videofolder/audiofolder convention): `metadata.jsonl` (or `.csv`) beside the videos,
  one row per video with a `file_name` column and a `caption` (string) and/or `captions` (list) column; a
  `<split>/` sub-folder is used when present;
- `valor_json` (VALOR-32K / VALOR-1M / the reference's MSR-VTT files): a JSON list of
  `{"video_id": ..., "desc": str | list}` (`caption`/`captions` are accepted for `desc`), the videos being
  `<video_dir>/<video_id>.<ext>`;
- `hub`: any dataset `datasets.load_dataset` can open, with a video-path column and a caption column;
- the layouts the downstream benchmarks are distributed in (documented folder by folder in docs/tasks/):
  `msrvtt` (an annotation JSON with `"sentences": [{"video_id", "caption"}]`, or the 1k-A test CSV with
  `video_id`/`sentence` columns, plus an optional id list per split), `vatex` (a JSON list of
  `{"videoID", "enCap": [...]}`), `audiocaps` (a CSV `audiocap_id, youtube_id, start_time, caption`, audio files
  named by YouTube id) and `clotho` (a CSV `file_name, caption_1 .. caption_5`).

Question answering rows carry a question besides the answer: with `question_column` set, the loaders keep it in a
`question` column and the answer (`caption_column`, default `answer`) becomes the single caption.

Every loader returns a `datasets.Dataset` with the same three columns: `sample_id` (str), `video_path` (str)
and `captions` (list of str), plus `question` (str) for question answering data. Settings that differ between datasets of one run (modality groups, frames, audio
clips, sampling weight) live in [`DatasetConfig`]. [`MixedBatchSampler`] draws every batch from one dataset,
chosen with the configured ratios, so that a batch has one set of groups and one frame/clip count on every
process, as VALOR's pretraining alternates VALOR-1M, WebVid and CC3M batches.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

from ..configuration_valor import CAPTION_GROUPS, CONTRASTIVE_GROUPS, MODALITY_GROUPS

logger = logging.getLogger(__name__)

AnnotationFormat = Literal[
    "metadata", "valor_json", "hub", "msrvtt", "vatex", "audiocaps", "clotho", "webdataset"
]
ANNOTATION_FORMATS: tuple[str, ...] = (
    "metadata",
    "valor_json",
    "hub",
    "msrvtt",
    "vatex",
    "audiocaps",
    "clotho",
    "webdataset",
)
# Formats streamed from WebDataset tar shards (`data.shards`, `data.streaming`) instead of loaded as a table.
STREAMED_FORMATS: tuple[str, ...] = ("webdataset",)
Modality = Literal["audiovisual", "video", "image", "audio"]

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv")
# Groups a dataset trains when the config does not name them: VALOR trains T-AV, T-V and T-A on audiovisual
# data (VALOR-1M) and T-V alone on silent video and images (WebVid, CC3M); audio-only data (AudioCaps, Clotho) T-A.
DEFAULT_GROUPS: dict[str, list[str]] = {
    "audiovisual": ["tva", "tv", "ta"],
    "video": ["tv"],
    "image": ["tv"],
    "audio": ["ta"],
}
_ID_KEYS = ("video_id", "clip_id", "id", "image_id")
_METADATA_FILES = ("metadata.jsonl", "metadata.csv")
_CAPTION_KEYS = ("desc", "captions", "caption", "descs", "text")


@dataclass
class DatasetConfig:
    """
    One dataset of a training mix (an entry of the YAML's `datasets:` list).

    Args:
        name (`str`): short name, used in logs and to key the decoded cache.
        path (`str`): the dataset folder, or a Hub id for `format: hub`.
        format (`str`, defaults to `"metadata"`): `"metadata"`, `"valor_json"`, `"hub"`, or a benchmark layout:
            `"msrvtt"`, `"vatex"`, `"audiocaps"`, `"clotho"` (see the module doc and docs/tasks/), or
            `"webdataset"`: tar shards written by `python -m transformers_valor.data.shards`, streamed in training
            (`path` is the folder holding their `shards.json`; see `data.streaming`).
        split (`str`, defaults to `"train"`): split sub-folder (`metadata`), or split name (`hub`).
        annotation_file (`str`, *optional*): `valor_json`, `msrvtt`, `vatex`, `audiocaps`, `clotho`: the annotation
            file (relative to `path` or absolute); `metadata`: a specific metadata file instead of
            `metadata.jsonl`/`.csv`.
        id_list (`str`, *optional*): a text file with one video id per line (relative to `path` or absolute); only
            those videos are kept, in the file's order (MSR-VTT's and VALOR-32K's split lists).
        video_dir (`str`, *optional*): folder of the videos when it is not the annotation folder (relative to
            `path` or absolute).
        video_column (`str`, defaults to `"file_name"`): column holding the file name (`metadata`, `hub`); a Hub
            `Video`/`Image` column is read without decoding and its `path` is used.
        caption_column (`str`, *optional*): caption column; by default `captions` when present, else `caption`.
        id_column (`str`, *optional*): sample id column; by default `id`/`video_id` when present, else the file
            name without extension.
        question_column (`str`, *optional*): question answering: the question column (JSON key); the answer is read
            from `caption_column` (default `answer`).
        modality (`str`, defaults to `"audiovisual"`): `"audiovisual"` (videos with sound), `"video"` (no sound is
            used), `"image"` (still images, read as 1-frame videos) or `"audio"` (audio or video files of which
            only the soundtrack is used).
        contrastive_groups / caption_groups (`list[str]`, *optional*): MGA / MGC groups trained on this dataset;
            default `[tva, tv, ta]` for audiovisual data, `[ta]` for audio and `[tv]` otherwise.
        mlm_groups (`list[str]`, defaults to `[]`): groups of the conditioned masked language modelling objective
            (`tv`, `ta`, `tva`; pretraining only), e.g. `[tv]` for VALOR-L's video-only corpora (the reference's
            `pt_contra%tv_caption%tv_mlm%tv`).
        ratio (`float`, defaults to 1.0): sampling weight of the dataset in the mix (batches are drawn with
            probability proportional to it).
        num_frames (`int`, defaults to 4): frames sampled per video (forced to 1 for images).
        num_clips (`int`, defaults to 1): audio clips per video (ignored without audio).
        max_samples (`int`, *optional*): keep only the first `max_samples` rows.
    """

    name: str
    path: str
    format: AnnotationFormat = "metadata"
    split: str = "train"
    annotation_file: str | None = None
    id_list: str | None = None
    video_dir: str | None = None
    video_column: str = "file_name"
    caption_column: str | None = None
    id_column: str | None = None
    question_column: str | None = None
    modality: Modality = "audiovisual"
    contrastive_groups: list[str] | None = None
    caption_groups: list[str] | None = None
    mlm_groups: list[str] = field(default_factory=list)
    ratio: float = 1.0
    num_frames: int = 4
    num_clips: int = 1
    max_samples: int | None = None

    def __post_init__(self):
        if self.format not in ANNOTATION_FORMATS:
            raise ValueError(
                f"dataset {self.name!r}: `format` must be one of {list(ANNOTATION_FORMATS)}, got {self.format!r}."
            )
        if self.modality not in DEFAULT_GROUPS:
            raise ValueError(
                f"dataset {self.name!r}: `modality` must be one of {list(DEFAULT_GROUPS)}, got {self.modality!r}."
            )
        if self.contrastive_groups is None:
            self.contrastive_groups = list(DEFAULT_GROUPS[self.modality])
        if self.caption_groups is None:
            self.caption_groups = [g for g in DEFAULT_GROUPS[self.modality] if g in CAPTION_GROUPS]
        self.contrastive_groups = list(self.contrastive_groups)
        self.caption_groups = list(self.caption_groups)
        self.mlm_groups = list(self.mlm_groups or [])
        for group in self.contrastive_groups:
            if group not in CONTRASTIVE_GROUPS:
                raise ValueError(f"dataset {self.name!r}: unknown contrastive group {group!r}.")
        for kind, groups in (("caption", self.caption_groups), ("mlm", self.mlm_groups)):
            for group in groups:
                if group not in CAPTION_GROUPS:
                    raise ValueError(f"dataset {self.name!r}: unknown {kind} group {group!r}.")
        read = set().union(
            *(
                MODALITY_GROUPS[g].modalities
                for g in self.contrastive_groups + self.caption_groups + self.mlm_groups
            )
        )
        if not self.uses_video and "video" in read:
            raise ValueError(
                f"dataset {self.name!r} has modality 'audio' (no frames) but trains video groups "
                f"{self.contrastive_groups} / {self.caption_groups} / {self.mlm_groups}."
            )
        if not self.uses_audio and "audio" in read:
            raise ValueError(
                f"dataset {self.name!r} has modality {self.modality!r} (no audio) but trains audio groups "
                f"{self.contrastive_groups} / {self.caption_groups} / {self.mlm_groups}."
            )
        if self.ratio <= 0:
            raise ValueError(f"dataset {self.name!r}: `ratio` must be > 0, got {self.ratio}.")
        if self.modality == "image":
            self.num_frames = 1
        if self.num_frames < 1 or self.num_clips < 1:
            raise ValueError(f"dataset {self.name!r}: `num_frames` and `num_clips` must be >= 1.")

    @property
    def uses_audio(self) -> bool:
        """Whether the dataset's soundtracks are decoded (audiovisual and audio datasets)."""
        return self.modality in ("audiovisual", "audio")

    @property
    def uses_video(self) -> bool:
        """Whether frames are decoded (every modality but `audio`)."""
        return self.modality != "audio"


def _resolve(root: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _as_caption_list(value: Any, where: str) -> list[str]:
    captions = [value] if isinstance(value, str) else list(value or [])
    captions = [c for c in captions if isinstance(c, str) and c.strip()]
    if not captions:
        raise ValueError(f"{where} has no caption.")
    return captions


def _index_videos(video_dir: Path) -> dict[str, str]:
    """Map every file stem in `video_dir` to its file name (one directory listing, not one stat per id)."""
    index: dict[str, str] = {}
    with os.scandir(video_dir) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext.lower() in VIDEO_EXTENSIONS or stem not in index:
                index.setdefault(stem, entry.name)
    return index


def _split_folder(root: Path, config: DatasetConfig) -> Path:
    """`<root>/<split>`, or `root` itself when it has no split sub-folders; a missing split is named."""
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {config.name!r}: no such folder {root}.")
    if (root / config.split).is_dir():
        return root / config.split
    splits = sorted(
        p.name for p in root.iterdir() if p.is_dir() and any((p / m).is_file() for m in _METADATA_FILES)
    )
    if splits and config.annotation_file is None:
        raise FileNotFoundError(
            f"dataset {config.name!r}: no split {config.split!r} in {root}; its splits are {splits}."
        )
    return root


def _load_metadata(config: DatasetConfig) -> datasets.Dataset:
    root = Path(config.path).expanduser()
    folder = _split_folder(root, config)
    if config.annotation_file is not None:
        meta = _resolve(root, config.annotation_file)
    else:
        candidates = [folder / name for name in _METADATA_FILES]
        meta = next((c for c in candidates if c.is_file()), None)
        if meta is None:
            raise FileNotFoundError(
                f"dataset {config.name!r}: no metadata.jsonl or metadata.csv in {folder}."
            )
    if meta.suffix == ".csv":
        table = datasets.Dataset.from_csv(str(meta), keep_in_memory=True)
    else:
        with open(meta, encoding="utf-8") as handle:
            table = datasets.Dataset.from_list([json.loads(line) for line in handle if line.strip()])
    video_dir = _resolve(root, config.video_dir) or meta.parent
    return _normalise(table, config, video_dir, str(meta))


def _read_id_list(root: Path, config: DatasetConfig) -> list[str] | None:
    """The ids of `config.id_list` (one per line, blank lines skipped), or None without a list."""
    if config.id_list is None:
        return None
    with open(_resolve(root, config.id_list), encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _require_annotation(config: DatasetConfig) -> Path:
    if config.annotation_file is None:
        raise ValueError(f"dataset {config.name!r}: `format: {config.format}` needs `annotation_file`.")
    return _resolve(Path(config.path).expanduser(), config.annotation_file)


def _rows_from_groups(
    config: DatasetConfig,
    grouped: dict[str, list[str]],
    where: str,
    file_names: dict[str, str] | None = None,
) -> datasets.Dataset:
    """
    Rows `sample_id, video_path, captions` from `{id: [captions]}` (insertion order), restricted to and ordered by
    the id list when there is one. Files are looked up by id stem in `video_dir` (default `path`), or named by
    `file_names[id]`; a missing file keeps its expected name so that it is counted as undecodable, not dropped.
    """
    root = Path(config.path).expanduser()
    video_dir = _resolve(root, config.video_dir) or root
    stems = _index_videos(video_dir) if video_dir.is_dir() else {}
    ids = _read_id_list(root, config)
    if ids is not None:
        unknown = [i for i in ids if i not in grouped]
        if unknown:
            raise ValueError(
                f"dataset {config.name!r}: {len(unknown)} id(s) of {config.id_list} have no caption in {where}, "
                f"e.g. {unknown[:3]}."
            )
    rows = []
    for sample_id in ids if ids is not None else list(grouped):
        if file_names is not None:
            file_name = file_names[sample_id]
        else:
            file_name = stems.get(sample_id, f"{sample_id}.mp4")
        rows.append(
            {
                "sample_id": sample_id,
                "video_path": str(video_dir / file_name),
                "captions": _as_caption_list(grouped[sample_id], f"{where} id {sample_id}"),
            }
        )
    return datasets.Dataset.from_list(rows)


def _load_valor_json(config: DatasetConfig) -> datasets.Dataset:
    annotation = _require_annotation(config)
    with open(annotation, encoding="utf-8") as handle:
        entries = json.load(handle)
    if isinstance(entries, dict):  # {video_id: captions}
        entries = [{"video_id": key, "desc": value} for key, value in entries.items()]
    if config.question_column is not None:
        return _qa_rows(config, entries, str(annotation))
    caption_keys = (config.caption_column,) if config.caption_column else _CAPTION_KEYS
    grouped: dict[str, list[str]] = {}
    for position, entry in enumerate(entries):
        where = f"{annotation} entry {position}"
        key = (
            config.id_column if config.id_column in entry else next((k for k in _ID_KEYS if k in entry), None)
        )
        text_key = next((k for k in caption_keys if k in entry), None)
        if key is None or text_key is None:
            raise ValueError(
                f"{where} needs a video id ({'/'.join(_ID_KEYS)}) and captions ({'/'.join(caption_keys)})."
            )
        captions = _as_caption_list(entry[text_key], where)
        grouped.setdefault(str(entry[key]), []).extend(captions)
    return _rows_from_groups(config, grouped, str(annotation))


def _qa_rows(config: DatasetConfig, entries: list[dict[str, Any]], where: str) -> datasets.Dataset:
    """Question answering rows (one per question) from JSON entries with a video id, a question and an answer."""
    root = Path(config.path).expanduser()
    video_dir = _resolve(root, config.video_dir) or root
    stems = _index_videos(video_dir) if video_dir.is_dir() else {}
    answer_key = config.caption_column or "answer"
    keep = _read_id_list(root, config)
    keep = set(keep) if keep is not None else None
    rows = []
    for position, entry in enumerate(entries):
        key = (
            config.id_column if config.id_column in entry else next((k for k in _ID_KEYS if k in entry), None)
        )
        if key is None or config.question_column not in entry or answer_key not in entry:
            raise ValueError(
                f"{where} entry {position} needs a video id, {config.question_column!r} and {answer_key!r}."
            )
        video_id = str(entry[key])
        if keep is not None and video_id not in keep:
            continue
        rows.append(
            {
                "sample_id": f"{video_id}#{position}",
                "video_path": str(video_dir / stems.get(video_id, f"{video_id}.mp4")),
                "captions": _as_caption_list(str(entry[answer_key]), f"{where} entry {position}"),
                "question": str(entry[config.question_column]),
            }
        )
    return datasets.Dataset.from_list(rows)


def _load_msrvtt(config: DatasetConfig) -> datasets.Dataset:
    """
    MSR-VTT: the annotation JSON (`train_val_videodatainfo.json`, `test_videodatainfo.json` or the combined
    `MSRVTT_data.json`) whose `"sentences"` list holds `{"video_id", "caption"}`, or the 1k-A test CSV
    (`MSRVTT_JSFUSION_test.csv`: `video_id`, `sentence`); an optional `id_list` (`train_list_jsfusion.txt`, ...)
    selects the split.
    """
    annotation = _require_annotation(config)
    grouped: dict[str, list[str]] = {}
    if annotation.suffix == ".csv":
        table = datasets.Dataset.from_csv(str(annotation), keep_in_memory=True)
        text_column = config.caption_column or ("sentence" if "sentence" in table.column_names else "caption")
        for video_id, caption in zip(table["video_id"], table[text_column]):
            grouped.setdefault(str(video_id), []).append(caption)
    else:
        with open(annotation, encoding="utf-8") as handle:
            data = json.load(handle)
        if "sentences" not in data:
            raise ValueError(f"{annotation}: an MSR-VTT annotation file needs a 'sentences' list.")
        for sentence in data["sentences"]:
            grouped.setdefault(str(sentence["video_id"]), []).append(sentence["caption"])
    return _rows_from_groups(config, grouped, str(annotation))


def _load_vatex(config: DatasetConfig) -> datasets.Dataset:
    """VATEX: a JSON list of `{"videoID": ..., "enCap": [10 English captions], "chCap": [...]}`."""
    annotation = _require_annotation(config)
    with open(annotation, encoding="utf-8") as handle:
        entries = json.load(handle)
    caption_key = config.caption_column or "enCap"
    grouped: dict[str, list[str]] = {}
    for position, entry in enumerate(entries):
        if "videoID" not in entry or caption_key not in entry:
            raise ValueError(f"{annotation} entry {position} needs 'videoID' and {caption_key!r}.")
        grouped.setdefault(str(entry["videoID"]), []).extend(
            _as_caption_list(entry[caption_key], str(annotation))
        )
    return _rows_from_groups(config, grouped, str(annotation))


def _load_audiocaps(config: DatasetConfig) -> datasets.Dataset:
    """
    AudioCaps: `train.csv`/`val.csv`/`test.csv` with `audiocap_id, youtube_id, start_time, caption`, one row per
    caption; the rows of one YouTube id (5 in val/test) form one sample whose file is `<youtube_id>.<ext>`.
    """
    annotation = _require_annotation(config)
    table = datasets.Dataset.from_csv(str(annotation), keep_in_memory=True)
    missing = {"youtube_id", "caption"} - set(table.column_names)
    if missing:
        raise ValueError(f"{annotation}: missing AudioCaps column(s) {sorted(missing)}.")
    grouped: dict[str, list[str]] = {}
    for youtube_id, caption in zip(table["youtube_id"], table["caption"]):
        grouped.setdefault(str(youtube_id), []).append(caption)
    return _rows_from_groups(config, grouped, str(annotation))


def _load_clotho(config: DatasetConfig) -> datasets.Dataset:
    """Clotho: `clotho_captions_<split>.csv` with `file_name, caption_1 .. caption_5`; the audio is `<file_name>`."""
    annotation = _require_annotation(config)
    table = datasets.Dataset.from_csv(str(annotation), keep_in_memory=True)
    columns = sorted(
        (c for c in table.column_names if c.startswith("caption_")), key=lambda c: int(c.split("_")[-1])
    )
    if "file_name" not in table.column_names or not columns:
        raise ValueError(f"{annotation}: a Clotho file needs `file_name` and `caption_1 ..` columns.")
    grouped: dict[str, list[str]] = {}
    file_names: dict[str, str] = {}
    for row in table:
        sample_id = os.path.splitext(row["file_name"])[0]
        file_names[sample_id] = row["file_name"]
        grouped.setdefault(sample_id, []).extend(row[c] for c in columns if row[c])
    return _rows_from_groups(config, grouped, str(annotation), file_names)


def _load_hub(config: DatasetConfig) -> datasets.Dataset:
    try:
        table = datasets.load_dataset(config.path, split=config.split)
    except ValueError as err:  # `datasets` names an unknown split and lists the known ones
        raise ValueError(f"dataset {config.name!r} ({config.path}, split {config.split!r}): {err}") from err
    feature = table.features.get(config.video_column)
    if feature is not None and hasattr(feature, "decode"):
        table = table.cast_column(config.video_column, type(feature)(decode=False))
    return _normalise(table, config, None, config.path)


def _normalise(
    table: datasets.Dataset, config: DatasetConfig, video_dir: Path | None, where: str
) -> datasets.Dataset:
    """Map an annotation table to the common columns `sample_id`, `video_path`, `captions`."""
    columns = set(table.column_names)
    defaults = ("answer",) if config.question_column is not None else ("captions", "caption")
    caption_column = config.caption_column or next((c for c in defaults if c in columns), None)
    if caption_column not in columns:
        raise ValueError(
            f"{where}: no caption column ({config.caption_column or 'captions/caption'}) in {sorted(columns)}."
        )
    if config.video_column not in columns:
        raise ValueError(f"{where}: no video column {config.video_column!r} in {sorted(columns)}.")
    id_column = config.id_column or next((c for c in ("id", "video_id") if c in columns), None)
    if config.question_column is not None and config.question_column not in columns:
        raise ValueError(f"{where}: no question column {config.question_column!r} in {sorted(columns)}.")

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        video = row[config.video_column]
        path = video.get("path") if isinstance(video, dict) else video
        if video_dir is not None and not os.path.isabs(path):
            path = str(video_dir / path)
        sample_id = str(row[id_column]) if id_column else os.path.splitext(os.path.basename(path))[0]
        out = {
            "sample_id": sample_id,
            "video_path": path,
            "captions": _as_caption_list(row[caption_column], f"{where} row {index}"),
        }
        if config.question_column is not None:
            out["question"] = str(row[config.question_column])
            out["sample_id"] = f"{sample_id}#{index}"  # several questions per video
        return out

    return table.map(convert, with_indices=True, remove_columns=table.column_names, keep_in_memory=True)


def load_video_text_dataset(config: DatasetConfig) -> datasets.Dataset:
    """
    Load one dataset's annotations as a `datasets.Dataset` with columns `sample_id`, `video_path`, `captions`.

    Nothing is decoded here; the collator decodes videos in the DataLoader workers.
    """
    loaders = {
        "metadata": _load_metadata,
        "valor_json": _load_valor_json,
        "hub": _load_hub,
        "msrvtt": _load_msrvtt,
        "vatex": _load_vatex,
        "audiocaps": _load_audiocaps,
        "clotho": _load_clotho,
    }
    if config.format in STREAMED_FORMATS:
        raise ValueError(
            f"dataset {config.name!r}: `format: {config.format}` is streamed from its shards by training "
            "(`data.streaming`), not loaded as a table; evaluation and the decoded cache need an annotation format."
        )
    table = loaders[config.format](config)
    if config.max_samples is not None:
        table = table.select(range(min(config.max_samples, len(table))))
    if len(table) == 0:
        raise ValueError(f"dataset {config.name!r} ({config.path}) is empty.")
    return table


@dataclass
class SampleRef:
    """What the batch sampler yields per sample: which dataset and row, and the seed of the batch it is in."""

    dataset_index: int
    row_index: int
    batch_seed: int


class MixedVideoTextDataset(TorchDataset):
    """
    Several video-text datasets behind one index space of [`SampleRef`]s.

    `dataset[SampleRef(d, i, seed)]` returns row `i` of dataset `d` as a dict with `sample_id`, `video_path`,
    `captions`, `dataset_index` and `batch_seed` (and `question` for question answering data), plus the decoded tensors when a decoded cache is attached
    ([`attach_cache`]).
    """

    def __init__(self, tables: Sequence[datasets.Dataset], configs: Sequence[DatasetConfig]):
        if len(tables) != len(configs) or not tables:
            raise ValueError("Give one table per dataset config, and at least one.")
        self.tables = list(tables)
        self.configs = list(configs)
        # Plain Python lists: row access in DataLoader workers should not go through Arrow for every sample.
        self._rows = [t.to_dict() for t in self.tables]
        self._caches: list[dict[str, Any] | None] = [None] * len(tables)

    @property
    def sizes(self) -> list[int]:
        """Number of rows of every dataset."""
        return [len(t) for t in self.tables]

    def rows(self, dataset_index: int) -> dict[str, list]:
        """The columns of dataset `dataset_index` as plain lists (`sample_id`, `video_path`, `captions`, ...)."""
        return self._rows[dataset_index]

    def attach_cache(self, dataset_index: int, cache: dict[str, Any]) -> None:
        """Serve decoded tensors (see `collator.build_decoded_cache`) for dataset `dataset_index`."""
        if len(cache["ok"]) != self.sizes[dataset_index]:
            raise ValueError("The decoded cache does not match the dataset's length.")
        self._caches[dataset_index] = cache

    def __len__(self) -> int:
        return sum(self.sizes)

    def __getitem__(self, ref: SampleRef) -> dict[str, Any]:
        rows = self._rows[ref.dataset_index]
        item = {
            "sample_id": rows["sample_id"][ref.row_index],
            "video_path": rows["video_path"][ref.row_index],
            "captions": rows["captions"][ref.row_index],
            "dataset_index": ref.dataset_index,
            "batch_seed": ref.batch_seed,
        }
        if "question" in rows:
            item["question"] = rows["question"][ref.row_index]
        cache = self._caches[ref.dataset_index]
        if cache is not None:
            item["decoded"] = {
                key: value[ref.row_index]
                for key, value in cache.items()
                if key in ("pixel_values_videos", "input_features", "input_features_mask")
            }
            item["decode_error"] = cache["errors"].get(ref.row_index)
        return item


def _seed_of(*parts: int) -> int:
    """A 63-bit seed mixing integers (numpy's SeedSequence), stable across processes and Python runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The seed of the batch process `rank` trains at `step` of `epoch` (caption choice, frames, masking)."""
    return _seed_of(seed, epoch, step, rank)


def dataset_choices(seed: int, epoch: int, count: int, probabilities: np.ndarray) -> np.ndarray:
    """The dataset of each of the `count` global batches of `epoch`: drawn with `probabilities`, a pure function
    of `(seed, epoch)`, the same on every process (map-style and streamed data alike)."""
    return np.random.default_rng([seed, epoch, 0]).choice(len(probabilities), size=count, p=probabilities)


class MixedBatchSampler(Sampler[list[SampleRef]]):
    """
    Batches drawn from a mix of datasets: each global batch comes from ONE dataset, picked with probability
    proportional to its ratio; inside a dataset, rows follow a fresh random permutation every epoch.

    The order is a pure function of `(seed, epoch)`, identical on every process: each process takes its own
    slice of the global batch (`rank`), so all processes train the same groups at the same step (the MGA
    feature gather needs that) and the negatives of a batch come from one dataset. Because nothing depends on
    earlier epochs, a resumed run skips the first batches of its epoch and continues with exactly the batches
    the uninterrupted run would have seen (`accelerate.skip_first_batches`).

    Args:
        sizes (`list[int]`): rows of every dataset.
        ratios (`list[float]`): sampling weights.
        batch_size (`int`): per-process batch size.
        num_replicas (`int`, defaults to 1) / rank (`int`, defaults to 0): the process layout.
        seed (`int`, defaults to 0): seed of the order and of the per-batch seeds.
        batches_per_epoch (`int`, *optional*): default `sum(sizes) // global_batch_size`, i.e. an epoch of a single
            dataset is one pass over it.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        ratios: Sequence[float],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        batches_per_epoch: int | None = None,
    ):
        if len(sizes) != len(ratios) or not sizes:
            raise ValueError("`sizes` and `ratios` need one entry per dataset.")
        self.sizes = list(sizes)
        self.probabilities = np.asarray(ratios, dtype=np.float64) / float(np.sum(ratios))
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.global_batch_size = batch_size * num_replicas
        too_small = [i for i, n in enumerate(self.sizes) if n < self.global_batch_size]
        if too_small:
            raise ValueError(
                f"datasets {too_small} have fewer rows ({[self.sizes[i] for i in too_small]}) than one global batch "
                f"({self.global_batch_size} = {batch_size} per process x {num_replicas} processes)."
            )
        self.batches_per_epoch = batches_per_epoch or max(1, sum(self.sizes) // self.global_batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order `__iter__` yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[SampleRef]]:
        choices = dataset_choices(self.seed, self.epoch, self.batches_per_epoch, self.probabilities)
        orders: list[list[int]] = [[] for _ in self.sizes]
        cursors = [0] * len(self.sizes)
        passes = [0] * len(self.sizes)
        start, stop = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for step, d in enumerate(choices.tolist()):
            if cursors[d] + self.global_batch_size > len(orders[d]):
                # A new pass over dataset d; the tail of the previous pass is dropped (drop_last).
                perm = np.random.default_rng([self.seed, self.epoch, 1, d, passes[d]]).permutation(
                    self.sizes[d]
                )
                orders[d], cursors[d] = perm.tolist(), 0
                passes[d] += 1
            rows = orders[d][cursors[d] + start : cursors[d] + stop]
            cursors[d] += self.global_batch_size
            seed = batch_seed(self.seed, self.epoch, step, self.rank)
            yield [SampleRef(d, row, seed) for row in rows]


@dataclass
class MixtureSummary:
    """Human-readable description of a loaded mix (logged at the start of training)."""

    names: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        return ", ".join(
            f"{n}: {s} samples, p={p:.2f}" for n, s, p in zip(self.names, self.sizes, self.probabilities)
        )


def load_mixture(configs: Sequence[DatasetConfig]) -> tuple[MixedVideoTextDataset, MixtureSummary]:
    """Load every dataset of a mix and wrap them in a [`MixedVideoTextDataset`]."""
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique, got {names}.")
    tables = [load_video_text_dataset(c) for c in configs]
    total = sum(c.ratio for c in configs)
    summary = MixtureSummary(names, [len(t) for t in tables], [c.ratio / total for c in configs])
    return MixedVideoTextDataset(tables, configs), summary


def torch_generator(seed: int) -> torch.Generator:
    """A CPU `torch.Generator` seeded with `seed` (reduced to 63 bits)."""
    return torch.Generator().manual_seed(seed % (1 << 63))
