"""Tests for the synthetic audiovisual captioning corpus (`transformers_valor.data.synthetic`)."""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from transformers_valor.data.synthetic import (
    ATTRIBUTES,
    CAPTION_TEMPLATES,
    COLORS,
    DIRECTIONS,
    LOUDNESS,
    SHAPES,
    SOUNDS,
    attribute_accuracy,
    generate_corpus,
    load_metadata,
    make_captions,
    parse_attributes,
    plan_metadata,
    render_audio,
    render_frames,
    write_clip,
)

decord = pytest.importorskip("decord")

NUM_TRAIN, NUM_TEST, SEED = 6, 2, 0
SIZE, FPS, DURATION, SAMPLE_RATE = 64, 8, 2.0, 16000
NUM_FRAMES, NUM_SAMPLES = 16, 32000
# Nominal colours as a viewer would name them; the generator jitters around its own values.
REFERENCE_RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


def _clips(root: Path):
    for split in ("train", "test"):
        for row in load_metadata(root / split):
            yield root / split / row["file_name"], row


def _frames(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()  # (T, H, W, 3)


def _audio(path: Path) -> np.ndarray:
    return decord.AudioReader(str(path), sample_rate=SAMPLE_RATE, mono=True)[:].asnumpy()[0]


def _foreground(frame: np.ndarray) -> np.ndarray:
    """Pixels far from their row's median colour (the shape is narrower than half a row)."""
    background = np.median(frame.astype(np.float64), axis=1, keepdims=True)  # (H, 1, 3)
    return np.linalg.norm(frame - background, axis=-1) > 40


def _band_energy(audio: np.ndarray, low: float, high: float) -> float:
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1.0 / SAMPLE_RATE)
    return float(power[(freqs >= low) & (freqs < high)].sum())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "corpus"
    generate_corpus(root, NUM_TRAIN, NUM_TEST, SEED, num_workers=1)
    return root


def test_layout_and_manifest(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["counts"] == {"train": NUM_TRAIN, "test": NUM_TEST}
    assert manifest["parameters"]["seed"] == SEED
    for split, count in (("train", NUM_TRAIN), ("test", NUM_TEST)):
        assert sorted(p.name for p in (corpus / split).glob("*.mp4")) == [
            f"{split}_{i:05d}.mp4" for i in range(count)
        ]
        assert not list((corpus / split).glob(".*")), "temporary files left behind"
    assert not (corpus / ".generating.json").exists()


def test_clips_decode_with_decord(corpus):
    for path, _ in _clips(corpus):
        reader = decord.VideoReader(str(path))
        assert len(reader) == NUM_FRAMES
        assert reader.get_avg_fps() == pytest.approx(FPS)
        assert reader[0].asnumpy().shape == (SIZE, SIZE, 3)
        audio_reader = decord.AudioReader(str(path), sample_rate=SAMPLE_RATE, mono=True)
        assert audio_reader.duration() == pytest.approx(DURATION, abs=0.1)
        audio = audio_reader[:].asnumpy()
        # AAC pads the last 1024-sample frame.
        assert audio.shape[0] == 1 and NUM_SAMPLES <= audio.shape[1] <= NUM_SAMPLES + 2048
        assert 0.05 < np.abs(audio).max() <= 1.0


def test_metadata_rows_match_captions(corpus):
    for path, row in _clips(corpus):
        assert path.is_file() and row["id"] == path.stem
        assert row["color"] in COLORS and row["shape"] in SHAPES
        assert row["direction"] in DIRECTIONS and row["sound"] in SOUNDS and row["loudness"] in LOUDNESS
        assert len(row["captions"]) >= 5 and len(set(row["captions"])) == len(row["captions"])
        assert row["caption"] in row["captions"]
        expected = {key: row[key] for key in ATTRIBUTES}
        for caption in row["captions"]:
            assert parse_attributes(caption) == expected, caption


def test_parse_attributes_round_trips_every_template():
    assert len(CAPTION_TEMPLATES) >= 5
    for color, shape, direction, sound in itertools.product(COLORS, SHAPES, DIRECTIONS, SOUNDS):
        expected = {"color": color, "shape": shape, "direction": direction, "sound": sound}
        for caption in make_captions(color, shape, direction, sound):
            assert parse_attributes(caption) == expected, caption
            assert parse_attributes(caption.upper() + ".") == expected


def test_parse_attributes_examples_and_missing():
    assert parse_attributes("A low hum is heard as a red circle slides to the left") == {
        "color": "red",
        "shape": "circle",
        "direction": "left",
        "sound": "low_hum",
    }
    assert parse_attributes("something blue") == {
        "color": "blue",
        "shape": None,
        "direction": None,
        "sound": None,
    }
    assert parse_attributes("a whistle") == dict.fromkeys(ATTRIBUTES)


def test_attribute_accuracy_counts_each_attribute_and_all_four():
    rows = [
        {"color": "red", "shape": "circle", "direction": "left", "sound": "low_hum"},
        {"color": "blue", "shape": "square", "direction": "up", "sound": "clicks"},
    ]
    predictions = ["a red circle slides to the left as a deep hum plays", "a blue circle moves up"]
    assert attribute_accuracy(predictions, rows) == {
        "color": 1.0,
        "shape": 0.5,
        "direction": 1.0,
        "sound": 0.5,
        "all": 0.5,
    }
    with pytest.raises(ValueError, match="1 predictions for 2 rows"):
        attribute_accuracy(predictions[:1], rows)


def test_plan_is_balanced_and_deterministic():
    rows = plan_metadata("train", 4 * 3 * 4 * 6, seed=3)
    combos = {tuple(row[key] for key in ATTRIBUTES) for row in rows}
    assert combos == set(itertools.product(COLORS, SHAPES, DIRECTIONS, SOUNDS))
    assert plan_metadata("train", 10, seed=3) == rows[:10]
    assert plan_metadata("train", 10, seed=4) != rows[:10]
    assert plan_metadata("test", 10, seed=3) != rows[:10]


def test_same_seed_same_corpus(corpus, tmp_path):
    other = tmp_path / "again"
    generate_corpus(other, NUM_TRAIN, NUM_TEST, SEED, num_workers=1)
    for split in ("train", "test"):
        metadata = (split, "metadata.jsonl")
        assert (other.joinpath(*metadata)).read_bytes() == corpus.joinpath(*metadata).read_bytes()
    for path, _ in _clips(corpus):
        twin = other / path.parent.name / path.name
        np.testing.assert_array_equal(_frames(twin), _frames(path))
        np.testing.assert_array_equal(_audio(twin), _audio(path))

    different = tmp_path / "different"
    generate_corpus(different, NUM_TRAIN, NUM_TEST, SEED + 1, num_workers=1)
    assert load_metadata(different / "train") != load_metadata(corpus / "train")


def test_cache_skips_complete_corpus_and_regenerates_on_change(tmp_path):
    root = tmp_path / "cached"
    generate_corpus(root, 3, 1, SEED, num_workers=1)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamps = {p: p.stat().st_mtime_ns for p in files}

    generate_corpus(root, 3, 1, SEED, num_workers=1)
    assert sorted(p for p in root.rglob("*") if p.is_file()) == files
    assert {p: p.stat().st_mtime_ns for p in files} == stamps

    # A missing clip makes the corpus incomplete: it is written again, with the same content.
    clip = root / "train" / "train_00001.mp4"
    content = clip.read_bytes()
    clip.unlink()
    generate_corpus(root, 3, 1, SEED, num_workers=1)
    assert clip.read_bytes() == content

    # Other parameters: regenerated, stale clips removed.
    generate_corpus(root, 2, 1, SEED, num_workers=1)
    assert len(load_metadata(root / "train")) == 2
    assert sorted(p.name for p in (root / "train").glob("*.mp4")) == ["train_00000.mp4", "train_00001.mp4"]
    assert json.loads((root / "manifest.json").read_text())["counts"]["train"] == 2

    # A motion trail changes every clip's frames: the corpus is regenerated and records it.
    before = clip.read_bytes()
    generate_corpus(root, 2, 1, SEED, num_workers=1, motion_trail=2)
    assert json.loads((root / "manifest.json").read_text())["parameters"]["motion_trail"] == 2
    assert clip.read_bytes() != before


def test_rendered_colour_and_motion_match_attributes(corpus):
    for path, row in _clips(corpus):
        frames = _frames(path).astype(np.float64)
        first, last = _foreground(frames[0]), _foreground(frames[-1])
        assert first.sum() > 0.02 * SIZE * SIZE and last.sum() > 0.02 * SIZE * SIZE

        inside = frames[0][first].mean(axis=0)
        nearest = min(REFERENCE_RGB, key=lambda c: np.linalg.norm(inside - np.array(REFERENCE_RGB[c])))
        assert nearest == row["color"], (path.name, inside)

        (y0, x0), (y1, x1) = np.argwhere(first).mean(axis=0), np.argwhere(last).mean(axis=0)
        dx, dy = x1 - x0, y1 - y0
        moved, across = {"left": (-dx, dy), "right": (dx, dy), "up": (-dy, dx), "down": (dy, dx)}[
            row["direction"]
        ]
        assert moved > 0.25 * SIZE and abs(across) < 2, (path.name, dx, dy)


@pytest.mark.parametrize("loudness", ["quiet", "loud"])
def test_soundtrack_frequency_matches_sound(tmp_path, loudness):
    frames = np.zeros((NUM_FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
    half = NUM_SAMPLES // 2
    for index, sound in enumerate(SOUNDS):
        rng = np.random.default_rng(index)
        path = tmp_path / f"{sound}.mp4"
        write_clip(path, frames, render_audio(sound, loudness, rng, SAMPLE_RATE, DURATION), FPS, SAMPLE_RATE)
        audio = _audio(path)[:NUM_SAMPLES]
        hum_band, beep_band = _band_energy(audio, 100, 500), _band_energy(audio, 2500, 3500)
        if sound == "low_hum":
            assert hum_band > 10 * beep_band
        elif sound == "high_beep":
            assert beep_band > 10 * hum_band
        elif sound.endswith("whistle"):
            early = _band_energy(audio[:half], 400, 1200) / _band_energy(audio[:half], 2500, 4500)
            late = _band_energy(audio[half:], 400, 1200) / _band_energy(audio[half:], 2500, 4500)
            assert (early > late) == (sound == "rising_whistle"), (sound, early, late)
        else:  # clicks and noise bursts are broadband: most energy above the hum band
            assert _band_energy(audio, 1000, 8000) > 10 * hum_band


def test_corpus_soundtracks_match_sound_attribute(corpus):
    for path, row in _clips(corpus):
        audio = _audio(path)[:NUM_SAMPLES]
        hum_band, beep_band = _band_energy(audio, 100, 500), _band_energy(audio, 2500, 3500)
        if row["sound"] == "low_hum":
            assert hum_band > 10 * beep_band
        elif row["sound"] == "high_beep":
            assert beep_band > 10 * hum_band


def test_loudness_orders_rms():
    rms = {
        level: np.sqrt(np.mean(render_audio("low_hum", level, np.random.default_rng(0)) ** 2))
        for level in LOUDNESS
    }
    assert rms["quiet"] < rms["medium"] < rms["loud"]


def test_render_frames_shape_and_validation():
    frames = render_frames("red", "triangle", "up", np.random.default_rng(0), image_size=32, num_frames=5)
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8
    with pytest.raises(ValueError, match="shape"):
        render_frames("red", "hexagon", "up", np.random.default_rng(0))
    with pytest.raises(ValueError, match="image_size"):
        generate_corpus("/nonexistent", 1, 1, image_size=33)


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_motion_trail_lies_behind_the_shape(direction):
    plain = render_frames("green", "circle", direction, np.random.default_rng(3), image_size=64, num_frames=4)
    trail = render_frames(
        "green", "circle", direction, np.random.default_rng(3), image_size=64, num_frames=4, motion_trail=3
    )
    plain_rgb = plain.astype(int)
    shape = plain_rgb[..., 1] - plain_rgb[..., 0] > 60  # green shape on a grey background
    assert np.array_equal(trail[shape], plain[shape])  # the shape itself is drawn unchanged, on top
    ghost = np.any(trail != plain, axis=-1)
    assert not np.any(ghost & shape)
    behind = {"right": (0, -1), "left": (0, 1), "down": (-1, 0), "up": (1, 0)}[direction]
    for t in range(4):
        assert ghost[t].sum() > 20
        (gy, gx), (sy, sx) = np.argwhere(ghost[t]).mean(axis=0), np.argwhere(shape[t]).mean(axis=0)
        assert (gy - sy) * behind[0] + (gx - sx) * behind[1] > 0.1 * 64, (direction, t)
    with pytest.raises(ValueError, match="motion_trail"):
        render_frames("red", "circle", "up", np.random.default_rng(0), motion_trail=-1)


def test_mpeg4_fallback_decodes(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "fallback.mp4"
    frames = render_frames("blue", "square", "left", rng)
    write_clip(path, frames, render_audio("clicks", "loud", rng), FPS, SAMPLE_RATE, video_codec="mpeg4")
    assert _frames(path).shape == (NUM_FRAMES, SIZE, SIZE, 3)
    assert _audio(path).shape[0] >= NUM_SAMPLES
    assert not list(tmp_path.glob(".*"))


def test_unimodal_clips_are_balanced_deterministic_and_disjoint_from_the_corpus():
    from transformers_valor.data.synthetic import _render_row, render_clip_arrays

    fmt = dict(image_size=32, duration=1.0, sample_rate=8000, motion_trail=1)
    rows, frames, audio = render_clip_arrays(6, seed=4, fps=4, **fmt)
    assert frames.shape == (6, 4, 32, 32, 3) and frames.dtype == np.uint8
    assert audio.shape == (6, 8000) and audio.dtype == np.float32
    again_rows, again_frames, again_audio = render_clip_arrays(6, seed=4, fps=4, **fmt)
    assert again_rows == rows and np.array_equal(again_frames, frames) and np.array_equal(again_audio, audio)
    assert len({(r["color"], r["shape"], r["direction"], r["sound"]) for r in rows}) == 6  # balanced draw
    assert all(row["caption"] in row["captions"] for row in rows)
    # The corpus clips of the same seed with the same attributes are other renderings (own random stream).
    row_fmt = {"num_frames": 4, **fmt}
    for stream in (0, 1):  # train, test
        for index in range(6):
            corpus_frames, corpus_audio = _render_row(rows[index], [4, stream, 1, index], row_fmt)
            assert not np.array_equal(corpus_frames, frames[index])
            assert not np.allclose(corpus_audio, audio[index])
    other_seed = render_clip_arrays(6, seed=5, fps=4, **fmt)[1]
    assert not np.array_equal(other_seed, frames)


def test_compressed_frames_are_what_the_corpus_file_decodes_to(tmp_path):
    from transformers_valor.data.synthetic import compress_frames

    rng = np.random.default_rng(2)
    frames = render_frames("blue", "triangle", "up", rng, motion_trail=3)
    path = tmp_path / "clip.mp4"
    write_clip(path, frames, render_audio("clicks", "loud", rng), FPS, SAMPLE_RATE)
    compressed = compress_frames(frames, FPS)
    assert compressed.shape == frames.shape and compressed.dtype == np.uint8
    # The same encoder settings as the file, decoded by decord: equal up to the decoders' colour conversion.
    assert np.abs(compressed.astype(int) - _frames(path).astype(int)).mean() < 0.5
    assert (
        np.abs(compressed.astype(int) - frames.astype(int)).mean() > 0.5
    )  # chroma subsampling, quantisation


def test_unimodal_clips_can_go_through_the_corpus_video_encoding():
    from transformers_valor.data.synthetic import compress_frames, render_clip_arrays

    fmt = dict(image_size=32, fps=4, duration=1.0, sample_rate=8000, motion_trail=1)
    rows, raw, audio = render_clip_arrays(3, seed=4, **fmt)
    same_rows, compressed, same_audio = render_clip_arrays(3, seed=4, video_codec="libx264", **fmt)
    assert same_rows == rows and np.array_equal(same_audio, audio) and compressed.shape == raw.shape
    # All clips in one stream with a keyframe per second, close to encoding each clip alone.
    alone = np.stack([compress_frames(clip, 4) for clip in raw])
    assert np.abs(compressed.astype(int) - alone.astype(int)).mean() < 1.0
    assert not np.array_equal(compressed, raw)
