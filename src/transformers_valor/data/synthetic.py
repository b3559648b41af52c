"""A synthetic audiovisual captioning corpus: the project's embedded default dataset.

Every clip is a short .mp4 (H.264 video + AAC audio) showing one coloured shape that moves in one direction
while one sound event plays. Colour, shape and direction are drawn independently of the sound, so the visual
half of a caption can only be answered from the frames and the sound half only from the soundtrack.

The corpus is written in the `datasets` videofolder/audiofolder layout::

    output_dir/
      manifest.json              parameters and counts, written last (marks a complete corpus)
      train/metadata.jsonl       one row per clip: file_name, caption, captions, id, attributes
      train/train_00000.mp4 ...
      test/metadata.jsonl
      test/test_00000.mp4 ...

Command line::

    python -m transformers_valor.data.synthetic --output_dir DIR --num_train 2000 --num_test 200 --seed 0

Generation is deterministic given the seed and the format parameters, and cached: a second call with the same
parameters on a complete corpus returns at once without touching any file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "ATTRIBUTES",
    "COLORS",
    "SHAPES",
    "DIRECTIONS",
    "SOUNDS",
    "LOUDNESS",
    "CAPTION_TEMPLATES",
    "CORPUS_VERSION",
    "attribute_accuracy",
    "generate_corpus",
    "load_metadata",
    "make_captions",
    "plan_metadata",
    "parse_attributes",
    "render_audio",
    "render_clip_arrays",
    "render_frames",
    "compress_frames",
    "select_video_codec",
    "write_clip",
]

CORPUS_VERSION = 1
"""Bump when the rendering, the captions or the file layout change: it invalidates cached corpora."""

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
SOUNDS: tuple[str, ...] = (
    "high_beep",
    "low_hum",
    "clicks",
    "rising_whistle",
    "falling_whistle",
    "noise_bursts",
)
LOUDNESS: tuple[str, ...] = ("quiet", "medium", "loud")
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "direction", "sound")
"""The attributes every caption names (and `parse_attributes` reads back)."""

_RGB = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 215, 40),
}
_PEAK_GAIN = {"quiet": 0.12, "medium": 0.28, "loud": 0.6}

# Surface forms used by the caption templates. Direction words: `d_bare` ("moves left"), `d_to`
# ("slides to the left"), `d_ward` ("travels leftward"). Sound phrases: `s_a` and `s_b`; every `s_b` phrase is
# grammatically singular so it can be the subject of a verb.
_DIRECTION_FORMS = {
    "d_bare": {"left": "left", "right": "right", "up": "up", "down": "down"},
    "d_to": {"left": "to the left", "right": "to the right", "up": "upward", "down": "downward"},
    "d_ward": {"left": "leftward", "right": "rightward", "up": "upwards", "down": "downwards"},
}
_SOUND_FORMS = {
    "s_a": {
        "high_beep": "a high beep",
        "low_hum": "a low hum",
        "clicks": "rapid clicks",
        "rising_whistle": "a rising whistle",
        "falling_whistle": "a falling whistle",
        "noise_bursts": "bursts of noise",
    },
    "s_b": {
        "high_beep": "a high-pitched beep",
        "low_hum": "a deep hum",
        "clicks": "a fast clicking",
        "rising_whistle": "a whistle rising in pitch",
        "falling_whistle": "a whistle falling in pitch",
        "noise_bursts": "a series of noise bursts",
    },
}

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {color} {shape} moves {d_bare} and {s_a} can be heard",
    "{s_a} can be heard as a {color} {shape} slides {d_to}",
    "a {color} {shape} travels {d_ward} with {s_b} in the background",
    "you can see a {color} {shape} heading {d_to} and hear {s_a}",
    "to the sound of {s_b}, a {color} {shape} goes {d_bare}",
    "a {color} {shape} drifting {d_ward}, accompanied by {s_a}",
    "there is {s_b} while a {color} {shape} moves {d_to}",
    "the clip shows a {color} {shape} sliding {d_bare} while {s_b} sounds",
)
"""Paraphrase templates; fields `color`, `shape`, `d_bare`/`d_to`/`d_ward` and `s_a`/`s_b`."""

# Patterns that read a canonical attribute value back from any template's wording.
_PATTERNS: dict[str, dict[str, re.Pattern[str]]] = {
    "color": {c: re.compile(rf"\b{c}\b") for c in COLORS},
    "shape": {s: re.compile(rf"\b{s}s?\b") for s in SHAPES},
    "direction": {
        "left": re.compile(r"\bleft(wards?)?\b"),
        "right": re.compile(r"\bright(wards?)?\b"),
        "up": re.compile(r"\bup(wards?)?\b"),
        "down": re.compile(r"\bdown(wards?)?\b"),
    },
    "sound": {
        "high_beep": re.compile(r"\bbeep"),
        "low_hum": re.compile(r"\bhum(s|ming)?\b"),
        "clicks": re.compile(r"\bclick"),
        "rising_whistle": re.compile(r"\b(rising|ascending) whistle|\bwhistle (rising|ascending)"),
        "falling_whistle": re.compile(r"\b(falling|descending) whistle|\bwhistle (falling|descending)"),
        "noise_bursts": re.compile(r"\bnoise bursts?\b|\bbursts? of noise\b"),
    },
}


def make_captions(color: str, shape: str, direction: str, sound: str) -> list[str]:
    """Render every caption template for one clip.

    Args:
        color, shape, direction, sound: canonical attribute values (members of `COLORS`, `SHAPES`,
            `DIRECTIONS`, `SOUNDS`).

    Returns:
        One lower-case caption per entry of `CAPTION_TEMPLATES`, in template order.
    """
    for value, vocab, name in (
        (color, COLORS, "color"),
        (shape, SHAPES, "shape"),
        (direction, DIRECTIONS, "direction"),
        (sound, SOUNDS, "sound"),
    ):
        if value not in vocab:
            raise ValueError(f"Unknown {name} {value!r}; expected one of {vocab}.")
    fields = {"color": color, "shape": shape}
    fields.update({key: forms[direction] for key, forms in _DIRECTION_FORMS.items()})
    fields.update({key: forms[sound] for key, forms in _SOUND_FORMS.items()})
    return [template.format(**fields) for template in CAPTION_TEMPLATES]


def parse_attributes(caption: str) -> dict[str, str | None]:
    """Read the canonical attribute values back from a caption.

    Works for every template in `CAPTION_TEMPLATES` (e.g. "slides to the left" -> `left`, "a deep hum" ->
    `low_hum`) and is tolerant of case and punctuation, so it can also score generated captions.

    Args:
        caption: free text.

    Returns:
        `{"color": ..., "shape": ..., "direction": ..., "sound": ...}` with canonical values, `None` where the
        caption names none. When several values of one attribute are named, the earliest mention wins.
    """
    text = caption.lower()
    result: dict[str, str | None] = {}
    for attribute, patterns in _PATTERNS.items():
        best: tuple[int, str] | None = None
        for value, pattern in patterns.items():
            match = pattern.search(text)
            if match is not None and (best is None or match.start() < best[0]):
                best = (match.start(), value)
        result[attribute] = None if best is None else best[1]
    return result


def attribute_accuracy(predictions: Sequence[str], rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Share of generated captions that name each attribute of their clip correctly.

    Args:
        predictions: one generated caption per clip.
        rows: the clips' metadata rows (with `color`, `shape`, `direction`, `sound`), in the same order.

    Returns:
        `{"color", "shape", "direction", "sound", "all"}`: fractions in [0, 1]; `all` is the share of captions
        with every attribute right.
    """
    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows.")
    correct = dict.fromkeys(ATTRIBUTES, 0)
    all_right = 0
    for text, row in zip(predictions, rows):
        parsed = parse_attributes(text)
        hits = [parsed[a] == row[a] for a in ATTRIBUTES]
        for attribute, hit in zip(ATTRIBUTES, hits):
            correct[attribute] += hit
        all_right += all(hits)
    count = max(len(rows), 1)
    return {**{a: correct[a] / count for a in ATTRIBUTES}, "all": all_right / count}


def render_frames(
    color: str,
    shape: str,
    direction: str,
    rng: np.random.Generator,
    image_size: int = 64,
    num_frames: int = 16,
    motion_trail: int = 0,
) -> np.ndarray:
    """Draw a coloured shape moving in one direction over a tinted background.

    Random distractors drawn from `rng`: shape size, start position, travel distance (speed), the exact
    shade of the colour, the background tint and gradient.

    Args:
        color, shape, direction: canonical attribute values.
        rng: the clip's random generator.
        image_size: height and width in pixels.
        num_frames: number of frames.
        motion_trail: number of fading copies of the shape drawn behind it (spaced half a shape apart, each
            fainter than the last), a motion-blur trail that shows the direction in every single frame. 0
            draws the shape alone, so the direction is only visible across frames.

    Returns:
        `uint8` array of shape `(num_frames, image_size, image_size, 3)`, RGB.
    """
    size = float(image_size)
    half = rng.uniform(0.13, 0.17) * size  # half extent of the shape
    travel = rng.uniform(0.35, 0.5) * size
    margin = half + 1.0
    start = rng.uniform(margin, size - margin - travel)
    across = rng.uniform(margin, size - margin)
    progress = np.linspace(0.0, 1.0, num_frames)
    along = start + travel * progress  # (T,)
    if direction in ("left", "up"):
        along = size - along
    if direction in ("left", "right"):
        cx, cy = along, np.full(num_frames, across)
    elif direction in ("up", "down"):
        cx, cy = np.full(num_frames, across), along
    else:
        raise ValueError(f"Unknown direction {direction!r}; expected one of {DIRECTIONS}.")

    if shape not in SHAPES:
        raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")
    if motion_trail < 0:
        raise ValueError(f"motion_trail must be >= 0, got {motion_trail}.")
    mask = _shape_mask(shape, cx, cy, half, image_size)

    grey = rng.uniform(40.0, 80.0)
    tint = rng.uniform(-12.0, 12.0, size=3)
    gradient = rng.uniform(-10.0, 10.0) * np.linspace(-1.0, 1.0, image_size)
    background = grey + tint[None, None, :] + gradient[:, None, None]  # (H, W, 3)
    rgb = np.clip(np.array(_RGB[color], dtype=np.float64) + rng.uniform(-20.0, 20.0, size=3), 0, 255)
    frames = np.broadcast_to(background[None], (num_frames, image_size, image_size, 3)).copy()
    # Farthest copy first, so nearer (stronger) copies and finally the shape itself are drawn over it.
    behind = {"right": (-1.0, 0.0), "left": (1.0, 0.0), "down": (0.0, -1.0), "up": (0.0, 1.0)}[direction]
    for copy in range(motion_trail, 0, -1):
        offset = 0.5 * half * copy
        ghost = _shape_mask(shape, cx + behind[0] * offset, cy + behind[1] * offset, half, image_size)
        alpha = 0.6 * (1.0 - copy / (motion_trail + 1))
        frames = np.where(ghost[..., None], (1.0 - alpha) * frames + alpha * rgb, frames)
    frames = np.where(mask[..., None], rgb, frames)  # (T, H, W, 3)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _shape_mask(shape: str, cx: np.ndarray, cy: np.ndarray, half: float, image_size: int) -> np.ndarray:
    """Boolean `(T, H, W)` mask of `shape` centred at `(cx[t], cy[t])` with half extent `half`."""
    coords = np.arange(image_size, dtype=np.float64) + 0.5
    dx = coords[None, None, :] - cx[:, None, None]  # (T, 1, W)
    dy = coords[None, :, None] - cy[:, None, None]  # (T, H, 1)
    if shape == "circle":
        return dx**2 + dy**2 <= half**2
    if shape == "square":
        side = 0.85 * half
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    # Upward triangle: apex at cy - half, base at cy + 0.75 * half, base half-width `half`.
    height = 1.75 * half
    from_apex = dy + half
    return (from_apex >= 0) & (from_apex <= height) & (np.abs(dx) <= from_apex * (half / height))


def _band_noise(rng: np.random.Generator, num_samples: int, sample_rate: int, low: float, high: float):
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples, 1.0 / sample_rate)
    spectrum[(freqs < low) | (freqs > high)] = 0.0
    noise = np.fft.irfft(spectrum, n=num_samples)
    return noise / (np.abs(noise).max() + 1e-12)


def _gates(t: np.ndarray, onsets: np.ndarray, length: float, ramp: float) -> np.ndarray:
    """Sum of trapezoid envelopes (linear `ramp`-second fades) starting at `onsets`, each `length` long."""
    rel = t[None, :] - onsets[:, None]  # (num_events, N)
    env = np.clip(np.minimum(rel, length - rel) / ramp, 0.0, 1.0)
    return env.max(axis=0)


def render_audio(
    sound: str,
    loudness: str,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    duration: float = 2.0,
) -> np.ndarray:
    """Synthesise a soundtrack carrying one sound event over a quiet background.

    The events are chosen to be distinct in a 64-bin log-mel fbank: `high_beep` is 3-4 tone pips near 3 kHz,
    `low_hum` a ~150 Hz tone with harmonics, `clicks` short broadband pulses at ~10 per second,
    `rising_whistle`/`falling_whistle` exponential sweeps between ~500 Hz and ~4 kHz, `noise_bursts` 1-4 kHz
    band noise switched on and off. Random distractors: event onset and length, pitch and rate jitter, a quiet
    background tone at a random frequency and a white-noise floor.

    Args:
        sound: member of `SOUNDS`.
        loudness: member of `LOUDNESS`; sets the event's peak amplitude.
        rng: the clip's random generator.
        sample_rate: samples per second.
        duration: seconds.

    Returns:
        `float32` mono waveform of `round(sample_rate * duration)` samples in [-1, 1].
    """
    num_samples = int(round(sample_rate * duration))
    t = np.arange(num_samples) / sample_rate
    onset = rng.uniform(0.0, 0.25 * duration)
    length = min(rng.uniform(0.6, 0.85) * duration, duration - onset)
    window = _gates(t, np.array([onset]), length, 0.03)
    rel = np.clip(t - onset, 0.0, length)  # time since the event started

    if sound == "high_beep":
        freq = rng.uniform(2800.0, 3300.0)
        count = int(rng.integers(3, 5))
        pip = rng.uniform(0.12, 0.18)
        onsets = onset + np.arange(count) * (length / count)
        event = np.sin(2 * np.pi * freq * t) * _gates(t, onsets, pip, 0.005)
    elif sound == "low_hum":
        f0 = rng.uniform(130.0, 170.0)
        tone = sum(a * np.sin(2 * np.pi * k * f0 * t) for k, a in ((1, 1.0), (2, 0.4), (3, 0.15)))
        event = tone * window
    elif sound == "clicks":
        rate = rng.uniform(9.0, 12.0)
        onsets = onset + np.arange(0.0, length - 0.005, 1.0 / rate)
        rel_click = t[None, :] - onsets[:, None]  # (num_clicks, N)
        decay = np.where(rel_click >= 0, np.exp(-np.maximum(rel_click, 0.0) / 0.0015), 0.0).sum(axis=0)
        event = rng.standard_normal(num_samples) * decay
    elif sound in ("rising_whistle", "falling_whistle"):
        low, high = rng.uniform(450.0, 550.0), rng.uniform(3600.0, 4400.0)
        frac = rel / length
        if sound == "falling_whistle":
            frac = 1.0 - frac
        freq = low * (high / low) ** frac
        phase = 2 * np.pi * np.cumsum(freq) / sample_rate
        event = np.sin(phase) * window
    elif sound == "noise_bursts":
        count = int(rng.integers(3, 5))
        burst = rng.uniform(0.15, 0.22)
        onsets = onset + np.arange(count) * (length / count)
        event = _band_noise(rng, num_samples, sample_rate, 1000.0, 4000.0) * _gates(t, onsets, burst, 0.01)
    else:
        raise ValueError(f"Unknown sound {sound!r}; expected one of {SOUNDS}.")
    if loudness not in _PEAK_GAIN:
        raise ValueError(f"Unknown loudness {loudness!r}; expected one of {LOUDNESS}.")

    gain = _PEAK_GAIN[loudness] * rng.uniform(0.9, 1.1)
    event = gain * event / (np.abs(event).max() + 1e-12)
    background_freq = rng.uniform(300.0, 1200.0)
    background = rng.uniform(0.004, 0.012) * np.sin(
        2 * np.pi * background_freq * t + rng.uniform(0, 2 * np.pi)
    )
    floor = rng.uniform(0.002, 0.006) * rng.standard_normal(num_samples)
    return np.clip(event + background + floor, -1.0, 1.0).astype(np.float32)


def select_video_codec() -> str:
    """Pick the H.264 encoder to use: `libx264` if PyAV has it, else `libopenh264`, else `mpeg4` (warns)."""
    import av

    for name in ("libx264", "libopenh264"):
        try:
            av.codec.Codec(name, "w")
        except Exception:  # PyAV raises UnknownCodecError (or ValueError in older releases)
            continue
        return name
    warnings.warn(
        "No H.264 encoder in this PyAV build; the synthetic corpus falls back to MPEG-4 Part 2.", stacklevel=2
    )
    return "mpeg4"


def write_clip(
    path: str | os.PathLike,
    frames: np.ndarray,
    audio: np.ndarray,
    fps: int,
    sample_rate: int,
    video_codec: str = "libx264",
) -> None:
    """Encode frames and a mono waveform into an .mp4 file, atomically (temporary name, then rename).

    Args:
        path: destination file.
        frames: `uint8` RGB frames, `(T, H, W, 3)` with even `H` and `W`.
        audio: mono waveform in [-1, 1], `(N,)`.
        fps: frames per second.
        sample_rate: audio samples per second (AAC, 32 kbit/s).
        video_codec: encoder name, see `select_video_codec`.
    """
    import av

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    _, height, width, _ = frames.shape
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            video = _add_video_stream(container, video_codec, fps, width, height)
            # The "fast" coder keeps tones clean at 32 kbit/s; the default one overshoots whistles by ~70%.
            sound = container.add_stream("aac", rate=sample_rate, options={"aac_coder": "fast"})
            sound.layout = "mono"
            sound.bit_rate = 32_000
            _mux_frames(container, video, frames)
            chunk = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio, dtype=np.float32)[None], format="fltp", layout="mono"
            )
            chunk.sample_rate = sample_rate
            chunk.pts = 0
            container.mux(sound.encode(chunk))
            container.mux(sound.encode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _add_video_stream(container, video_codec: str, fps: int, width: int, height: int):
    """The corpus's video stream: yuv420p, a GOP of one second, libx264 at CRF 20 (others at 400 kbit/s)."""
    # Single-threaded encoders and a short GOP: byte-stable output and fast seeking.
    options = {"g": str(max(1, fps))}
    if video_codec == "libx264":
        options.update({"preset": "ultrafast", "crf": "20", "threads": "1"})
    video = container.add_stream(video_codec, rate=Fraction(fps), options=options)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.codec_context.thread_count = 1
    if video_codec != "libx264":
        video.bit_rate = 400_000
    return video


def _mux_frames(container, video, frames: np.ndarray) -> None:
    import av

    for index in range(len(frames)):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[index]), format="rgb24")
        frame.pts = index
        container.mux(video.encode(frame))
    container.mux(video.encode())


def compress_frames(frames: np.ndarray, fps: int, video_codec: str = "libx264") -> np.ndarray:
    """
    `frames` as a viewer of the corpus's .mp4 files sees them: encoded in memory with the corpus's video settings
    (`write_clip`: yuv420p, i.e. chroma at half resolution, and H.264 at CRF 20) and decoded back to RGB.

    Args:
        frames: `uint8` RGB frames, `(T, H, W, 3)` with even `H` and `W`.
        fps: frames per second.
        video_codec: encoder name, see `select_video_codec`.

    Returns:
        `uint8` RGB frames of the same shape.
    """
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = _add_video_stream(container, video_codec, fps, frames.shape[2], frames.shape[1])
        _mux_frames(container, video, frames)
    buffer.seek(0)
    with av.open(buffer, mode="r") as container:
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    if decoded.shape != frames.shape:
        raise RuntimeError(
            f"{video_codec} round trip returned frames {decoded.shape}, expected {frames.shape}."
        )
    return decoded


# --- corpus -----------------------------------------------------------------------------------------------

_SPLITS = ("train", "test")
_MANIFEST = "manifest.json"
_IN_PROGRESS = ".generating.json"


def _assign_attributes(rng: np.random.Generator, count: int) -> list[tuple[str, str, str, str]]:
    """Balanced draw: concatenated, independently shuffled copies of every colour x shape x direction x sound."""
    combos = list(itertools.product(COLORS, SHAPES, DIRECTIONS, SOUNDS))
    rows: list[tuple[str, str, str, str]] = []
    while len(rows) < count:
        rows.extend(combos[i] for i in rng.permutation(len(combos)))
    return rows[:count]


def plan_metadata(split: Literal["train", "test"], count: int, seed: int) -> list[dict[str, Any]]:
    """The metadata rows of one split, without rendering anything.

    Attributes are balanced: every colour x shape x direction x sound combination appears once before any
    appears twice. Loudness and the caption template are drawn independently. The rows for a smaller `count`
    are the first rows for a larger one.

    Args:
        split: `"train"` or `"test"` (each has its own random stream).
        count: number of rows.
        seed: corpus seed.

    Returns:
        `count` rows with keys `file_name`, `id`, `caption`, `captions`, `color`, `shape`, `direction`,
        `sound`, `loudness`, exactly as written to `metadata.jsonl`.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    stream = _SPLITS.index(split)
    attributes = _assign_attributes(np.random.default_rng([seed, stream, 0]), count)
    rows = []
    for index, (color, shape, direction, sound) in enumerate(attributes):
        # One generator per row keeps a smaller corpus a prefix of a larger one with the same seed.
        row_rng = np.random.default_rng([seed, stream, 2, index])
        loudness = LOUDNESS[int(row_rng.integers(len(LOUDNESS)))]
        template = int(row_rng.integers(len(CAPTION_TEMPLATES)))
        captions = make_captions(color, shape, direction, sound)
        clip_id = f"{split}_{index:05d}"
        rows.append(
            {
                "file_name": f"{clip_id}.mp4",
                "id": clip_id,
                "caption": captions[template],
                "captions": captions,
                "color": color,
                "shape": shape,
                "direction": direction,
                "sound": sound,
                "loudness": loudness,
            }
        )
    return rows


def _render_row(
    row: dict[str, Any], clip_seed: list[int], fmt: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """The frames and the soundtrack of one metadata row, drawn from the clip's own generator."""
    rng = np.random.default_rng(clip_seed)
    frames = render_frames(
        row["color"],
        row["shape"],
        row["direction"],
        rng,
        fmt["image_size"],
        fmt["num_frames"],
        fmt["motion_trail"],
    )
    audio = render_audio(row["sound"], row["loudness"], rng, fmt["sample_rate"], fmt["duration"])
    return frames, audio


def _make_clip(job: tuple[str, dict[str, Any], list[int], dict[str, Any]]) -> str:
    """Worker: render and encode one clip (module level so a process pool can pickle it)."""
    path, row, clip_seed, fmt = job
    frames, audio = _render_row(row, clip_seed, fmt)
    write_clip(path, frames, audio, fmt["fps"], fmt["sample_rate"], fmt["video_codec"])
    return path


# Random stream of `render_clip_arrays`; `plan_metadata` uses 0 (train) and 1 (test), so for any seed these clips
# are drawn independently of every corpus clip.
UNIMODAL_STREAM = 2


def render_clip_arrays(
    count: int,
    seed: int,
    *,
    image_size: int = 64,
    fps: int = 8,
    duration: float = 2.0,
    sample_rate: int = 16000,
    motion_trail: int = 0,
    video_codec: str | None = None,
) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """Render clips straight to arrays (no .mp4 file), for unimodal pretraining.

    The clips come from a random stream of their own (`UNIMODAL_STREAM`): with any seed they are disjoint from
    the train and test clips `generate_corpus` writes (other positions, speeds, shades, backgrounds, onsets),
    while the attributes are balanced the same way (every combination once before any twice).

    Args:
        count: number of clips.
        seed: seed of everything random.
        image_size, fps, duration, sample_rate, motion_trail: as in `generate_corpus`.
        video_codec: when given, the frames go through the corpus's video encoding and back (`compress_frames`),
            so that they look like the decoded frames of `generate_corpus`'s files; `None` keeps the raw render.

    Returns:
        `(rows, frames, audio)`: the attribute rows (keys `id`, `caption`, `captions`, `color`, `shape`,
        `direction`, `sound`, `loudness`), `uint8` frames `(count, fps * duration, H, W, 3)` and `float32`
        waveforms `(count, duration * sample_rate)`.
    """
    params = _corpus_parameters(count, 0, seed, image_size, fps, duration, sample_rate, motion_trail)
    fmt = {k: params[k] for k in ("image_size", "duration", "num_frames", "sample_rate")}
    fmt["motion_trail"] = motion_trail
    attributes = _assign_attributes(np.random.default_rng([seed, UNIMODAL_STREAM, 0]), count)
    rows, frames, audio = [], [], []
    for index, (color, shape, direction, sound) in enumerate(attributes):
        row_rng = np.random.default_rng([seed, UNIMODAL_STREAM, 2, index])
        captions = make_captions(color, shape, direction, sound)
        row = {
            "id": f"unimodal_{index:05d}",
            "caption": captions[int(row_rng.integers(len(captions)))],
            "captions": captions,
            "color": color,
            "shape": shape,
            "direction": direction,
            "sound": sound,
            "loudness": LOUDNESS[int(row_rng.integers(len(LOUDNESS)))],
        }
        clip_frames, clip_audio = _render_row(row, [seed, UNIMODAL_STREAM, 1, index], fmt)
        rows.append(row)
        frames.append(clip_frames)
        audio.append(clip_audio.astype(np.float32))
    frames = np.stack(frames)
    if video_codec is not None:
        # One stream for all clips (a keyframe every second, as in the corpus's files): one encoder, not one each.
        frames = compress_frames(frames.reshape(-1, *frames.shape[2:]), fps, video_codec).reshape(
            frames.shape
        )
    return rows, frames, np.stack(audio)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, params: dict[str, Any]) -> bool:
    manifest = _read_json(root / _MANIFEST)
    if manifest is None or manifest.get("parameters") != params:
        return False
    for split in _SPLITS:
        folder = root / split
        if not (folder / "metadata.jsonl").is_file():
            return False
        count = params[f"num_{split}"]
        if manifest.get("counts", {}).get(split) != count:
            return False
        if any(not (folder / f"{split}_{i:05d}.mp4").is_file() for i in range(count)):
            return False
    return True


def generate_corpus(
    output_dir: str | os.PathLike,
    num_train: int = 2000,
    num_test: int = 200,
    seed: int = 0,
    *,
    image_size: int = 64,
    fps: int = 8,
    duration: float = 2.0,
    sample_rate: int = 16000,
    motion_trail: int = 0,
    num_workers: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Path]:
    """Write (or reuse) the synthetic audiovisual captioning corpus.

    If `output_dir` already holds a complete corpus made with the same parameters (its `manifest.json`
    matches and every clip exists), nothing is written. Otherwise the corpus is (re)generated; clips are
    written atomically and the manifest last, so an interrupted run is resumed (clips already finished under
    the same parameters are kept) and never mistaken for a complete one.

    Args:
        output_dir: root folder; receives `train/`, `test/` and `manifest.json`.
        num_train: number of training clips. Every colour x shape x direction x sound combination appears
            once before any appears twice (288 combinations).
        num_test: number of test clips (drawn the same balanced way from a separate random stream).
        seed: seed of everything random; the same seed gives the same metadata and decoded content.
        image_size: frame height and width (even, >= 16).
        fps: frames per second.
        duration: clip length in seconds; `fps * duration` must be a whole number of frames.
        sample_rate: audio sample rate in Hz.
        motion_trail: fading copies drawn behind the moving shape (see `render_frames`); 0 for none.
        num_workers: processes used to render and encode; `None` uses up to `os.cpu_count()` (at most 8).
            Small corpora are always made in-process.
        overwrite: regenerate even if a complete matching corpus is present.
        progress: show a progress bar.

    Returns:
        `{"train": output_dir/train, "test": output_dir/test}`, each a videofolder split folder with a
        `metadata.jsonl` (columns `file_name`, `id`, `caption`, `captions`, `color`, `shape`, `direction`,
        `sound`, `loudness`).

    Example:
        ```python
        >>> from transformers_valor.data.synthetic import generate_corpus
        >>> splits = generate_corpus("/tmp/valor_corpus", num_train=2000, num_test=200, seed=0)
        >>> # datasets.load_dataset("videofolder", data_dir="/tmp/valor_corpus")
        ```
    """
    params = _corpus_parameters(
        num_train, num_test, seed, image_size, fps, duration, sample_rate, motion_trail
    )
    root = Path(output_dir)
    splits = {split: root / split for split in _SPLITS}
    if not overwrite and _is_complete(root, params):
        return splits

    root.mkdir(parents=True, exist_ok=True)
    (root / _MANIFEST).unlink(missing_ok=True)
    # Clips left by an interrupted run with the same parameters are complete (atomic writes): keep them.
    resume = not overwrite and _read_json(root / _IN_PROGRESS) == params
    _write_text_atomic(root / _IN_PROGRESS, json.dumps(params, indent=2))
    plans = {split: plan_metadata(split, params[f"num_{split}"], seed) for split in _SPLITS}
    jobs = _clip_jobs(splits, plans, params, resume)
    _run_clip_jobs(jobs, num_workers, progress)

    for split, folder in splits.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in plans[split])
        _write_text_atomic(folder / "metadata.jsonl", text)
    manifest = {"parameters": params, "counts": {split: len(rows) for split, rows in plans.items()}}
    _write_text_atomic(root / _MANIFEST, json.dumps(manifest, indent=2))
    (root / _IN_PROGRESS).unlink(missing_ok=True)
    return splits


def _corpus_parameters(num_train, num_test, seed, image_size, fps, duration, sample_rate, motion_trail):
    """Validate the generator's arguments and return the parameters recorded in the manifest."""
    num_frames = fps * duration
    if image_size < 16 or image_size % 2:
        raise ValueError(f"image_size must be even and >= 16 (H.264 4:2:0), got {image_size}.")
    if abs(num_frames - round(num_frames)) > 1e-9 or round(num_frames) < 2:
        raise ValueError(f"fps * duration must be a whole number of frames >= 2, got {fps} * {duration}.")
    if num_train < 0 or num_test < 0:
        raise ValueError(f"num_train and num_test must be >= 0, got {num_train} and {num_test}.")
    if motion_trail < 0:
        raise ValueError(f"motion_trail must be >= 0, got {motion_trail}.")
    params: dict[str, Any] = {
        "version": CORPUS_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_test": int(num_test),
        "image_size": int(image_size),
        "fps": int(fps),
        "duration": float(duration),
        "num_frames": int(round(num_frames)),
        "sample_rate": int(sample_rate),
        "video_codec": select_video_codec(),
    }
    if motion_trail:  # only recorded when used, so corpora made before the option stay valid caches
        params["motion_trail"] = int(motion_trail)
    return params


def _clip_jobs(splits: dict[str, Path], plans: dict[str, list[dict[str, Any]]], params, resume: bool) -> list:
    """One render job per clip still to write; stale clips of an earlier, larger corpus are removed."""
    fmt = {
        k: params[k] for k in ("image_size", "fps", "duration", "num_frames", "sample_rate", "video_codec")
    }
    fmt["motion_trail"] = params.get("motion_trail", 0)
    jobs = []
    for split, folder in splits.items():
        folder.mkdir(exist_ok=True)
        expected = {row["file_name"] for row in plans[split]}
        for stale in folder.iterdir():
            is_ours = re.fullmatch(rf"{split}_\d{{5}}\.mp4", stale.name) or stale.name.endswith(".partial")
            if is_ours and stale.name not in expected:
                stale.unlink()
        for index, row in enumerate(plans[split]):
            path = folder / row["file_name"]
            if resume and path.is_file():
                continue
            jobs.append((str(path), row, [params["seed"], _SPLITS.index(split), 1, index], fmt))
    return jobs


def _run_clip_jobs(jobs: list, num_workers: int | None, progress: bool) -> None:
    """Render and encode the clips, in-process for small corpora, else in a process pool."""
    workers = min(num_workers or os.cpu_count() or 1, 8, max(1, len(jobs) // 32))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="synthetic clips", unit="clip")
    if workers <= 1:
        for job in jobs:
            _make_clip(job)
            if bar is not None:
                bar.update()
    else:
        # Workers only run numpy and PyAV, so forking is safe on Linux and skips re-importing torch per worker.
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            for _ in pool.imap_unordered(_make_clip, jobs, chunksize=16):
                if bar is not None:
                    bar.update()
    if bar is not None:
        bar.close()


def load_metadata(split_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a split's `metadata.jsonl` into a list of rows (in file order)."""
    with open(Path(split_dir) / "metadata.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="Root folder of the corpus.")
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=8)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument(
        "--motion_trail", type=int, default=0, help="Fading copies drawn behind the moving shape (0: none)."
    )
    parser.add_argument("--num_workers", type=int, default=None)
    parser.add_argument(
        "--overwrite", action="store_true", help="Regenerate even if a matching corpus exists."
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: generate the corpus and print where it is and how long it took."""
    args = _parse_args(argv)
    start = time.perf_counter()
    splits = generate_corpus(
        args.output_dir,
        args.num_train,
        args.num_test,
        args.seed,
        image_size=args.image_size,
        fps=args.fps,
        duration=args.duration,
        sample_rate=args.sample_rate,
        motion_trail=args.motion_trail,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        progress=True,
    )
    elapsed = time.perf_counter() - start
    for split, folder in splits.items():
        print(f"{split}: {folder}")
    print(f"done in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
