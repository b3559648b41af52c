"""Pack a video-text dataset into WebDataset tar shards, and read the index of packed shards.

    python -m transformers_valor.data.shards --path /data/valor1m --format valor_json \
        --annotation_file desc_train.json --video_dir videos --output /data/valor1m_shards --samples_per_shard 1000

Any layout `data.datasets.load_video_text_dataset` reads (`metadata` folders, VALOR-1M/VALOR-32K/WebVid-style
`valor_json` + a video folder, the benchmark layouts, still images for CC3M-style corpora) is written as
`<output>/<name>-<shard:06d>.tar` shards in the WebDataset convention: every sample is two members sharing a key,
`<key>.<ext>` (the media file's bytes, `ext` its extension: `mp4`, `mkv`, `jpg`, ...) and `<key>.json`
(`{"sample_id", "captions", "media": ext, "file_name"}`, plus `"question"` for question answering data). Keys are
the sample's position (`000000042`): WebDataset splits a member name at its first dot, so sample ids (which may
hold dots or slashes) live in the JSON. `<output>/shards.json` (the index, written last) lists the shards with
their sample counts and the samples that were not packed (a missing or unreadable file) with the reason; a run
refuses an output folder that already holds shards. Each shard is written under a temporary name and renamed when
complete.

Training streams the shards (`format: webdataset`, see `data.streaming`): the index gives the sizes of the
datasets for the epoch length without reading the shards.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .datasets import DatasetConfig, load_video_text_dataset

INDEX_NAME = "shards.json"
INDEX_FORMAT = "transformers_valor.webdataset"
INDEX_VERSION = 1


class ShardIndexError(ValueError):
    """A shard folder has no index, or an index that does not describe its shards; the message names the file."""


@dataclass
class ShardIndex:
    """
    What `shards.json` says about a packed dataset.

    Args:
        root (`Path`): the folder of the shards.
        shards (`list[str]`): shard file names, in packing order.
        counts (`list[int]`): samples in each shard.
        skipped (`list[dict]`): `{"sample_id", "path", "error"}` of the samples that were not packed.
        name (`str`): the dataset's name at packing time.
    """

    root: Path
    shards: list[str]
    counts: list[int]
    skipped: list[dict[str, str]] = field(default_factory=list)
    name: str = ""

    @property
    def num_samples(self) -> int:
        """Samples in all shards."""
        return sum(self.counts)

    def paths(self) -> list[str]:
        """The shard files' paths."""
        return [str(self.root / name) for name in self.shards]


def read_shard_index(path: str | os.PathLike) -> ShardIndex:
    """
    The index of the shard folder `path` (or of `path/<split>` when that is where `shards.json` is).

    Raises:
        ShardIndexError: no `shards.json`, an index of another format, or a listed shard that is missing.
    """
    root = Path(path).expanduser()
    index_file = root / INDEX_NAME
    if not index_file.is_file():
        raise ShardIndexError(
            f"{root} has no {INDEX_NAME}: pack the dataset with `python -m transformers_valor.data.shards`."
        )
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        valid = index["format"] == INDEX_FORMAT and index["version"] == INDEX_VERSION
        shards = [str(s["file"]) for s in index["shards"]]
        counts = [int(s["samples"]) for s in index["shards"]]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ShardIndexError(f"{index_file} is not a shard index ({err}).") from err
    if not valid:
        raise ShardIndexError(f"{index_file}: unknown format {index['format']!r} v{index['version']}.")
    missing = [name for name in shards if not (root / name).is_file()]
    if missing:
        raise ShardIndexError(f"{index_file} lists shards that are missing: {missing[:5]}.")
    return ShardIndex(root, shards, counts, list(index.get("skipped", [])), str(index.get("name", "")))


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def _sample_members(position: int, row: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The two tar members of one sample; raises OSError when the media file cannot be read."""
    path = Path(row["video_path"])
    ext = path.suffix.lower().lstrip(".") or "bin"
    media = path.read_bytes()
    if not media:
        raise OSError(f"{path} is empty")
    meta = {
        "sample_id": row["sample_id"],
        "captions": list(row["captions"]),
        "media": ext,
        "file_name": path.name,
    }
    if row.get("question") is not None:
        meta["question"] = row["question"]
    key = f"{position:09d}"
    return [(f"{key}.{ext}", media), (f"{key}.json", json.dumps(meta, ensure_ascii=False).encode())]


def _write_shard(path: Path, samples: Sequence[list[tuple[str, bytes]]]) -> None:
    """One tar shard, written under a temporary name and renamed when complete."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for members in samples:
                for name, payload in members:
                    _add_member(tar, name, payload)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pack_rows(
    rows: Iterable[dict[str, Any]],
    output: str | os.PathLike,
    name: str,
    samples_per_shard: int = 1000,
    total: int | None = None,
    progress: bool = True,
) -> ShardIndex:
    """
    Write `rows` (`sample_id`, `video_path`, `captions`, optional `question`) as tar shards of `samples_per_shard`
    samples into `output`, then the index. A row whose file cannot be read is not packed: it is listed in the
    index's `skipped` with the error.

    Raises:
        FileExistsError: `output` already holds shards or an index.
    """
    if samples_per_shard < 1:
        raise ValueError(f"`samples_per_shard` must be >= 1, got {samples_per_shard}.")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if (output / INDEX_NAME).exists() or any(output.glob("*.tar")):
        raise FileExistsError(f"{output} already holds shards; pack into an empty folder.")
    shards, counts, skipped, pending = [], [], [], []

    def flush() -> None:
        file_name = f"{name}-{len(shards):06d}.tar"
        _write_shard(output / file_name, pending)
        shards.append(file_name)
        counts.append(len(pending))
        pending.clear()

    for position, row in enumerate(tqdm(rows, total=total, desc=f"packing {name}", disable=not progress)):
        try:
            pending.append(_sample_members(position, row))
        except OSError as err:
            skipped.append(
                {"sample_id": str(row["sample_id"]), "path": str(row["video_path"]), "error": str(err)}
            )
            continue
        if len(pending) == samples_per_shard:
            flush()
    if pending:
        flush()
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "name": name,
        "samples": sum(counts),
        "shards": [{"file": f, "samples": n} for f, n in zip(shards, counts)],
        "skipped": skipped,
    }
    tmp = output / f".{INDEX_NAME}.partial"
    tmp.write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, output / INDEX_NAME)
    return ShardIndex(output, shards, counts, skipped, name)


def pack_dataset(
    config: DatasetConfig, output: str | os.PathLike, samples_per_shard: int = 1000, progress: bool = True
) -> ShardIndex:
    """Pack the dataset `config` describes (any annotation format) into shards (see [`pack_rows`])."""
    table = load_video_text_dataset(config)
    return pack_rows(iter(table), output, config.name, samples_per_shard, len(table), progress)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line arguments (the `DatasetConfig` fields that locate a dataset, plus the output)."""
    parser = argparse.ArgumentParser(description="Pack a video-text dataset into WebDataset tar shards.")
    parser.add_argument("--path", required=True, help="The dataset folder.")
    parser.add_argument("--output", required=True, help="An empty folder for the shards and shards.json.")
    parser.add_argument("--name", default=None, help="Shard name prefix (default: the folder's name).")
    parser.add_argument("--format", default="metadata", help="metadata, valor_json, msrvtt, vatex, ...")
    parser.add_argument("--samples_per_shard", type=int, default=1000)
    for option in ("split", "annotation_file", "id_list", "video_dir", "caption_column", "id_column"):
        parser.add_argument(f"--{option}", default=None)
    parser.add_argument("--video_column", default="file_name")
    parser.add_argument("--question_column", default=None)
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument("--no_progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> ShardIndex:
    """Run the command line; prints what was packed and skipped."""
    args = parse_args(argv)
    fields = {k: getattr(args, k) for k in ("annotation_file", "id_list", "video_dir", "caption_column")}
    fields.update(
        id_column=args.id_column, question_column=args.question_column, max_samples=args.max_samples
    )
    config = DatasetConfig(
        name=args.name or Path(args.path).expanduser().resolve().name,
        path=args.path,
        format=args.format,
        split=args.split or "train",
        video_column=args.video_column,
        **fields,
    )
    index = pack_dataset(config, args.output, args.samples_per_shard, progress=not args.no_progress)
    print(
        f"{args.output}: {index.num_samples} samples in {len(index.shards)} shards; "
        f"{len(index.skipped)} skipped (listed in {INDEX_NAME})"
    )
    for entry in index.skipped[:10]:
        print(f"  skipped {entry['sample_id']} ({entry['path']}): {entry['error']}")
    return index


if __name__ == "__main__":
    main()
