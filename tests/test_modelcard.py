"""Tests of `transformers_valor.modelcard.create_model_card`."""

import re

import pytest
import torch
from huggingface_hub import EvalResult, ModelCard

from helpers import tiny_valor_config
from original_checkpoints import IMAGE, original_state_dict, overrides_for, write_vocab
from transformers_valor import ValorForConditionalGeneration, ValorForRetrieval
from transformers_valor.conversion import convert_checkpoint
from transformers_valor.modelcard import create_model_card


@pytest.fixture
def config():
    return tiny_valor_config()


def test_card_round_trips(tmp_path, config):
    results = [
        {
            "task": "text-to-video-retrieval",
            "dataset": "msrvtt",
            "metric": "recall@1",
            "value": 43.0,
            "split": "test",
        },
        EvalResult(
            task_type="video-captioning",
            dataset_type="msrvtt",
            dataset_name="MSR-VTT",
            metric_type="cider",
            metric_value=74.0,
        ),
    ]
    card = create_model_card(
        config,
        tmp_path,
        model_id="my-org/valor-tiny",
        datasets=["VALOR-1M", "msrvtt"],
        eval_results=results,
        base_model="google-bert/bert-base-uncased",
        tags=["msrvtt"],
    )
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.pipeline_tag == card.data.pipeline_tag == "video-text-to-text"
    assert loaded.data.library_name == "transformers"
    assert {"valor", "video-text", "audio", "msrvtt"} <= set(loaded.data.tags)
    assert loaded.data.datasets == ["VALOR-1M", "msrvtt"]
    assert loaded.data.base_model == "google-bert/bert-base-uncased"
    assert [(r.dataset_type, r.metric_type, r.metric_value) for r in loaded.data.eval_results] == [
        ("msrvtt", "recall@1", 43.0),
        ("msrvtt", "cider", 74.0),
    ]
    assert 'repo = "my-org/valor-tiny"' in loaded.text
    compile(re.search(r"```python\n(.*?)```", loaded.text, re.S).group(1), "snippet", "exec")


def test_pipeline_tag_follows_the_head(tmp_path, config):
    torch.manual_seed(0)
    assert create_model_card(ValorForRetrieval(config)).data.pipeline_tag == "feature-extraction"
    assert create_model_card(ValorForConditionalGeneration(config)).data.pipeline_tag == "video-text-to-text"
    with pytest.raises(ValueError, match="task, dataset, metric and value"):
        create_model_card(config, eval_results=[{"task": "x"}])
    (tmp_path / "README.md").write_text("keep me")
    create_model_card(config, tmp_path, overwrite=False)
    assert (tmp_path / "README.md").read_text() == "keep me"


def test_usage_snippet_runs(tmp_path):
    """The card's snippet runs against a converted checkpoint and a real video file."""
    from media import write_video

    out = tmp_path / "converted"
    convert_checkpoint(
        original_state_dict("valor-b"),
        "valor-b",
        out,
        vocab=write_vocab(tmp_path / "vocab.txt"),
        image_size=IMAGE,
        config_overrides=overrides_for("valor-b"),
        verify=False,
    )
    video = write_video(tmp_path / "clip.mp4")
    text = ModelCard.load(out / "README.md").text
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = code.replace('repo = "converted"', f'repo = "{out}"').replace('"video.mp4"', f'"{video}"')
    assert str(out) in code
    namespace = {}
    exec(compile(code, "snippet", "exec"), namespace)
    assert namespace["ids"].shape[0] == 1 and namespace["logits_per_text"].shape == (1, 1)
