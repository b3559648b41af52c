"""Media items read from WebDataset shards (`inference.shard_media`): listing, decoding from the byte offset,
damaged shards."""

import dataclasses
import shutil

import pytest
import torch

from transformers_valor import ValorProcessor
from transformers_valor.data.shards import read_shard_index
from transformers_valor.inference import MediaDataset, MediaItem
from transformers_valor.inference.shard_media import ShardMediaDataset, list_shard_media


@pytest.fixture(scope="module")
def processor(tiny_processor_dir):
    return ValorProcessor.from_pretrained(tiny_processor_dir)


def test_items_are_the_packed_samples_in_shard_order(tiny_shards):
    items, members, damaged = list_shard_media(tiny_shards)
    index = read_shard_index(tiny_shards)
    assert [item.id for item in items] == [f"train_{i:05d}" for i in range(8)] and not damaged
    assert items[0].path == f"{index.paths()[0]}#000000000" and items[2].path.startswith(index.paths()[1])
    assert {m.extension for m in members.values()} == {"mp4"} and all(m.size > 0 for m in members.values())


def test_an_item_decodes_as_its_original_file(tiny_shards, tiny_corpus, processor):
    items, members, _ = list_shard_media(tiny_shards)
    packed = ShardMediaDataset(items[:2], members, processor, "both")[1]
    original = MediaDataset(
        [MediaItem("x", str(tiny_corpus / "train" / "train_00001.mp4"))], processor, "both"
    )[0]
    assert packed["error"] is None and packed["id"] == "train_00001"
    assert packed["inputs"].keys() == original["inputs"].keys()
    for key, value in original["inputs"].items():
        assert torch.equal(packed["inputs"][key], value), key


def test_a_truncated_shard_keeps_what_was_read_and_reports_the_rest(tiny_shards, processor, tmp_path):
    target = tmp_path / "shards"
    shutil.copytree(tiny_shards, target)
    index = read_shard_index(target)
    last = target / index.shards[-1]
    items, members, _ = list_shard_media(target)
    cut = members[items[-1].id]
    last.write_bytes(last.read_bytes()[: cut.offset + 10])  # inside the last sample's video
    items, members, damaged = list_shard_media(target)
    assert [d["path"] for d in damaged] == [str(last)] and "unreadable shard" in damaged[0]["error"]
    # tarfile stops at the member whose data is cut: the 7 samples before it are listed.
    assert [item.id for item in items] == [f"train_{i:05d}" for i in range(7)]
    # A member whose bytes end early (a shard cut after it was listed) is a failure of that item only.
    members = {**members, items[6].id: dataclasses.replace(members[items[6].id], size=cut.size + 10**6)}
    dataset = ShardMediaDataset(items, members, processor, "video")
    assert "OSError" in dataset[6]["error"] and "ends" in dataset[6]["error"] and dataset[5]["error"] is None


def test_an_item_without_a_member_is_refused(tiny_shards, processor):
    items, members, _ = list_shard_media(tiny_shards)
    with pytest.raises(ValueError, match="No shard member"):
        ShardMediaDataset([MediaItem("other", "x")], members, processor)
