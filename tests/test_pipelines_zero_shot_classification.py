"""Zero-shot video, audio and audiovisual classification (`transformers_valor.pipelines.zero_shot_classification`):
the scores are the softmax of the model's MGA logits over the labels, inputs are paths, arrays, tensors or dicts,
and transformers' own `zero-shot-audio-classification` keeps working for CLAP."""

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast, ClapConfig, ClapFeatureExtractor, ClapModel, pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.zero_shot_audio_classification import ZeroShotAudioClassificationPipeline

from helpers import tiny_processor, tiny_valor_config
from media import write_video
from transformers_valor import ValorModel
from transformers_valor.pipelines import (
    ValorZeroShotAudioClassificationPipeline,
    ZeroShotAudioVisualClassificationPipeline,
    ZeroShotVideoClassificationPipeline,
)

TASKS = {
    "zero-shot-video-classification": ("tv", ZeroShotVideoClassificationPipeline),
    "zero-shot-audio-classification": ("ta", ValorZeroShotAudioClassificationPipeline),
    "zero-shot-audiovisual-classification": ("tva", ZeroShotAudioVisualClassificationPipeline),
}
LABELS = ["a dog", "a cat", "a guitar"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero_shot")
    torch.manual_seed(0)
    model = ValorModel(tiny_valor_config(initializer_range=0.2)).eval()
    model.save_pretrained(root / "valor")
    tiny_processor().save_pretrained(root / "valor")
    return {
        "folder": str(root / "valor"),
        "video": str(write_video(root / "clip.mp4", num_frames=8)),
        "model": model,
    }


def expected_scores(model, processor, group, template, **media):
    """The softmax over the labels of the model's MGA logits for `group`, computed without the pipeline."""
    texts = processor(text=[template.format(label) for label in LABELS])
    inputs = processor(**media)
    with torch.no_grad():
        features = {"text": model.get_text_features(texts["input_ids"], texts["attention_mask"])}
        if "pixel_values_videos" in inputs:
            features["video"] = model.get_video_features(inputs["pixel_values_videos"])
        if "input_features" in inputs:
            features["audio"] = model.get_audio_features(
                inputs["input_features"], inputs["input_features_mask"]
            )
        logits = model.similarity(*model.group_features(group, **features)) * model.get_logit_scale()
    return dict(zip(LABELS, logits[:, 0].softmax(0).tolist()))  # (labels, 1 input)


@pytest.mark.parametrize("task", list(TASKS))
def test_scores_are_the_softmax_of_the_groups_logits(assets, task):
    group, cls = TASKS[task]
    classifier = pipeline(task, model=assets["folder"])
    assert type(classifier) is cls and PIPELINE_REGISTRY.supported_tasks[task]["impl"] is cls
    out = classifier(assets["video"], candidate_labels=LABELS, hypothesis_template="this is {}")
    assert [set(item) for item in out] == [{"score", "label"}] * 3
    assert [item["score"] for item in out] == sorted((item["score"] for item in out), reverse=True)
    media = {
        "tv": {"videos": [assets["video"]], "audio_from_video": False},
        "ta": {"audio": [assets["video"]]},
    }
    expected = expected_scores(
        assets["model"],
        classifier.processor,
        group,
        "this is {}",
        **media.get(group, {"videos": [assets["video"]]}),
    )
    assert {item["label"]: item["score"] for item in out} == pytest.approx(expected, abs=1e-5)


def test_arrays_tensors_and_dicts(assets):
    video = pipeline("zero-shot-video-classification", model=assets["folder"])
    frames = np.random.RandomState(0).randint(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    from_array = video(frames, candidate_labels=LABELS)
    assert video(torch.from_numpy(frames), candidate_labels=LABELS) == from_array
    assert video({"video": frames}, candidate_labels=LABELS) == from_array
    batch = video([assets["video"], frames], candidate_labels=LABELS)
    assert batch[1] == from_array and len(batch) == 2
    audio = pipeline("zero-shot-audio-classification", model=assets["folder"])
    wave = np.random.RandomState(1).randn(16000).astype(np.float32)
    out = audio({"audio": wave, "sampling_rate": 16000}, candidate_labels=LABELS)
    assert out == audio(wave, candidate_labels=LABELS, hypothesis_template="the sound of {}.")
    both = pipeline("zero-shot-audiovisual-classification", model=assets["folder"])
    assert len(both({"video": frames, "audio": wave, "sampling_rate": 16000}, candidate_labels=LABELS)) == 3
    with pytest.raises(ValueError, match="modalities='both' needs audio"):
        both({"video": frames}, candidate_labels=LABELS)
    with pytest.raises(ValueError, match="one modality"):
        both(frames, candidate_labels=LABELS)


def test_bad_arguments_are_named(assets):
    classifier = pipeline("zero-shot-video-classification", model=assets["folder"])
    with pytest.raises(ValueError, match="candidate_labels"):
        classifier(assets["video"])
    with pytest.raises(ValueError, match="non-empty list"):
        classifier(assets["video"], candidate_labels=[])
    with pytest.raises(ValueError, match="one `{}`"):
        classifier(assets["video"], candidate_labels=LABELS, hypothesis_template="no slot")
    with pytest.raises(ValueError, match="Unknown input keys"):
        classifier({"frames": assets["video"]}, candidate_labels=LABELS)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        classifier("missing.mp4", candidate_labels=LABELS)


def tiny_clap():
    """A randomly initialised tiny CLAP with a tokenizer and a feature extractor (no download)."""
    config = ClapConfig(
        text_config=dict(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
        ),
        audio_config=dict(
            depths=[1, 1],
            num_attention_heads=[2, 2],
            patch_embeds_hidden_size=16,
            hidden_size=32,
            spec_size=256,
            num_mel_bins=64,
            window_size=4,
            patch_stride=4,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    words = [
        "[PAD]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[UNK]",
        "a",
        "dog",
        "cat",
        "guitar",
        "sound",
        "of",
        "this",
        "is",
    ]
    vocab = {w: i for i, w in enumerate(words + [f"w{i}" for i in range(99 - len(words))])}
    tokenizer = BertTokenizerFast(vocab=vocab, model_input_names=["input_ids", "attention_mask"])
    extractor = ClapFeatureExtractor(feature_size=64, nb_max_samples=16000, truncation="rand_trunc")
    return ClapModel(config).eval(), tokenizer, extractor


def test_transformers_own_task_still_runs_clap_as_transformers_does():
    model, tokenizer, extractor = tiny_clap()
    wave = np.random.RandomState(0).randn(16000).astype(np.float32)
    ours = pipeline(
        "zero-shot-audio-classification", model=model, tokenizer=tokenizer, feature_extractor=extractor
    )
    theirs = ZeroShotAudioClassificationPipeline(
        model=model, tokenizer=tokenizer, feature_extractor=extractor
    )
    assert isinstance(ours, ValorZeroShotAudioClassificationPipeline)
    assert ours(wave, candidate_labels=LABELS) == theirs(wave, candidate_labels=LABELS)


def test_other_models_are_refused_by_the_valor_only_tasks():
    model, tokenizer, _ = tiny_clap()
    with pytest.raises(TypeError, match="needs a VALOR model"):
        ZeroShotVideoClassificationPipeline(model=model, tokenizer=tokenizer)
