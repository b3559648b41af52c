"""Tests of ValorProcessor: text + video files + soundtracks -> model inputs, and its save/load round trip."""

import warnings

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, BertTokenizerFast

from media import make_test_media
from transformers_valor import (
    ValorConfig,
    ValorFeatureExtractor,
    ValorProcessor,
    ValorVideoProcessor,
    clean_caption,
)
from transformers_valor.media_io import MediaBatchError

WORDS = "a man is playing the guitar dog bark ##s what does do describe video with natural language".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


class ValorProcessorTester:
    """A tiny WordPiece vocabulary (no download), 4 frames of 32 px and 2 clips of 64 frames."""

    def get_tokenizer(self) -> BertTokenizerFast:
        return BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, do_lower_case=True)

    def get_processor(self, **kwargs) -> ValorProcessor:
        return ValorProcessor(
            tokenizer=self.get_tokenizer(),
            video_processor=ValorVideoProcessor(num_frames=4, size=32),
            feature_extractor=ValorFeatureExtractor(clip_length=64, num_clips=2),
            **kwargs,
        )


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_test_media(tmp_path_factory.mktemp("processor_media"))


def test_clean_caption():
    assert clean_caption("  A Man, playing  the GUITAR! ") == "a man playing the guitar"
    assert clean_caption("Don't stop-motion\tvideo.") == "dont stopmotion video"
    with pytest.raises(TypeError):
        clean_caption(None)


class TestValorProcessor(ValorProcessorTester):
    def test_all_inputs_keys_shapes_dtypes(self, media):
        processor = self.get_processor()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = processor(
                text=["A man, playing the guitar!", "dogs bark"],
                videos=[media["mp4"], media["silent"]],
                prompts="What does the dog do?",
            )
        assert set(out) == {
            "input_ids",
            "attention_mask",
            "prompt_ids",
            "prompt_attention_mask",
            "pixel_values_videos",
            "input_features",
            "input_features_mask",
        }
        ids = {w: i for i, w in enumerate(VOCAB)}
        assert out["input_ids"].tolist() == [
            [2, ids["a"], ids["man"], ids["playing"], ids["the"], ids["guitar"], 3],
            [2, ids["dog"], ids["##s"], ids["bark"], 3, 0, 0],
        ]
        assert out["attention_mask"].tolist() == [[1] * 7, [1] * 5 + [0, 0]]
        assert out["prompt_ids"].tolist() == [
            [2, ids["what"], ids["does"], ids["the"], ids["dog"], ids["do"], 3]
        ]
        assert out["input_ids"].dtype == out["attention_mask"].dtype == torch.int64
        assert out["pixel_values_videos"].shape == (2, 4, 3, 32, 32)
        assert out["pixel_values_videos"].dtype == torch.float32
        assert out["input_features"].shape == (2, 2, 64, 64) and out["input_features"].dtype == torch.float32
        assert out["input_features_mask"].tolist() == [[1, 1], [0, 0]]
        assert torch.all(out["input_features"][1] == 0)

    def test_matches_components(self, media):
        processor = self.get_processor()
        out = processor(videos=media["webm"], audio=media["wav"])
        video = processor.video_processor(media["webm"])["pixel_values_videos"]
        audio = processor.feature_extractor(media["wav"])
        torch.testing.assert_close(out["pixel_values_videos"], video)
        torch.testing.assert_close(out["input_features"], audio["input_features"])
        assert set(out) == {"pixel_values_videos", "input_features", "input_features_mask"}

    def test_text_max_length_and_padding(self):
        processor = self.get_processor(max_text_length=5)
        out = processor(text=["a man " * 20, "a dog"])
        assert out["input_ids"].shape == (2, 7)  # [CLS] + 5 + [SEP]
        assert out["input_ids"][0, -1].item() == 3 and out["input_ids"][1].tolist()[-2:] == [0, 0]
        # The tokenizer's arguments, with its meaning: `max_length` counts [CLS] and [SEP].
        padded = processor(text="a dog", padding="max_length", max_length=10)
        assert padded["input_ids"].shape == (1, 10) and padded["attention_mask"].sum().item() == 4
        assert processor(text="a man " * 20, max_length=4)["input_ids"].shape == (1, 4)
        untruncated = processor(text="a man " * 20, truncation=False)
        assert untruncated["input_ids"].shape == (1, 42)
        assert "token_type_ids" not in out

    def test_call_arguments_follow_processor_mixin(self, media):
        processor = self.get_processor()
        out = processor(text="a dog", audio=media["wav"])  # `audio=`, as ProcessorMixin, CLAP and PE-AV
        assert out["input_features"].shape == (1, 2, 64, 64)
        with pytest.raises(TypeError, match=r"\['audios'\]"):
            processor(text="a dog", audios=media["wav"])
        with pytest.raises(TypeError, match="per call, pass the tokenizer's `max_length`"):
            processor(text="a dog", max_text_length=8)

    def test_decoded_videos_get_no_audio(self):
        processor = self.get_processor()
        frames = np.zeros((6, 20, 20, 3), dtype=np.uint8)
        out = processor(videos=[frames, frames], return_tensors="np")
        assert set(out) == {"pixel_values_videos"} and out["pixel_values_videos"].shape == (2, 4, 3, 32, 32)
        with_audio = processor(videos=frames, audio=np.zeros(22050, dtype=np.float32))
        assert with_audio["input_features"].shape == (1, 2, 64, 64)
        only_video = processor(videos=frames, audio_from_video=False, num_frames=2)
        assert only_video["pixel_values_videos"].shape == (1, 2, 3, 32, 32)

    def test_training_sampling_is_seeded(self, media):
        processor = self.get_processor()
        a = processor(videos=[media["mp4"], media["mkv"]], training=True, seed=7)
        b = processor(videos=[media["mp4"], media["mkv"]], training=True, seed=7)
        for key in ("pixel_values_videos", "input_features"):
            torch.testing.assert_close(a[key], b[key])
        middle = processor(videos=[media["mp4"], media["mkv"]])
        assert any(
            not torch.equal(
                processor(videos=media["mp4"], training=True, seed=s)["pixel_values_videos"][0],
                middle["pixel_values_videos"][0],
            )
            for s in range(5)
        )

    def test_batch_decode(self):
        processor = self.get_processor()
        ids = processor(text=["a man playing the guitar", "a dog"])["input_ids"]
        mask_id = VOCAB.index("[MASK]")
        generated = torch.cat([ids, torch.full((2, 1), mask_id)], dim=1)
        assert processor.batch_decode(generated) == ["a man playing the guitar", "a dog"]
        assert processor.decode(generated[1]) == "a dog"

    def test_save_load_roundtrip(self, tmp_path, media):
        processor = self.get_processor(max_text_length=30)
        processor.video_processor.video_backend = "pyav"
        processor.save_pretrained(tmp_path)
        ValorConfig().save_pretrained(tmp_path)
        for loaded in (ValorProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
            assert type(loaded) is ValorProcessor
            assert type(loaded.video_processor) is ValorVideoProcessor
            assert type(loaded.feature_extractor) is ValorFeatureExtractor
            assert loaded.max_text_length == 30
            assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
            assert loaded.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
            assert loaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
            expected = processor(text="a dog barks", videos=media["mp4"])
            got = loaded(text="a dog barks", videos=media["mp4"])
            assert set(got) == set(expected)
            for key in expected:
                torch.testing.assert_close(got[key], expected[key])


class TestProcessorErrors(ValorProcessorTester):
    def test_nothing_given(self):
        with pytest.raises(ValueError, match="at least one"):
            self.get_processor()()

    def test_unknown_kwarg(self):
        with pytest.raises(TypeError, match="frame_rate"):
            self.get_processor()(text="a", frame_rate=2)

    def test_wrong_component_type(self):
        with pytest.raises(TypeError, match="video_processor"):
            ValorProcessor(self.get_tokenizer(), ValorFeatureExtractor(), ValorFeatureExtractor())

    def test_mismatched_audio_count(self, media):
        with pytest.raises(ValueError, match="2 videos but 1 audios"):
            self.get_processor()(videos=[media["mp4"], media["webm"]], audio=[media["wav"]])

    def test_missing_video_is_named(self, media, tmp_path):
        with pytest.raises(FileNotFoundError, match="absent.mp4"):
            self.get_processor()(videos=[media["mp4"], str(tmp_path / "absent.mp4")])

    def test_corrupt_samples_reported_by_index(self, media):
        with pytest.raises(MediaBatchError) as info:
            self.get_processor()(videos=[media["mp4"], media["garbage"], media["webm"], media["truncated"]])
        assert [e.index for e in info.value.errors] == [1, 3]
        assert "garbage.mp4" in str(info.value) and "truncated.mp4" in str(info.value)

    def test_one_stereo_waveform_goes_with_one_caption(self):
        stereo = np.random.default_rng(0).standard_normal((2, 48000)).astype("f4")
        out = self.get_processor()(text="a dog", audio=stereo, sampling_rate=16000)
        assert out["input_ids"].shape[0] == 1 and out["input_features"].shape[0] == 1

    @pytest.mark.parametrize(
        "kwargs, error, match",
        [
            ({"text": []}, ValueError, r"`text` is an empty list"),
            ({"text": ["a dog", None]}, TypeError, r"`text\[1\]` is None, not a string"),
            ({"prompts": []}, ValueError, r"`prompts` is an empty list"),
            ({"videos": []}, ValueError, r"`videos` is empty"),
            ({"audio": []}, ValueError, r"`audio` is an empty list"),
            ({"videos": [np.zeros((2, 8, 8, 3), np.uint8), None]}, TypeError, r"`videos\[1\]` is None"),
            ({"videos": np.zeros((8, 8, 3), np.uint8)}, ValueError, r"`videos` has shape \(8, 8, 3\)"),
            ({"videos": 3}, TypeError, r"`videos` must be a video path"),
        ],
    )
    def test_empty_and_malformed_inputs_are_named(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            self.get_processor()(**kwargs)

    def test_missing_processor_folder_is_named(self, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"No processor folder .*nowhere/processor"):
            ValorProcessor.from_pretrained(str(tmp_path / "nowhere" / "processor"))
