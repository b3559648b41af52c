"""The training data (`transformers_valor.training.data`): the map-style mix with its decoded cache and
per-process batches, and the streamed shards with exact resume."""

import json

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from training_helpers import read_metrics, reset_accelerate, tiny_run
from transformers_valor import ValorConfig, ValorProcessor
from transformers_valor.training import CheckpointError, build_training_data, config_from_dict, train


def test_decoded_cache_is_written_under_the_output_dir(retrieval_run):
    output_dir, _ = retrieval_run
    assert list((output_dir / "decoded_cache").glob("tiny-*.safetensors"))


def test_dataloader_serves_this_process_slice_from_the_cache(tiny_corpus, tiny_processor_dir, tmp_path):
    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        tmp_path,
        data={
            "per_device_batch_size": 4,
            "cache_decoded": True,
            "cache_num_workers": 0,
            "cache_dir": str(tmp_path / "c"),
        },
    )
    config = config_from_dict(values)
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    try:
        data = build_training_data(config, processor, ValorConfig(), Accelerator(cpu=True))
    finally:
        reset_accelerate()
    assert data.batches_per_epoch == 2 and data.mix.sizes == [8]
    batches = list(data.loader)
    assert [len(b["sample_ids"]) for b in batches] == [4, 4]
    assert {sid for b in batches for sid in b["sample_ids"]} == {f"train_0000{i}" for i in range(8)}
    assert (
        batches[0]["pixel_values_videos"].shape == (4, 2, 3, 32, 32)
        and batches[0]["pixel_values_videos"].dtype == torch.float32
    )
    assert list((tmp_path / "c").glob("tiny-*.safetensors"))


def _streamed_run(tiny_corpus, tiny_processor_dir, tiny_shards, output_dir) -> dict:
    """Pretraining on the shards with 2 DataLoader workers (4 shards: one stream per worker reads 2), a window of
    3 samples and an epoch of 2 batches of 4, so 5 steps cross a pass of the streams."""
    return tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        output_dir,
        datasets=[{"name": "tiny", "path": str(tiny_shards), "format": "webdataset", "num_frames": 2}],
        data={"per_device_batch_size": 4, "num_workers": 2, "shuffle_buffer": 3},
        training={"max_steps": 5, "checkpoint_every": 3},
    )


def test_streamed_training_resumes_exactly_from_the_stream_positions(
    tiny_corpus, tiny_processor_dir, tiny_shards, tmp_path
):
    full = train(
        config_from_dict(_streamed_run(tiny_corpus, tiny_processor_dir, tiny_shards, tmp_path / "a"))
    )
    reset_accelerate()
    values = _streamed_run(tiny_corpus, tiny_processor_dir, tiny_shards, tmp_path / "b")
    stopped = train(config_from_dict(values), stop_after_steps=3)
    reset_accelerate()
    checkpoint = stopped.last_checkpoint
    state = json.loads((checkpoint / "data_state_0.json").read_text())["state"]
    assert state["num_workers"] == 2 and sorted(state["workers"]) == ["0", "1"]  # plain JSON, no pickle
    assert "data_state_0.json" in json.loads((checkpoint / "checkpoint.json").read_text())["files"]
    resumed = train(config_from_dict(values), resume_from_checkpoint="latest")
    reset_accelerate()
    assert read_metrics(tmp_path / "b") == read_metrics(tmp_path / "a") and full.step == resumed.step == 5
    ours, theirs = (
        load_file(resumed.final_dir / "model.safetensors"),
        load_file(full.final_dir / "model.safetensors"),
    )
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(CheckpointError, match=r"read by 2 worker\(s\) per process; this run has 1"):
        values["data"]["num_workers"] = 1
        train(config_from_dict(values), resume_from_checkpoint=str(checkpoint))
    reset_accelerate()


def test_streamed_and_table_datasets_do_not_mix(tiny_corpus, tiny_processor_dir, tiny_shards, tmp_path):
    values = _streamed_run(tiny_corpus, tiny_processor_dir, tiny_shards, tmp_path)
    values["datasets"].append({"name": "table", "path": str(tiny_corpus), "num_frames": 2})
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    with pytest.raises(
        ValueError, match=r"datasets \['tiny'\] are streamed .* a run streams all of its datasets"
    ):
        build_training_data(config_from_dict(values), processor, ValorConfig(), Accelerator(cpu=True))
    reset_accelerate()
    values["datasets"].pop()
    values["data"]["cache_decoded"] = True
    with pytest.raises(ValueError, match="does not apply to streamed datasets"):
        build_training_data(config_from_dict(values), processor, ValorConfig(), Accelerator(cpu=True))
    reset_accelerate()
