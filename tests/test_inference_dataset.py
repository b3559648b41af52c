"""Tests of `inference.dataset`: listing media, splitting them between processes, decoding with error capture."""

import pytest
import torch

from helpers import tiny_processor
from media import write_video
from transformers_valor.inference import MediaDataset, MediaItem, collate_media, list_media, shard_items


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference_media")
    (root / "sub").mkdir()
    write_video(root / "b.mp4", num_frames=6, width=32, height=32)
    write_video(root / "sub" / "a.mp4", num_frames=6, width=32, height=32, audio_codec=None)
    (root / "notes.txt").write_text("not media")
    (root / "broken.mp4").write_bytes(b"\x00" * 64)
    return root


def test_list_media_from_a_folder_a_file_list_and_paths(folder, tmp_path):
    items = list_media(folder)
    assert [i.path for i in items] == [
        str(folder / "b.mp4"),
        str(folder / "broken.mp4"),
        str(folder / "sub" / "a.mp4"),
    ]
    assert all(i.id == i.path for i in items)
    listing = folder / "list.txt"
    listing.write_text(f"# videos\nb.mp4\n\n{folder / 'sub' / 'a.mp4'}\n")
    assert [i.path for i in list_media(listing)] == [str(folder / "b.mp4"), str(folder / "sub" / "a.mp4")]
    assert [i.path for i in list_media(["x.mp4", "y.mp4"])] == ["x.mp4", "y.mp4"]
    with pytest.raises(ValueError, match="listed twice"):
        list_media(["x.mp4", "x.mp4"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_media(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="No media"):
        list_media(tmp_path)


def test_shard_items_splits_without_overlap():
    items = [MediaItem(str(i), str(i)) for i in range(7)]
    parts = [shard_items(items, rank, 3) for rank in range(3)]
    assert sorted(i.id for part in parts for i in part) == sorted(i.id for i in items)
    assert [len(p) for p in parts] == [3, 2, 2]
    with pytest.raises(ValueError, match="rank"):
        shard_items(items, 3, 3)


def test_decoding_matches_the_processor_and_captures_errors(folder):
    processor = tiny_processor()
    items = list_media(folder)
    dataset = MediaDataset(items, processor, "both", num_frames=2)
    good, broken, silent = dataset[0], dataset[1], dataset[2]
    expected = processor(videos=[str(folder / "b.mp4")], num_frames=2, return_tensors="pt")
    assert good["error"] is None and set(good["inputs"]) == {
        "pixel_values_videos",
        "input_features",
        "input_features_mask",
    }
    assert torch.equal(good["inputs"]["pixel_values_videos"], expected["pixel_values_videos"][0])
    assert broken["inputs"] is None and broken["path"].endswith("broken.mp4") and broken["error"]
    assert silent["inputs"]["input_features_mask"].sum() == 0  # no soundtrack: masked audio, not a failure
    batch = collate_media([good, broken, silent])
    assert batch["ids"] == [items[0].id, items[2].id] and batch["failures"][0]["id"] == items[1].id
    assert batch["inputs"]["pixel_values_videos"].shape[:2] == (2, 2)
    assert collate_media([broken])["inputs"] is None
    video_only = MediaDataset(items[:1], processor, "video")[0]["inputs"]
    assert set(video_only) == {"pixel_values_videos"}
    audio_only = MediaDataset(items[:1], processor, "audio")[0]["inputs"]
    assert set(audio_only) == {"input_features", "input_features_mask"}
    with pytest.raises(Exception, match="broken.mp4"):
        MediaDataset(items, processor, capture_errors=False)[1]
    assert [i.id for i in dataset.subset(items[2:]).items] == [items[2].id] and len(dataset) == 3
    with pytest.raises(ValueError, match="modalities"):
        MediaDataset(items, processor, "text")
