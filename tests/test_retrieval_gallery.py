"""Tests of `retrieval.gallery`: the saved gallery format (safetensors shards + JSON), its round trips, the model
check, incremental `add` and committing shards written by encoding runs."""

import json

import pytest
import torch

from helpers import GalleryTester
from transformers_valor.inference import ShardedWriter
from transformers_valor.retrieval import GalleryMismatchError, VideoGallery, exhaustive_search
from transformers_valor.retrieval.gallery import features_to_tensors

TESTER = GalleryTester(num_items=12)
FIELDS = ("embeds", "mask", "weight_logits", "pooler_output")


@pytest.fixture(scope="module")
def model():
    return TESTER.create_model()


@pytest.fixture(scope="module")
def media(model):
    return TESTER.media_features(model)


def assert_same_features(gallery, media, exact=True):
    for modality in ("video", "audio"):
        loaded = gallery.features(modality)
        for field in FIELDS:
            expected = getattr(media[modality], field)
            actual = getattr(loaded, field)
            assert actual.dtype == expected.dtype, field
            if exact or field == "mask":
                assert torch.equal(actual, expected), f"{modality}.{field}"
            else:
                torch.testing.assert_close(actual, expected, rtol=0, atol=2e-3)


def test_save_load_round_trip_is_bitwise(model, media, tmp_path):
    gallery = TESTER.gallery(model)
    gallery.save(tmp_path / "g", shard_size=5)  # 3 shards
    loaded = VideoGallery.load(tmp_path / "g", model=model)
    assert loaded.ids == TESTER.ids() and loaded.paths == gallery.paths and len(loaded) == 12
    assert loaded.dtype == "float32" and loaded.modalities == ("video", "audio")
    assert_same_features(loaded, media)
    rows = torch.tensor([11, 0, 5, 4, 7])  # across shards, any order
    picked = loaded.features("audio", rows)
    assert torch.equal(picked.embeds, media["audio"].embeds[rows])
    assert torch.equal(picked.mask, media["audio"].mask[rows])
    fine = loaded.features("video", rows, fields=("embeds", "mask", "weight_logits"))
    assert fine.pooler_output is None and torch.equal(fine.weight_logits, media["video"].weight_logits[rows])
    with pytest.raises(ValueError, match="Unknown feature fields"):
        loaded.features("video", rows, fields=("pooled",))
    files = sorted(p.name for p in (tmp_path / "g").rglob("*") if p.is_file())
    assert all(name.endswith((".json", ".safetensors")) for name in files), files  # no pickle anywhere
    manifest = json.loads((tmp_path / "g" / "gallery.json").read_text())
    assert manifest["num_items"] == 12 and len(manifest["shards"]) == 3
    assert manifest["model"]["fingerprint"] == gallery.model_info["fingerprint"]


def test_float16_round_trip_within_tolerance(model, media, tmp_path):
    gallery = TESTER.gallery(model)
    gallery.save(tmp_path / "half", dtype="float16")
    loaded = VideoGallery.load(tmp_path / "half", model=model)
    assert loaded.dtype == "float16"
    assert_same_features(loaded, media, exact=False)
    half_size = sum(p.stat().st_size for p in (tmp_path / "half" / "shards").glob("*.safetensors"))
    gallery.save(tmp_path / "full")
    full_size = sum(p.stat().st_size for p in (tmp_path / "full" / "shards").glob("*.safetensors"))
    assert half_size < 0.6 * full_size
    text = TESTER.text_features(model)
    for group in ("tv", "ta", "tva"):
        exact = exhaustive_search(model, gallery, text, group)
        approx = exhaustive_search(model, loaded, text, group)
        for a, b in zip(exact, approx):
            scores_b = b.scores[torch.argsort(b.rows)]
            torch.testing.assert_close(a.scores[torch.argsort(a.rows)], scores_b, rtol=0, atol=5e-3)


def test_loading_with_another_model_is_refused(model, media, tmp_path):
    TESTER.gallery(model).save(tmp_path / "g")
    other = TESTER.create_model(seed=1)
    with pytest.raises(GalleryMismatchError, match="another model"):
        VideoGallery.load(tmp_path / "g", model=other)
    tweaked = TESTER.create_model()
    with torch.no_grad():
        tweaked.video_weight_mlp[0].bias[0] += 1e-3
    with pytest.raises(GalleryMismatchError, match="encode the gallery again"):
        VideoGallery.load(tmp_path / "g", model=tweaked)
    VideoGallery.load(tmp_path / "g", model=TESTER.create_model())  # the same weights load


def test_incremental_add_on_disk(model, media, tmp_path):
    gallery = VideoGallery.create(model, path=tmp_path / "g")
    gallery.add(TESTER.ids(slice(0, 5)), **TESTER.media_features(model, slice(0, 5)))
    reopened = VideoGallery.load(tmp_path / "g", model=model)
    reopened.add(TESTER.ids(slice(5, 12)), **TESTER.media_features(model, slice(5, 12)))
    final = VideoGallery.load(tmp_path / "g", model=model)
    assert final.ids == TESTER.ids() and len(final._shards) == 2
    assert_same_features(final, media)
    assert final.row_of("item07") == 7


def test_add_checks_its_input(model, media):
    gallery = TESTER.gallery(model, slice(0, 4))
    video, audio = TESTER.media_features(model, slice(4, 6)).values()
    with pytest.raises(ValueError, match="already in the gallery"):
        gallery.add(["item00", "new"], video=video, audio=audio)
    with pytest.raises(ValueError, match="exactly"):
        gallery.add(["a", "b"], video=video)
    with pytest.raises(ValueError, match="unique"):
        gallery.add(["a", "a"], video=video, audio=audio)
    with pytest.raises(ValueError, match="expected"):
        gallery.add(["a"], video=video, audio=audio)  # 2 rows for 1 id
    wide = type(video)(**{**dict(video.items()), "embeds": torch.zeros(2, 4, 7)})
    with pytest.raises(ValueError, match="expected"):
        gallery.add(["a", "b"], video=wide, audio=audio)
    more_frames = TESTER.media_features(model, slice(0, 2))["video"]
    more_frames = type(video)(
        **{k: torch.cat([v, v], 1) if k != "pooler_output" else v for k, v in more_frames.items()}
    )
    with pytest.raises(ValueError, match="frames and clips per item"):
        gallery.add(["a", "b"], video=more_frames, audio=audio)
    assert len(gallery) == 4


def test_refresh_commits_shards_of_every_rank(model, media, tmp_path):
    gallery = VideoGallery.create(model, path=tmp_path / "g")
    for rank, rows in ((1, slice(6, 12)), (0, slice(0, 6))):
        writer = ShardedWriter(tmp_path / "g" / "shards", rank=rank, shard_size=3)
        tensors = {
            **features_to_tensors("video", TESTER.media_features(model, rows)["video"], "float32"),
            **features_to_tensors("audio", TESTER.media_features(model, rows)["audio"], "float32"),
        }
        ids = TESTER.ids(rows)
        for start in range(0, 6, 3):
            writer.add(ids[start : start + 3], {k: v[start : start + 3] for k, v in tensors.items()})
        writer.close()
    assert len(VideoGallery.load(tmp_path / "g")) == 0  # written, not committed
    assert len(gallery.refresh()) == 4
    loaded = VideoGallery.load(tmp_path / "g", model=model)
    # Name order: rank 0's shards, then rank 1's.
    assert loaded.ids == TESTER.ids()
    assert_same_features(loaded, media)
    assert gallery.refresh() == []


def test_refresh_refuses_a_repeated_item(model, media, tmp_path):
    gallery = VideoGallery.create(model, path=tmp_path / "g")
    gallery.add(TESTER.ids(slice(0, 2)), **TESTER.media_features(model, slice(0, 2)))
    writer = ShardedWriter(tmp_path / "g" / "shards", rank=3)
    writer.add(
        ["item01"],
        {
            **features_to_tensors("video", TESTER.media_features(model, slice(1, 2))["video"], "float32"),
            **features_to_tensors("audio", TESTER.media_features(model, slice(1, 2))["audio"], "float32"),
        },
    )
    writer.close()
    with pytest.raises(ValueError, match="item01.*already"):
        gallery.refresh()


def test_group_and_folder_errors(model, media, tmp_path):
    video_only = VideoGallery.create(model, modalities=["video"])
    video_only.add(["a"], video=TESTER.media_features(model, slice(0, 1))["video"])
    video_only.check_group("tv")
    with pytest.raises(ValueError, match="audio"):
        video_only.check_group("tva")
    with pytest.raises(ValueError, match="no audio features"):
        video_only.features("audio")
    with pytest.raises(ValueError, match="subset"):
        VideoGallery.create(model, modalities=["text"])
    with pytest.raises(FileNotFoundError, match="gallery.json"):
        VideoGallery.load(tmp_path)
    VideoGallery.create(model, path=tmp_path / "g")
    with pytest.raises(FileExistsError):
        VideoGallery.create(model, path=tmp_path / "g")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "gallery.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(ValueError, match="not a valor-gallery"):
        VideoGallery.load(tmp_path / "bad")
