"""The training collator (`transformers_valor.data.collator.ValorTrainingCollator`) and the decoded cache."""

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from training_helpers import write_qa_set
from transformers_valor import ValorProcessor
from transformers_valor.data import collator as collator_module
from transformers_valor.data.collator import (
    ValorTrainingCollator,
    build_decoded_cache,
    file_fingerprint,
    model_inputs,
)
from transformers_valor.data.datasets import DatasetConfig, SampleRef, load_mixture, load_video_text_dataset
from transformers_valor.data.masking import (
    ANSWER_MASK_PROBABILITY,
    CAPTION_MASK_PROBABILITY,
    MLM_MASK_PROBABILITY,
    CaptionMaskingConfig,
)


@pytest.fixture
def mask_rates(monkeypatch):
    """The masking probability of every `mask_captions` call the collator makes, in order."""
    rates = []
    real_mask_captions = collator_module.mask_captions

    def recording_mask_captions(input_ids, config, generator=None):
        rates.append(config.mask_probability)
        return real_mask_captions(input_ids, config, generator)

    monkeypatch.setattr(collator_module, "mask_captions", recording_mask_captions)
    return rates


def test_collator_feeds_questions_and_masks_answers_at_the_qa_rate(
    tiny_corpus, tiny_processor_dir, tmp_path, mask_rates
):
    qa_file = write_qa_set(Path(tiny_corpus), "train", tmp_path / "qa")
    config = DatasetConfig(
        name="qa", path=str(qa_file.parent), annotation_file=str(qa_file), question_column="question"
    )
    table = load_video_text_dataset(config)
    assert table[0]["question"] == "which color is the shape" and table[0]["captions"] == ["yellow"]
    assert table[0]["sample_id"] != table[1]["sample_id"]  # two questions of one video
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    mix, _ = load_mixture([config])
    masking = CaptionMaskingConfig(mask_token_id=4, pad_token_id=0, random_token_range=(5, 200))
    batch = ValorTrainingCollator(processor, [config], masking, max_text_length=8)(
        [mix[SampleRef(0, i, 0)] for i in range(2)]
    )
    expected = processor(
        prompts=["which color is the shape"], padding="max_length", max_length=10, return_tensors="pt"
    )["prompt_ids"][0]
    # The raw question: the model composes its decoder prompt from it (VALOR-L adds "answer the question").
    assert "prompt_ids" not in batch and batch["question_ids"].shape == (2, 10)
    assert batch["question_ids"][0].tolist() == expected.tolist()
    assert batch["question_attention_mask"].tolist() == (batch["question_ids"] != 0).long().tolist()
    assert batch["references"] == [["yellow"], ["up"]]
    assert mask_rates == [ANSWER_MASK_PROBABILITY]  # the reference's `text_masker(answer, 0.99)`
    assert "mlm_input_ids" not in batch and batch["mlm_groups"] == []


def test_collator_masks_mlm_captions_for_datasets_with_mlm_groups(
    tiny_corpus, tiny_processor_dir, mask_rates
):
    config = DatasetConfig(
        name="webvid_like", path=tiny_corpus, modality="video", mlm_groups=["tv"], num_frames=2
    )
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    mix, _ = load_mixture([config])
    masking = CaptionMaskingConfig(mask_token_id=4, pad_token_id=0, random_token_range=(5, 200))
    batch = ValorTrainingCollator(processor, [config], masking, max_text_length=8)(
        [mix[SampleRef(0, i, 0)] for i in range(3)]
    )
    assert mask_rates == [CAPTION_MASK_PROBABILITY, MLM_MASK_PROBABILITY]
    assert batch["mlm_groups"] == ["tv"] and batch["mlm_input_ids"].shape == batch["input_ids"].shape
    masked = batch["mlm_labels"] != -100
    assert masked.any(dim=1).all()
    assert torch.equal(batch["mlm_labels"][masked], batch["input_ids"][masked])
    assert torch.equal(batch["mlm_input_ids"][~masked], batch["input_ids"][~masked])
    assert set(model_inputs(batch)) >= {"mlm_input_ids", "mlm_labels", "mlm_groups"}


# -------------------------------------------------------------------------------------------- decoded cache
def two_clip_dataset(tiny_corpus, tmp_path) -> tuple[DatasetConfig, dict]:
    """A copy of two training clips (so that a test may change them) and its rows."""
    import shutil

    folder = tmp_path / "clips"
    folder.mkdir()
    rows = []
    for name in ("train_00000.mp4", "train_00001.mp4"):
        shutil.copy(Path(tiny_corpus) / "train" / name, folder / name)
        rows.append({"file_name": name, "caption": "a clip"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DatasetConfig(name="two", path=str(folder), num_frames=2)
    return config, load_video_text_dataset(config).to_dict()


def test_file_fingerprint_reads_content_not_mtime(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(3 << 20))
    stat = os.stat(big)
    before = file_fingerprint(big)
    with open(big, "r+b") as handle:  # same size, old mtime restored (what `cp -p` / `rsync -t` leave)
        handle.seek(100)
        handle.write(b"x")
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_fingerprint(big) != before
    assert file_fingerprint(tmp_path / "missing.mp4") == "missing"


def test_same_size_file_with_old_mtime_is_not_served_stale(tiny_corpus, tiny_processor_dir, tmp_path):
    config, rows = two_clip_dataset(tiny_corpus, tmp_path)
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    first = build_decoded_cache(rows, config, processor, tmp_path / "cache", dtype="float32")
    video = Path(rows["video_path"][0])
    other = Path(tiny_corpus) / "test" / "test_00000.mp4"  # another clip, cut or padded to the same size
    size, stat = video.stat().st_size, video.stat()
    video.write_bytes(other.read_bytes()[:size].ljust(size, b"\0"))
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = build_decoded_cache(rows, config, processor, tmp_path / "cache", dtype="float32")
    assert len(list((tmp_path / "cache").glob("two-*.safetensors"))) == 2
    assert not torch.equal(first["pixel_values_videos"][0], second["pixel_values_videos"][0])
    assert torch.equal(first["pixel_values_videos"][1], second["pixel_values_videos"][1])


def test_damaged_cache_is_named_and_rebuilt(tiny_corpus, tiny_processor_dir, tmp_path, caplog):
    config, rows = two_clip_dataset(tiny_corpus, tmp_path)
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    first = build_decoded_cache(rows, config, processor, tmp_path / "cache", dtype="float32")
    (cache_file,) = (tmp_path / "cache").glob("two-*.safetensors")
    cache_file.write_bytes(cache_file.read_bytes()[:100])  # truncated on disk
    with caplog.at_level(logging.WARNING):
        again = build_decoded_cache(rows, config, processor, tmp_path / "cache", dtype="float32")
    assert str(cache_file) in caplog.text and "rebuilding" in caplog.text
    assert torch.equal(again["pixel_values_videos"], first["pixel_values_videos"])
    assert torch.equal(load_file(str(cache_file))["pixel_values_videos"], first["pixel_values_videos"])


def test_cache_dtype_must_be_floating(tiny_corpus, tiny_processor_dir, tmp_path):
    config, rows = two_clip_dataset(tiny_corpus, tmp_path)
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    with pytest.raises(ValueError, match="floating type.*'int8'"):
        build_decoded_cache(rows, config, processor, tmp_path / "cache", dtype="int8")
