"""Tests of ValorVideoProcessor and the video half of media_io, on files written by tests/media.py."""

import tracemalloc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from media import level_to_index, make_test_media, write_long_video, write_vfr_video
from transformers_valor import ValorConfig, ValorVideoProcessor
from transformers_valor.media_io import MediaBatchError, segment_indices
from transformers_valor.video_processing_valor import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

BACKENDS = ("decord", "pyav")


def reference_split(total: int, num: int) -> list[list[int]]:
    """VALOR's segment split, restated from its description: pad with the last item, then `num` near-equal runs."""
    items = list(range(total)) + [total - 1] * max(0, num - total)
    k, m = divmod(len(items), num)
    return [items[i * k + min(i, m) : (i + 1) * k + min(i + 1, m)] for i in range(num)]


def picked_indices(pixel_values: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> list[int]:
    """Undo the normalisation of (T, 3, H, W) frames and read the frame index encoded in their grey level."""
    grey = (pixel_values[:, 0] * std[0] + mean[0]) * 255.0  # (T, H, W), red channel
    return [level_to_index(v) for v in grey.mean(dim=(1, 2)).tolist()]


class ValorVideoProcessorTester:
    """Small settings shared by the tests."""

    num_frames = 4
    size = 32

    def get_processor(self, **kwargs) -> ValorVideoProcessor:
        kwargs = {"num_frames": self.num_frames, "size": self.size, **kwargs}
        return ValorVideoProcessor(**kwargs)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_test_media(tmp_path_factory.mktemp("video_media"))


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return write_long_video(tmp_path_factory.mktemp("long_video") / "ten_minutes.mkv", minutes=10.0)


class TestSegmentRule:
    @pytest.mark.parametrize(
        "total,num", [(30, 4), (30, 8), (25, 8), (8, 8), (9, 8), (100, 3), (3, 8), (1, 4)]
    )
    def test_middle_matches_reference_split(self, total, num):
        expected = [seg[(len(seg) + 1) // 2 - 1] for seg in reference_split(total, num)]
        assert segment_indices(total, num, "middle").tolist() == expected

    @pytest.mark.parametrize("total,num", [(30, 4), (25, 8), (3, 8), (1000, 7)])
    def test_random_stays_in_segments_and_is_seeded(self, total, num):
        segments = reference_split(total, num)
        draws = []
        for seed in range(20):
            idx = segment_indices(total, num, "random", torch.Generator().manual_seed(seed)).tolist()
            assert all(i in seg for i, seg in zip(idx, segments))
            draws.append(idx)
        again = segment_indices(total, num, "random", torch.Generator().manual_seed(3)).tolist()
        assert again == draws[3]
        if total >= 2 * num:
            assert len({tuple(d) for d in draws}) > 1

    def test_invalid(self):
        with pytest.raises(ValueError):
            segment_indices(0, 4)
        with pytest.raises(ValueError):
            segment_indices(10, 4, "first")


class TestValorVideoProcessor(ValorVideoProcessorTester):
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("name", ["mp4", "webm", "mkv", "avi"])
    def test_middle_frames_from_file(self, media, backend, name):
        out = self.get_processor()(media[name], video_backend=backend, return_metadata=True)
        pixels = out["pixel_values_videos"]
        assert pixels.shape == (1, 4, 3, 32, 32) and pixels.dtype == torch.float32
        total = 30 if name in ("mp4", "webm") else 25
        expected = segment_indices(total, 4, "middle")
        assert out["video_metadata"][0].frames_indices.tolist() == expected.tolist()
        assert picked_indices(pixels[0]) == [i % 24 for i in expected.tolist()]

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_variable_frame_rate_is_sampled_by_time(self, tmp_path, backend):
        # 10 frames at 10 fps, then 10 at 2.5 fps: counting frames would put half the samples in the first second.
        times_ms = [100 * k for k in range(10)] + [1000 + 400 * k for k in range(10)]
        video = write_vfr_video(tmp_path / "vfr.mp4", times_ms)
        out = self.get_processor()(str(video), video_backend=backend, return_metadata=True)
        metadata = out["video_metadata"][0]
        assert metadata.total_num_frames == 20 and metadata.frames_indices.tolist() == [2, 7, 12, 17]
        # Index i stands for the time i / fps (fps = 20 frames / 4.1 s); the frame shown nearest to it is taken.
        targets = np.array([2, 7, 12, 17]) / metadata.fps
        expected = [int(np.argmin(np.abs(np.array(times_ms) / 1000 - t))) for t in targets]
        assert expected == [4, 11, 14, 16]
        assert picked_indices(out["pixel_values_videos"][0]) == expected

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_short_video_repeats_last_frame(self, media, backend):
        out = self.get_processor(num_frames=8)(media["short"], video_backend=backend, return_metadata=True)
        assert out["video_metadata"][0].frames_indices.tolist() == [0, 1, 2, 2, 2, 2, 2, 2]
        assert picked_indices(out["pixel_values_videos"][0]) == [0, 1, 2, 2, 2, 2, 2, 2]

    def test_random_sampling_seeded(self, media):
        processor = self.get_processor(sampling="random")
        runs = [
            processor(media["mp4"], seed=s, return_metadata=True)["video_metadata"][0].frames_indices
            for s in range(6)
        ]
        segments = reference_split(30, 4)
        assert all(all(i in seg for i, seg in zip(r.tolist(), segments)) for r in runs)
        again = processor(media["mp4"], seed=2, return_metadata=True)["video_metadata"][0].frames_indices
        assert again.tolist() == runs[2].tolist()
        assert len({tuple(r.tolist()) for r in runs}) > 1

    def test_backends_agree(self, media):
        processor = self.get_processor()
        a = processor(media["mp4"], video_backend="decord")["pixel_values_videos"]
        b = processor(media["mp4"], video_backend="pyav")["pixel_values_videos"]
        torch.testing.assert_close(a, b, atol=2e-2, rtol=0)

    def test_array_input_matches_direct_computation(self):
        rng = np.random.default_rng(0)
        video = rng.integers(0, 256, size=(10, 40, 56, 3), dtype=np.uint8)
        processor = self.get_processor(image_mean=CLIP_MEAN, image_std=CLIP_STD)
        out = processor([video, torch.from_numpy(video).permute(0, 3, 1, 2)])["pixel_values_videos"]
        assert out.shape == (2, 4, 3, 32, 32)
        picked = (
            torch.from_numpy(video[[1, 4, 6, 8]]).permute(0, 3, 1, 2).float()
        )  # middle of [0-2][3-5][6-7][8-9]
        resized = F.interpolate(picked, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        expected = (resized / 255.0 - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(
            3, 1, 1
        )
        torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[1], expected, atol=1e-5, rtol=1e-5)

    def test_float_frames_already_in_unit_range_warn(self):
        video = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)  # already in [0, 1]
        processor = self.get_processor()
        with pytest.warns(UserWarning, match=r"already in \[0, 1\].*do_rescale=False"):
            twice = processor(video)["pixel_values_videos"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            once = processor(video, do_rescale=False)["pixel_values_videos"]
            from_bytes = processor((video * 255).astype(np.float32))[
                "pixel_values_videos"
            ]  # [0, 255]: no warning
        torch.testing.assert_close(once, from_bytes, atol=1e-4, rtol=0)
        assert twice.max() < -1.5 < 2.0 < once.max()  # rescaled twice, everything is near -mean/std

    def test_defaults_and_clip_preset(self):
        processor = ValorVideoProcessor()
        assert processor.num_frames == 8 and processor.size == {"height": 224, "width": 224}
        assert processor.image_mean == list(IMAGENET_MEAN) and processor.video_backend == "decord"
        clip = ValorVideoProcessor.for_vision_tower("clip")
        assert clip.image_mean == list(CLIP_MEAN) and clip.image_std == list(CLIP_STD)
        out = processor(np.zeros((3, 20, 30, 3), dtype=np.uint8), return_tensors="np")["pixel_values_videos"]
        assert out.shape == (1, 8, 3, 224, 224) and out.dtype == np.float32

    def test_save_load_roundtrip(self, tmp_path):
        processor = self.get_processor(
            sampling="random", video_backend="pyav", image_mean=CLIP_MEAN, image_std=CLIP_STD
        )
        processor.save_pretrained(tmp_path)
        ValorConfig().save_pretrained(tmp_path)
        for loaded in (
            ValorVideoProcessor.from_pretrained(tmp_path),
            AutoVideoProcessor.from_pretrained(tmp_path),
        ):
            assert type(loaded) is ValorVideoProcessor
            assert loaded.to_dict() == processor.to_dict()

    def test_unknown_kwarg(self, media):
        with pytest.raises(TypeError, match="frames_per_second"):
            self.get_processor()(media["mp4"], frames_per_second=3)


class TestVideoErrors(ValorVideoProcessorTester):
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_missing_file(self, tmp_path, backend):
        missing = tmp_path / "nope.mp4"
        with pytest.raises(FileNotFoundError, match="nope.mp4"):
            self.get_processor()(str(missing), video_backend=backend)

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("name", ["garbage", "truncated"])
    def test_undecodable(self, media, backend, name):
        with pytest.raises(ValueError) as info:
            self.get_processor()(media[name], video_backend=backend)
        assert str(media[name]) in str(info.value) and repr(backend) in str(info.value)

    def test_truncated_stream_pyav(self, media):
        with pytest.raises(ValueError, match="truncated"):
            self.get_processor()(media["truncated_webm"], video_backend="pyav")

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_empty_video(self, media, backend):
        with pytest.raises(ValueError, match="Empty video"):
            self.get_processor()(media["empty"], video_backend=backend)
        with pytest.raises(ValueError, match="0 frames"):
            self.get_processor()(np.zeros((0, 8, 8, 3), dtype=np.uint8))

    def test_batch_reports_every_bad_sample(self, media, tmp_path):
        batch = [media["mp4"], media["garbage"], media["webm"], str(tmp_path / "gone.mp4")]
        with pytest.raises(MediaBatchError) as info:
            self.get_processor()(batch)
        message = str(info.value)
        assert "2 video sample(s)" in message
        assert f"[1] {str(media['garbage'])!r}" in message and "[3] " in message and "gone.mp4" in message
        assert [e.index for e in info.value.errors] == [1, 3]


class TestLongVideo(ValorVideoProcessorTester):
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_ten_minute_video_decodes_only_needed_frames(self, long_video, backend):
        processor = self.get_processor(num_frames=8)
        tracemalloc.start()
        out = processor(long_video, video_backend=backend, return_metadata=True)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        expected = segment_indices(600, 8, "middle")
        assert out["video_metadata"][0].total_num_frames == 600
        assert out["video_metadata"][0].frames_indices.tolist() == expected.tolist()
        assert picked_indices(out["pixel_values_videos"][0]) == [i % 24 for i in expected.tolist()]
        # All 600 decoded 32x32 RGB frames would be 1.8 MB; the picked ones are 25 kB.
        assert peak < 1_000_000, peak
