"""Tests of the VALOR pipelines (captioning, retrieval, question answering) and of loading from a hub cache.

A tiny model and processor are saved once per module, and placed in a temporary hub cache as `org/valor-tiny`;
the videos are small H.264 .mp4 files written with PyAV (`tests/media.py`).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoProcessor, GenerationConfig, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from helpers import (
    tiny_audio_config,
    tiny_processor,
    tiny_text_config,
    tiny_valor_config,
    tiny_video_swin_config,
)
from media import write_video
from transformers_valor import (
    MODALITY_GROUPS,
    ValorForConditionalGeneration,
    ValorForRetrieval,
    ValorModel,
    ValorProcessor,
)
from transformers_valor.configuration_valor import tokenize_task_prompts
from transformers_valor.pipelines import (
    VALOR_PIPELINES,
    AudioVisualCaptioningPipeline,
    AudioVisualQuestionAnsweringPipeline,
    AudioVisualRetrievalPipeline,
    PipelineInputError,
    PipelineInputNotFoundError,
    VideoGallery,
    register_pipelines,
)
from transformers_valor.retrieval import GalleryIndex, GalleryMismatchError
from transformers_valor.testing_utils import offline_hub_cache, populate_hub_cache

REPO_ID = "org/valor-tiny"


def input_sensitive_config():
    """`tiny_valor_config` initialised with std 0.2 instead of 0.02, so that captions and scores of a random
    model differ between videos and modalities (with 0.02 every input gives the same caption)."""
    std = 0.2
    return tiny_valor_config(
        initializer_range=std,
        text_config=tiny_text_config(initializer_range=std),
        vision_config=tiny_video_swin_config(initializer_range=std),
        audio_config=tiny_audio_config(initializer_range=std),
    )


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Videos, the saved model folder and a hub cache holding it as `org/valor-tiny`."""
    root = tmp_path_factory.mktemp("valor_pipelines")
    media = root / "media"
    media.mkdir()
    videos = [
        str(write_video(media / f"clip{i}.mp4", num_frames=6 + 5 * i, width=32, height=32)) for i in range(3)
    ]
    silent = str(write_video(media / "silent.mp4", num_frames=8, width=32, height=32, audio_codec=None))
    torch.manual_seed(0)
    model = ValorForConditionalGeneration(input_sensitive_config()).eval()
    folder = root / "valor-tiny"
    model.save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    cache = root / "hub"
    snapshot = populate_hub_cache(folder, REPO_ID, cache)
    return {
        "videos": videos,
        "silent": silent,
        "folder": str(folder),
        "cache": cache,
        "snapshot": snapshot,
        "model": model,
        "processor": tiny_processor(),
    }


@pytest.fixture(scope="module")
def captioner(assets):
    return pipeline("audiovisual-captioning", model=assets["folder"])


@pytest.fixture(scope="module")
def answerer(assets):
    return pipeline("audiovisual-question-answering", model=assets["folder"])


@pytest.fixture(scope="module")
def retriever(assets):
    return pipeline("audiovisual-retrieval", model=assets["folder"])


class GenerateSpy:
    """Stands in for `model.generate`: records its keyword arguments and returns fixed ids."""

    def __init__(self, ids=(1, 5, 6, 2)):
        self.calls = []
        self.ids = ids

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        reference = kwargs.get("pixel_values_videos", kwargs.get("input_features"))
        repeats = reference.shape[0] * kwargs.get("num_return_sequences", 1)
        return torch.tensor([list(self.ids)] * repeats)


def direct_generate(
    model, processor, videos, modalities="both", prompts=None, questions=None, **generate_kwargs
) -> list[str]:
    """Captions (or, with `questions`, answers) computed without the pipeline."""
    if modalities == "audio":
        inputs = processor(audio=videos, prompts=prompts or questions)
    else:
        inputs = processor(videos=videos, prompts=prompts or questions, audio_from_video=modalities == "both")
    if questions is not None:
        inputs["question_ids"] = inputs.pop("prompt_ids")
        inputs["question_attention_mask"] = inputs.pop("prompt_attention_mask")
    with torch.no_grad():
        ids = model.generate(**inputs, modalities=modalities, **generate_kwargs)
    return processor.batch_decode(ids)


# ------------------------------------------------------------------------------------------------ registration
def test_tasks_are_registered_on_import():
    tasks = PIPELINE_REGISTRY.get_supported_tasks()
    for task, (pipeline_class, model_class) in VALOR_PIPELINES.items():
        assert task in tasks
        _, impl, _ = PIPELINE_REGISTRY.check_task(task)
        assert impl["impl"] is pipeline_class
        assert impl["pt"] == (model_class,)
    register_pipelines()  # idempotent
    assert PIPELINE_REGISTRY.check_task("audiovisual-captioning")[1]["impl"] is AudioVisualCaptioningPipeline


def test_pipelines_load_from_saved_folder(captioner, answerer, retriever):
    assert isinstance(captioner, AudioVisualCaptioningPipeline)
    assert isinstance(captioner.model, ValorForConditionalGeneration)
    assert isinstance(answerer, AudioVisualQuestionAnsweringPipeline)
    assert isinstance(retriever, AudioVisualRetrievalPipeline)
    assert isinstance(retriever.model, ValorModel)
    for pipe in (captioner, answerer, retriever):
        assert isinstance(pipe.processor, ValorProcessor)
        assert pipe.processor.feature_extractor.clip_length == 32


# --------------------------------------------------------------------------------------------------- captioning
def test_captioning_matches_model_generate(captioner, assets):
    video = assets["videos"][0]
    out = captioner(video, num_beams=2, max_new_tokens=5)
    expected = direct_generate(assets["model"], assets["processor"], [video], num_beams=2, max_new_tokens=5)
    assert out == [{"generated_text": expected[0]}]
    assert isinstance(out[0]["generated_text"], str) and out[0]["generated_text"]


@pytest.mark.parametrize("modalities", ["video", "audio", "both"])
def test_captioning_modalities(captioner, assets, modalities):
    video = assets["videos"][1]
    out = captioner(video, modalities=modalities, max_new_tokens=4, num_beams=1)
    expected = direct_generate(
        assets["model"], assets["processor"], [video], modalities, max_new_tokens=4, num_beams=1
    )
    assert out == [{"generated_text": expected[0]}]


def test_captioning_modalities_change_the_caption(captioner, assets):
    video = assets["videos"][0]
    captions = {
        m: captioner(video, modalities=m, max_new_tokens=4, num_beams=1)[0]["generated_text"]
        for m in ("video", "audio", "both")
    }
    assert len(set(captions.values())) > 1, captions


@pytest.mark.parametrize(
    "modalities, has_video, has_audio", [("video", True, False), ("audio", False, True), ("both", True, True)]
)
def test_captioning_decodes_only_the_requested_modalities(
    captioner, assets, monkeypatch, modalities, has_video, has_audio
):
    spy = GenerateSpy()
    monkeypatch.setattr(captioner.model, "generate", spy)
    out = captioner(assets["videos"][0], modalities=modalities, num_frames=3, num_clips=1)
    assert out == [{"generated_text": "a dog"}]
    call = spy.calls[0]
    assert call["modalities"] == modalities
    assert ("pixel_values_videos" in call) is has_video
    assert ("input_features" in call) is has_audio
    if has_video:
        assert call["pixel_values_videos"].shape == (1, 3, 3, 32, 32)
    if has_audio:
        assert call["input_features"].shape == (1, 1, 16, 32)


def test_captioning_generation_settings(assets, monkeypatch):
    captioner = pipeline("audiovisual-captioning", model=assets["folder"], num_beams=2)
    spy = GenerateSpy()
    monkeypatch.setattr(captioner.model, "generate", spy)
    captioner(assets["videos"][0])
    assert spy.calls[-1]["num_beams"] == 2  # set at construction
    assert captioner.model.generation_config.max_new_tokens == 30  # VALOR's default, from the model
    captioner(assets["videos"][0], num_beams=4, do_sample=True, top_p=0.9, max_new_tokens=7)
    call = spy.calls[-1]
    assert (call["num_beams"], call["do_sample"], call["top_p"], call["max_new_tokens"]) == (4, True, 0.9, 7)
    assert captioner(assets["videos"][0], num_return_sequences=2, num_beams=2) == [
        {"generated_text": "a dog"},
        {"generated_text": "a dog"},
    ]

    default = pipeline("audiovisual-captioning", model=assets["folder"])
    monkeypatch.setattr(default.model, "generate", spy)
    default(assets["videos"][0])
    generation = default.model.generation_config  # VALOR's decoding, carried by the saved model
    assert (generation.num_beams, generation.max_new_tokens, generation.length_penalty) == (3, 30, 0.0)
    assert generation.beam_ranking == "valor"
    # A model without VALOR's generation config gets the pipeline's defaults: VALOR's decoding again.
    monkeypatch.setattr(default.model, "generation_config", GenerationConfig())
    default(assets["videos"][0])
    call = spy.calls[-1]
    assert (call["num_beams"], call["max_new_tokens"], call["length_penalty"], call["beam_ranking"]) == (
        3,
        30,
        0.0,
        "valor",
    )


def test_captioning_task_prompt(captioner, assets, monkeypatch):
    spy = GenerateSpy()
    monkeypatch.setattr(captioner.model, "generate", spy)
    captioner(assets["videos"][0])
    assert spy.calls[-1].get("prompt_ids") is None  # the model adds its task prompt itself (VALOR-L)
    assert "use_task_prompt" not in spy.calls[-1]
    captioner(assets["videos"][0], prompt="a man playing")
    assert torch.equal(
        spy.calls[-1]["prompt_ids"], assets["processor"](prompts=["a man playing"])["prompt_ids"]
    )
    captioner(assets["videos"][0], prompt="")
    assert spy.calls[-1].get("prompt_ids") is None and spy.calls[-1]["use_task_prompt"] is False


def test_captioning_task_prompt_matches_model_generate(captioner, assets, monkeypatch):
    """VALOR-L: the pipeline's caption is decoded with the `captioning` task prompt, as `generate` adds it."""
    config = captioner.model.config
    monkeypatch.setattr(config, "use_task_prompt", True)
    prompt_ids = tokenize_task_prompts(assets["processor"].tokenizer, config.task_prompts)
    monkeypatch.setattr(config, "task_prompt_ids", prompt_ids)
    video = assets["videos"][2]
    out = captioner(video, max_new_tokens=4, num_beams=2)
    expected = direct_generate(
        assets["model"],
        assets["processor"],
        [video],
        prompts=[config.task_prompts["captioning"]],
        max_new_tokens=4,
        num_beams=2,
    )
    assert out == [{"generated_text": expected[0]}]


@pytest.mark.parametrize("batch_size", [1, 2])
def test_captioning_batch_of_two_videos(captioner, assets, batch_size):
    videos = assets["videos"][:2]
    out = captioner(videos, max_new_tokens=4, num_beams=2, batch_size=batch_size)
    expected = [
        direct_generate(assets["model"], assets["processor"], [v], max_new_tokens=4, num_beams=2)[0]
        for v in videos
    ]
    assert out == [[{"generated_text": text}] for text in expected]


def test_captioning_silent_video_under_both_warns(captioner, assets):
    with pytest.warns(UserWarning, match="No audio stream"):
        out = captioner(assets["silent"], max_new_tokens=3, num_beams=1)
    assert isinstance(out[0]["generated_text"], str)
    assert len(captioner(assets["silent"], modalities="video", max_new_tokens=3, num_beams=1)) == 1


def test_decoded_arrays_tensors_and_dicts_are_inputs(captioner, answerer, assets):
    video = assets["videos"][1]
    frames = np.random.RandomState(0).randint(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    expected = direct_generate(
        assets["model"], assets["processor"], [frames], modalities="video", max_new_tokens=4
    )
    out = captioner(frames, modalities="video", max_new_tokens=4)
    assert out == [{"generated_text": expected[0]}]
    assert captioner(torch.from_numpy(frames), modalities="video", max_new_tokens=4) == out
    assert captioner({"video": frames}, modalities="video", max_new_tokens=4) == out
    from_path = captioner(video, max_new_tokens=4)
    assert captioner({"video": video, "audio": video}, max_new_tokens=4) == from_path
    answer = answerer({"video": frames, "question": "what is"}, modalities="video", max_new_tokens=3)
    assert answer == answerer(frames, "what is", modalities="video", max_new_tokens=3)
    with pytest.raises(ValueError, match="needs audio"):
        captioner({"video": frames}, max_new_tokens=3)


# ------------------------------------------------------------------------------------------ question answering
def test_question_answering_matches_greedy_generate(answerer, assets):
    video, question = assets["videos"][0], "what is the dog playing"
    out = answerer(video, question, max_new_tokens=5)
    expected = direct_generate(
        assets["model"], assets["processor"], [video], questions=[question], max_new_tokens=5, num_beams=1
    )
    assert out == [{"answer": expected[0]}]
    assert answerer({"video": video, "question": question}, max_new_tokens=5) == out


def test_question_answering_is_greedy_by_default(answerer, assets, monkeypatch):
    spy = GenerateSpy()
    monkeypatch.setattr(answerer.model, "generate", spy)
    monkeypatch.setattr(answerer.model.generation_config, "num_beams", 3)
    answerer(assets["videos"][0], "what is the man playing")
    call = spy.calls[-1]
    assert (call["num_beams"], call["do_sample"]) == (1, False)
    assert answerer.model.generation_config.max_new_tokens == 30
    expected = assets["processor"](prompts=["what is the man playing"])["prompt_ids"]
    assert torch.equal(call["question_ids"], expected) and "prompt_ids" not in call
    answerer(assets["videos"][0], "what is the man playing", num_beams=2)
    assert spy.calls[-1]["num_beams"] == 2


def test_question_answering_composes_the_task_prompt(answerer, assets, monkeypatch):
    """VALOR-L: the answer is decoded from `[CLS] answer the question q1 .. [SEP]`, composed by the model."""
    config = answerer.model.config
    monkeypatch.setattr(config, "use_task_prompt", True)
    monkeypatch.setattr(
        config, "task_prompt_ids", tokenize_task_prompts(assets["processor"].tokenizer, config.task_prompts)
    )
    video, question = assets["videos"][1], "what is the dog playing"
    out = answerer(video, question, max_new_tokens=5)
    question_ids = assets["processor"](prompts=[question])["prompt_ids"]
    composed = torch.cat(
        [question_ids[:, :1], torch.tensor([config.task_prompt_ids["qa"][1:-1]]), question_ids[:, 1:]], 1
    )
    inputs = assets["processor"](videos=[video])
    with torch.no_grad():
        ids = assets["model"].generate(**inputs, prompt_ids=composed, max_new_tokens=5, num_beams=1)
    assert out == [{"answer": assets["processor"].batch_decode(ids)[0]}]


def test_question_answering_top_k_is_the_number_of_answers_with_scores(answerer, assets):
    video, question = assets["videos"][0], "what is the dog playing"
    best = answerer(video, question, top_k=1, max_new_tokens=4)
    assert [set(a) for a in best] == [{"score", "answer"}]
    assert best[0]["answer"] == answerer(video, question, max_new_tokens=4)[0]["answer"]  # the greedy answer
    three = answerer(video, question, top_k=3, max_new_tokens=4)
    assert len(three) == 3 and [a["score"] for a in three] == sorted(
        (a["score"] for a in three), reverse=True
    )
    inputs = assets["processor"](videos=[video], prompts=[question])
    inputs["question_ids"] = inputs.pop("prompt_ids")
    inputs["question_attention_mask"] = inputs.pop("prompt_attention_mask")
    with torch.no_grad():
        beams = assets["model"].generate(
            **inputs, num_beams=3, num_return_sequences=3, max_new_tokens=4, return_dict_in_generate=True
        )
    expected = sorted(
        zip(beams.sequences_scores.exp().tolist(), assets["processor"].batch_decode(beams.sequences)),
        reverse=True,
    )
    assert [a["answer"] for a in three] == [text for _, text in expected]
    assert [a["score"] for a in three] == pytest.approx([score for score, _ in expected])
    assert all(0.0 < a["score"] <= 1.0 for a in three + best)
    with pytest.raises(ValueError, match="beam search of `top_k` beams"):
        answerer(video, question, top_k=3, num_beams=2)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_question_answering_batch(answerer, assets, batch_size):
    videos = assets["videos"][:2]
    questions = ["what is", "what is the man playing a guitar"]
    out = answerer(videos, questions, max_new_tokens=4, batch_size=batch_size)
    expected = [
        direct_generate(
            assets["model"], assets["processor"], [v], questions=[q], max_new_tokens=4, num_beams=1
        )[0]
        for v, q in zip(videos, questions)
    ]
    assert out == [[{"answer": text}] for text in expected]
    # One question for several videos, and several questions for one video.
    assert len(answerer(videos, "what is", max_new_tokens=2)) == 2
    assert len(answerer(videos[0], questions, max_new_tokens=2)) == 2


# --------------------------------------------------------------------------------------------------- retrieval
def direct_scores(model: ValorModel, processor, queries, videos, group) -> torch.Tensor:
    """MGA scores computed with the model's own methods, all videos in one batch."""
    inputs = processor(text=queries, videos=videos)
    with torch.no_grad():
        text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
        video = model.get_video_features(inputs["pixel_values_videos"])
        audio = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
        uses = MODALITY_GROUPS[group].modalities
        query, candidates = model.group_features(
            group,
            text=text,
            video=video if "video" in uses else None,
            audio=audio if "audio" in uses else None,
        )
        return model.similarity(query, candidates)


def assert_same_ranking(actual, expected):
    """Same videos in the same order for every query, and scores equal up to float rounding."""
    assert [[m["video"] for m in row] for row in actual] == [[m["video"] for m in row] for row in expected]
    for row_a, row_b in zip(actual, expected):
        assert [m["score"] for m in row_a] == pytest.approx([m["score"] for m in row_b], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("group", ["tv", "ta", "tva"])
def test_retrieval_ranking_matches_model_similarity(retriever, assets, group):
    queries = ["a dog barks", "a man playing the guitar"]
    videos = assets["videos"]
    out = retriever(queries, videos=videos, group=group, video_batch_size=2)
    scores = direct_scores(retriever.model, assets["processor"], queries, videos, group)
    assert len(out) == len(queries)
    for row, ranked in zip(scores, out):
        order = torch.sort(row, descending=True, stable=True).indices.tolist()
        assert [match["video"] for match in ranked] == [videos[i] for i in order]
        torch.testing.assert_close(
            torch.tensor([match["score"] for match in ranked]), row[order], rtol=1e-4, atol=1e-5
        )
        assert all(isinstance(match["score"], float) for match in ranked)


def test_retrieval_encodes_each_video_once(retriever, assets, monkeypatch):
    valor = retriever.valor
    seen = {"video": 0, "audio": 0}
    original_video, original_audio = valor.get_video_features, valor.get_audio_features

    def count_video(pixel_values_videos):
        seen["video"] += pixel_values_videos.shape[0]
        return original_video(pixel_values_videos)

    def count_audio(input_features, input_features_mask=None):
        seen["audio"] += input_features.shape[0]
        return original_audio(input_features, input_features_mask)

    monkeypatch.setattr(valor, "get_video_features", count_video)
    monkeypatch.setattr(valor, "get_audio_features", count_audio)
    queries = ["a dog", "a cat", "the man", "guitar sound"]
    retriever(queries, videos=assets["videos"], video_batch_size=2)
    assert seen == {"video": 3, "audio": 3}

    from_paths = {
        group: retriever(queries, videos=assets["videos"], group=group) for group in ("tv", "ta", "tva")
    }
    seen.update(video=0, audio=0)
    gallery = retriever.encode_videos(assets["videos"], group="tva", video_batch_size=2)
    assert isinstance(gallery, VideoGallery) and len(gallery) == 3
    for group in ("tv", "ta", "tva"):
        assert_same_ranking(retriever(queries, videos=gallery, group=group), from_paths[group])
    assert seen == {"video": 3, "audio": 3}  # only encode_videos encoded


def test_retrieval_gallery_reuse_does_not_encode(retriever, assets, monkeypatch):
    gallery = retriever.encode_videos(assets["videos"], group="tv")
    monkeypatch.setattr(retriever.valor, "get_video_features", None)  # any encoding would fail
    assert len(retriever("a dog", videos=gallery, group="tv")) == 3
    with pytest.raises(ValueError, match="audio"):
        retriever("a dog", videos=gallery, group="tva")


def test_retrieval_on_a_saved_gallery(retriever, assets, tmp_path, monkeypatch):
    queries = ["a dog barks", "a man playing the guitar"]
    expected = {g: retriever(queries, videos=assets["videos"], group=g) for g in ("tv", "ta", "tva")}
    path = tmp_path / "gallery"
    retriever.encode_videos(assets["videos"], path=path, video_batch_size=2)
    gallery = VideoGallery.load(path)
    for group in ("tv", "ta", "tva"):
        assert_same_ranking(retriever(queries, videos=str(path), group=group), expected[group])  # exhaustive
        gallery.build_index(group, index_type="flat")
    searched = []
    original = GalleryIndex.search
    monkeypatch.setattr(
        GalleryIndex, "search", lambda self, *a: (searched.append(self.group), original(self, *a))[1]
    )
    monkeypatch.setattr(retriever.valor, "get_video_features", None)  # nothing is encoded again
    for group in ("tv", "ta", "tva"):
        assert_same_ranking(
            retriever(queries, videos=str(path), group=group, num_candidates=3), expected[group]
        )
        top = retriever(queries, videos=VideoGallery.load(path), group=group, top_k=2, num_candidates=3)
        assert_same_ranking(top, [row[:2] for row in expected[group]])
        assert_same_ranking(retriever(queries, videos=path, group=group, exhaustive=True), expected[group])
    assert searched == ["tv", "tv", "ta", "ta", "tva", "tva"]  # two stages whenever an index exists
    with pytest.raises(ValueError, match="cannot exceed"):
        retriever("a dog", videos=str(path), top_k=3, num_candidates=2)
    with pytest.raises(FileNotFoundError, match="not a saved gallery"):
        retriever("a dog", videos=str(tmp_path))
    built_with = pipeline("audiovisual-retrieval", model=assets["folder"], videos=str(path), group="ta")
    assert_same_ranking([built_with("a dog barks")], [expected["ta"][0]])
    other = pipeline(
        "audiovisual-retrieval", model=ValorModel(tiny_valor_config()), processor=assets["processor"]
    )
    with pytest.raises(GalleryMismatchError, match="another model"):
        other("a dog", videos=str(path))


def test_retrieval_top_k_and_single_query(retriever, assets):
    videos = assets["videos"]
    single = retriever("a dog", videos=videos, top_k=2)
    assert len(single) == 2 and set(single[0]) == {"video", "score"}
    assert single[0]["score"] >= single[1]["score"]
    assert retriever("a dog", videos=videos, top_k=10) == retriever("a dog", videos=videos)
    assert retriever(["a dog"], videos=videos, top_k=2) == [single]


def test_retrieval_accepts_any_valor_head(assets):
    model = ValorForRetrieval.from_pretrained(assets["folder"]).eval()
    retriever = pipeline("audiovisual-retrieval", model=model, processor=assets["processor"])
    out = retriever("a dog", videos=assets["videos"], group="tv")
    scores = direct_scores(model.valor, assets["processor"], ["a dog"], assets["videos"], "tv")[0]
    assert out[0]["video"] == assets["videos"][int(scores.argmax())]


# -------------------------------------------------------------------------------------------------- validation
def test_unknown_modality_is_rejected(captioner, answerer, assets):
    for call in (
        lambda: captioner(assets["videos"][0], modalities="text"),
        lambda: answerer(assets["videos"][0], "what", modalities="audiovisual"),
        lambda: pipeline("audiovisual-captioning", model=assets["folder"], modalities="images"),
    ):
        with pytest.raises(ValueError, match="modalities") as error:
            call()
        assert all(name in str(error.value) for name in ("'video'", "'audio'", "'both'"))


def test_missing_file_is_named(captioner, answerer, retriever, assets, tmp_path):
    missing = str(tmp_path / "nowhere.mp4")
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        captioner(missing)
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        captioner([assets["videos"][0], missing], max_new_tokens=2)
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        answerer(missing, "what is it")
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        retriever("a dog", videos=[assets["videos"][0], missing])


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_bad_input_keeps_the_finished_work_and_is_named_by_position(
    captioner, assets, tmp_path, batch_size
):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    videos = [assets["videos"][0], assets["videos"][1], str(broken), assets["videos"][2]]
    settings = {"max_new_tokens": 3, "num_beams": 1, "batch_size": batch_size}
    expected = [captioner(v, **settings) for v in (videos[0], videos[1], videos[3])]
    with pytest.raises(PipelineInputError, match=r"input 2 of 4 \('.*broken\.mp4'\)") as error:
        captioner(videos, **settings)
    assert error.value.index == 2 and error.value.results[:2] == expected[:2]
    out = captioner(videos, return_errors=True, **settings)
    assert [out[0], out[1], out[3]] == expected
    assert isinstance(out[2], PipelineInputError) and out[2].index == 2 and out[2].input == str(broken)


def test_retrieval_names_a_bad_video_by_position_and_keeps_the_encoded_ones(retriever, assets, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    videos = [assets["videos"][0], assets["videos"][1], str(broken), assets["videos"][2]]
    with pytest.raises(PipelineInputError, match=r"input 2 of 4 \('.*broken\.mp4'\)") as error:
        retriever("a dog", videos=videos, video_batch_size=2)
    assert error.value.index == 2 and len(error.value.results) == 3  # the gallery of the other three
    gallery = retriever.encode_videos(videos, video_batch_size=2, return_errors=True)
    assert len(gallery) == 3 and [f["path"] for f in gallery.failures()] == [str(broken)]
    ranked = retriever("a dog", videos=gallery)
    assert sorted(r["video"] for r in ranked) == sorted(videos[:2] + videos[3:])
    with pytest.raises(PipelineInputNotFoundError, match=r"input 1 of 2 \('.*gone\.mp4'\)"):
        retriever("a dog", videos=[videos[0], str(tmp_path / "gone.mp4")])
    # One path is one video, not a sequence of one-letter paths.
    assert [r["video"] for r in retriever("a dog", videos=videos[0])] == [videos[0]]


def test_question_answering_reports_the_bad_pair(answerer, assets, tmp_path):
    video = assets["videos"][0]
    pairs = [
        {"video": video, "question": "what is"},
        {"video": str(tmp_path / "gone.mp4"), "question": "what"},
    ]
    out = answerer(pairs, return_errors=True, max_new_tokens=2)
    assert out[0] == answerer(video, "what is", max_new_tokens=2)
    assert isinstance(out[1], PipelineInputNotFoundError) and isinstance(out[1], FileNotFoundError)
    assert "input 1 of 2" in str(out[1]) and "gone.mp4" in str(out[1])
    single = answerer({"video": video, "question": " "}, return_errors=True)
    assert isinstance(single, PipelineInputError) and "non-empty" in str(single)


def test_invalid_arguments(captioner, answerer, retriever, assets):
    video = assets["videos"][0]
    with pytest.raises(TypeError, match="unexpected arguments.*frames"):
        captioner(video, frames=4)
    with pytest.raises(ValueError, match="num_frames"):
        captioner(video, num_frames=0)
    with pytest.raises(ValueError, match="'tv', 'ta', 'tva'"):
        retriever("a dog", videos=[video], group="av")
    with pytest.raises(ValueError, match="top_k"):
        retriever("a dog", videos=[video], top_k=0)
    with pytest.raises(ValueError, match="videos"):
        retriever("a dog")
    with pytest.raises(ValueError, match="2 videos and 3 questions"):
        answerer([video, video], ["a", "b", "c"])
    with pytest.raises(ValueError, match="question"):
        answerer(video)
    with pytest.raises(ValueError, match="non-empty"):
        answerer(video, "  ")
    with pytest.raises(TypeError, match="ValorForConditionalGeneration"):
        pipeline(
            "audiovisual-captioning", model=ValorModel(tiny_valor_config()), processor=assets["processor"]
        )


# ---------------------------------------------------------------------------------------------------- hub cache
def test_populate_hub_cache_layout(assets, tmp_path):
    snapshot, cache = assets["snapshot"], assets["cache"]
    repo_dir = cache / "models--org--valor-tiny"
    commit = (repo_dir / "refs" / "main").read_text()
    assert snapshot == repo_dir / "snapshots" / commit
    assert len(commit) == 40 and all(c in "0123456789abcdef" for c in commit)
    folder = Path(assets["folder"])
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json"):
        cached = snapshot / name
        assert cached.is_symlink() and cached.resolve().parent == (repo_dir / "blobs").resolve()
        assert cached.read_bytes() == (folder / name).read_bytes()
    assert try_to_load_from_cache(REPO_ID, "config.json", cache_dir=cache) == str(snapshot / "config.json")

    # Same files -> same commit; copies instead of blobs; an explicit commit and another ref.
    copies = populate_hub_cache(folder, REPO_ID, tmp_path, use_blobs=False)
    assert copies.name == commit and not (copies / "config.json").is_symlink()
    assert not (tmp_path / "models--org--valor-tiny" / "blobs").exists()
    other = populate_hub_cache(folder, REPO_ID, tmp_path, revision="v1", commit_hash="a" * 40)
    assert (tmp_path / "models--org--valor-tiny" / "refs" / "v1").read_text() == "a" * 40
    assert other.name == "a" * 40
    with pytest.raises(ValueError, match="commit_hash"):
        populate_hub_cache(folder, REPO_ID, tmp_path, commit_hash="main")
    with pytest.raises(FileNotFoundError):
        populate_hub_cache(tmp_path / "absent", REPO_ID, tmp_path)


def test_models_and_processor_load_by_repo_id_offline(assets):
    with offline_hub_cache(assets["cache"]):
        model = ValorModel.from_pretrained(REPO_ID)
        generator = ValorForConditionalGeneration.from_pretrained(REPO_ID)
        processor = AutoProcessor.from_pretrained(REPO_ID)
        with pytest.raises(OSError):
            ValorModel.from_pretrained("org/not-in-cache")
    assert model.name_or_path == REPO_ID and isinstance(model, ValorModel)
    reference = assets["model"].state_dict()
    for name, tensor in generator.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=0)
    assert isinstance(processor, ValorProcessor)
    assert processor.feature_extractor.clip_length == 32 and processor.video_processor.num_frames == 4


def test_pipelines_by_repo_id_offline(assets, captioner, answerer, retriever):
    video, videos = assets["videos"][0], assets["videos"]
    with offline_hub_cache(assets["cache"]):
        hub_captioner = pipeline("audiovisual-captioning", model=REPO_ID)
        hub_answerer = pipeline("audiovisual-question-answering", model=REPO_ID)
        hub_retriever = pipeline("audiovisual-retrieval", model=REPO_ID)
    assert hub_captioner.model.name_or_path == REPO_ID
    assert isinstance(hub_retriever.processor, ValorProcessor)
    kwargs = {"max_new_tokens": 4, "num_beams": 2}
    assert hub_captioner(video, **kwargs) == captioner(video, **kwargs)
    assert hub_answerer(video, "what is it", max_new_tokens=4) == answerer(
        video, "what is it", max_new_tokens=4
    )
    assert_same_ranking(
        hub_retriever(["a dog", "a cat"], videos=videos), retriever(["a dog", "a cat"], videos=videos)
    )


def test_environment_variables_alone_resolve_the_hub_cache(assets, tmp_path):
    """A fresh process with only HF_HUB_OFFLINE=1 and HF_HOME set loads everything by repo id."""
    hf_home = tmp_path / "hf_home"
    populate_hub_cache(assets["folder"], REPO_ID, hf_home / "hub")
    script = textwrap.dedent(
        f"""
        import json
        from transformers import AutoProcessor, pipeline
        import transformers_valor
        from transformers_valor import ValorForConditionalGeneration, ValorModel
        ValorModel.from_pretrained({REPO_ID!r})
        ValorForConditionalGeneration.from_pretrained({REPO_ID!r})
        processor = AutoProcessor.from_pretrained({REPO_ID!r})
        captioner = pipeline("audiovisual-captioning", model={REPO_ID!r})
        out = captioner({assets["videos"][0]!r}, max_new_tokens=4, num_beams=2)
        print(json.dumps({{"processor": type(processor).__name__, "caption": out}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["processor"] == "ValorProcessor"
    expected = direct_generate(
        assets["model"], assets["processor"], [assets["videos"][0]], max_new_tokens=4, num_beams=2
    )
    assert payload["caption"] == [{"generated_text": expected[0]}]
