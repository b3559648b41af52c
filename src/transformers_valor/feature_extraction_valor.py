"""Audio feature extraction for VALOR: multi-clip, Kaldi-compatible log-mel filter banks.

VALOR's audio encoder (an AST-style ViT) reads clips of 512 fbank frames x 64 mel bins. A soundtrack is turned
into a (frames x 64) log-mel fbank (Kaldi options: hanning window, 25 ms / 10 ms, pre-emphasis 0.97, DC offset
removed, no dither, no energy), zero-padded to whole clips, and `num_clips` clips are picked with VALOR's
segment rule (see `media_io.segment_indices`); each clip is transposed to (64 mel, 512 time) and normalised
with AudioSet's statistics, as AST does.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Any

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank, window_function
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature

from .media_io import (
    MissingAudioStreamError,
    SampleError,
    SamplingMode,
    check_path,
    probe_audio,
    raise_for_sample_errors,
    read_audio,
    resample_waveform,
    segment_indices,
)

# float32 machine epsilon: Kaldi's floor before the log.
_LOG_FLOOR = float(np.finfo(np.float32).eps)

AudioSample = str | os.PathLike | np.ndarray | torch.Tensor | None


def _torchaudio_available() -> bool:
    return importlib.util.find_spec("torchaudio") is not None


def kaldi_fbank(
    waveform: torch.Tensor,
    window: torch.Tensor,
    mel_filters: torch.Tensor,
    frame_shift: int,
    fft_length: int,
    preemphasis: float = 0.97,
) -> torch.Tensor:
    """Kaldi-compatible log-mel filter bank of a mono waveform, vectorised over frames.

    Matches `torchaudio.compliance.kaldi.fbank` with `snip_edges=True`, `dither=0`, `remove_dc_offset=True`,
    `use_energy=False`, `use_power=True`, `use_log_fbank=True`, `subtract_mean=False` and the window and mel
    filters given.

    Args:
        waveform: `(samples,)` float32.
        window: `(window_length,)`, e.g. a symmetric Hann ("hanning") window.
        mel_filters: `(fft_length // 2 + 1, num_mel_bins)` triangular filters (Kaldi mel scale).
        frame_shift: hop in samples.
        fft_length: FFT size (the window length rounded up to a power of two).
        preemphasis: pre-emphasis coefficient (the first sample of a frame uses itself as predecessor).

    Returns:
        `(num_frames, num_mel_bins)` log-mel energies, `num_frames = 1 + (samples - window_length) // frame_shift`
        (0 when the waveform is shorter than one window).
    """
    window_length = window.shape[0]
    num_mel_bins = mel_filters.shape[1]
    if waveform.shape[0] < window_length:
        return waveform.new_zeros((0, num_mel_bins))
    frames = waveform.unfold(0, window_length, frame_shift)  # (F, W)
    frames = frames - frames.mean(dim=1, keepdim=True)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # (F, W)
    frames = (frames - preemphasis * previous) * window
    spectrum = torch.view_as_real(torch.fft.rfft(frames, n=fft_length))  # (F, fft_length // 2 + 1, 2)
    power = spectrum.pow(2).sum(dim=-1)  # |X|^2, much faster than complex abs() on CPU
    return torch.matmul(power, mel_filters).clamp_min(_LOG_FLOOR).log()  # (F, num_mel_bins)


class ValorFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns soundtracks (video files, audio files or waveforms) into VALOR's audio input: `num_clips` clips of a
    Kaldi-compatible log-mel filter bank, each `(num_mel_bins, clip_length)`.

    Args:
        feature_size (`int`, defaults to 64): number of mel bins (alias of `num_mel_bins`, kept for
            `SequenceFeatureExtractor`).
        sampling_rate (`int`, defaults to 22050): rate the audio is resampled to before the fbank (the rate the
            reference extracted its audio at).
        num_mel_bins (`int`, defaults to 64): mel bins of the fbank.
        clip_length (`int`, defaults to 512): fbank frames per clip.
        num_clips (`int`, defaults to 2): clips per sample.
        frame_length_ms (`float`, defaults to 25.0) / frame_shift_ms (`float`, defaults to 10.0): Kaldi window and hop.
        preemphasis (`float`, defaults to 0.97): Kaldi pre-emphasis coefficient.
        low_freq (`float`, defaults to 20.0): lowest mel filter edge in Hz (the highest is the Nyquist frequency).
        do_normalize (`bool`, defaults to `True`): apply `(x - mean) / (2 * std)`.
        mean (`float`, defaults to -4.2677393) / std (`float`, defaults to 4.5689974): AudioSet fbank statistics.
        sampling (`str`, defaults to `"middle"`): clip choice, `"middle"` (evaluation) or `"random"` (training).
        full_decode_max_duration (`float`, defaults to 60.0): files longer than this many seconds are not decoded
            whole; only the time windows of the chosen clips are.
        use_torchaudio (`bool`, *optional*): compute the fbank with `torchaudio.compliance.kaldi.fbank`. Defaults
            to whether torchaudio is importable; the built-in path gives the same numbers.
        padding_value (`float`, defaults to 0.0): unused; kept for `SequenceFeatureExtractor`.
    """

    model_input_names = ["input_features", "input_features_mask"]

    def __init__(
        self,
        feature_size: int = 64,
        sampling_rate: int = 22050,
        num_mel_bins: int = 64,
        clip_length: int = 512,
        num_clips: int = 2,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        preemphasis: float = 0.97,
        low_freq: float = 20.0,
        do_normalize: bool = True,
        mean: float = -4.2677393,
        std: float = 4.5689974,
        sampling: SamplingMode = "middle",
        full_decode_max_duration: float = 60.0,
        use_torchaudio: bool | None = None,
        padding_value: float = 0.0,
        **kwargs,
    ):
        kwargs.pop("return_attention_mask", None)
        super().__init__(
            feature_size=num_mel_bins, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs
        )
        if sampling not in ("middle", "random"):
            raise ValueError(f"`sampling` must be 'middle' or 'random', got {sampling!r}.")
        self.num_mel_bins = num_mel_bins
        self.clip_length = clip_length
        self.num_clips = num_clips
        self.frame_length_ms = frame_length_ms
        self.frame_shift_ms = frame_shift_ms
        self.preemphasis = preemphasis
        self.low_freq = low_freq
        self.do_normalize = do_normalize
        self.mean = mean
        self.std = std
        self.sampling = sampling
        self.full_decode_max_duration = full_decode_max_duration
        self.use_torchaudio = use_torchaudio
        self.return_attention_mask = False

    # ------------------------------------------------------------------------------------------------------------
    # Geometry
    # ------------------------------------------------------------------------------------------------------------

    @property
    def window_length(self) -> int:
        """Samples per analysis window (Kaldi truncates `rate * ms / 1000`)."""
        return int(self.sampling_rate * self.frame_length_ms * 0.001)

    @property
    def frame_shift(self) -> int:
        """Samples per hop."""
        return int(self.sampling_rate * self.frame_shift_ms * 0.001)

    @property
    def fft_length(self) -> int:
        """FFT size: the window length rounded up to a power of two."""
        return 1 << (self.window_length - 1).bit_length()

    def _filters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The hanning window and the Kaldi mel filters, built once per settings and cached."""
        key = (self.sampling_rate, self.window_length, self.fft_length, self.num_mel_bins, self.low_freq)
        cache = self.__dict__.get("_filter_cache")
        if cache is None or cache[0] != key:
            window = torch.from_numpy(
                window_function(self.window_length, "hann", periodic=False).astype(np.float32)
            )
            mel = mel_filter_bank(
                num_frequency_bins=self.fft_length // 2 + 1,
                num_mel_filters=self.num_mel_bins,
                min_frequency=self.low_freq,
                max_frequency=self.sampling_rate / 2,
                sampling_rate=self.sampling_rate,
                norm=None,
                mel_scale="kaldi",
                triangularize_in_mel_space=True,
            )
            cache = (key, window, torch.from_numpy(mel.astype(np.float32)))
            # Kept out of `to_dict` (which serialises `__dict__` minus private keys) by the leading underscore.
            self.__dict__["_filter_cache"] = cache
        return cache[1], cache[2]

    def to_dict(self) -> dict[str, Any]:
        """Serialisable settings (the cached filters are left out)."""
        output = super().to_dict()
        output.pop("_filter_cache", None)
        return output

    def fbank(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Log-mel filter bank `(num_frames, num_mel_bins)` of a mono waveform at `self.sampling_rate`.

        The waveform mean is subtracted first, as in VALOR (it makes no difference to the result, since every
        frame has its DC offset removed). Uses torchaudio's Kaldi fbank when `use_torchaudio` (or, if unset,
        when torchaudio is importable), else `kaldi_fbank`.
        """
        waveform = torch.as_tensor(waveform, dtype=torch.float32).reshape(-1)
        waveform = waveform - waveform.mean() if waveform.numel() else waveform
        use_torchaudio = _torchaudio_available() if self.use_torchaudio is None else self.use_torchaudio
        if use_torchaudio:
            if waveform.shape[0] < self.window_length:
                return waveform.new_zeros((0, self.num_mel_bins))
            import torchaudio

            return torchaudio.compliance.kaldi.fbank(
                waveform[None],
                htk_compat=True,
                sample_frequency=self.sampling_rate,
                use_energy=False,
                window_type="hanning",
                num_mel_bins=self.num_mel_bins,
                dither=0.0,
                frame_length=self.frame_length_ms,
                frame_shift=self.frame_shift_ms,
                preemphasis_coefficient=self.preemphasis,
                low_freq=self.low_freq,
            )
        window, mel = self._filters()
        return kaldi_fbank(waveform, window, mel, self.frame_shift, self.fft_length, self.preemphasis)

    def num_total_clips(self, num_fbank_frames: int) -> int:
        """Clips after padding, as VALOR pads: `clip_length - n % clip_length` zero frames are always added,
        so an exact multiple of `clip_length` still gains one all-padding clip."""
        return num_fbank_frames // self.clip_length + 1

    # ------------------------------------------------------------------------------------------------------------
    # Per sample
    # ------------------------------------------------------------------------------------------------------------

    def _clips_from_fbank(self, fbank: torch.Tensor, clip_ids: np.ndarray) -> torch.Tensor:
        """Gather clips `clip_ids` of a (frames, mel) fbank, zero-padded to whole clips -> (n, mel, clip_length)."""
        total = self.num_total_clips(fbank.shape[0])
        padded = fbank.new_zeros((total * self.clip_length, self.num_mel_bins))
        padded[: fbank.shape[0]] = fbank
        clips = padded.view(total, self.clip_length, self.num_mel_bins)[torch.from_numpy(clip_ids)]
        return clips.transpose(1, 2)  # (n, mel, clip_length)

    def _features_from_waveform(
        self, waveform: np.ndarray, num_clips: int, mode: str, generator
    ) -> torch.Tensor:
        fbank = self.fbank(waveform)  # (frames, mel)
        clip_ids = segment_indices(self.num_total_clips(fbank.shape[0]), num_clips, mode, generator)
        return self._clips_from_fbank(fbank, clip_ids)

    def _features_from_file(self, path: str, num_clips: int, mode: str, generator) -> torch.Tensor:
        info = probe_audio(path)
        if info.duration <= self.full_decode_max_duration or info.duration <= 0:
            waveform = read_audio(path, self.sampling_rate)
            return self._features_from_waveform(waveform, num_clips, mode, generator)
        # Long file: work out the clip layout from the duration, then decode only the chosen clips' samples.
        num_samples = int(round(info.duration * self.sampling_rate))
        num_frames = (
            0
            if num_samples < self.window_length
            else 1 + (num_samples - self.window_length) // self.frame_shift
        )
        clip_ids = segment_indices(self.num_total_clips(num_frames), num_clips, mode, generator)
        clip_samples = (self.clip_length - 1) * self.frame_shift + self.window_length
        out = torch.zeros((num_clips, self.num_mel_bins, self.clip_length))
        for clip_id in np.unique(clip_ids).tolist():
            start = clip_id * self.clip_length * self.frame_shift
            waveform = read_audio(
                path,
                self.sampling_rate,
                start=start / self.sampling_rate,
                duration=clip_samples / self.sampling_rate,
            )
            fbank = self.fbank(waveform)[: self.clip_length]  # (<= clip_length, mel)
            out[torch.from_numpy(clip_ids == clip_id), :, : fbank.shape[0]] = fbank.T
        return out

    def _sample_features(self, sample, in_rate, num_clips, mode, generator) -> torch.Tensor:
        """`(num_clips, mel, time)` fbank clips of one sample (a path or a waveform at `in_rate`)."""
        if sample is None:
            raise MissingAudioStreamError("None")
        if isinstance(sample, (str, os.PathLike)):
            return self._features_from_file(check_path(sample), num_clips, mode, generator)
        wave = torch.as_tensor(sample, dtype=torch.float32)
        wave = wave.mean(dim=0) if wave.ndim == 2 else wave
        wave = resample_waveform(wave.numpy(), in_rate, self.sampling_rate)
        return self._features_from_waveform(wave, num_clips, mode, generator)

    # ------------------------------------------------------------------------------------------------------------
    # Batch
    # ------------------------------------------------------------------------------------------------------------

    def __call__(
        self,
        audio: AudioSample | list[AudioSample],
        sampling_rate: int | None = None,
        num_clips: int | None = None,
        sampling: SamplingMode | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Compute VALOR's audio input for one sample or a batch.

        Args:
            audio: one sample or a batch, which is always a `list` (or tuple) of samples, as in transformers' audio
                feature extractors. A sample is a path to an audio file (.wav, .flac, ...) or to a video whose
                soundtrack is used; ONE waveform (`np.ndarray`/`torch.Tensor`, `(samples,)` or `(channels, samples)`
                with the channels averaged) at `sampling_rate`; or `None` for "no audio". A 2-D array is one
                multi-channel waveform, never a batch; an array with more channels than samples (the
                `(samples, channels)` layout) or more than 2 dimensions is refused.
            sampling_rate: rate of waveform inputs; they are resampled to `self.sampling_rate` when it differs.
                Defaults to `self.sampling_rate`.
            num_clips: clips per sample (default `self.num_clips`).
            sampling: `"middle"` or `"random"` clip choice (default `self.sampling`).
            seed / generator: make `"random"` reproducible (a `seed` builds a new `torch.Generator`).
            return_tensors: `"pt"` (default) or `"np"`.

        Returns:
            `BatchFeature` with
            - `input_features`: float32 `(batch, num_clips, num_mel_bins, clip_length)`;
            - `input_features_mask`: int64 `(batch, num_clips)`, 1 for real clips and 0 for a sample without an
              audio stream (whose features are all zero).

        Raises:
            FileNotFoundError: every failing sample is a missing file (the message lists index and path).
            MediaBatchError (a `ValueError`): a sample could not be decoded (lists index, path and backend).
            TypeError / ValueError: `audio` is not a sample or a list of them, is empty, or a waveform's shape is
                ambiguous (see `audio`).

        A sample without an audio stream (or `None`) is not an error: it gets zeros and mask 0, and one
        `UserWarning` per call names all such samples.
        """
        if kwargs:
            raise TypeError(f"Unexpected keyword arguments for ValorFeatureExtractor: {sorted(kwargs)}")
        num_clips = self.num_clips if num_clips is None else num_clips
        mode = self.sampling if sampling is None else sampling
        if mode not in ("middle", "random"):
            raise ValueError(f"`sampling` must be 'middle' or 'random', got {mode!r}.")
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(seed)
        in_rate = self.sampling_rate if sampling_rate is None else sampling_rate

        samples = as_audio_batch(audio)

        features = torch.zeros((len(samples), num_clips, self.num_mel_bins, self.clip_length))
        mask = torch.ones((len(samples), num_clips), dtype=torch.long)
        errors: list[SampleError] = []
        silent: list[str] = []
        for i, sample in enumerate(samples):
            source = (
                repr(os.fspath(sample)) if isinstance(sample, (str, os.PathLike)) else type(sample).__name__
            )
            try:
                features[i] = self._sample_features(sample, in_rate, num_clips, mode, generator)
            except MissingAudioStreamError:
                mask[i] = 0
                silent.append(f"[{i}] {source}")
            except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
                errors.append(SampleError(i, source, err))
        raise_for_sample_errors(errors, "audio")

        if self.do_normalize:
            real = mask.bool()  # (batch, num_clips); silent samples stay exactly zero
            features[real] = (features[real] - self.mean) / (2 * self.std)
        _warn_silent(silent)
        data = {"input_features": features, "input_features_mask": mask}
        if return_tensors != "pt":
            data = {k: v.numpy() for k, v in data.items()}
        return BatchFeature(data=data, tensor_type=return_tensors)


def _check_waveform(sample: np.ndarray | torch.Tensor, where: str) -> None:
    """A waveform must be `(samples,)` or `(channels, samples)` with fewer channels than samples."""
    shape = tuple(sample.shape)
    if len(shape) not in (1, 2):
        raise ValueError(
            f"{where} is a {len(shape)}-D array of shape {shape}; a waveform is (samples,) or (channels, samples), "
            "and a batch is a list of waveforms."
        )
    if len(shape) == 2 and shape[0] > shape[1]:
        raise ValueError(
            f"{where} has shape {shape}: more channels than samples. A multi-channel waveform is (channels, "
            "samples); transpose a (samples, channels) array (`wave.T`), and pass a batch as a list."
        )


def as_audio_batch(audio: AudioSample | list[AudioSample]) -> list[AudioSample]:
    """
    The samples of `audio`: a `list`/`tuple` is a batch, anything else one sample (a path, `None`, or one
    waveform). Raises a `ValueError`/`TypeError` naming the position for an empty batch, a list of numbers, an
    unsupported type, or an ambiguous waveform shape.
    """
    single = not isinstance(audio, (list, tuple))
    samples = [audio] if single else list(audio)
    if not samples:
        raise ValueError("`audio` is an empty list; give at least one sample.")
    if not single and all(isinstance(s, (int, float, np.number)) for s in samples):
        raise TypeError(
            "`audio` is a list of numbers; pass one waveform as an array, and a batch as a list of arrays."
        )
    for i, sample in enumerate(samples):
        where = "`audio`" if single else f"`audio[{i}]`"
        if isinstance(sample, (np.ndarray, torch.Tensor)):
            _check_waveform(sample, where)
        elif sample is not None and not isinstance(sample, (str, os.PathLike)):
            raise TypeError(
                f"{where} is a {type(sample).__name__}; a sample is a file path, a waveform array or None."
            )
    return samples


def _warn_silent(silent: list[str]) -> None:
    """One warning naming every sample without an audio stream."""
    if silent:
        warnings.warn(
            f"No audio stream for {len(silent)} sample(s): {', '.join(silent)}; their audio input is all zeros "
            "and `input_features_mask` is 0.",
            UserWarning,
            stacklevel=3,
        )
