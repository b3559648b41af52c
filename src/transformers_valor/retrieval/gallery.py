"""[`VideoGallery`]: the MGA features of a video collection, in memory or in a folder of safetensors shards.

A saved gallery is a folder::

    gallery.json                     format, modalities, storage dtype, the model and processor it was built with,
                                     the committed shards in row order
    shards/shard-r00000-000000.safetensors   `video.embeds`, `video.mask`, `video.weight_logits`,
                                     `video.pooler_output`, `audio.*` for the shard's rows (float32 or float16)
    shards/shard-r00000-000000.json  the rows' ids and paths, and the items that failed to decode
    index/<group>.faiss, .json       first-stage indexes (see `retrieval.index`)

Shards are memory-mapped when loaded (safetensors' `safe_open`), so a gallery larger than memory can be searched:
only the rows that are read are paged in. Rows are append-only: `add` and `refresh` append shards after the
committed ones, so the row numbers stored in an index stay valid.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open

from ..configuration_valor import get_modality_group
from ..inference.writer import ShardedWriter, read_shards, write_atomic
from ..modeling_valor import ValorFeatures
from .fingerprint import model_description

GALLERY_FORMAT = "valor-gallery"
GALLERY_VERSION = 1
MANIFEST = "gallery.json"
SHARD_DIR = "shards"
INDEX_DIR = "index"
MEDIA_MODALITIES: tuple[str, ...] = ("video", "audio")
FEATURE_FIELDS: tuple[str, ...] = ("embeds", "mask", "weight_logits", "pooler_output")
# What the fine-grained score reads of a row (the pooled vector serves the coarse score only).
FINE_FIELDS: tuple[str, ...] = ("embeds", "mask", "weight_logits")
StorageDtype = Literal["float32", "float16"]
STORAGE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16}
DEFAULT_SHARD_SIZE = 8192


class GalleryMismatchError(ValueError):
    """A gallery used with a model other than the one that encoded it."""


def features_to_tensors(
    modality: str, features: ValorFeatures, dtype: StorageDtype
) -> dict[str, torch.Tensor]:
    """The storage tensors of one modality's features: `<modality>.<field>`, floats in `dtype`, the mask as bool."""
    out = {}
    for name in FEATURE_FIELDS:
        value = getattr(features, name)
        if value is None:
            continue
        value = value.detach().cpu()
        out[f"{modality}.{name}"] = value.bool() if name == "mask" else value.to(STORAGE_DTYPES[dtype])
    return out


class _Shard:
    """Rows of a gallery: their ids and paths and a mapping of storage tensors (memory-mapped or in memory)."""

    def __init__(
        self, ids: list[str], paths: list[str], tensors: Mapping[str, torch.Tensor], name: str | None
    ):
        self.ids, self.paths, self.tensors, self.name = ids, paths, tensors, name

    @classmethod
    def open(cls, directory: Path, name: str, ids: list[str], paths: list[str]) -> _Shard:
        with safe_open(str(directory / f"{name}.safetensors"), framework="pt") as handle:
            # safetensors maps the file: the tensors are views of it, read only where they are indexed.
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        for key, value in tensors.items():
            if value.shape[0] != len(ids):
                raise ValueError(
                    f"Shard {name}: tensor {key!r} has {value.shape[0]} rows for {len(ids)} ids."
                )
        return cls(ids, paths, tensors, name)


def _paths_of(records: list[dict[str, Any]], ids: list[str]) -> list[str]:
    return [str(record.get("path", item_id)) for record, item_id in zip(records, ids)]


class VideoGallery:
    """
    The MGA features of a collection of videos (per-frame and per-clip embeddings, masks, weight logits, pooled
    vectors), with their ids and paths and the model that encoded them; in memory, or saved in a folder of
    sharded safetensors files that are memory-mapped when loaded.

    Build one with `retrieval.encode_gallery` (decoding in DataLoader workers, resumable) or the pipeline's
    `encode_videos`; `create` + `add` store features you computed. `search` (see `retrieval.search`) ranks it
    for text queries, exhaustively or in two stages when `build_index` has given it a first-stage index.

    Args (of `create`):
        model ([`ValorModel`]): the model whose features the gallery holds (its fingerprint is recorded).
        modalities (`tuple[str, ...]`, defaults to `("video", "audio")`): `video` serves `tv`, `audio` `ta`, both
            every retrieval group (`tv`, `ta`, `tva`).
        path (`str`, *optional*): a folder to keep the gallery in (created; it must not hold a gallery yet);
            `None` keeps it in memory (`save` writes it later).
        dtype (`str`, defaults to `"float32"`): storage type of the features, `"float32"` (bitwise) or
            `"float16"` (half the disk and memory; scores change by about 1e-3).
        processor (`dict`, *optional*): `fingerprint.processor_description(...)` of how the media were decoded.
    """

    def __init__(self, manifest: dict[str, Any], path: Path | None):
        self.path = path
        self.modalities: tuple[str, ...] = tuple(manifest["modalities"])
        self.dtype: StorageDtype = manifest["dtype"]
        self.model_info: dict[str, Any] = manifest["model"]
        self.processor_info: dict[str, Any] | None = manifest.get("processor")
        self.shard_size: int = manifest.get("shard_size", DEFAULT_SHARD_SIZE)
        self._shards: list[_Shard] = []
        self._ids: list[str] = []
        self._paths: list[str] = []
        self._positions: dict[str, int] = {}
        self._starts: list[int] = []
        self._failures: list[dict[str, str]] = []
        self.indexes: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def create(
        cls,
        model,
        modalities: Sequence[str] = MEDIA_MODALITIES,
        path: str | os.PathLike | None = None,
        dtype: StorageDtype = "float32",
        processor: dict[str, Any] | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
    ) -> VideoGallery:
        """An empty gallery for `model`'s features (see the class docstring for the arguments)."""
        return cls._create(model_description(model), modalities, path, dtype, processor, shard_size)

    @classmethod
    def _create(cls, model_info, modalities, path, dtype, processor, shard_size) -> VideoGallery:
        modalities = tuple(modalities)
        unknown = [m for m in modalities if m not in MEDIA_MODALITIES]
        if not modalities or unknown or len(set(modalities)) != len(modalities):
            raise ValueError(
                f"`modalities` must be a non-empty subset of {list(MEDIA_MODALITIES)}, got {modalities}."
            )
        modalities = tuple(m for m in MEDIA_MODALITIES if m in modalities)
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"`dtype` must be one of {list(STORAGE_DTYPES)}, got {dtype!r}.")
        if shard_size < 1:
            raise ValueError(f"`shard_size` must be >= 1, got {shard_size}.")
        manifest = {
            "format": GALLERY_FORMAT,
            "version": GALLERY_VERSION,
            "modalities": list(modalities),
            "dtype": dtype,
            "shard_size": shard_size,
            "model": model_info,
            "processor": processor,
            "shards": [],
        }
        gallery = cls(manifest, None)
        if path is not None:
            gallery.path = Path(path)
            if (gallery.path / MANIFEST).exists():
                raise FileExistsError(
                    f"{gallery.path} already holds a gallery; load it with VideoGallery.load."
                )
            (gallery.path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
            gallery._write_manifest()
        return gallery

    @classmethod
    def load(cls, path: str | os.PathLike, model=None, load_indexes: bool = True) -> VideoGallery:
        """
        Open a saved gallery (shards memory-mapped) with its first-stage indexes.

        Args:
            path: the gallery folder.
            model ([`ValorModel`], *optional*): when given, the gallery must have been built with it.
            load_indexes (`bool`, defaults to `True`): read `index/*.faiss` too (needs faiss).

        Raises:
            FileNotFoundError: `path` holds no `gallery.json`.
            ValueError: the folder is not a gallery of a version this code reads.
            GalleryMismatchError: `model` is not the model the gallery was built with.
        """
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"No gallery in {os.fspath(path)!r}: {MANIFEST} is missing.")
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("format") != GALLERY_FORMAT or manifest.get("version") != GALLERY_VERSION:
            raise ValueError(
                f"{path / MANIFEST} is not a {GALLERY_FORMAT} v{GALLERY_VERSION} manifest (format "
                f"{manifest.get('format')!r}, version {manifest.get('version')!r})."
            )
        gallery = cls(manifest, path)
        if model is not None:
            gallery.check_model(model)
        sidecars = {shard.name: shard for shard in read_shards(path / SHARD_DIR)}
        for name in manifest["shards"]:
            if name not in sidecars:
                raise ValueError(
                    f"Gallery {path}: shard {name} is listed in {MANIFEST} but its files are missing."
                )
            info = sidecars[name]
            gallery._append(_Shard.open(path / SHARD_DIR, name, info.ids, _paths_of(info.records, info.ids)))
        if load_indexes:
            from .index import load_indexes as read_indexes

            gallery.indexes = read_indexes(path / INDEX_DIR, gallery)
        return gallery

    # ----------------------------------------------------------------------------------------------- contents
    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        """Item ids, in row order."""
        return list(self._ids)

    @property
    def paths(self) -> list[str]:
        """The media path of each row (the id when none was given)."""
        return list(self._paths)

    @property
    def videos(self) -> list[str]:
        """The media paths (the name the pipeline's results use)."""
        return self.paths

    def row_of(self, item_id: str) -> int:
        """The row of `item_id`; `KeyError` when the gallery has no such item."""
        return self._positions[item_id]

    def failures(self) -> list[dict[str, str]]:
        """The items an encoding run could not decode (`{"id", "path", "error"}`), from every shard sidecar."""
        if self.path is None:
            return list(self._failures)
        return [failure for shard in read_shards(self.path / SHARD_DIR) for failure in shard.failures]

    def check_group(self, group: str) -> None:
        """Raise a `ValueError` when the gallery lacks a modality that retrieval group `group` compares with."""
        missing = [m for m in get_modality_group(group, "retrieval").candidates if m not in self.modalities]
        if missing:
            raise ValueError(
                f"Group {group!r} needs {' and '.join(missing)} features, which this gallery was not encoded with; "
                f"encode it with `group={group!r}` (or 'tva', which serves every group)."
            )

    def check_model(self, model) -> None:
        """Raise [`GalleryMismatchError`] unless `model` is the model the gallery was built with."""
        expected = self.model_info["fingerprint"]
        actual = model_description(model)
        if actual["fingerprint"] != expected:
            raise GalleryMismatchError(
                f"This gallery was built with another model: {self.model_info.get('name_or_path') or '(unnamed)'} "
                f"(fingerprint {expected[:12]}), but the model given is "
                f"{actual['name_or_path'] or '(unnamed)'} (fingerprint {actual['fingerprint'][:12]}). Features of "
                "different models cannot be compared: encode the gallery again with this model."
            )

    # ------------------------------------------------------------------------------------------------ reading
    def _locate(self, rows: torch.Tensor) -> torch.Tensor:
        starts = torch.tensor(self._starts, dtype=torch.long)
        return torch.searchsorted(starts, rows, right=True) - 1

    def _gather(self, modality: str, rows: torch.Tensor, fields: Sequence[str]) -> dict[str, torch.Tensor]:
        # Rows sorted, so each shard's rows are one run; each run is selected straight into its place in
        # preallocated outputs (one index_select per shard and field, no concatenation).
        order = torch.argsort(rows, stable=True)
        ordered = rows[order]
        shard_of = self._locate(ordered)
        local = ordered - torch.tensor(self._starts, dtype=torch.long)[shard_of]
        counts = torch.bincount(shard_of, minlength=len(self._shards)).tolist()
        touched = [s for s, count in enumerate(counts) if count] or [0]
        layout = self._shards[touched[0]].tensors
        keys = {name: f"{modality}.{name}" for name in fields if f"{modality}.{name}" in layout}
        parts = {
            name: layout[key].new_empty((rows.numel(), *layout[key].shape[1:])) for name, key in keys.items()
        }
        start = 0
        for s in touched:
            stop, tensors = start + counts[s], self._shards[s].tensors
            for name, key in keys.items():
                if key not in tensors:
                    raise ValueError(f"Gallery shard {self._shards[s].name} has no {key!r} (its first has).")
                torch.index_select(tensors[key], 0, local[start:stop], out=parts[name][start:stop])
            start = stop
        if not torch.equal(ordered, rows):  # back to the order asked for
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel())
            parts = {name: value[inverse] for name, value in parts.items()}
        return parts

    def _slice(
        self, modality: str, start: int, stop: int, fields: Sequence[str]
    ) -> dict[str, torch.Tensor] | None:
        s = int(self._locate(torch.tensor([start]))[0])
        if stop > self._starts[s] + len(self._shards[s].ids):
            return None  # crosses a shard: gathered instead
        offset, tensors = self._starts[s], self._shards[s].tensors
        return {
            name: tensors[f"{modality}.{name}"][start - offset : stop - offset]
            for name in fields
            if f"{modality}.{name}" in tensors
        }

    def features(
        self,
        modality: str,
        rows: torch.Tensor | Sequence[int] | slice | None = None,
        dtype: torch.dtype = torch.float32,
        fields: Sequence[str] = FEATURE_FIELDS,
    ) -> ValorFeatures:
        """
        The features of `modality` for `rows` (global row numbers in any order, a `slice`, or `None` for every
        row) as [`ValorFeatures`]: floats in `dtype`, the mask as int64. A slice inside one shard is read as a
        view of the memory-mapped file. `fields` (a subset of `FEATURE_FIELDS`) limits what is read: the
        fine-grained score needs no `pooler_output`.
        """
        if modality not in self.modalities:
            raise ValueError(f"This gallery holds no {modality} features (it has {list(self.modalities)}).")
        unknown = [name for name in fields if name not in FEATURE_FIELDS]
        if unknown:
            raise ValueError(f"Unknown feature fields {unknown}; the fields are {list(FEATURE_FIELDS)}.")
        if len(self) == 0:
            raise ValueError("The gallery is empty.")
        parts = None
        if isinstance(rows, slice) or rows is None:
            start, stop, step = (rows or slice(None)).indices(len(self))
            if step == 1 and stop > start:
                parts = self._slice(modality, start, stop, fields)
            rows = torch.arange(start, stop, step)
        if parts is None:
            rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
            if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= len(self)):
                raise IndexError(f"Row numbers must be in [0, {len(self)}), got {rows.min()}..{rows.max()}.")
            parts = self._gather(modality, rows, fields)
        return ValorFeatures(
            **{name: value.long() if name == "mask" else value.to(dtype) for name, value in parts.items()}
        )

    def blocks(self, block_size: int = 16384) -> Iterator[slice]:
        """Row slices of at most `block_size` rows that never cross a shard, in row order (for `features`)."""
        for s, shard in enumerate(self._shards):
            end = self._starts[s] + len(shard.ids)
            for start in range(self._starts[s], end, block_size):
                yield slice(start, min(start + block_size, end))

    # ------------------------------------------------------------------------------------------------ writing
    def _append(self, shard: _Shard) -> None:
        for item_id in shard.ids:
            if item_id in self._positions:
                raise ValueError(
                    f"Item {item_id!r} is already in the gallery (shard {shard.name or 'in memory'})."
                )
        self._starts.append(len(self._ids))
        for item_id in shard.ids:
            self._positions[item_id] = len(self._ids)
            self._ids.append(item_id)
        self._paths.extend(shard.paths)
        self._shards.append(shard)

    def _write_manifest(self) -> None:
        manifest = {
            "format": GALLERY_FORMAT,
            "version": GALLERY_VERSION,
            "modalities": list(self.modalities),
            "dtype": self.dtype,
            "shard_size": self.shard_size,
            "model": self.model_info,
            "processor": self.processor_info,
            "shards": [shard.name for shard in self._shards],
            "num_items": len(self),
        }
        write_atomic(self.path / MANIFEST, json.dumps(manifest, indent=1))

    def storage_tensors(
        self, ids: Sequence[str], **features: ValorFeatures | None
    ) -> dict[str, torch.Tensor]:
        """
        Check `video=` / `audio=` features of the rows `ids` against the gallery (every modality it holds, one row
        per id, the gallery's width and fields) and return them as storage tensors.
        """
        given = {m: f for m, f in features.items() if f is not None}
        if set(given) != set(self.modalities):
            raise ValueError(f"Give features for exactly {list(self.modalities)}; got {sorted(given)}.")
        tensors: dict[str, torch.Tensor] = {}
        for modality, value in given.items():
            if value.embeds is None or value.mask is None or value.pooler_output is None:
                raise ValueError(f"{modality} features need `embeds`, `mask` and `pooler_output`.")
            if (
                value.embeds.shape[0] != len(ids)
                or value.embeds.shape[-1] != self.model_info["projection_dim"]
            ):
                raise ValueError(
                    f"{modality} embeds have shape {tuple(value.embeds.shape)}; expected ({len(ids)}, positions, "
                    f"{self.model_info['projection_dim']})."
                )
            fine = self.model_info["contrastive_type"] == "fine"
            if fine != (value.weight_logits is not None):
                raise ValueError(
                    f"{modality} features {'lack' if fine else 'have'} `weight_logits` for a "
                    f"{self.model_info['contrastive_type']} model."
                )
            tensors.update(features_to_tensors(modality, value, self.dtype))
        if self._shards:
            reference = self._shards[0].tensors
            for key, value in tensors.items():
                if tuple(value.shape[1:]) != tuple(reference[key].shape[1:]):
                    raise ValueError(
                        f"{key} has shape {tuple(value.shape[1:])} per item, the gallery "
                        f"{tuple(reference[key].shape[1:])} (frames and clips per item must match)."
                    )
        return tensors

    def add(
        self,
        ids: Sequence[str],
        video: ValorFeatures | None = None,
        audio: ValorFeatures | None = None,
        paths: Sequence[str] | None = None,
    ) -> None:
        """
        Append items: their ids (unique, not yet in the gallery), their features for every modality the gallery
        holds, and optionally their paths. A saved gallery writes one new shard and updates `gallery.json`; every
        first-stage index is extended with the new rows (and saved).
        """
        ids = [str(i) for i in ids]
        if not ids:
            raise ValueError("`ids` is empty: give at least one item to add.")
        paths = list(ids) if paths is None else [os.fspath(p) for p in paths]
        if len(paths) != len(ids) or len(set(ids)) != len(ids):
            raise ValueError(
                f"Give one path per id and unique ids; got {len(ids)} ids ({len(set(ids))} distinct) "
                f"and {len(paths)} paths."
            )
        present = [i for i in ids if i in self._positions]
        if present:
            raise ValueError(
                f"Items already in the gallery: {present[:5]}{' ...' if len(present) > 5 else ''}."
            )
        self.add_storage(ids, paths, self.storage_tensors(ids, video=video, audio=audio))

    def add_storage(
        self,
        ids: list[str],
        paths: list[str],
        tensors: dict[str, torch.Tensor],
        failures: Sequence[dict[str, str]] = (),
    ) -> None:
        """Append rows given as storage tensors (`features_to_tensors` output, as the encoder produces them) and
        record the items that failed; `add` checks its features and calls this."""
        if self.path is None:
            if ids:
                self._append(_Shard(ids, paths, tensors, None))
            self._failures.extend(failures)
        else:
            writer = ShardedWriter(self.path / SHARD_DIR, rank=0, shard_size=len(ids) + 1)
            writer.add(ids, tensors, [{"path": p} for p in paths], failures)
            name = writer.close()
            if ids:
                self._append(_Shard.open(self.path / SHARD_DIR, name, ids, paths))
                self._write_manifest()
        if ids:
            self._extend_indexes()

    def refresh(self) -> list[str]:
        """
        Commit the complete shards that encoding runs (of any process rank) wrote into the folder since the last
        commit, in name order, after the committed ones; extend and save the indexes. Returns their names.

        Raises:
            ValueError: an in-memory gallery, or a new shard repeats an item already in the gallery.
        """
        if self.path is None:
            raise ValueError("An in-memory gallery has no folder to refresh from.")
        committed = {shard.name for shard in self._shards}
        new = [s for s in read_shards(self.path / SHARD_DIR) if s.name not in committed and s.ids]
        for info in new:
            self._append(
                _Shard.open(self.path / SHARD_DIR, info.name, info.ids, _paths_of(info.records, info.ids))
            )
        if new:
            self._write_manifest()
            self._extend_indexes()
        return [info.name for info in new]

    def save(
        self, path: str | os.PathLike, dtype: StorageDtype | None = None, shard_size: int | None = None
    ) -> None:
        """
        Write the gallery (and its indexes) to a new folder, in shards of `shard_size` rows (default: the gallery's),
        its features in `dtype` (default: the gallery's storage type). The gallery itself is unchanged; open the
        copy with `VideoGallery.load(path)`.
        """
        dtype = dtype or self.dtype
        target = VideoGallery._create(
            self.model_info, self.modalities, path, dtype, self.processor_info, shard_size or self.shard_size
        )
        writer = ShardedWriter(target.path / SHARD_DIR, rank=0, shard_size=target.shard_size)
        for start in range(0, len(self), target.shard_size):
            rows = slice(start, min(start + target.shard_size, len(self)))
            tensors = {}
            for modality in self.modalities:
                feats = self.features(modality, rows, dtype=STORAGE_DTYPES[self.dtype])
                tensors.update(features_to_tensors(modality, feats, dtype))
            writer.add(self._ids[rows], tensors, [{"path": p} for p in self._paths[rows]])
        writer.close()
        target.refresh()
        for index in self.indexes.values():
            index.save(target.path / INDEX_DIR)

    def _extend_indexes(self) -> None:
        for index in self.indexes.values():
            index.extend(self)
            if self.path is not None:
                index.save(self.path / INDEX_DIR)

    def build_index(self, group: str, **index_kwargs) -> Any:
        """
        Build (and, for a saved gallery, save) the first-stage index of retrieval group `group` over every row;
        `index_kwargs` go to [`GalleryIndex.build`] (`index_type`, ...). Returns the index.
        """
        from .index import GalleryIndex

        self.check_group(group)
        index = GalleryIndex.build(self, group, **index_kwargs)
        self.indexes[group] = index
        if self.path is not None:
            index.save(self.path / INDEX_DIR)
        return index
