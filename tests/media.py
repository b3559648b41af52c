"""Helpers that WRITE small test media files with PyAV and the standard library (no downloads).

Every video frame is a flat grey image whose level encodes its index (see `frame_level`), so a test can tell
which source frames a processor picked by looking at the mean of each output frame.
"""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# Level of frame `i` is FIRST_LEVEL + i * LEVEL_STEP (mod the usable range); 24 distinct levels survive H.264/VP8.
FIRST_LEVEL = 16
LEVEL_STEP = 9
NUM_LEVELS = 24


def frame_level(index: int) -> int:
    """Grey level (0-255) written into frame `index` by `write_video`."""
    return FIRST_LEVEL + (index % NUM_LEVELS) * LEVEL_STEP


def level_to_index(level: float) -> int:
    """Inverse of `frame_level` modulo `NUM_LEVELS`: the frame index (mod 24) a measured grey level encodes."""
    return int(round((level - FIRST_LEVEL) / LEVEL_STEP)) % NUM_LEVELS


def tone(
    seconds: float, sampling_rate: int, channels: int = 1, freq: float = 440.0, seed: int = 0
) -> np.ndarray:
    """A sine tone plus a little noise, float32 in [-1, 1], shape (channels, samples)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    base = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)
    out = np.stack([base * (1.0 - 0.3 * c) for c in range(channels)])
    return out.astype(np.float32)


def write_video(
    path: str | Path,
    num_frames: int = 30,
    fps: int = 10,
    width: int = 64,
    height: int = 48,
    video_codec: str = "libx264",
    audio_codec: str | None = "aac",
    audio_rate: int = 16000,
    audio_channels: int = 1,
    audio_seconds: float | None = None,
    gop: int | None = None,
) -> Path:
    """Write a video whose frame `i` is flat grey at `frame_level(i)`, optionally with a tone soundtrack.

    The container is taken from the file suffix (.mp4, .webm, .mkv, .avi). `audio_codec=None` writes no audio
    stream. `audio_seconds` defaults to the video duration.
    """
    path = Path(path)
    audio_seconds = num_frames / fps if audio_seconds is None else audio_seconds
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream(video_codec, rate=fps)
        vstream.width, vstream.height = width, height
        vstream.pix_fmt = "yuv420p"
        if gop is not None:
            vstream.codec_context.gop_size = gop
        astream = None
        if audio_codec is not None:
            astream = container.add_stream(audio_codec, rate=audio_rate)
            astream.layout = "mono" if audio_channels == 1 else "stereo"
        frame_buf = np.empty((height, width, 3), dtype=np.uint8)
        for i in range(num_frames):
            frame_buf[...] = frame_level(i)
            frame = av.VideoFrame.from_ndarray(frame_buf, format="rgb24")
            for packet in vstream.encode(frame):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            _encode_audio(container, astream, tone(audio_seconds, audio_rate, audio_channels), audio_rate)
    return path


def write_vfr_video(path: str | Path, times_ms: list[int], size: int = 32) -> Path:
    """A variable-frame-rate H.264 .mp4 (no audio): frame `i` is shown from `times_ms[i]` milliseconds and is flat
    grey at `frame_level(i)`."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        frame_buf = np.empty((size, size, 3), dtype=np.uint8)
        for i, time in enumerate(times_ms):
            frame_buf[...] = frame_level(i)
            frame = av.VideoFrame.from_ndarray(frame_buf, format="rgb24")
            frame.pts, frame.time_base = time, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _encode_audio(container, stream, samples: np.ndarray, rate: int, chunk: int = 4096) -> None:
    """Encode (channels, samples) float32 audio in chunks, letting PyAV convert to the codec's sample format."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=rate)
    pts = 0
    for start in range(0, samples.shape[1], chunk):
        block = np.ascontiguousarray(samples[:, start : start + chunk]).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = pts
        frame.time_base = Fraction(1, rate)
        pts += block.shape[1]
        for resampled in resampler.resample(frame):
            for packet in stream.encode(resampled):
                container.mux(packet)
    for resampled in resampler.resample(None):
        for packet in stream.encode(resampled):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_wav(path: str | Path, samples: np.ndarray, sampling_rate: int) -> Path:
    """Write float samples in [-1, 1], shape (samples,) or (channels, samples), as 16-bit PCM with `wave`."""
    path = Path(path)
    samples = np.atleast_2d(samples)
    pcm = np.clip(np.round(samples.T * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(samples.shape[0])
        f.setsampwidth(2)
        f.setframerate(sampling_rate)
        f.writeframes(pcm.tobytes())
    return path


def write_truncated(src: str | Path, dst: str | Path, keep_fraction: float = 0.1) -> Path:
    """Copy the first `keep_fraction` of a media file's bytes, which leaves an undecodable/truncated file."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: max(16, int(len(data) * keep_fraction))])
    return Path(dst)


def write_empty_video(path: str | Path, width: int = 32, height: int = 32) -> Path:
    """Write a Matroska file whose H.264 video stream holds no frames (only its 1 s AAC audio has packets)."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=10)
        vstream.width, vstream.height = width, height
        vstream.pix_fmt = "yuv420p"
        astream = container.add_stream("aac", rate=16000)
        astream.layout = "mono"
        _encode_audio(container, astream, tone(1.0, 16000), 16000)
    return path


def write_truncated_stream(src: str | Path, dst: str | Path, keep_fraction: float = 0.5) -> Path:
    """Cut a streamable file (WebM/Matroska: header first) part-way, keeping the header that states its length."""
    return write_truncated(src, dst, keep_fraction)


def make_test_media(directory: str | Path) -> dict[str, Path]:
    """Write the standard small test files into `directory` (about 0.2 s) and return them by name.

    - `mp4`: 30 frames, 10 fps, 64x48 H.264 + stereo 16 kHz AAC (3 s);
    - `webm`: 30 frames VP8 + 48 kHz Opus;
    - `mkv`: 25 frames VP9 + 22.05 kHz FLAC;
    - `avi`: 25 frames MPEG-4 part 2 + PCM;
    - `silent`: 30-frame H.264 .mp4 without an audio stream;
    - `short`: 3-frame .mp4 (fewer frames than sampled);
    - `wav`: 2 s mono 22.05 kHz 16-bit tone; `wav16k_stereo`: 2 s stereo 16 kHz;
    - `empty`: an .mkv with a video stream of 0 frames (and a soundtrack);
    - `garbage`: random bytes named .mp4; `truncated`: the first 10% of `mp4` (its index is lost);
    - `truncated_webm`: the first 40% of a 12 s WebM (the header still promises 120 frames).
    """
    d = Path(directory)
    rng = np.random.default_rng(0)
    files = {
        "mp4": write_video(d / "clip.mp4", audio_channels=2),
        "webm": write_video(d / "clip.webm", video_codec="libvpx", audio_codec="libopus", audio_rate=48000),
        "mkv": write_video(
            d / "clip.mkv", 25, video_codec="libvpx-vp9", audio_codec="flac", audio_rate=22050
        ),
        "avi": write_video(
            d / "clip.avi", 25, video_codec="mpeg4", audio_codec="pcm_s16le", audio_rate=22050
        ),
        "silent": write_video(d / "silent.mp4", audio_codec=None),
        "short": write_video(d / "short.mp4", num_frames=3, audio_codec=None),
        "wav": write_wav(d / "tone.wav", tone(2.0, 22050)[0], 22050),
        "wav16k_stereo": write_wav(d / "stereo16k.wav", tone(2.0, 16000, channels=2, freq=300.0), 16000),
        "empty": write_empty_video(d / "empty.mkv"),
    }
    files["garbage"] = d / "garbage.mp4"
    files["garbage"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["truncated"] = write_truncated(files["mp4"], d / "truncated.mp4")
    long_webm = write_video(
        d / "long.webm", 120, video_codec="libvpx", audio_codec="libopus", audio_rate=48000
    )
    files["truncated_webm"] = write_truncated_stream(long_webm, d / "truncated.webm", 0.4)
    return files


def write_long_video(path: str | Path, minutes: float = 10.0) -> Path:
    """A cheap long video: 32x32 px at 1 fps (H.264, keyframe every 10 s) with 8 kHz PCM audio, in Matroska."""
    return write_video(
        path,
        num_frames=int(minutes * 60),
        fps=1,
        width=32,
        height=32,
        audio_codec="pcm_s16le",
        audio_rate=8000,
        gop=10,
    )
