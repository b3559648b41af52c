"""Tests of `inference.writer`: rank-named shards, atomic writes, what a resumed run skips."""

import json

import pytest
import torch
from safetensors.torch import load_file

from transformers_valor.inference import ShardedWriter, read_shards, shard_name, write_atomic


def rows(start, count):
    return [f"id{i}" for i in range(start, start + count)], {
        "x": torch.arange(start, start + count).float()[:, None]
    }


def test_shards_are_named_by_rank_and_written_at_shard_size(tmp_path):
    writer = ShardedWriter(tmp_path, rank=3, shard_size=4)
    ids, tensors = rows(0, 3)
    assert writer.add(ids, tensors, [{"path": f"/v/{i}"} for i in ids]) is None  # 3 < 4: buffered
    ids, tensors = rows(3, 2)
    assert writer.add(ids, tensors, None, [{"id": "bad", "path": "/v/bad", "error": "boom"}]) == shard_name(
        "shard", 3, 0
    )
    assert writer.close() is None
    (shard,) = read_shards(tmp_path)
    assert shard.name == "shard-r00003-000000" and shard.ids == [f"id{i}" for i in range(5)]
    assert shard.records[0] == {"path": "/v/id0"} and shard.records[4] == {}
    assert shard.failures == [{"id": "bad", "path": "/v/bad", "error": "boom"}]
    assert torch.equal(load_file(shard.tensor_path)["x"][:, 0], torch.arange(5).float())
    assert not list(tmp_path.glob(".*partial"))


def test_done_ids_cover_every_rank_and_the_failures(tmp_path):
    for rank in (0, 1):
        writer = ShardedWriter(tmp_path, rank=rank, shard_size=2)
        ids, tensors = rows(10 * rank, 3)
        writer.add(ids, tensors, failures=[{"id": f"f{rank}", "path": "p", "error": "e"}])
        writer.close()
    assert ShardedWriter(tmp_path, rank=5).done_ids() == {
        "id0",
        "id1",
        "id2",
        "id10",
        "id11",
        "id12",
        "f0",
        "f1",
    }
    # A batch is never split: 3 rows reach shard_size 2 and make one shard.
    assert [s.name for s in read_shards(tmp_path)] == ["shard-r00000-000000", "shard-r00001-000000"]
    assert ShardedWriter(tmp_path, rank=0)._next_index == 1  # a new run continues the numbering


def test_an_unfinished_shard_is_ignored_and_overwritten(tmp_path):
    writer = ShardedWriter(tmp_path, shard_size=10)
    ids, tensors = rows(0, 2)
    writer.add(ids, tensors)
    writer.close()
    (tmp_path / "shard-r00000-000001.safetensors").write_bytes(b"torn")  # tensors written, sidecar not
    assert [s.name for s in read_shards(tmp_path)] == ["shard-r00000-000000"]
    again = ShardedWriter(tmp_path, shard_size=10)
    ids, tensors = rows(2, 1)
    again.add(ids, tensors)
    assert again.close() == "shard-r00000-000001"
    assert load_file(tmp_path / "shard-r00000-000001.safetensors")["x"].tolist() == [[2.0]]


def test_records_only_and_failures_only_shards(tmp_path):
    writer = ShardedWriter(tmp_path, prefix="captions")
    writer.add(["a", "b"], records=[{"caption": "x"}, {"caption": "y"}])
    writer.close()
    writer.add([], failures=[{"id": "c", "path": "c.mp4", "error": "e"}])
    writer.close()
    first, second = read_shards(tmp_path, prefix="captions")
    assert not first.has_tensors and first.records == [{"caption": "x"}, {"caption": "y"}]
    assert second.ids == [] and second.failures[0]["id"] == "c"
    assert not list(tmp_path.glob("*.safetensors"))


def test_bad_input_is_named(tmp_path):
    writer = ShardedWriter(tmp_path)
    with pytest.raises(ValueError, match="'x' has 3 rows for 2 ids"):
        writer.add(["a", "b"], {"x": torch.zeros(3)})
    with pytest.raises(ValueError, match="1 records for 2 ids"):
        writer.add(["a", "b"], records=[{}])
    writer.add(["a"], {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="differ"):
        writer.add(["b"], {"y": torch.zeros(1)})
    with pytest.raises(ValueError, match="rank"):
        ShardedWriter(tmp_path, rank=-1)
    (tmp_path / "shard-r00000-000009.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a shard sidecar"):
        read_shards(tmp_path)


def test_write_atomic_replaces_whole_files(tmp_path):
    target = tmp_path / "f.json"
    write_atomic(target, "one")
    write_atomic(target, b"two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
