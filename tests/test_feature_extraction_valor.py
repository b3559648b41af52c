"""Tests of ValorFeatureExtractor (multi-clip Kaldi fbank) and the audio half of media_io."""

import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor

from media import make_test_media, tone, write_long_video, write_wav
from transformers_valor import ValorConfig, ValorFeatureExtractor
from transformers_valor.media_io import MediaBatchError, read_audio, segment_indices

MEAN, STD = -4.2677393, 4.5689974
PAD_VALUE = (0.0 - MEAN) / (2 * STD)  # a zero-padded fbank frame after normalisation


def direct_kaldi_fbank(wave: np.ndarray, sr: int, num_mel_bins: int = 64) -> np.ndarray:
    """Kaldi's fbank written out from its definition, in float64 (independent of the package's code)."""
    wave = np.asarray(wave, dtype=np.float64)
    wave = wave - wave.mean()
    win, shift = int(sr * 0.025), int(sr * 0.010)
    nfft = 1
    while nfft < win:
        nfft *= 2
    n_frames = 1 + (len(wave) - win) // shift
    hanning = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / (win - 1))

    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    lo, hi = mel(20.0), mel(sr / 2)
    delta = (hi - lo) / (num_mel_bins + 1)
    bin_mel = mel(np.arange(nfft // 2) * sr / nfft)
    banks = np.zeros((num_mel_bins, nfft // 2 + 1))
    for b in range(num_mel_bins):
        left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
        up = (bin_mel - left) / (center - left)
        down = (right - bin_mel) / (right - center)
        banks[b, : nfft // 2] = np.maximum(0.0, np.minimum(up, down))
    out = np.empty((n_frames, num_mel_bins))
    for t in range(n_frames):
        frame = wave[t * shift : t * shift + win].copy()
        frame -= frame.mean()
        frame[1:] -= 0.97 * frame[:-1].copy()
        frame[0] -= 0.97 * frame[0]
        spectrum = np.abs(np.fft.rfft(frame * hanning, n=nfft)) ** 2
        out[t] = np.log(np.maximum(banks @ spectrum, np.finfo(np.float32).eps))
    return out


def direct_clips(fbank: np.ndarray, clip_ids: list[int], clip_length: int = 512) -> np.ndarray:
    """Pad (frames, mel) like the reference (always `clip_length - n % clip_length` frames), pick, transpose,
    normalise."""
    pad = clip_length - fbank.shape[0] % clip_length
    padded = np.concatenate([fbank, np.zeros((pad, fbank.shape[1]))])
    clips = padded.reshape(-1, clip_length, fbank.shape[1])[clip_ids].transpose(0, 2, 1)
    return (clips - MEAN) / (2 * STD)


class ValorFeatureExtractorTester:
    """A small clip length keeps the direct (per-frame) reference computation fast."""

    clip_length = 64
    num_clips = 2

    def get_extractor(self, **kwargs) -> ValorFeatureExtractor:
        kwargs = {"clip_length": self.clip_length, "num_clips": self.num_clips, **kwargs}
        return ValorFeatureExtractor(**kwargs)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_test_media(tmp_path_factory.mktemp("audio_media"))


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return write_long_video(tmp_path_factory.mktemp("long_audio") / "ten_minutes.mkv", minutes=10.0)


class TestFbank(ValorFeatureExtractorTester):
    def test_fbank_matches_direct_computation(self):
        wave = tone(1.5, 22050)[0]
        expected = direct_kaldi_fbank(wave, 22050)
        got = self.get_extractor(use_torchaudio=False).fbank(wave).numpy()
        assert got.shape == expected.shape == (148, 64)
        np.testing.assert_allclose(got, expected, atol=2e-3, rtol=0)

    def test_fbank_other_rate_and_short_input(self):
        extractor = self.get_extractor(sampling_rate=16000, use_torchaudio=False)
        wave = tone(0.5, 16000, freq=1000.0)[0]
        np.testing.assert_allclose(extractor.fbank(wave).numpy(), direct_kaldi_fbank(wave, 16000), atol=2e-3)
        assert extractor.fbank(wave[:100]).shape == (0, 64)

    def test_matches_torchaudio(self):
        pytest.importorskip("torchaudio")
        wave = tone(2.0, 22050)[0]
        ours = self.get_extractor(use_torchaudio=False).fbank(wave)
        theirs = self.get_extractor(use_torchaudio=True).fbank(wave)
        torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=0)

    def test_clips_match_direct_computation(self):
        wave = tone(1.5, 22050)[0]  # 148 frames -> padded to 192 = 3 clips of 64
        fbank = direct_kaldi_fbank(wave, 22050)
        extractor = self.get_extractor(use_torchaudio=False)
        for num_clips, clip_ids in [(2, [0, 2]), (3, [0, 1, 2]), (1, [1]), (5, [0, 1, 2, 2, 2])]:
            assert segment_indices(3, num_clips).tolist() == clip_ids
            out = extractor(wave, num_clips=num_clips)
            assert out["input_features"].shape == (1, num_clips, 64, 64)
            assert out["input_features_mask"].tolist() == [[1] * num_clips]
            np.testing.assert_allclose(
                out["input_features"][0].numpy(), direct_clips(fbank, clip_ids, 64), atol=1e-3
            )
        last = extractor(wave, num_clips=3)["input_features"][0, 2]
        assert torch.all(
            last[:, 148 - 128 :] == torch.tensor(PAD_VALUE)
        )  # padding is zero before normalisation

    def test_exact_multiple_gains_padding_clip(self):
        extractor = self.get_extractor()
        # 1 + (n - 551) // 220 == 128 frames == 2 clips exactly; VALOR still pads one whole clip.
        wave = tone(2.0, 22050)[0][: 551 + 127 * 220]
        assert extractor.fbank(wave).shape[0] == 128
        assert extractor.num_total_clips(128) == 3
        clips = extractor(wave, num_clips=3)["input_features"][0]
        assert torch.all(clips[2] == torch.tensor(PAD_VALUE))

    def test_random_clips_are_seeded(self):
        wave = tone(6.0, 22050)[0]  # 598 frames -> 10 clips of 64
        extractor = self.get_extractor(sampling="random")
        a = extractor(wave, seed=0)["input_features"]
        b = extractor(wave, seed=0)["input_features"]
        torch.testing.assert_close(a, b)
        fbank = extractor.fbank(wave).numpy()
        ids = segment_indices(10, 2, "random", torch.Generator().manual_seed(0)).tolist()
        np.testing.assert_allclose(a[0].numpy(), direct_clips(fbank, ids, 64), atol=1e-5)

    def test_defaults(self):
        extractor = ValorFeatureExtractor()
        assert (
            extractor.sampling_rate,
            extractor.num_mel_bins,
            extractor.clip_length,
            extractor.num_clips,
        ) == (
            22050,
            64,
            512,
            2,
        )
        out = extractor([tone(10.0, 22050)[0], tone(1.0, 22050)[0]], return_tensors="np")
        assert out["input_features"].shape == (2, 2, 64, 512) and out["input_features"].dtype == np.float32
        assert out["input_features_mask"].dtype == np.int64


class TestAudioFiles(ValorFeatureExtractorTester):
    def test_wav_file_equals_waveform(self, media):
        extractor = self.get_extractor()
        wave = np.round(tone(2.0, 22050)[0] * 32767.0) / 32767.0  # what the 16-bit wav holds
        from_file = extractor(str(media["wav"]))["input_features"]
        from_array = extractor(wave)["input_features"]
        torch.testing.assert_close(from_file, from_array, atol=1e-3, rtol=0)

    def test_stereo_is_averaged_and_resampled(self, media):
        extractor = self.get_extractor()
        stereo = np.round(tone(2.0, 16000, channels=2, freq=300.0) * 32767.0) / 32767.0  # (2, samples)
        from_file = extractor(media["wav16k_stereo"])["input_features"]
        from_array = extractor([stereo], sampling_rate=16000)["input_features"]
        torch.testing.assert_close(from_file, from_array, atol=1e-3, rtol=0)
        decoded = read_audio(media["wav16k_stereo"], 22050)
        assert abs(decoded.shape[0] - 2 * 22050) < 64

    @pytest.mark.parametrize("name", ["mp4", "webm", "mkv", "avi"])
    def test_soundtrack_of_video(self, media, name):
        out = self.get_extractor()(media[name])
        assert out["input_features"].shape == (1, 2, 64, 64)
        assert out["input_features_mask"].tolist() == [[1, 1]]
        assert torch.isfinite(out["input_features"]).all() and out["input_features"].std() > 0.1

    def test_video_without_audio_is_silent_with_one_warning(self, media):
        batch = [media["wav"], media["silent"], None, media["mp4"]]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = self.get_extractor()(batch)
        relevant = [w for w in caught if "No audio stream" in str(w.message)]
        assert len(relevant) == 1 and "[1]" in str(relevant[0].message) and "[2]" in str(relevant[0].message)
        assert out["input_features_mask"].tolist() == [[1, 1], [0, 0], [0, 0], [1, 1]]
        assert torch.all(out["input_features"][1:3] == 0)
        assert out["input_features"][[0, 3]].abs().sum() > 0

    def test_save_load_roundtrip(self, tmp_path):
        extractor = self.get_extractor(num_clips=3, sampling="random", sampling_rate=16000)
        extractor.fbank(np.zeros(1000, dtype=np.float32))  # fills the filter cache, which must not be saved
        extractor.save_pretrained(tmp_path)
        ValorConfig().save_pretrained(tmp_path)
        for loaded in (
            ValorFeatureExtractor.from_pretrained(tmp_path),
            AutoFeatureExtractor.from_pretrained(tmp_path),
        ):
            assert type(loaded) is ValorFeatureExtractor
            assert loaded.to_dict() == extractor.to_dict()
            assert "_filter_cache" not in loaded.to_dict()


class TestAudioErrors(ValorFeatureExtractorTester):
    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="missing.wav"):
            self.get_extractor()(str(tmp_path / "missing.wav"))

    @pytest.mark.parametrize("name", ["garbage", "truncated"])
    def test_undecodable(self, media, name):
        with pytest.raises(ValueError) as info:
            self.get_extractor()(media[name])
        assert str(media[name]) in str(info.value) and "'pyav'" in str(info.value)

    def test_batch_reports_every_bad_sample(self, media, tmp_path):
        batch = [media["garbage"], media["wav"], str(tmp_path / "gone.wav"), media["silent"]]
        with pytest.raises(MediaBatchError) as info, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.get_extractor()(batch)
        assert [e.index for e in info.value.errors] == [0, 2]
        assert "gone.wav" in str(info.value) and str(media["garbage"]) in str(info.value)

    def test_one_multichannel_waveform_is_one_sample(self):
        stereo = np.random.default_rng(0).standard_normal((2, 48000)).astype("f4")
        extractor = self.get_extractor(sampling_rate=16000)
        out = extractor(stereo, sampling_rate=16000)["input_features"]
        assert out.shape == (1, 2, 64, 64)
        mono = extractor(stereo.mean(axis=0), sampling_rate=16000)["input_features"]
        torch.testing.assert_close(out, mono, atol=1e-4, rtol=0)
        assert (
            extractor(list(stereo), sampling_rate=16000)["input_features"].shape[0] == 2
        )  # a batch is a list

    def test_ambiguous_audio_is_refused(self):
        extractor = self.get_extractor()
        with pytest.raises(ValueError, match=r"shape \(48000, 2\).*\(channels, samples\)"):
            extractor(np.zeros((48000, 2), dtype="f4"))
        with pytest.raises(ValueError, match=r"`audio\[1\]` is a 3-D array"):
            extractor([np.zeros(16000), np.zeros((2, 2, 16000))])
        with pytest.raises(TypeError, match="list of numbers"):
            extractor([0.1, 0.2, 0.3])
        with pytest.raises(TypeError, match=r"`audio\[0\]` is a dict"):
            extractor([{"array": np.zeros(100)}])
        with pytest.raises(ValueError, match="empty list"):
            extractor([])

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="sampling"):
            self.get_extractor()(np.zeros(22050), sampling="first")
        with pytest.raises(TypeError):
            self.get_extractor()(np.zeros(22050), padding=True)


class TestLongAudio:
    def test_ten_minute_soundtrack_decodes_only_chosen_windows(self, long_video):
        extractor = ValorFeatureExtractor()  # 512-frame clips, 2 clips, full decode up to 60 s
        tracemalloc.start()
        windowed = extractor(long_video)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert windowed["input_features"].shape == (1, 2, 64, 512)
        # Decoding the whole 10 minutes at 22.05 kHz would hold 53 MB of float32 samples.
        assert peak < 8_000_000, peak
        # The same clips, computed from the whole decoded soundtrack.
        full = read_audio(long_video, 22050)
        fbank = extractor.fbank(full)
        clip_ids = segment_indices(extractor.num_total_clips(fbank.shape[0]), 2).tolist()
        assert clip_ids == [29, 88]  # 60133 frames -> 118 clips
        expected = extractor._clips_from_fbank(fbank, np.array(clip_ids))
        expected = (expected - MEAN) / (2 * STD)
        torch.testing.assert_close(windowed["input_features"][0], expected, atol=5e-2, rtol=0)
        assert (windowed["input_features"][0] - expected).abs().mean() < 1e-3

    def test_separate_long_wav_uses_windows(self, tmp_path):
        path = write_wav(tmp_path / "long.wav", tone(90.0, 8000)[0], 8000)
        extractor = ValorFeatureExtractor(num_clips=1)
        windowed = extractor(path)["input_features"]
        extractor.full_decode_max_duration = 1e9
        torch.testing.assert_close(windowed, extractor(path)["input_features"], atol=5e-2, rtol=0)
