"""Batches streamed from WebDataset shards (`transformers_valor.data.streaming`): slots, window shuffle, mixing,
exact resume across DataLoader workers, damaged samples and shards."""

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from transformers_valor import ValorProcessor
from transformers_valor.data.collator import ValorTrainingCollator
from transformers_valor.data.datasets import DatasetConfig, dataset_choices
from transformers_valor.data.masking import CaptionMaskingConfig
from transformers_valor.data.shards import read_shard_index
from transformers_valor.data.streaming import (
    ShardStream,
    StreamingMixture,
    StreamPosition,
    streaming_collate,
    worker_states_from_dict,
)


def _ids(stream, count):
    reader = iter(stream)
    return [next(reader)["json"]["sample_id"] for _ in range(count)]


def test_slots_read_disjoint_shards_and_every_sample_once_per_pass(tiny_shards):
    index = read_shard_index(tiny_shards)
    per_slot = [_ids(ShardStream(index, 0, slot, 2, seed=3, window=3), 4) for slot in range(2)]
    assert sorted(per_slot[0] + per_slot[1]) == [f"train_0000{i}" for i in range(8)]
    # A window shuffle: the order is not the shards' order, and the same seed gives the same order.
    order = [
        s for i in ShardStream(index, 0, 0, 1, seed=3, window=8).shard_order(0) for s in (2 * i, 2 * i + 1)
    ]
    one_slot = _ids(ShardStream(index, 0, 0, 1, seed=3, window=8), 8)
    assert one_slot != [f"train_0000{i}" for i in order] and sorted(one_slot) == sorted(
        per_slot[0] + per_slot[1]
    )
    assert one_slot == _ids(ShardStream(index, 0, 0, 1, seed=3, window=8), 8)
    # The next pass reads the shards in another order.
    assert _ids(ShardStream(index, 0, 0, 1, seed=3, window=8), 16)[8:] != one_slot


def test_a_stream_resumes_exactly_inside_a_window(tiny_shards):
    index = read_shard_index(tiny_shards)
    stream = ShardStream(index, 0, 0, 1, seed=0, window=3)
    reader = iter(stream)
    taken = [next(reader)["json"]["sample_id"] for _ in range(5)]
    position = stream.position.state_dict()
    assert position["used"] == 2 and position["window"] == 1  # inside the second window
    rest = [next(reader)["json"]["sample_id"] for _ in range(7)]
    resumed = ShardStream(index, 0, 0, 1, seed=0, window=3)
    resumed.position = StreamPosition(**position)
    assert _ids(resumed, 7) == rest and len(taken + rest) == 12


def test_too_few_shards_for_the_streams_is_refused(tiny_shards):
    with pytest.raises(ValueError, match=r"has 4 shard\(s\) but the run reads with 8 streams"):
        ShardStream(read_shard_index(tiny_shards), 0, 0, 8, seed=0, window=2)


def _mixture(tiny_shards, tmp_path, processor_dir, num_workers, **kwargs):
    """Two datasets over the same shards (ratios 1:3), batches of 2, collated as in training."""
    configs = [DatasetConfig(name="a", path=str(tiny_shards), format="webdataset", num_frames=2)]
    configs.append(
        DatasetConfig(name="b", path=str(tiny_shards), format="webdataset", num_frames=2, ratio=3.0)
    )
    index = read_shard_index(tiny_shards)
    mixture = StreamingMixture(
        [index, index], configs, 2, batches_per_epoch=4, num_workers=num_workers, shuffle_buffer=3, **kwargs
    )
    processor = ValorProcessor.from_pretrained(processor_dir)
    masking = CaptionMaskingConfig(mask_token_id=4, pad_token_id=0, random_token_range=(5, 200))
    collator = ValorTrainingCollator(processor, configs, masking, max_text_length=8)
    loader = DataLoader(
        mixture, batch_size=None, collate_fn=streaming_collate(collator), num_workers=num_workers
    )
    return mixture, loader


def _take(loader, count):
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def test_mixing_and_exact_resume_across_workers(tiny_shards, tiny_processor_dir, tmp_path):
    mixture, loader = _mixture(tiny_shards, tmp_path, tiny_processor_dir, num_workers=2)
    full = _take(loader, 7)
    expected = (
        dataset_choices(0, 0, 4, np.array([0.25, 0.75])).tolist()
        + dataset_choices(0, 1, 4, np.array([0.25, 0.75])).tolist()
    )
    assert [b["dataset"] for b in full] == [["a", "b"][d] for d in expected[:7]]
    assert [b["stream_state"]["worker"] for b in full] == [0, 1, 0, 1, 0, 1, 0]
    assert all(b["pixel_values_videos"].shape == (2, 2, 3, 32, 32) and not b["failures"] for b in full)
    # Stop after 3 batches (what a checkpoint would record), resume in a new DataLoader.
    states = {}
    for batch in full[:3]:
        state = batch["stream_state"]
        states[state["worker"]] = {"next_step": state["next_step"], "streams": state["streams"]}
    saved = json.loads(json.dumps({"num_workers": 2, "workers": {str(w): s for w, s in states.items()}}))
    mixture2, loader2 = _mixture(tiny_shards, tmp_path, tiny_processor_dir, num_workers=2)
    mixture2.resume(3, worker_states_from_dict(saved, 2))
    resumed = _take(loader2, 4)
    assert [b["sample_ids"] for b in resumed] == [b["sample_ids"] for b in full[3:]]
    assert all((a["input_ids"] == b["input_ids"]).all() for a, b in zip(resumed, full[3:]))
    with pytest.raises(ValueError, match="read by 2 worker"):
        worker_states_from_dict(saved, 1)


def test_processes_get_disjoint_samples(tiny_shards, tiny_processor_dir, tmp_path):
    ranks = [
        _mixture(tiny_shards, tmp_path, tiny_processor_dir, 0, rank=r, num_processes=2)[1] for r in (0, 1)
    ]
    first = [_take(loader, 2) for loader in ranks]
    assert [b["dataset"] for b in first[0]] == [
        b["dataset"] for b in first[1]
    ]  # the same dataset at each step
    ids = [set(i for b in batches for i in b["sample_ids"]) for batches in first]
    assert not ids[0] & ids[1]


def _corrupt_copy(tiny_shards, tmp_path):
    """The shards with shard 0's first video overwritten by junk and shard 1 truncated after its first sample."""
    target = tmp_path / "corrupt"
    shutil.copytree(tiny_shards, target)
    index = read_shard_index(target)
    with tarfile.open(target / index.shards[0]) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(target / index.shards[0], "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, payload in members:
            payload = b"junk" if member.name == "000000000.mp4" else payload
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    data = (target / index.shards[1]).read_bytes()
    with tarfile.open(target / index.shards[1]) as tar:
        second = tar.getmembers()[2]  # the second sample's first member
    (target / index.shards[1]).write_bytes(data[: second.offset_data + 10])
    return target


def test_damaged_samples_and_a_truncated_shard_are_counted_as_failures(
    tiny_shards, tiny_processor_dir, tmp_path
):
    target = _corrupt_copy(tiny_shards, tmp_path)
    index = read_shard_index(target)
    configs = [DatasetConfig(name="c", path=str(target), format="webdataset", num_frames=2)]
    mixture = StreamingMixture([index], configs, 8, batches_per_epoch=1, shuffle_buffer=8)
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    masking = CaptionMaskingConfig(mask_token_id=4, pad_token_id=0, random_token_range=(5, 200))
    collate = streaming_collate(ValorTrainingCollator(processor, configs, masking, max_text_length=8))
    stream = iter(mixture)  # kept alive: its temporary media files go with it
    batch = collate(next(stream))
    assert batch["num_items"] == 8 and len(batch["sample_ids"]) + len(batch["failures"]) == 8
    failures = {f.sample_id: f for f in batch["failures"]}
    assert "train_00000" in failures and failures["train_00000"].path.endswith(f"{index.shards[0]}#000000000")
    assert (
        failures["train_00000"].error.startswith("MediaBatchError")
        and "Could not decode" in failures["train_00000"].error
    )
    # `datasets` reads a sample's members before yielding it: the truncation costs both samples of the shard,
    # reported by position from the index's count.
    lost = sorted(f.path for f in batch["failures"] if "unreadable shard: ReadError" in f.error)
    assert lost == [f"{target / index.shards[1]}##0", f"{target / index.shards[1]}##1"]
    assert len(batch["sample_ids"]) == 5


def test_two_processes_stream_and_resume_exactly(ddp_runs):
    """`examples/pretrain.py` on 2 gloo processes streaming the shards (tests/distributed_training_worker.py step
    6): the run stopped after 2 steps and resumed from its checkpoint (each process's stream positions saved with
    it) logs the same losses and ends with the same weights as the uninterrupted run."""
    streamed, resumed = ddp_runs / "stream", ddp_runs / "stream_resumed"
    rows = [json.loads(line) for line in (streamed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    assert (resumed / "metrics.jsonl").read_text() == (streamed / "metrics.jsonl").read_text()
    checkpoint = resumed / "checkpoints" / "checkpoint-2"
    for rank in (0, 1):
        position = json.loads((checkpoint / f"data_state_{rank}.json").read_text())
        assert position, rank  # the stream positions the resumed run started from
    weights = load_file(streamed / "final" / "model.safetensors")
    again = load_file(resumed / "final" / "model.safetensors")
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
