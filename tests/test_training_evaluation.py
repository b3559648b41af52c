"""Evaluation (`transformers_valor.training.evaluation`): decoding a test set once, encoding each modality once,
retrieval metrics of any group, generation for any conditioning, captioning and QA metrics, `evaluate_task`."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_audio_config, tiny_text_config, tiny_valor_config
from transformers_valor import ValorForConditionalGeneration, ValorForRetrieval, ValorModel, ValorProcessor
from transformers_valor.configuration_valor import tokenize_task_prompts
from transformers_valor.data.datasets import DatasetConfig, load_video_text_dataset
from transformers_valor.metrics import retrieval_ranks
from transformers_valor.training.evaluation import (
    EvaluationArguments,
    decode_evaluation_set,
    encode_media,
    encode_texts,
    evaluate_retrieval,
    evaluate_task,
    generate_texts,
    question_answering_accuracy,
    retrieval_metrics,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def processor(tiny_processor_dir):
    return ValorProcessor.from_pretrained(tiny_processor_dir)


@pytest.fixture(scope="module")
def model_dir(processor, tmp_path_factory):
    """A randomly initialised tiny VALOR saved with the tiny processor (its vocabulary and input sizes)."""
    tokenizer = processor.tokenizer
    text = tiny_text_config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        mask_token_id=tokenizer.mask_token_id,
        random_token_start=max(tokenizer.all_special_ids) + 1,
    )
    config = tiny_valor_config(text_config=text, audio_config=tiny_audio_config(image_size=[32, 64]))
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_valor")
    ValorForConditionalGeneration(config).save_pretrained(root)
    processor.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def retriever(model_dir):
    return ValorForRetrieval.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def captioner(model_dir):
    return ValorForConditionalGeneration.from_pretrained(model_dir).eval()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("eval_cache")


def tiny_test_split(corpus: Path, **overrides) -> DatasetConfig:
    """The tiny corpus's test split (4 clips, 2 frames, 1 audio clip)."""
    return DatasetConfig(
        **{"name": "test", "path": str(corpus), "split": "test", "num_frames": 2, **overrides}
    )


# ------------------------------------------------------------------------------------------------- retrieval


def test_retrieval_metrics_match_a_direct_score_matrix(tiny_corpus, processor, retriever, cache_dir):
    audiovisual = tiny_test_split(tiny_corpus, contrastive_groups=["tv", "ta", "tva"])
    audio_only = DatasetConfig(name="test_audio", path=str(tiny_corpus), split="test", modality="audio")
    args = EvaluationArguments(datasets=[audiovisual, audio_only], batch_size=3, max_block_elements=64)
    metrics, _ = evaluate_task("retrieval", retriever, processor, args, cache_dir)
    keys = {f"{d}_{m}" for d in ("t2va", "va2t") for m in ("R@1", "R@5", "R@10", "median_rank", "mean_rank")}
    assert keys == set(metrics["test"]["tva"])
    assert set(metrics["test"]["tv"]) >= {"t2v_R@1", "v2t_median_rank"}
    assert set(metrics["test_audio"]) == {"ta"} and "a2t_mean_rank" in metrics["test_audio"]["ta"]

    # The same numbers from a direct score matrix: each text and each video encoded on its own.
    rows = load_video_text_dataset(audiovisual).to_dict()
    media = decode_evaluation_set(audiovisual, processor, cache_dir).media
    valor = retriever.valor
    texts = [(caption, v) for v, captions in enumerate(rows["captions"]) for caption in captions]
    with torch.no_grad():
        video = [valor.get_video_features(media["pixel_values_videos"][i : i + 1]) for i in range(4)]
        scores = torch.zeros(len(texts), 4)
        for t, (caption, _) in enumerate(texts):
            text = valor.get_text_features(**processor(text=[caption], return_tensors="pt"))
            for v in range(4):
                scores[t, v] = valor.similarity(*valor.group_features("tv", text=text, video=video[v]))[0, 0]
    truth = [v for _, v in texts]
    t2v = retrieval_ranks(scores, truth)
    v2t = retrieval_ranks(
        scores.t(), [[t for t, (_, owner) in enumerate(texts) if owner == v] for v in range(4)]
    )
    expected = {
        "t2v_R@1": 100 * np.mean(t2v <= 1),
        "t2v_median_rank": float(np.median(t2v)),
        "t2v_mean_rank": float(np.mean(t2v)),
        "v2t_R@1": 100 * np.mean(v2t <= 1),
        "v2t_mean_rank": float(np.mean(v2t)),
    }
    for key, value in expected.items():
        assert metrics["test"]["tv"][key] == pytest.approx(value), key


def test_each_modality_is_encoded_once(tiny_corpus, processor, retriever, cache_dir, monkeypatch):
    eval_set = decode_evaluation_set(tiny_test_split(tiny_corpus), processor, cache_dir)
    calls = {"text": 0, "video": 0, "audio": 0}
    for modality in calls:
        original = getattr(ValorModel, f"get_{modality}_features")

        def counted(self, *args, _original=original, _modality=modality, **kwargs):
            calls[_modality] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ValorModel, f"get_{modality}_features", counted)
    metrics = evaluate_retrieval(retriever.valor, processor, eval_set, ("tv", "ta", "tva"), batch_size=32)
    # 4 clips and their 32 captions: one batch each, shared by the three groups.
    assert calls == {"text": 1, "video": 1, "audio": 1}
    assert set(metrics) == {"tv", "ta", "tva"}

    calls.update(text=0, video=0, audio=0)
    evaluate_retrieval(retriever.valor, processor, eval_set, ("tv",), batch_size=32)
    assert calls == {"text": 1, "video": 1, "audio": 0}  # only what the group reads


def test_retrieval_groups_without_text_and_ground_truth_checks(tiny_corpus, processor, retriever, cache_dir):
    eval_set = decode_evaluation_set(tiny_test_split(tiny_corpus), processor, cache_dir)
    features = encode_media(retriever.valor, eval_set, batch_size=3)
    assert set(features) == {"video", "audio"} and features["video"].embeds.shape[0] == 4
    va = retrieval_metrics(retriever.valor, features, groups=("va",))["va"]
    with torch.no_grad():
        scores = retriever.valor.similarity(*retriever.valor.group_features("va", **features))
    assert va["v2a_mean_rank"] == pytest.approx(float(np.mean(retrieval_ranks(scores))))
    assert "a2v_R@1" in va

    # Without `text_to_video`, text i describes video i (as `benchmarks/diagnose_direction.py` scores).
    features["text"] = encode_texts(retriever.valor, processor, [c[0] for c in eval_set.captions])
    assert retrieval_metrics(retriever.valor, features) == retrieval_metrics(
        retriever.valor, features, text_to_video=[0, 1, 2, 3]
    )

    features["text"] = encode_texts(retriever.valor, processor, ["a red circle", "a blue square"])
    with pytest.raises(ValueError, match="no text"):
        retrieval_metrics(retriever.valor, features, text_to_video=[0, 1], groups=("tv",))
    with pytest.raises(ValueError, match="vta"):
        retrieval_metrics(retriever.valor, features, text_to_video=[0, 1, 2, 3], groups=("vta",))


def test_demo_and_benchmark_paths_give_the_same_retrieval_numbers(
    tiny_corpus, model_dir, processor, tmp_path
):
    spec = importlib.util.spec_from_file_location("valor_demo", REPO / "examples" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    results = demo.evaluate(model_dir, tiny_corpus, num_beams=1, cache_dir=tmp_path / "demo_cache")
    assert [row["id"] for row in results["rows"]] == [f"test_0000{i}" for i in range(4)]
    assert {"BLEU-4", "CIDEr", "attr_color", "attr_all"} <= set(results["captioning"]["tva"])
    assert "text -> audio+video" in demo.format_table(results)
    demo.write_results(tmp_path / "results.json", results, {"total": 12.34}, seed=3)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["seed"] == 3 and written["timings_seconds"] == {"total": 12.3}
    assert written["captioning"]["tva"]["attr_all"] == results["captioning"]["tva"]["attr_all"]
    assert written["stage0"] is None and not list(tmp_path.glob(".results.json*"))

    # The benchmark path on the same clips with the same queries (the caption each clip was rendered with).
    queries = tiny_test_split(
        tiny_corpus, caption_column="caption", num_clips=processor.feature_extractor.num_clips
    )
    args = EvaluationArguments(datasets=[queries])
    benchmark, _ = evaluate_task(
        "retrieval", ValorModel.from_pretrained(model_dir), processor, args, tmp_path / "cache"
    )
    assert set(results["retrieval"]) == {"tv", "ta", "tva"}
    for group, values in results["retrieval"].items():
        assert values == pytest.approx(benchmark["test"][group]), group


# ------------------------------------------------------------------------------------------------ generation


@pytest.mark.parametrize(
    "group, modalities, inputs",
    [
        ("tv", "video", {"pixel_values_videos"}),
        ("ta", "audio", {"input_features", "input_features_mask"}),
        ("tva", "both", {"pixel_values_videos", "input_features", "input_features_mask"}),
    ],
)
def test_generation_is_conditioned_on_the_groups_modalities(
    tiny_corpus, processor, captioner, cache_dir, monkeypatch, group, modalities, inputs
):
    eval_set = decode_evaluation_set(tiny_test_split(tiny_corpus), processor, cache_dir)
    seen = []

    def recording_generate(self, modalities=None, **kwargs):
        seen.append((modalities, set(kwargs) - {"num_beams", "max_new_tokens"}))
        batch = next(v for k, v in kwargs.items() if k in inputs).shape[0]
        return processor(text=["a red circle"] * batch, return_tensors="pt")["input_ids"]

    monkeypatch.setattr(ValorForConditionalGeneration, "generate", recording_generate)
    out = generate_texts(captioner, processor, eval_set, group, batch_size=3, num_beams=1, max_new_tokens=4)
    assert seen == [(modalities, inputs)] * 2  # two batches of at most 3 clips
    assert out == dict.fromkeys(eval_set.sample_ids, "a red circle")


def test_captioning_evaluation_reports_every_group_by_sample_id(tiny_corpus, processor, captioner, cache_dir):
    args = EvaluationArguments(
        datasets=[tiny_test_split(tiny_corpus, caption_groups=["tva", "ta"])],
        caption_metrics=["BLEU", "CIDEr"],
        max_new_tokens=6,
    )
    metrics, predictions = evaluate_task("captioning", captioner, processor, args, cache_dir)
    assert set(metrics["test"]) == {"tva", "ta"}
    assert {"BLEU-4", "CIDEr"} <= set(metrics["test"]["tva"])
    assert sorted(predictions["test"]["tva"]) == [f"test_0000{i}" for i in range(4)]


def write_qa_set(corpus: Path, target: Path) -> Path:
    """A QA file over the test clips: two questions per clip, its colour and its direction as answers."""
    target.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in (corpus / "test" / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        for question, key in (("which color is the shape", "color"), ("which way does it move", "direction")):
            path = str(corpus / "test" / row["file_name"])
            lines.append(json.dumps({"file_name": path, "question": question, "answer": row[key]}))
    (target / "qa.jsonl").write_text("\n".join(lines) + "\n")
    return target / "qa.jsonl"


def test_question_answering_evaluation_scores_known_answers(
    tiny_corpus, processor, captioner, cache_dir, tmp_path, monkeypatch
):
    qa_file = write_qa_set(tiny_corpus, tmp_path / "qa")
    qa_set = DatasetConfig(
        name="qa_test",
        path=str(qa_file.parent),
        annotation_file=str(qa_file),
        question_column="question",
        caption_groups=["tva"],
        num_frames=2,
    )
    args = EvaluationArguments(datasets=[qa_set], max_new_tokens=4)
    metrics, predictions = evaluate_task("qa", captioner, processor, args, cache_dir)
    assert metrics["qa_test"]["tva"]["count"] == 8 and 0.0 <= metrics["qa_test"]["tva"]["accuracy"] <= 1.0
    assert len(predictions["qa_test"]["tva"]) == 8

    # A generator that reads the question back answers with the right words (in other case and punctuation).
    answers = [json.loads(line)["answer"] for line in qa_file.read_text().splitlines()]
    calls = {"n": 0}

    def known_generate(self, question_ids=None, **kwargs):
        assert question_ids is not None and kwargs["num_beams"] == 1 and "prompt_ids" not in kwargs
        out = []
        for _ in processor.batch_decode(question_ids):
            out.append(answers[calls["n"]].upper() + "!")  # cleaning makes these match
            calls["n"] += 1
        return processor(text=out, return_tensors="pt")["input_ids"]

    monkeypatch.setattr(ValorForConditionalGeneration, "generate", known_generate)
    metrics, _ = evaluate_task("qa", captioner, processor, args, cache_dir)
    assert metrics["qa_test"]["tva"]["accuracy"] == 1.0


def test_question_answering_accuracy_uses_valor_cleaning():
    assert question_answering_accuracy(["Red.", "a dog", "up"], ["red", "a  Dog", "down"]) == pytest.approx(
        2 / 3
    )


# -------------------------------------------------------------------------------------------------- decoding


def test_undecodable_sample_is_left_out_and_reported(tiny_corpus, processor, tmp_path, caplog):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus / "test", corpus / "test")
    (corpus / "test" / "test_00002.mp4").write_bytes(b"not a video")
    with caplog.at_level("WARNING"):
        eval_set = decode_evaluation_set(tiny_test_split(corpus), processor, tmp_path / "cache")
    assert eval_set.sample_ids == ["test_00000", "test_00001", "test_00003"]
    assert list(eval_set.failed) == ["test_00002"] and "test_00002" in caplog.text
    assert eval_set.media["pixel_values_videos"].shape[:2] == (3, 2)
    assert len(eval_set.captions) == 3 and eval_set.modalities == ("video", "audio")
    audio = decode_evaluation_set(tiny_test_split(corpus, modality="audio"), processor, tmp_path / "cache")
    assert audio.modalities == ("audio",) and len(audio) == 3
    with pytest.raises(ValueError, match="no video"):
        audio.inputs(0, 2, ("video",))


# ------------------------------------------------------------------------------------- VALOR-L task prompts
def _with_task_prompts(model, processor, monkeypatch):
    config = model.config
    monkeypatch.setattr(config, "use_task_prompt", True)
    monkeypatch.setattr(
        config, "task_prompt_ids", tokenize_task_prompts(processor.tokenizer, config.task_prompts)
    )
    return config


@torch.no_grad()
def test_retrieval_evaluation_encodes_queries_with_the_retrieval_prompt(retriever, processor, monkeypatch):
    config = _with_task_prompts(retriever, processor, monkeypatch)
    texts = ["a red circle moves left", "a blue square"]
    features = encode_texts(retriever.valor, processor, texts)
    tokens = processor(text=texts, return_tensors="pt")
    prompt = torch.tensor([config.task_prompt_ids["retrieval"]]).repeat(2, 1)
    expected = retriever.valor.get_text_features(
        tokens["input_ids"], tokens["attention_mask"], prompt_ids=prompt
    )
    torch.testing.assert_close(features.embeds, expected.embeds)
    plain = retriever.valor.get_text_features(
        tokens["input_ids"], tokens["attention_mask"], use_task_prompt=False
    )
    assert not torch.allclose(features.embeds, plain.embeds, atol=1e-4)


@torch.no_grad()
def test_caption_and_qa_evaluation_decode_with_the_task_prompts(
    tiny_corpus, processor, captioner, cache_dir, monkeypatch
):
    config = _with_task_prompts(captioner, processor, monkeypatch)
    eval_set = decode_evaluation_set(tiny_test_split(tiny_corpus), processor, cache_dir)
    kwargs = dict(num_beams=2, max_new_tokens=4)
    captions = generate_texts(captioner, processor, eval_set, "tv", batch_size=4, **kwargs)
    inputs = eval_set.inputs(0, 4, ("video",))
    prompt = torch.tensor([config.task_prompt_ids["captioning"]]).repeat(4, 1)
    ids = captioner.generate(**inputs, prompt_ids=prompt, modalities="video", **kwargs)
    assert list(captions.values()) == processor.batch_decode(ids, skip_special_tokens=True)
    questions = ["which color is the shape"] * 4
    answers = generate_texts(
        captioner, processor, eval_set, "tv", questions, batch_size=4, num_beams=1, max_new_tokens=3
    )
    question_ids = processor(prompts=questions, return_tensors="pt")["prompt_ids"]
    composed, _ = captioner.question_prompt(question_ids)
    assert (
        composed[0, 1 : len(config.task_prompt_ids["qa"]) - 1].tolist() == config.task_prompt_ids["qa"][1:-1]
    )
    ids = captioner.generate(**inputs, prompt_ids=composed, modalities="video", num_beams=1, max_new_tokens=3)
    assert list(answers.values()) == processor.batch_decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("task", ["retrieval", "captioning"])
def test_two_process_evaluation_equals_one_process(ddp_runs, task, tmp_path):
    """`finetune_<task>.py` on 2 gloo processes evaluated its final model with each process on half of the test
    set (`training.corpus_split`), gathered for scoring: the same metrics (and captions) as this one process."""
    from transformers_valor.training.cli import evaluate_saved_model
    from transformers_valor.training.config import load_config

    config = load_config(ddp_runs / f"{task}.yaml", [f"task={task}"])
    metrics = evaluate_saved_model(config, ddp_runs / task / "final", tmp_path)
    assert metrics == json.loads((ddp_runs / task / "eval_results.json").read_text())
    groups = ["tva", "tv"] if task == "retrieval" else ["tv"]
    assert list(metrics["test"]) == groups
    if task == "captioning":
        assert (tmp_path / "predictions.json").read_text() == (
            ddp_runs / task / "predictions.json"
        ).read_text()


def test_evaluation_loops_show_progress_unless_transformers_disables_it(
    tiny_corpus, processor, retriever, cache_dir, capsys
):
    from transformers.utils import logging as hf_logging

    eval_set = decode_evaluation_set(tiny_test_split(tiny_corpus), processor, cache_dir)
    capsys.readouterr()
    encode_media(retriever.valor, eval_set, batch_size=2)
    encode_texts(retriever.valor, processor, ["a red circle", "a blue square"], batch_size=1)
    decode_evaluation_set(tiny_test_split(tiny_corpus, name="fresh"), processor, cache_dir)
    shown = capsys.readouterr().err
    assert (
        "decoding fresh" in shown
        and "encoding test media" in shown
        and "2/2" in shown
        and "encoding texts" in shown
    )
    hf_logging.disable_progress_bar()
    try:
        encode_media(retriever.valor, eval_set, batch_size=2)
        decode_evaluation_set(tiny_test_split(tiny_corpus, name="again"), processor, cache_dir)
        hidden = capsys.readouterr().err  # (the `datasets` library's own "Map" bar has its own switch)
        assert "encoding" not in hidden and "decoding" not in hidden
    finally:
        hf_logging.enable_progress_bar()
