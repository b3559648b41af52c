"""Tests of `transformers_valor.modelcard.create_model_card`."""

import re
import shutil
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import EvalResult, ModelCard

from helpers import tiny_valor_config
from original_checkpoints import IMAGE, original_state_dict, overrides_for, write_vocab
from transformers_valor import ValorForConditionalGeneration, ValorForRetrieval
from transformers_valor.conversion import convert_checkpoint
from transformers_valor.modelcard import add_eval_results, create_model_card, eval_results_from_metrics


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
    card = ModelCard.load(out / "README.md")
    assert card.data.datasets == ["VALOR-1M", "WebVid-2.5M", "CC3M"] and card.data.license == "mit"
    text = card.text
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = code.replace('repo = "converted"', f'repo = "{out}"').replace('"video.mp4"', f'"{video}"')
    assert str(out) in code
    namespace = {}
    exec(compile(code, "snippet", "exec"), namespace)
    assert namespace["ids"].shape[0] == 1 and namespace["logits_per_text"].shape == (1, 1)


def test_default_card_claims_no_data_and_the_project_license(config):
    card = create_model_card(config)
    assert card.data.datasets is None and card.data.license == "apache-2.0" and card.data.eval_results is None
    assert "Training data: not stated." in card.text and "VALOR-1M" not in card.text


def test_eval_results_are_added_from_the_run_metrics(tmp_path, config):
    create_model_card(config, tmp_path, datasets=["tiny"], tags=["retrieval"])
    metrics = {
        "test": {"tva": {"t2va_R@1": 0.25, "t2va_median_rank": 2.0}},
        "test_audio": {"ta": {"a2t_R@1": 0.5}},
    }
    add_eval_results(config, tmp_path, "retrieval", metrics)
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.datasets == ["tiny"] and "retrieval" in data.tags
    assert [(r.task_type, r.dataset_name, r.metric_type, r.metric_value) for r in data.eval_results] == [
        ("text-to-video-retrieval", "test", "tva/t2va_R@1", 0.25),
        ("text-to-video-retrieval", "test", "tva/t2va_median_rank", 2.0),
        ("text-to-video-retrieval", "test_audio", "ta/a2t_R@1", 0.5),
    ]
    assert (
        "| text-to-video-retrieval | test | tva/t2va_R@1 | 0.25 |"
        in ModelCard.load(tmp_path / "README.md").text
    )
    with pytest.raises(ValueError, match="`task` must be one of"):
        eval_results_from_metrics("pretrain", metrics)


class FakeHub:
    """`hf_api()` of transformers, recording what would be uploaded (the files are copied at commit time)."""

    def __init__(self, folder):
        self.folder, self.repos = folder, []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append(repo_id)
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        for op in operations:
            target = self.folder / repo_id / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(op.path_or_fileobj, target)
        return f"https://hub.invalid/{repo_id}"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    import transformers.utils.hub

    import transformers_valor.modeling_valor

    hub = FakeHub(tmp_path / "uploaded")
    monkeypatch.setattr(transformers.utils.hub, "hf_api", lambda: hub)
    monkeypatch.setattr(transformers_valor.modeling_valor, "hf_api", lambda: hub)
    return hub


@pytest.mark.parametrize("how", ["push_to_hub", "save_pretrained"])
def test_pushing_uploads_valors_card(fake_hub, tmp_path, config, how):
    torch.manual_seed(0)
    model = ValorForRetrieval(config)
    if how == "push_to_hub":
        model.push_to_hub("my-org/valor-tiny", tags=["demo"])
    else:
        model.save_pretrained(tmp_path / "valor-tiny", push_to_hub=True, repo_id="my-org/valor-tiny")
    uploaded = fake_hub.folder / "my-org" / "valor-tiny"
    assert fake_hub.repos == ["my-org/valor-tiny"]
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md"} <= {
        p.name for p in uploaded.iterdir()
    }
    card = ModelCard.load(uploaded / "README.md")
    assert card.data.pipeline_tag == "feature-extraction" and "valor" in card.data.tags
    assert ("demo" in card.data.tags) == (how == "push_to_hub")
    assert "automatically generated" not in card.text and "## Architecture" in card.text
    if how == "push_to_hub":
        assert 'repo = "my-org/valor-tiny"' in card.text
    assert ValorForRetrieval.from_pretrained(uploaded) is not None
