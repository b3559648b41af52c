"""Pytest configuration: make tests/helpers.py importable and keep every test offline and deterministic."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A synthetic corpus of 8 training and 4 test clips (32 px, 4 frames, 1 s of 16 kHz audio), made once."""
    from transformers_valor.data.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    generate_corpus(root, num_train=8, num_test=4, seed=0, image_size=32, fps=4, duration=1.0, num_workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_processor_dir(tiny_corpus, tmp_path_factory):
    """A saved ValorProcessor for `tiny_corpus`: WordPiece vocabulary trained on its captions, 2 frames of
    32 px, one audio clip of 32 mel bins x 64 frames."""
    from transformers_valor import ValorFeatureExtractor, ValorProcessor, ValorVideoProcessor
    from transformers_valor.data.synthetic import load_metadata
    from transformers_valor.data.vocab import train_wordpiece_tokenizer

    root = tmp_path_factory.mktemp("tiny_processor")
    texts = [c for row in load_metadata(tiny_corpus / "train") for c in row["captions"]]
    processor = ValorProcessor(
        tokenizer=train_wordpiece_tokenizer(texts, root / "vocab", vocab_size=200),
        video_processor=ValorVideoProcessor(num_frames=2, size=32),
        feature_extractor=ValorFeatureExtractor(
            sampling_rate=16000, num_mel_bins=32, clip_length=64, num_clips=1
        ),
        max_text_length=20,
    )
    processor.save_pretrained(root)
    return root
