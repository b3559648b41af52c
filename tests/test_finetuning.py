"""Downstream fine-tuning and evaluation: retrieval (MGA), captioning (MGC + SCST), QA, benchmark dataset layouts."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState

from test_training import tiny_model_config, tiny_run
from transformers_valor import ValorConfig, ValorForConditionalGeneration, ValorForRetrieval, ValorProcessor
from transformers_valor.data.collator import ValorPretrainingCollator
from transformers_valor.data.datasets import DatasetConfig, load_mixture, load_video_text_dataset
from transformers_valor.data.masking import CaptionMaskingConfig
from transformers_valor.evaluation import (
    EvaluationArguments,
    decode_dataset,
    evaluate_task,
    question_answering_accuracy,
)
from transformers_valor.finetuning import (
    SCSTArguments,
    ValorFinetuningModule,
    scored_token_mask,
    scst_rewards,
    sequence_log_probs,
)
from transformers_valor.metrics import CiderD, retrieval_ranks
from transformers_valor.training import _sync_text_config_with_tokenizer, config_from_dict, train


def reset_accelerate():
    """The Accelerator state is a process-wide singleton; every in-process run builds its own."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Reset Accelerate after every test."""
    yield
    reset_accelerate()


def tiny_generator(processor_dir: Path, **overrides) -> ValorForConditionalGeneration:
    """A randomly initialised tiny captioner whose vocabulary follows the tiny processor."""
    processor = ValorProcessor.from_pretrained(processor_dir)
    config = ValorConfig(**{**tiny_model_config(), **overrides})
    _sync_text_config_with_tokenizer(config, processor.tokenizer)
    torch.manual_seed(0)
    return ValorForConditionalGeneration(ValorConfig(**config.to_dict())).eval()


def task_run(task: str, corpus: Path, processor_dir: Path, output_dir: Path, **sections) -> dict:
    """A fine-tuning config (plain data) on the tiny corpus: `tiny_run` plus `task`, `scst` and `evaluation`."""
    extra = {key: sections.pop(key) for key in ("scst", "evaluation") if key in sections}
    values = tiny_run(corpus, processor_dir, output_dir, **sections)
    return {**values, "task": task, **extra}


def first_slope(losses: list[float], n: int = 3) -> tuple[float, float]:
    return sum(losses[:n]) / n, sum(losses[-n:]) / n


# ------------------------------------------------------------------------------------------------- retrieval


def test_retrieval_finetuning_lowers_mga_loss_and_evaluates(tiny_corpus, tiny_processor_dir, tmp_path):
    model_config = tiny_model_config()  # without dropout: the whole corpus is one batch, the loss is smooth
    model_config["text_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model_config["audio_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    values = task_run(
        "retrieval",
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "run",
        model={"processor": str(tiny_processor_dir), "config": model_config},
        datasets=[{"name": "tiny", "path": str(tiny_corpus), "num_frames": 2, "contrastive_groups": ["tva"]}],
        data={"per_device_batch_size": 8, "cache_decoded": True, "cache_num_workers": 0},
        optimizer={"learning_rate": 1e-3, "warmup_steps": 0},
        training={"max_steps": 30},
    )
    result = train(config_from_dict(values))
    first, last = first_slope(result.losses)
    assert last < first - 0.3, result.losses
    metrics_rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert "mga_tva" in metrics_rows[0] and "mgc" not in metrics_rows[0]

    model = ValorForRetrieval.from_pretrained(result.final_dir).eval()
    processor = ValorProcessor.from_pretrained(result.final_dir)
    test_set = DatasetConfig(
        name="test", path=str(tiny_corpus), split="test", num_frames=2, contrastive_groups=["tv", "ta", "tva"]
    )
    audio_only = DatasetConfig(name="test_audio", path=str(tiny_corpus), split="test", modality="audio")
    args = EvaluationArguments(datasets=[test_set, audio_only], batch_size=3, max_block_elements=64)
    metrics, _ = evaluate_task("retrieval", model, processor, args, tmp_path / "cache")
    keys = {f"{d}_{m}" for d in ("t2va", "va2t") for m in ("R@1", "R@5", "R@10", "median_rank", "mean_rank")}
    assert keys == set(metrics["test"]["tva"])
    assert set(metrics["test"]["tv"]) >= {"t2v_R@1", "v2t_median_rank"}
    assert set(metrics["test_audio"]) == {"ta"} and "a2t_mean_rank" in metrics["test_audio"]["ta"]

    # The same numbers from a direct score matrix: each text and each video encoded on its own.
    rows = load_video_text_dataset(test_set).to_dict()
    media = decode_dataset(rows, test_set, processor, tmp_path / "cache")
    valor = model.valor
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


# ------------------------------------------------------------------------------------------------- captioning


def test_captioning_cross_entropy_lowers_loss_and_evaluates(tiny_corpus, tiny_processor_dir, tmp_path):
    values = task_run(
        "captioning",
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "run",
        datasets=[{"name": "tiny", "path": str(tiny_corpus), "num_frames": 2, "caption_groups": ["tva"]}],
        data={"per_device_batch_size": 8, "cache_decoded": True, "cache_num_workers": 0},
        optimizer={"learning_rate": 3e-3},
        training={"max_steps": 12},
        evaluation={
            "datasets": [{"name": "test", "path": str(tiny_corpus), "split": "test", "num_frames": 2}],
            "caption_metrics": ["BLEU", "CIDEr"],
            "max_new_tokens": 6,
        },
    )
    config = config_from_dict(values)
    result = train(config)
    first, last = first_slope(result.losses)
    assert last < first - 0.3, result.losses
    model = ValorForConditionalGeneration.from_pretrained(result.final_dir)
    processor = ValorProcessor.from_pretrained(result.final_dir)
    config.evaluation.datasets[0].caption_groups = ["tva", "ta"]
    metrics, predictions = evaluate_task(
        "captioning", model, processor, config.evaluation, tmp_path / "cache"
    )
    assert set(metrics["test"]) == {"tva", "ta"}
    assert {"BLEU-4", "CIDEr"} <= set(metrics["test"]["tva"])
    assert sorted(predictions["test"]["tva"]) == [f"test_0000{i}" for i in range(4)]


@pytest.mark.parametrize("objective", ["unimlm", "lm"])
def test_sequence_log_probs_match_per_position_reference(tiny_processor_dir, objective):
    model = tiny_generator(tiny_processor_dir, caption_objective=objective)
    video_states = torch.randn(2, 6, 32)
    prompt_ids = torch.tensor([[2, 20, 21, 3], [2, 22, 3, 0]])
    prompt_mask = (prompt_ids != 0).long()
    torch.manual_seed(1)
    sequences = model.generate(
        video_states=video_states,
        prompt_ids=prompt_ids,
        prompt_attention_mask=prompt_mask,
        do_sample=True,
        top_k=0,
        max_new_tokens=6,
    )
    # Force one sequence to stop early, so that padding after [SEP] is exercised.
    sequences[1, 3] = model.config.text_config.eos_token_id
    sequences[1, 4:] = model.config.text_config.pad_token_id
    log_probs, mask = sequence_log_probs(
        model, sequences, video_states=video_states, prompt_ids=prompt_ids, prompt_attention_mask=prompt_mask
    )
    chunked, _ = sequence_log_probs(
        model,
        sequences,
        video_states=video_states,
        prompt_ids=prompt_ids,
        prompt_attention_mask=prompt_mask,
        chunk_size=3,
    )
    torch.testing.assert_close(chunked, log_probs)
    assert mask[1].tolist() == [True, True, True] + [False] * (sequences.shape[1] - 4)
    reference = torch.zeros_like(log_probs)
    with torch.no_grad():
        for n in range(sequences.shape[0]):
            for k in range(1, sequences.shape[1]):
                if not mask[n, k - 1]:
                    continue
                # One decoding step, exactly as `generate` runs it: the prefix, plus a [MASK] for unimlm.
                logits = model(
                    input_ids=sequences[n : n + 1, :k],
                    video_states=video_states[n : n + 1],
                    prompt_ids=prompt_ids[n : n + 1],
                    prompt_attention_mask=prompt_mask[n : n + 1],
                    generation_step=True,
                ).logits[0, -1]
                reference[n, k - 1] = torch.log_softmax(logits, -1)[sequences[n, k]]
    torch.testing.assert_close(log_probs, reference, atol=1e-5, rtol=1e-5)


def test_scored_token_mask_stops_after_first_sep():
    sequences = torch.tensor([[2, 5, 6, 3, 0, 0], [2, 5, 6, 7, 8, 9]])
    assert scored_token_mask(sequences, 3).tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, True],
    ]


def test_scst_rewards_are_cider_of_sample_minus_greedy():
    references = [["a red circle moves up", "a red circle goes up"], ["a blue square moves left"]]
    scorer = CiderD(references + [["a green triangle goes down"]])
    sampled = ["a red circle moves up", "a blue circle", "a blue square moves left", "a square"]
    greedy = ["a red circle", "a blue square"]
    rewards, stats = scst_rewards(scorer, sampled, greedy, references, num_samples=2)
    sample_scores = scorer.score(sampled, [references[0]] * 2 + [references[1]] * 2)
    greedy_scores = scorer.score(greedy, references)
    expected = sample_scores - np.repeat(greedy_scores, 2)
    np.testing.assert_allclose(rewards.numpy(), expected, rtol=1e-6)
    assert rewards[0] > 0 and stats["greedy_cider"] == pytest.approx(greedy_scores.mean())


def test_scst_step_gives_a_finite_gradient(tiny_corpus, tiny_processor_dir, monkeypatch):
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    model = tiny_generator(tiny_processor_dir).train()
    config = DatasetConfig(name="tiny", path=str(tiny_corpus), num_frames=2, caption_groups=["tva"])
    mix, _ = load_mixture([config])
    references = list(mix._rows[0]["captions"])
    collator = ValorPretrainingCollator(
        processor, [config], CaptionMaskingConfig.from_model_config(model.config.text_config)
    )
    from transformers_valor.data.datasets import SampleRef

    batch = collator([mix[SampleRef(0, i, 7)] for i in range(3)])
    seen = {}
    import transformers_valor.finetuning as finetuning

    original = finetuning.scst_rewards

    def spy(scorer, sampled, greedy, refs, num_samples):
        seen.update(sampled=sampled, greedy=greedy, refs=refs)
        return original(scorer, sampled, greedy, refs, num_samples)

    monkeypatch.setattr(finetuning, "scst_rewards", spy)
    scorer = CiderD(references)
    module = ValorFinetuningModule(
        model,
        "captioning",
        SCSTArguments(enabled=True, num_samples=2, max_new_tokens=5),
        scorer,
        processor.tokenizer,
    )
    torch.manual_seed(0)
    output = module(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values_videos=batch["pixel_values_videos"],
        input_features=batch["input_features"],
        input_features_mask=batch["input_features_mask"],
        caption_groups=["tva"],
        references=batch["references"],
    )
    assert model.training  # restored after sampling in eval mode
    assert len(seen["sampled"]) == 6 and len(seen["greedy"]) == 3 and seen["refs"] == batch["references"]
    expected_reward = scorer.score(
        seen["sampled"], [r for r in batch["references"] for _ in range(2)]
    ).mean() - (scorer.score(seen["greedy"], batch["references"]).mean())
    assert float(output.components["scst_reward"]) == pytest.approx(expected_reward, abs=1e-5)
    output.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.valor.video_adapter.frame_embedding.grad is not None  # the reward reaches the encoders' side


def test_scst_training_run_logs_rewards(tiny_corpus, tiny_processor_dir, tmp_path):
    values = task_run(
        "captioning",
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "run",
        datasets=[{"name": "tiny", "path": str(tiny_corpus), "num_frames": 2, "caption_groups": ["tv"]}],
        data={"per_device_batch_size": 4, "cache_decoded": True, "cache_num_workers": 0},
        training={"max_steps": 2},
        scst={"enabled": True, "num_samples": 2, "max_new_tokens": 4},
    )
    result = train(config_from_dict(values))
    assert result.step == 2 and all(np.isfinite(result.losses))
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"scst_reward", "scst_sample_cider", "scst_greedy_cider"} <= set(row)


# ------------------------------------------------------------------------------------------------- QA


def write_qa_set(corpus: Path, split: str, target: Path) -> Path:
    """A QA metadata file over the corpus: 'what colour is the shape' -> its colour, one row per video."""
    rows = [json.loads(line) for line in (corpus / split / "metadata.jsonl").read_text().splitlines()]
    target.mkdir(parents=True, exist_ok=True)
    with open(target / "qa.jsonl", "w") as handle:
        for row in rows:
            for question, key in (
                ("which color is the shape", "color"),
                ("which way does it move", "direction"),
            ):
                record = {"file_name": str(corpus / split / row["file_name"]), "question": question}
                handle.write(json.dumps({**record, "answer": row[key]}) + "\n")
    return target / "qa.jsonl"


def test_question_answering_trains_and_evaluates_accuracy(
    tiny_corpus, tiny_processor_dir, tmp_path, monkeypatch
):
    train_file = write_qa_set(tiny_corpus, "train", tmp_path / "qa_train")
    test_file = write_qa_set(tiny_corpus, "test", tmp_path / "qa_test")
    dataset = {
        "name": "qa",
        "path": str(train_file.parent),
        "annotation_file": str(train_file),
        "question_column": "question",
        "caption_groups": ["tva"],
        "num_frames": 2,
    }
    values = task_run(
        "qa",
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "run",
        datasets=[dataset],
        data={"per_device_batch_size": 8, "cache_decoded": True, "cache_num_workers": 0},
        optimizer={"learning_rate": 3e-3},
        training={"max_steps": 10},
        evaluation={"datasets": [{**dataset, "name": "qa_test", "annotation_file": str(test_file)}]},
    )
    config = config_from_dict(values)
    result = train(config)
    first, last = first_slope(result.losses)
    assert last < first, result.losses
    model = ValorForConditionalGeneration.from_pretrained(result.final_dir)
    processor = ValorProcessor.from_pretrained(result.final_dir)
    metrics, predictions = evaluate_task("qa", model, processor, config.evaluation, tmp_path / "cache")
    assert metrics["qa_test"]["tva"]["count"] == 8 and 0.0 <= metrics["qa_test"]["tva"]["accuracy"] <= 1.0
    assert len(predictions["qa_test"]["tva"]) == 8

    # A case whose answers are known: a generator that reads the question back answers with the right words.
    answers = {
        "which color is the shape": [json.loads(x)["answer"] for x in test_file.read_text().splitlines()][
            0::2
        ],
        "which way does it move": [json.loads(x)["answer"] for x in test_file.read_text().splitlines()][1::2],
    }
    calls = {"n": 0}

    def known_generate(self, prompt_ids=None, **kwargs):
        assert prompt_ids is not None and kwargs["num_beams"] == 1
        questions = processor.batch_decode(prompt_ids)
        out = []
        for question in questions:
            index = calls["n"] // 2
            out.append(answers[question][index].upper() + "!")  # cleaning makes these match
            calls["n"] += 1
        return processor(text=out, return_tensors="pt")["input_ids"]

    monkeypatch.setattr(ValorForConditionalGeneration, "generate", known_generate)
    metrics, _ = evaluate_task("qa", model, processor, config.evaluation, tmp_path / "cache")
    assert metrics["qa_test"]["tva"]["accuracy"] == 1.0


def test_question_answering_accuracy_uses_valor_cleaning():
    assert question_answering_accuracy(["Red.", "a dog", "up"], ["red", "a  Dog", "down"]) == pytest.approx(
        2 / 3
    )


def test_collator_feeds_questions_as_prompts(tiny_corpus, tiny_processor_dir, tmp_path):
    qa_file = write_qa_set(tiny_corpus, "train", tmp_path / "qa")
    config = DatasetConfig(
        name="qa", path=str(qa_file.parent), annotation_file=str(qa_file), question_column="question"
    )
    table = load_video_text_dataset(config)
    assert table[0]["question"] == "which color is the shape" and table[0]["captions"] == ["yellow"]
    assert table[0]["sample_id"] != table[1]["sample_id"]  # two questions of one video
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    mix, _ = load_mixture([config])
    from transformers_valor.data.datasets import SampleRef

    masking = CaptionMaskingConfig(mask_token_id=4, pad_token_id=0, random_token_range=(5, 200))
    batch = ValorPretrainingCollator(processor, [config], masking, max_text_length=8)(
        [mix[SampleRef(0, i, 0)] for i in range(2)]
    )
    expected = processor(
        prompts=["which color is the shape"], padding="max_length", max_text_length=8, return_tensors="pt"
    )["prompt_ids"][0]
    assert batch["prompt_ids"].shape == (2, 10)
    assert batch["prompt_ids"][0].tolist() == expected.tolist()
    assert batch["references"] == [["yellow"], ["up"]]


# ------------------------------------------------------------------------------------------------- layouts


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_msrvtt_layout(tmp_path):
    root = tmp_path / "msrvtt"
    touch(root / "videos", "video0.mp4", "video1.mp4", "video7.mp4")
    sentences = [
        {"video_id": "video0", "caption": "a man sings", "sen_id": 0},
        {"video_id": "video1", "caption": "a cat jumps", "sen_id": 1},
        {"video_id": "video0", "caption": "someone is singing", "sen_id": 2},
        {"video_id": "video7", "caption": "cars race", "sen_id": 3},
    ]
    (root / "annotation").mkdir()
    (root / "annotation" / "MSR_VTT.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    (root / "splits").mkdir()
    (root / "splits" / "train_list.txt").write_text("video7\nvideo0\n\n")
    config = DatasetConfig(
        name="msrvtt",
        path=str(root),
        format="msrvtt",
        annotation_file="annotation/MSR_VTT.json",
        id_list="splits/train_list.txt",
        video_dir="videos",
        modality="video",
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["video7", "video0"]
    assert table["captions"] == [["cars race"], ["a man sings", "someone is singing"]]
    assert table["video_path"][1] == str(root / "videos" / "video0.mp4")

    # The 1k-A test split: one caption per video in a CSV.
    with open(root / "annotation" / "MSRVTT_JSFUSION_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        writer.writerow(["ret0", "msr0", "video1", "a cat jumps over a box"])
        writer.writerow(["ret1", "msr1", "video7", "racing cars"])
    config = DatasetConfig(
        name="msrvtt_1k",
        path=str(root),
        format="msrvtt",
        annotation_file="annotation/MSRVTT_JSFUSION_test.csv",
        video_dir="videos",
        modality="video",
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["video1", "video7"] and table["captions"] == [
        ["a cat jumps over a box"],
        ["racing cars"],
    ]


def test_vatex_layout(tmp_path):
    root = tmp_path / "vatex"
    touch(root / "videos", "abc_000010_000020.mp4")
    entries = [{"videoID": "abc_000010_000020", "enCap": ["one", "two"], "chCap": ["一", "二"]}]
    (root / "annotation").mkdir()
    (root / "annotation" / "vatex_training_v1.0.json").write_text(json.dumps(entries))
    config = DatasetConfig(
        name="vatex",
        path=str(root),
        format="vatex",
        annotation_file="annotation/vatex_training_v1.0.json",
        video_dir="videos",
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["abc_000010_000020"] and table["captions"] == [["one", "two"]]
    assert table["video_path"] == [str(root / "videos" / "abc_000010_000020.mp4")]


def test_audiocaps_layout(tmp_path):
    root = tmp_path / "audiocaps"
    touch(root / "audio", "yt1.wav", "yt2.flac")
    with open(root / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        writer.writerow([1, "yt1", 30, "a dog barks"])
        writer.writerow([2, "yt2", 0, "rain falls"])
        writer.writerow([3, "yt1", 30, "barking"])
    config = DatasetConfig(
        name="audiocaps",
        path=str(root),
        format="audiocaps",
        annotation_file="test.csv",
        video_dir="audio",
        modality="audio",
    )
    assert config.contrastive_groups == ["ta"] and config.caption_groups == ["ta"]
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["yt1", "yt2"]
    assert table["captions"] == [["a dog barks", "barking"], ["rain falls"]]
    assert table["video_path"] == [str(root / "audio" / "yt1.wav"), str(root / "audio" / "yt2.flac")]
    with pytest.raises(ValueError, match="no frames"):
        DatasetConfig(name="x", path=".", modality="audio", contrastive_groups=["tv"])


def test_clotho_layout(tmp_path):
    root = tmp_path / "clotho"
    touch(root / "evaluation", "rain on roof.wav")
    with open(root / "clotho_captions_evaluation.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", *[f"caption_{i}" for i in range(1, 6)]])
        writer.writerow(["rain on roof.wav", "rain", "heavy rain", "drops", "water falls", "a storm"])
    config = DatasetConfig(
        name="clotho",
        path=str(root),
        format="clotho",
        annotation_file="clotho_captions_evaluation.csv",
        video_dir="evaluation",
        modality="audio",
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["rain on roof"]
    assert table["captions"] == [["rain", "heavy rain", "drops", "water falls", "a storm"]]
    assert table["video_path"] == [str(root / "evaluation" / "rain on roof.wav")]


def test_valor32k_layout_with_id_list(tmp_path):
    root = tmp_path / "valor32k"
    touch(root / "videos", "v1.mp4", "v2.mp4")
    entries = [
        {"video_id": "v1", "desc": "a man plays a guitar and sings"},
        {"video_id": "v2", "desc": "a dog"},
    ]
    (root / "desc_test.json").write_text(json.dumps(entries))
    (root / "test_ids.txt").write_text("v2\n")
    config = DatasetConfig(
        name="valor32k",
        path=str(root),
        format="valor_json",
        annotation_file="desc_test.json",
        id_list="test_ids.txt",
        video_dir="videos",
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["v2"] and table["captions"] == [["a dog"]]
    (root / "bad_ids.txt").write_text("v9\n")
    config.id_list = "bad_ids.txt"
    with pytest.raises(ValueError, match="v9"):
        load_video_text_dataset(config)


def test_qa_json_layout(tmp_path):
    root = tmp_path / "msrvtt_qa"
    touch(root / "videos", "video3.mp4")
    entries = [
        {"video_id": "video3", "question": "what is the man doing", "answer": "sing"},
        {"video_id": "video3", "question": "who sings", "answer": "man"},
    ]
    (root / "test_qa.json").write_text(json.dumps(entries))
    config = DatasetConfig(
        name="qa",
        path=str(root),
        format="valor_json",
        annotation_file="test_qa.json",
        video_dir="videos",
        question_column="question",
    )
    table = load_video_text_dataset(config)
    assert table["question"] == ["what is the man doing", "who sings"]
    assert table["captions"] == [["sing"], ["man"]] and len(set(table["sample_id"])) == 2


def test_config_validates_the_task(tiny_processor_dir):
    values = tiny_run(Path("."), tiny_processor_dir, Path("."))
    values["task"] = "segmentation"
    with pytest.raises(ValueError, match="task"):
        config_from_dict(values)
    values["task"] = "qa"
    with pytest.raises(ValueError, match="question_column"):
        config_from_dict(values)
    values["task"] = "retrieval"
    values["scst"] = {"enabled": True}
    with pytest.raises(ValueError, match="scst"):
        config_from_dict(values)


def test_cider_of_a_caption_sharing_no_ngram_is_zero():
    scorer = CiderD([["a red circle moves up"]])
    np.testing.assert_array_equal(scorer.score(["zzz qqq"], [["a red circle moves up"]]), [0.0])


def test_scripts_train_evaluate_and_write_results(tiny_corpus, tiny_processor_dir, tmp_path):
    import yaml

    from transformers_valor.run_tasks import run_evaluation, run_finetuning

    test_set = {"name": "test", "path": str(tiny_corpus), "split": "test", "num_frames": 2}
    values = task_run(
        "pretrain",  # the script sets the task
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "run",
        data={"per_device_batch_size": 4, "cache_decoded": True, "cache_num_workers": 0},
        training={"max_steps": 2},
        evaluation={"datasets": [test_set]},
    )
    config = tmp_path / "retrieval.yaml"
    config.write_text(yaml.safe_dump(values))
    run_finetuning("retrieval", ["--config", str(config)])
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert set(results["test"]) == {"tva", "tv", "ta"} and "va2t_R@10" in results["test"]["tva"]
    assert json.loads((tmp_path / "run" / "final" / "config.json").read_text())["architectures"] == [
        "ValorForRetrieval"
    ]
    reset_accelerate()
    run_evaluation(["--config", str(config), "--task", "retrieval", "--output_dir", str(tmp_path / "again")])
    assert json.loads((tmp_path / "again" / "eval_results.json").read_text()) == results


@pytest.mark.parametrize("task", ["retrieval", "captioning"])
def test_two_process_ddp_fine_tuning_on_cpu(tiny_corpus, tiny_processor_dir, tmp_path, task):
    import os
    import subprocess
    import sys

    import yaml

    # Two groups per step (two model calls inside one DDP forward); captioning runs SCST.
    groups = {"contrastive_groups": ["tva", "tv"]} if task == "retrieval" else {"caption_groups": ["tv"]}
    values = task_run(
        task,
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "ddp",
        datasets=[{"name": "tiny", "path": str(tiny_corpus), "num_frames": 2, **groups}],
        data={"per_device_batch_size": 2, "cache_decoded": True, "cache_num_workers": 0},
        training={"max_steps": 2},
        **(
            {"scst": {"enabled": True, "num_samples": 2, "max_new_tokens": 4}} if task == "captioning" else {}
        ),
        evaluation={
            "datasets": [
                {"name": "test", "path": str(tiny_corpus), "split": "test", "num_frames": 2, **groups}
            ],
            "caption_metrics": ["BLEU"],
            "max_new_tokens": 4,
        },
    )
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(values))
    torchrun = Path(sys.executable).with_name("torchrun")
    script = Path(__file__).resolve().parent.parent / "examples" / f"finetune_{task}.py"
    command = [str(torchrun), "--nproc_per_node", "2", str(script), "--config", str(config)]
    run = subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300
    )
    assert run.returncode == 0, run.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    expected_class = ValorForRetrieval if task == "retrieval" else ValorForConditionalGeneration
    assert isinstance(expected_class.from_pretrained(tmp_path / "ddp" / "final"), expected_class)
    results = json.loads(
        (tmp_path / "ddp" / "eval_results.json").read_text()
    )  # evaluated by the main process
    expected_key = ("tva", "t2va_R@1") if task == "retrieval" else ("tv", "BLEU-4")
    assert expected_key[1] in results["test"][expected_key[0]]
