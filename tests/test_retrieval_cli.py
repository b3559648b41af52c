"""Tests of `retrieval.cli` (`examples/encode_videos.py`): a folder of videos into a saved, indexed gallery with a
failures file; a second run resumes; 2 processes encode what one process does."""

import json

import pytest
import torch

from helpers import GalleryTester, tiny_processor
from media import write_video
from transformers_valor.retrieval import VideoGallery
from transformers_valor.retrieval.cli import encode_videos_main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_model")
    GalleryTester().create_model().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_videos")
    for i in range(3):
        write_video(folder / f"clip{i}.mp4", num_frames=6, width=32, height=32)
    (folder / "damaged.mp4").write_bytes(b"\x00" * 100)
    return folder


def run(model_dir, videos, output, *extra):
    return encode_videos_main(
        [
            "--model",
            str(model_dir),
            "--videos",
            str(videos),
            "--output",
            str(output),
            "--num_workers",
            "0",
            "--index",
            "flat",
            "--no_progress",
            "--device",
            "cpu",
            *extra,
        ]
    )


def test_a_folder_becomes_an_indexed_gallery(model_dir, videos, tmp_path, capsys):
    gallery = run(model_dir, videos, tmp_path / "g", "--batch_size", "2")
    assert [p.rsplit("/", 1)[1] for p in gallery.paths] == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]
    assert sorted(gallery.indexes) == ["ta", "tv", "tva"]
    (failure,) = [json.loads(line) for line in (tmp_path / "g" / "failures.jsonl").read_text().splitlines()]
    assert failure["path"].endswith("damaged.mp4") and failure["error"]
    assert "3 items, 1 failed" in capsys.readouterr().out
    loaded = VideoGallery.load(tmp_path / "g")
    assert loaded.ids == gallery.ids and all(loaded.indexes[g].num_items == 3 for g in ("tv", "ta", "tva"))

    index_file = tmp_path / "g" / "index" / "tva.faiss"
    stamp = index_file.stat().st_mtime_ns
    again = run(model_dir, videos, tmp_path / "g")
    assert again.ids == gallery.ids and index_file.stat().st_mtime_ns == stamp  # resumed: nothing redone


def test_video_only_gallery_and_multi_process_refusal(model_dir, videos, tmp_path, monkeypatch):
    gallery = run(model_dir, videos, tmp_path / "v", "--group", "tv", "--dtype", "float16")
    assert (
        gallery.modalities == ("video",) and sorted(gallery.indexes) == ["tv"] and gallery.dtype == "float16"
    )
    monkeypatch.setenv("WORLD_SIZE", "2")  # launched as 2 processes, but this process is alone
    with pytest.raises(RuntimeError, match="2 processes were launched"):
        run(model_dir, videos, tmp_path / "w")


def test_two_processes_encode_the_gallery_one_process_encodes(ddp_runs, tmp_path):
    """tests/distributed_training_worker.py step 3c: each of 2 processes encoded every second item of the list (4
    test clips and a damaged file) into its own shards; rank 0 committed them and built the indexes."""
    arguments = json.loads((ddp_runs / "encode_args.json").read_text())
    two = VideoGallery.load(ddp_runs / "gallery")
    ranks = {p.name.split("-")[1] for p in (ddp_runs / "gallery" / "shards").glob("*.safetensors")}
    assert ranks == {"r00000", "r00001"}
    argv = [f"--{key}={value}" for key, value in {**arguments, "output": tmp_path / "one"}.items()]
    one = encode_videos_main([*argv, "--no_progress"])
    assert sorted(two.ids) == sorted(one.ids) and len(one) == 4
    order = [two.ids.index(i) for i in one.ids]
    for modality in ("video", "audio"):
        ours, theirs = two.features(modality, order), one.features(modality, list(range(len(one))))
        for field in ("embeds", "mask", "weight_logits", "pooler_output"):
            torch.testing.assert_close(getattr(ours, field), getattr(theirs, field), msg=field)
    assert sorted(two.indexes) == sorted(one.indexes) == ["ta", "tv", "tva"]
    assert all(two.indexes[g].num_items == 4 for g in two.indexes)
    (failure,) = [
        json.loads(line) for line in (ddp_runs / "gallery" / "failures.jsonl").read_text().splitlines()
    ]
    assert failure["path"].endswith("broken.mp4") and failure["error"]
