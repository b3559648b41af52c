"""Packing datasets into WebDataset tar shards (`transformers_valor.data.shards`) and reading their index."""

import json
import tarfile

import pytest

from transformers_valor.data.datasets import DatasetConfig
from transformers_valor.data.shards import (
    INDEX_NAME,
    ShardIndexError,
    main,
    pack_dataset,
    pack_rows,
    read_shard_index,
)


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_cli_packs_a_metadata_folder(tiny_corpus, tmp_path):
    out = tmp_path / "shards"
    args = ["--path", str(tiny_corpus), "--output", str(out), "--name", "tiny", "--samples_per_shard", "3"]
    index = main([*args, "--no_progress"])
    assert index.shards == ["tiny-000000.tar", "tiny-000001.tar", "tiny-000002.tar"]
    assert index.counts == [3, 3, 2] and index.num_samples == 8 and index.skipped == []
    assert read_shard_index(out).counts == [3, 3, 2]
    members = _members(out / index.shards[0])
    assert sorted(members) == [f"00000000{i}.{ext}" for i in range(3) for ext in ("json", "mp4")]
    meta = json.loads(members["000000000.json"])
    source = [
        json.loads(line) for line in (tiny_corpus / "train" / "metadata.jsonl").read_text().splitlines()
    ][0]
    assert meta == {
        "sample_id": "train_00000",
        "captions": source["captions"],
        "media": "mp4",
        "file_name": "train_00000.mp4",
    }
    assert members["000000000.mp4"] == (tiny_corpus / "train" / "train_00000.mp4").read_bytes()
    assert not list(out.glob(".*partial"))


def test_valor_json_with_a_missing_video_is_packed_without_it(tiny_corpus, tmp_path):
    """VALOR-1M / WebVid-style: a JSON of `{video_id, desc}` and a video folder; the missing file is listed."""
    entries = [
        {"video_id": "train_00001", "desc": "a clip"},
        {"video_id": "gone", "desc": ["lost", "clip"]},
        {"video_id": "train_00002", "desc": ["two", "captions"]},
    ]
    (tmp_path / "desc.json").write_text(json.dumps(entries))
    config = DatasetConfig(
        name="v1m",
        path=str(tmp_path),
        format="valor_json",
        annotation_file="desc.json",
        video_dir=str(tiny_corpus / "train"),
    )
    index = pack_dataset(config, tmp_path / "out", samples_per_shard=10, progress=False)
    assert index.counts == [2] and [s["sample_id"] for s in index.skipped] == ["gone"]
    assert "No such file" in index.skipped[0]["error"]
    members = _members(tmp_path / "out" / "v1m-000000.tar")
    assert json.loads(members["000000002.json"])["captions"] == ["two", "captions"]  # keys keep row positions
    assert json.loads((tmp_path / "out" / INDEX_NAME).read_text())["skipped"][0]["path"].endswith("gone.mp4")


def test_images_keep_their_extension_and_questions_are_kept(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"\xff\xd8 not really a jpeg")
    rows = [{"sample_id": "a.1/x", "video_path": str(image), "captions": ["yes"], "question": "is it?"}]
    index = pack_rows(rows, tmp_path / "out", "cc", progress=False)
    members = _members(tmp_path / "out" / index.shards[0])
    assert sorted(members) == ["000000000.jpg", "000000000.json"]
    assert json.loads(members["000000000.json"])["question"] == "is it?"
    assert json.loads(members["000000000.json"])["sample_id"] == "a.1/x"  # ids with dots stay in the JSON


def test_used_output_and_damaged_index_are_refused(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    rows = [{"sample_id": "v", "video_path": str(video), "captions": ["c"]}]
    pack_rows(rows, tmp_path / "out", "d", progress=False)
    with pytest.raises(FileExistsError, match="already holds shards"):
        pack_rows(rows, tmp_path / "out", "d", progress=False)
    with pytest.raises(ShardIndexError, match="has no shards.json"):
        read_shard_index(tmp_path)
    (tmp_path / "out" / "d-000000.tar").unlink()
    with pytest.raises(ShardIndexError, match=r"lists shards that are missing: \['d-000000.tar'\]"):
        read_shard_index(tmp_path / "out")
    (tmp_path / "out" / INDEX_NAME).write_text("{not json")
    with pytest.raises(ShardIndexError, match="is not a shard index"):
        read_shard_index(tmp_path / "out")
