"""The training collator (`transformers_valor.data.collator.ValorTrainingCollator`)."""

from pathlib import Path

from training_helpers import write_qa_set
from transformers_valor import ValorProcessor
from transformers_valor.data.collator import ValorTrainingCollator
from transformers_valor.data.datasets import DatasetConfig, SampleRef, load_mixture, load_video_text_dataset
from transformers_valor.data.masking import CaptionMaskingConfig


def test_collator_feeds_questions_as_prompts(tiny_corpus, tiny_processor_dir, tmp_path):
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
        prompts=["which color is the shape"], padding="max_length", max_text_length=8, return_tensors="pt"
    )["prompt_ids"][0]
    assert batch["prompt_ids"].shape == (2, 10)
    assert batch["prompt_ids"][0].tolist() == expected.tolist()
    assert batch["references"] == [["yellow"], ["up"]]
