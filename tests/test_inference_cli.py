"""`examples/caption_videos.py` (`inference.cli`): 2 gloo processes give the captions one process gives; WebDataset
shards as input; the settings check on resume."""

import json
from types import SimpleNamespace

import pytest

from training_helpers import CAPTION_VIDEOS_SETTINGS, reset_accelerate, tiny_generator
from transformers_valor import ValorProcessor
from transformers_valor.inference import cli
from transformers_valor.inference.captioning import CAPTIONS_FILE, FAILURES_FILE, SHARD_DIR, read_captions
from transformers_valor.inference.cli import caption_videos_main


def _run(arguments: dict) -> tuple[int, int]:
    try:
        return caption_videos_main([f"--{k}={v}" for k, v in arguments.items()] + ["--no_progress"])
    finally:
        reset_accelerate()


def test_two_processes_caption_as_one_process(ddp_runs, tmp_path):
    """tests/distributed_training_worker.py step 3b: each of 2 processes captioned every second item of the list
    (4 test clips and a damaged file) into its own shards; rank 0 merged them."""
    arguments = json.loads((ddp_runs / "caption_args.json").read_text())
    two = ddp_runs / "captions"
    ranks = {p.name.split("-")[1] for p in (two / SHARD_DIR).glob("captions-r*.json")}
    assert ranks == {"r00000", "r00001"}
    assert _run({**arguments, "output": tmp_path}) == (4, 1)
    assert (tmp_path / CAPTIONS_FILE).read_text() == (two / CAPTIONS_FILE).read_text()
    rows = [json.loads(line) for line in (two / CAPTIONS_FILE).read_text().splitlines()]
    assert [row["path"] for row in rows] == sorted(row["path"] for row in rows) and len(rows) == 4
    assert all(row["id"] == row["path"] and row["caption"] for row in rows)
    failure = json.loads((two / FAILURES_FILE).read_text())
    assert failure["path"].endswith("broken.mp4") and failure["error"]


@pytest.fixture(scope="module")
def model_dir(tiny_processor_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("captioner")
    tiny_generator(tiny_processor_dir).save_pretrained(root)
    ValorProcessor.from_pretrained(tiny_processor_dir).save_pretrained(root)
    return root


def test_shards_are_captioned_by_sample_id_and_settings_are_kept(model_dir, tiny_shards, tmp_path):
    arguments = {
        "model": model_dir,
        "videos": tiny_shards,
        "output": tmp_path,
        **CAPTION_VIDEOS_SETTINGS,
        "batch_size": 4,
        "shard_size": 4,
    }
    assert _run(arguments) == (8, 0)
    assert list(read_captions(tmp_path)) == [f"train_{i:05d}" for i in range(8)]
    assert (tmp_path / FAILURES_FILE).read_text() == ""
    with pytest.raises(ValueError, match="max_new_tokens"):
        _run({**arguments, "max_new_tokens": 5})


def test_a_launch_accelerate_does_not_count_is_refused(monkeypatch):
    # Every rank would act as the main process and write the same shards.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(cli, "PartialState", lambda cpu: SimpleNamespace(num_processes=1))
    with pytest.raises(RuntimeError, match="2 processes were launched"):
        cli.launched_state()
