"""Tests of `retrieval.encoding.encode_gallery`: features equal the model's, decoding in workers, failures are
recorded, and an interrupted encode resumes where it stopped (giving the gallery of an uninterrupted run)."""

import pytest
import torch

from helpers import GalleryTester, tiny_processor
from media import write_video
from transformers_valor.retrieval import VideoGallery, encode_gallery

TESTER = GalleryTester()


@pytest.fixture(scope="module")
def model():
    return TESTER.create_model()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoding_media")
    return [
        str(write_video(folder / f"clip{i}.mp4", num_frames=6 + 3 * i, width=32, height=32)) for i in range(5)
    ]


def direct_features(model, processor, videos):
    inputs = processor(videos=videos, return_tensors="pt")
    with torch.no_grad():
        return (
            model.get_video_features(inputs["pixel_values_videos"]),
            model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]),
        )


def assert_same_gallery(a: VideoGallery, b: VideoGallery):
    assert a.ids == b.ids and a.paths == b.paths
    for modality in a.modalities:
        for field, value in a.features(modality).items():
            assert torch.equal(value, getattr(b.features(modality), field)), f"{modality}.{field}"


def test_in_memory_gallery_holds_the_model_features(model, videos):
    processor = tiny_processor()
    gallery = encode_gallery(model, processor, videos, batch_size=2, progress=False)
    video, audio = direct_features(model, processor, videos)
    assert gallery.ids == videos and gallery.path is None
    torch.testing.assert_close(gallery.features("video").embeds, video.embeds, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        gallery.features("audio").weight_logits, audio.weight_logits, rtol=1e-5, atol=1e-6
    )
    assert torch.equal(gallery.features("audio").mask, audio.mask)
    assert gallery.processor_info["settings"]["video_processor"]["num_frames"] == 4
    only_video = encode_gallery(model, processor, videos[:2], group="tv", progress=False)
    assert only_video.modalities == ("video",)


def test_workers_and_failures(model, videos, tmp_path):
    broken = str(tmp_path / "broken.mp4")
    (tmp_path / "broken.mp4").write_bytes(bytes(range(256)) * 16)
    gallery = encode_gallery(
        model, tiny_processor(), [videos[0], broken, videos[1]], tmp_path / "g", num_workers=1, progress=False
    )
    assert gallery.ids == [videos[0], videos[1]]
    (failure,) = gallery.failures()
    assert failure["id"] == broken and failure["path"] == broken and failure["error"]
    assert VideoGallery.load(tmp_path / "g").failures() == [failure]
    with pytest.raises(Exception, match="broken.mp4"):
        encode_gallery(model, tiny_processor(), [broken], progress=False, capture_errors=False)


def test_interrupted_encode_resumes_where_it_stopped(model, videos, tmp_path, monkeypatch):
    processor = tiny_processor()
    reference = encode_gallery(
        model, processor, videos, tmp_path / "ref", batch_size=2, shard_size=2, progress=False
    )

    encoded = []
    original = model.get_video_features

    def interrupted(pixel_values_videos):
        if len(encoded) == 2:  # the third batch: a crash after two shards were written
            raise KeyboardInterrupt
        encoded.append(pixel_values_videos.shape[0])
        return original(pixel_values_videos)

    monkeypatch.setattr(model, "get_video_features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        encode_gallery(model, processor, videos, tmp_path / "run", batch_size=2, shard_size=2, progress=False)
    assert len(VideoGallery.load(tmp_path / "run").ids) == 0  # shards written, not committed yet
    encoded.clear()
    monkeypatch.setattr(model, "get_video_features", lambda x: (encoded.append(x.shape[0]), original(x))[1])
    resumed = encode_gallery(
        model, processor, videos, tmp_path / "run", batch_size=2, shard_size=2, progress=False
    )
    assert encoded == [1]  # only the fifth video was left
    assert_same_gallery(resumed, reference)
    assert_same_gallery(VideoGallery.load(tmp_path / "run", model=model), reference)
    encoded.clear()
    again = encode_gallery(model, processor, videos, tmp_path / "run", batch_size=2, progress=False)
    assert encoded == [] and len(again) == 5
    with pytest.raises(ValueError, match="resume=True"):
        encode_gallery(model, processor, videos, tmp_path / "run", resume=False, progress=False)


def test_resume_with_other_settings_is_refused(model, videos, tmp_path):
    processor = tiny_processor()
    encode_gallery(model, processor, videos[:2], tmp_path / "g", progress=False)
    with pytest.raises(ValueError, match="same settings"):
        encode_gallery(model, processor, videos, tmp_path / "g", num_frames=2, progress=False)
    with pytest.raises(ValueError, match="same settings"):
        encode_gallery(model, processor, videos, tmp_path / "g", dtype="float16", progress=False)
    with pytest.raises(ValueError, match="another model"):
        encode_gallery(TESTER.create_model(seed=5), processor, videos, tmp_path / "g", progress=False)
