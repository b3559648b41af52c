"""Tests of `inference.runner.run_inference`: batching, failures, resume, workers and the progress bar."""

import pytest
import torch
from transformers.utils import logging

from transformers_valor.inference import (
    MediaDataset,
    MediaItem,
    MemoryWriter,
    ShardedWriter,
    read_shards,
    run_inference,
)


class NumberDataset(MediaDataset):
    """Items `0..n-1` whose "decoding" returns the number; ids listed in `broken` fail like a damaged file."""

    def __init__(self, count, broken=()):
        super().__init__([MediaItem(f"n{i}", f"/media/{i}.mp4") for i in range(count)], processor=None)
        self.broken = set(broken)

    def decode(self, item):
        if item.id in self.broken:
            raise ValueError(f"cannot decode {item.path}")
        return {"value": torch.tensor([float(item.id[1:])])}


def double(batch):
    return {"double": 2 * batch["inputs"]["value"]}, [{"path": p} for p in batch["paths"]]


def test_every_item_is_processed_once_in_order():
    writer = MemoryWriter()
    summary = run_inference(NumberDataset(7, broken={"n3"}), double, writer, batch_size=3, progress=False)
    assert writer.ids == ["n0", "n1", "n2", "n4", "n5", "n6"]
    assert writer.tensors()["double"][:, 0].tolist() == [0, 2, 4, 8, 10, 12]
    assert writer.records[3] == {"path": "/media/4.mp4"}
    assert writer.failures == [
        {"id": "n3", "path": "/media/3.mp4", "error": "ValueError: cannot decode /media/3.mp4"}
    ]
    assert (summary.total, summary.skipped, summary.processed, len(summary.failures)) == (7, 0, 7, 1)


def test_a_resumed_run_skips_what_was_written(tmp_path):
    run_inference(
        NumberDataset(4, broken={"n1"}), double, ShardedWriter(tmp_path, shard_size=2), 2, progress=False
    )
    seen = []

    def spy(batch):
        seen.extend(batch["ids"])
        return double(batch)

    summary = run_inference(NumberDataset(9), spy, ShardedWriter(tmp_path, shard_size=2), 2, progress=False)
    assert seen == ["n4", "n5", "n6", "n7", "n8"]  # n1 failed before: recorded, not retried
    assert (summary.skipped, summary.processed) == (4, 5)
    ids = [i for shard in read_shards(tmp_path) for i in shard.ids]
    assert ids == ["n0", "n2", "n3", "n4", "n5", "n6", "n7", "n8"]
    with pytest.raises(ValueError, match="resume=True"):
        run_inference(NumberDataset(9), double, ShardedWriter(tmp_path), resume=False, progress=False)


def test_an_interruption_keeps_the_finished_batches(tmp_path):
    def crash(batch):
        if "n4" in batch["ids"]:
            raise KeyboardInterrupt
        return double(batch)

    with pytest.raises(KeyboardInterrupt):
        run_inference(NumberDataset(6), crash, ShardedWriter(tmp_path, shard_size=100), 2, progress=False)
    assert ShardedWriter(tmp_path).done_ids() == {"n0", "n1", "n2", "n3"}


def test_decoding_in_worker_processes():
    writer = MemoryWriter()
    run_inference(
        NumberDataset(6, broken={"n0"}), double, writer, batch_size=2, num_workers=2, progress=False
    )
    assert writer.ids == ["n1", "n2", "n3", "n4", "n5"] and writer.failures[0]["id"] == "n0"


def test_progress_bar_follows_transformers_setting(capsys):
    run_inference(NumberDataset(3), double, MemoryWriter(), desc="numbers")
    assert "numbers" in capsys.readouterr().err
    logging.disable_progress_bar()
    try:
        run_inference(NumberDataset(3), double, MemoryWriter(), desc="numbers")
    finally:
        logging.enable_progress_bar()
    assert "numbers" not in capsys.readouterr().err
