"""Decoding of video frames and soundtracks for VALOR, straight from media files.

Video frames are read with decord or with PyAV; audio is read with PyAV, which can seek, so a long file only has
the time windows that are needed decoded. Every failure is turned into an exception that names the file (and the
backend): see `MediaDecodeError`, `EmptyVideoError` and `MissingAudioStreamError`.

Frames are chosen by time, the same way by both backends: the sampling rule picks indices in `[0, frames)` of
the container's frame count, index `i` stands for the time `i / fps` (the average frame rate) from the first
frame, and the frame shown nearest to that time is decoded (the earlier one on a tie; see [`nearest_frames`]).
For a constant frame rate this is frame `i`; for a variable frame rate it samples the video evenly in time,
where counting frames would crowd the samples into the stretches with more frames per second.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from transformers.video_utils import VideoMetadata

VideoBackend = Literal["decord", "pyav"]
SamplingMode = Literal["middle", "random"]
VIDEO_BACKENDS: tuple[str, ...] = ("decord", "pyav")

# Keep decoding sequentially (instead of seeking) while the next wanted frame is at most this many seconds ahead.
_SEEK_GAP_SECONDS = 2.0
# Decode this much audio before a seek target so the decoder and the resampler have settled at the window start.
_AUDIO_PREROLL_SECONDS = 0.5


class MediaDecodeError(ValueError):
    """A media file could not be opened or decoded. Carries the `path` and the `backend` that failed."""

    def __init__(self, path: str, backend: str, reason: str):
        self.path = path
        self.backend = backend
        super().__init__(f"Could not decode {path!r} with backend {backend!r}: {reason}")


class EmptyVideoError(ValueError):
    """A video file has a video stream with no frames (or no video stream at all)."""

    def __init__(self, path: str, backend: str, reason: str = "the video has 0 frames"):
        self.path = path
        self.backend = backend
        super().__init__(f"Empty video {path!r} (backend {backend!r}): {reason}")


class MissingAudioStreamError(ValueError):
    """A media file has no audio stream. `ValorFeatureExtractor` turns this into a silent, masked sample."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(f"{path!r} has no audio stream")


def check_path(path: str | os.PathLike) -> str:
    """Return `path` as a string, raising `FileNotFoundError` naming it when it is not an existing file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such media file: {path!r}")
    return path


def segment_indices(
    total: int,
    num: int,
    mode: SamplingMode = "middle",
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """VALOR's segment rule: pick `num` indices out of `range(total)`.

    The range is split into `num` contiguous segments whose lengths differ by at most one (the first
    `total % num` segments are one longer). `"middle"` takes the middle element of each segment (the lower one
    for even lengths), `"random"` a uniformly random element. With `total < num`, the last index is repeated
    to fill up: `[0, 1, ..., total - 1, total - 1, ...]`.

    Returns:
        `np.ndarray` of shape `(num,)`, dtype int64, non-decreasing.
    """
    if total <= 0:
        raise ValueError(f"Cannot sample from an empty sequence (total={total}).")
    if num <= 0:
        raise ValueError(f"The number of samples must be positive, got {num}.")
    padded = max(total, num)
    k, m = divmod(padded, num)
    i = np.arange(num)
    starts = i * k + np.minimum(i, m)  # (num,)
    lengths = k + (i < m)  # (num,)
    if mode == "middle":
        offsets = (lengths + 1) // 2 - 1
    elif mode == "random":
        u = torch.rand(num, generator=generator, dtype=torch.float64).numpy()
        offsets = np.minimum((u * lengths).astype(np.int64), lengths - 1)
    else:
        raise ValueError(f"`sampling` must be 'middle' or 'random', got {mode!r}.")
    return np.minimum(starts + offsets, total - 1).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# Video
# ----------------------------------------------------------------------------------------------------------------


def read_video(
    path: str | os.PathLike,
    sample_indices_fn: Callable[[VideoMetadata], np.ndarray],
    backend: VideoBackend = "decord",
) -> tuple[np.ndarray, VideoMetadata]:
    """Decode only the frames chosen by `sample_indices_fn(metadata)`.

    Args:
        path: the video file.
        sample_indices_fn: receives a `VideoMetadata` (with `total_num_frames`, `fps`, `duration`) and returns
            the frame indices to decode (repeats allowed).
        backend: `"decord"` (through `transformers.video_utils.load_video`) or `"pyav"`.

    Returns:
        `(frames, metadata)`: uint8 RGB frames of shape `(len(indices), height, width, 3)` and the metadata with
        `frames_indices` set.

    Raises:
        FileNotFoundError: the file does not exist.
        EmptyVideoError: the video has no frames.
        MediaDecodeError: the file cannot be opened or decoded by `backend`.
    """
    path = check_path(path)
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"Unknown video backend {backend!r}; choose one of {VIDEO_BACKENDS}.")

    def checked_fn(metadata: VideoMetadata, **_) -> np.ndarray:
        if not metadata.total_num_frames:
            raise EmptyVideoError(path, backend)
        return np.asarray(sample_indices_fn(metadata), dtype=np.int64)

    try:
        if backend == "decord":
            frames, metadata = _read_video_decord(path, checked_fn)
        else:
            frames, metadata = _read_video_pyav(path, checked_fn)
    except (EmptyVideoError, FileNotFoundError):
        raise
    except Exception as err:  # decord and PyAV raise many unrelated exception types
        if _has_no_video_frames(path):
            raise EmptyVideoError(path, backend, "the file has no video frames") from err
        raise MediaDecodeError(path, backend, f"{type(err).__name__}: {err}") from err
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise EmptyVideoError(path, backend, "no frame could be decoded")
    return frames, metadata


def nearest_frames(frame_times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """
    For every target time, the index of the frame whose timestamp is nearest (the earlier one on a tie).

    Args:
        frame_times: `(frames,)` presentation times in seconds, non-decreasing.
        targets: `(n,)` times in seconds.
    """
    after = np.clip(np.searchsorted(frame_times, targets, side="left"), 0, len(frame_times) - 1)
    before = np.clip(after - 1, 0, len(frame_times) - 1)
    take_before = (targets - frame_times[before]) <= (frame_times[after] - targets)
    return np.where(take_before, before, after).astype(np.int64)


def _target_times(indices: np.ndarray, fps: float) -> np.ndarray:
    return np.asarray(indices, dtype=np.float64) / fps


def _read_video_decord(path: str, sample_indices_fn: Callable) -> tuple[np.ndarray, VideoMetadata]:
    """decord reader that picks frames by timestamp (see the module docstring), from decord's frame index."""
    from decord import VideoReader, cpu

    reader = VideoReader(uri=path, ctx=cpu(0))
    total, fps = len(reader), float(reader.get_avg_fps())
    metadata = VideoMetadata(
        total_num_frames=int(total), fps=fps, duration=total / fps if fps else 0.0, video_backend="decord"
    )
    indices = sample_indices_fn(metadata=metadata)
    chosen = indices
    times = reader.get_frame_timestamp(np.arange(total))[:, 0].astype(np.float64) if fps > 0 else None
    # Without usable timestamps (none, or not in presentation order) frames can only be counted.
    if times is not None and np.all(np.isfinite(times)) and np.all(np.diff(times) >= 0):
        chosen = nearest_frames(times - times[0], _target_times(indices, fps))
    video = reader.get_batch(np.minimum(chosen, total - 1)).asnumpy()  # (T, H, W, 3)
    metadata.update({"frames_indices": indices, "height": video.shape[1], "width": video.shape[2]})
    return video, metadata


def _has_no_video_frames(path: str) -> bool:
    """Whether PyAV can open `path` and finds no video stream or not a single video packet in it."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                return True
            return not any(packet.size for packet in container.demux(container.streams.video[0]))
    except Exception:
        return False


def _pick_frames_pyav(
    container, stream, indices: np.ndarray, fps: float, total: int
) -> dict[int, np.ndarray]:
    """
    Decode the frame nearest to each index's time ([`nearest_frames`]' rule) while streaming: for every target
    the decoder runs to the first frame at or after it, keeping the frame before; a far target is reached by
    seeking to the keyframe before it.
    """
    start_pts, time_base = stream.start_time or 0, float(stream.time_base)
    picked: dict[int, np.ndarray] = {}
    decoder, window = None, []  # the last two decoded (time, frame): the neighbours of the current target
    for index in np.unique(indices).tolist():
        target = float(_target_times(np.array([index]), fps)[0])
        if decoder is None or not window or target - window[-1][0] > _SEEK_GAP_SECONDS:
            container.seek(int(start_pts + target / time_base), stream=stream, backward=True)
            decoder, window = container.decode(stream), []
        while not window or window[-1][0] < target:
            frame = next(decoder, None)
            if frame is None:
                break
            counted = window[-1][0] + 1 / fps if window else 0.0
            time = (frame.pts - start_pts) * time_base if frame.pts is not None else counted
            window = [*window[-1:], (time, frame)]
        if not window:
            break
        time, frame = window[int(nearest_frames(np.array([t for t, _ in window]), np.array([target]))[0])]
        if window[-1][0] < target and target - time > max(2, 0.1 * total) / fps:
            # The header promised more frames than the stream holds.
            raise ValueError(
                f"the video stream ends at {time:.2f} s (about frame {round(time * fps)}) but its header promises "
                f"{total} frames (truncated file?)"
            )
        picked[index] = frame.to_ndarray(format="rgb24")
    return picked


def _read_video_pyav(path: str, sample_indices_fn: Callable) -> tuple[np.ndarray, VideoMetadata]:
    """PyAV reader that seeks to each wanted frame, so the cost and memory do not grow with the video length.

    `transformers`' own PyAV reader decodes from the start and drops repeated indices, and it relies on the
    container's frame count, which WebM/Matroska files do not store; this one estimates the count from the
    duration and frame rate and returns one frame per requested index.
    """
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise EmptyVideoError(path, "pyav", "the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / av.time_base
        total = stream.frames or int(round(duration * fps))
        metadata = VideoMetadata(
            total_num_frames=int(total),
            fps=fps,
            duration=duration,
            video_backend="pyav",
            width=stream.width,
            height=stream.height,
        )
        indices = sample_indices_fn(metadata=metadata)
        if fps <= 0:
            raise ValueError("the video stream has no frame rate")
        picked = _pick_frames_pyav(container, stream, indices, fps, total)
    if not picked:
        return np.empty((0,), dtype=np.uint8), metadata
    # Indices past the real end (the frame count is an estimate for some containers) take the last frame.
    fallback = picked[max(picked)]
    video = np.stack([picked.get(i, fallback) for i in indices.tolist()])  # (T, H, W, 3)
    metadata.frames_indices = indices
    return video, metadata


# ----------------------------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class AudioInfo:
    """What is known about a file's first audio stream before decoding it."""

    duration: float
    """Length in seconds (from the stream, or the container when the stream does not say)."""
    sampling_rate: int
    channels: int


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """Read the duration, rate and channel count of the first audio stream of `path` without decoding it.

    Raises:
        FileNotFoundError, MissingAudioStreamError, MediaDecodeError.
    """
    import av

    path = check_path(path)
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MissingAudioStreamError(path)
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            else:
                duration = (container.duration or 0) / av.time_base
            return AudioInfo(duration=duration, sampling_rate=int(stream.rate or 0), channels=stream.channels)
    except MissingAudioStreamError:
        raise
    except Exception as err:
        raise MediaDecodeError(path, "pyav", f"{type(err).__name__}: {err}") from err


def read_audio(
    path: str | os.PathLike,
    sampling_rate: int,
    start: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
    """Decode the first audio stream of `path` as mono float32 at `sampling_rate` (channels averaged).

    Only `[start, start + duration)` seconds are decoded: the reader seeks close to `start` and stops once the
    window is filled, so memory is proportional to `duration`, not to the file's length. With `start=0` and
    `duration=None` the whole stream is returned.

    Raises:
        FileNotFoundError, MissingAudioStreamError, MediaDecodeError (PyAV could not open or decode the file).
    """
    import av

    path = check_path(path)
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MissingAudioStreamError(path)
            stream = container.streams.audio[0]
            stream.thread_type = "AUTO"
            # Keep the channel layout; the channels are averaged below (ffmpeg's own down-mix is not an average).
            resampler = av.AudioResampler(format="fltp", rate=sampling_rate)
            first_sample = int(round(start * sampling_rate))
            wanted = None if duration is None else int(round(duration * sampling_rate))
            origin = stream.start_time or 0  # in stream.time_base units
            if start > _AUDIO_PREROLL_SECONDS:
                seek_to = start - _AUDIO_PREROLL_SECONDS
                container.seek(int(origin + seek_to / stream.time_base), stream=stream, backward=True)
            chunks: list[np.ndarray] = []
            offset = None  # sample index (at `sampling_rate`, from the stream start) of chunks[0][0]
            have = 0
            done = False
            for frame in container.decode(stream):
                if offset is None:
                    offset = (
                        0
                        if (start == 0 or frame.pts is None)
                        else int(round((frame.pts - origin) * stream.time_base * sampling_rate))
                    )
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))  # (samples,)
                    have += chunks[-1].shape[0]
                if wanted is not None and offset + have >= first_sample + wanted:
                    done = True
                    break
            if not done:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
    except MissingAudioStreamError:
        raise
    except Exception as err:
        raise MediaDecodeError(path, "pyav", f"{type(err).__name__}: {err}") from err
    if not chunks:
        return np.zeros((0,), dtype=np.float32)
    waveform = np.concatenate(chunks)
    offset = offset or 0
    if offset > first_sample:  # the stream starts after `start`: the gap is silence
        waveform = np.concatenate([np.zeros(offset - first_sample, dtype=np.float32), waveform])
        offset = first_sample
    lead = first_sample - offset
    end = None if wanted is None else lead + wanted
    return np.ascontiguousarray(waveform[lead:end], dtype=np.float32)


def resample_waveform(waveform: np.ndarray, orig_rate: int, rate: int) -> np.ndarray:
    """Resample a mono float32 waveform with ffmpeg's resampler (through PyAV); a no-op when the rates match."""
    waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    if orig_rate == rate or waveform.size == 0:
        return waveform
    import av

    frame = av.AudioFrame.from_ndarray(waveform[None, :], format="fltp", layout="mono")
    frame.sample_rate = orig_rate
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    out = [f.to_ndarray()[0] for f in resampler.resample(frame)]
    out += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0,), dtype=np.float32)


@dataclass
class SampleError:
    """One failed sample of a batch: its position, its source (a path, or a description) and the error."""

    index: int
    source: str
    error: Exception


def raise_for_sample_errors(errors: list[SampleError], what: str) -> None:
    """Raise one exception that lists every failed sample of a batch by index and path (no-op if none).

    The exception is a `FileNotFoundError` when every failure is a missing file, otherwise a `MediaBatchError`
    (a `ValueError`); it chains the first underlying error and keeps them all in `.errors`.
    """
    if not errors:
        return
    details = "; ".join(f"[{e.index}] {e.source}: {e.error}" for e in errors)
    message = f"{len(errors)} {what} sample(s) could not be read: {details}"
    if all(isinstance(e.error, FileNotFoundError) for e in errors):
        exc: Exception = FileNotFoundError(message)
    else:
        exc = MediaBatchError(message)
    exc.errors = errors  # type: ignore[attr-defined]
    raise exc from errors[0].error


class MediaBatchError(ValueError):
    """Some samples of a batch could not be decoded; `.errors` lists them as `SampleError`s."""
