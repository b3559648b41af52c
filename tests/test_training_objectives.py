"""Every task's objective (`transformers_valor.training.objectives`): pretraining, retrieval, captioning, SCST and
QA, alone, in short training runs, and under two-process DDP (global-batch negatives and gradients)."""

import json

import numpy as np
import pytest
import torch

from distributed_training_worker import build_model, global_batch
from helpers import ValorInputsTester, tiny_valor_config, tiny_valor_l_config
from training_helpers import (
    first_and_last,
    read_metrics,
    reset_accelerate,
    tiny_generator,
    tiny_run,
    write_qa_set,
)
from transformers_valor import ValorForConditionalGeneration, ValorForRetrieval, ValorModel, ValorProcessor
from transformers_valor.data.collator import ValorTrainingCollator
from transformers_valor.data.datasets import DatasetConfig, SampleRef, load_mixture
from transformers_valor.data.masking import CaptionMaskingConfig, mask_captions
from transformers_valor.losses import QuestionAnsweringLoss
from transformers_valor.metrics import CiderD
from transformers_valor.training import (
    PretrainingObjective,
    RetrievalObjective,
    SCSTArguments,
    SCSTObjective,
    build_objective,
    config_from_dict,
    train,
)
from transformers_valor.training.evaluation import evaluate_task


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every in-process run builds its own Accelerator; its state is a process-wide singleton."""
    yield
    reset_accelerate()


# ------------------------------------------------------------------------------------------------- pretraining


def test_pretraining_objective_is_the_model_loss_on_one_process():
    model = build_model()
    inputs = global_batch(model)
    objective = build_objective("pretrain", model)
    assert isinstance(objective, PretrainingObjective)
    out = objective(inputs)
    reference = model(**inputs)
    torch.testing.assert_close(out.loss, reference.loss)
    torch.testing.assert_close(out.components["mga"], reference.contrastive_loss)
    torch.testing.assert_close(out.components["mgc"], reference.caption_loss)
    torch.testing.assert_close(out.components["mlm"], reference.mlm_loss)
    assert set(out.components) == {"mga", "mgc", "mlm", *reference.group_losses}
    assert {"mlm_tva", "mlm_tv", "mlm_ta"} <= set(out.components)
    with pytest.raises(TypeError, match="ValorForPreTraining"):
        PretrainingObjective(ValorForRetrieval(tiny_valor_config()))


def test_two_process_gradients_equal_single_process(ddp_runs):
    """MGA negatives come from the global batch and MGC / MLM are normalised by the global label counts: 2 gloo
    processes reproduce the 1-process loss and gradients."""
    distributed = torch.load(ddp_runs / "gradients.pt")
    objective = PretrainingObjective(build_model())
    out = objective(global_batch(objective.model))
    out.loss.backward()
    torch.testing.assert_close(distributed["loss"], out.loss.detach(), atol=1e-5, rtol=1e-5)
    grads = {n: p.grad for n, p in objective.model.named_parameters() if p.grad is not None}
    assert set(grads) == set(distributed["grads"])
    for name, grad in grads.items():
        torch.testing.assert_close(distributed["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------------------------- retrieval


def test_retrieval_objective_encodes_each_modality_once(monkeypatch):
    torch.manual_seed(0)
    model = ValorForRetrieval(tiny_valor_config()).train()
    batch = {**ValorInputsTester().prepare_inputs(), "contrastive_groups": ["tva", "tv", "ta"]}
    calls = {"text": 0, "video": 0, "audio": 0}
    for modality in calls:
        original = getattr(ValorModel, f"get_{modality}_features")

        def counted(self, *args, _original=original, _modality=modality, **kwargs):
            calls[_modality] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ValorModel, f"get_{modality}_features", counted)
    out = RetrievalObjective(model)(batch)
    assert calls == {"text": 1, "video": 1, "audio": 1}
    assert set(out.components) == {"mga_tva", "mga_tv", "mga_ta"}
    torch.testing.assert_close(out.loss, torch.stack(list(out.components.values())).mean())
    single = model(
        **{k: v for k, v in batch.items() if k != "contrastive_groups"}, group="tv", return_loss=True
    )
    torch.testing.assert_close(out.components["mga_tv"], single.loss)
    del batch["input_features"]
    with pytest.raises(ValueError, match="input_features"):
        RetrievalObjective(model)(batch)


def test_retrieval_finetuning_lowers_mga_loss(retrieval_run):
    output_dir, _ = retrieval_run
    rows = read_metrics(output_dir)
    first, last = first_and_last([row["loss"] for row in rows], n=5)
    assert len(rows) == 60 and last < first - 0.3, rows
    assert "mga_tva" in rows[0] and "mgc" not in rows[0]


# ------------------------------------------------------------------------------------------------- captioning


def test_question_answering_objective_composes_the_prompt_and_uses_the_qa_loss():
    torch.manual_seed(0)
    model = ValorForConditionalGeneration(tiny_valor_l_config()).eval()
    inputs = ValorInputsTester().prepare_inputs()
    masking = CaptionMaskingConfig.from_model_config(model.config.text_config, mask_probability=0.99)
    decoder_ids, labels = mask_captions(inputs["input_ids"], masking, torch.Generator().manual_seed(0))
    questions = torch.tensor([[1, 7, 8, 2], [1, 9, 2, 0], [1, 10, 11, 2]])
    batch = {
        **inputs,
        "caption_input_ids": decoder_ids,
        "labels": labels,
        "question_ids": questions,
        "question_attention_mask": (questions != 0).long(),
        "caption_groups": ["tv"],
    }
    out = build_objective("qa", model)(batch)
    prompt, prompt_mask = model.question_prompt(questions)  # [CLS] answer the question q.. (VALOR-L)
    logits = model(
        decoder_ids,
        inputs["attention_mask"],
        inputs["pixel_values_videos"],
        prompt_ids=prompt,
        prompt_attention_mask=prompt_mask,
    ).logits
    torch.testing.assert_close(out.loss, QuestionAnsweringLoss("unimlm")(logits, labels))
    with pytest.raises(ValueError, match="question_ids"):
        build_objective("qa", model)({k: v for k, v in batch.items() if not k.startswith("question")})


def test_captioning_cross_entropy_lowers_loss_and_evaluates(tiny_corpus, tiny_processor_dir, tmp_path):
    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "run",
        task="captioning",
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
    first, last = first_and_last(result.losses)
    assert last < first - 0.3, result.losses
    assert "mgc_tva" in read_metrics(tmp_path / "run")[0]
    model = ValorForConditionalGeneration.from_pretrained(result.final_dir)
    processor = ValorProcessor.from_pretrained(result.final_dir)
    config.evaluation.datasets[0].caption_groups = ["tva", "ta"]
    metrics, predictions = evaluate_task(
        "captioning", model, processor, config.evaluation, tmp_path / "cache"
    )
    assert set(metrics["test"]) == {"tva", "ta"}
    assert {"BLEU-4", "CIDEr"} <= set(metrics["test"]["tva"])
    assert sorted(predictions["test"]["tva"]) == [f"test_0000{i}" for i in range(4)]


def test_scst_step_gives_a_finite_gradient(tiny_corpus, tiny_processor_dir, monkeypatch):
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    model = tiny_generator(tiny_processor_dir).train()
    config = DatasetConfig(name="tiny", path=str(tiny_corpus), num_frames=2, caption_groups=["tva"])
    mix, _ = load_mixture([config])
    references = list(mix.rows(0)["captions"])
    collator = ValorTrainingCollator(
        processor, [config], CaptionMaskingConfig.from_model_config(model.config.text_config)
    )
    batch = collator([mix[SampleRef(0, i, 7)] for i in range(3)])
    seen = {}
    import transformers_valor.training.objectives as objectives

    original = objectives.scst_rewards

    def spy(scorer, sampled, greedy, refs, num_samples):
        seen.update(sampled=sampled, greedy=greedy, refs=refs)
        return original(scorer, sampled, greedy, refs, num_samples)

    monkeypatch.setattr(objectives, "scst_rewards", spy)
    scorer = CiderD(references)
    objective = SCSTObjective(
        model, SCSTArguments(enabled=True, num_samples=2, max_new_tokens=5), scorer, processor.tokenizer
    )
    torch.manual_seed(0)
    keys = (
        "input_ids",
        "attention_mask",
        "pixel_values_videos",
        "input_features",
        "input_features_mask",
        "references",
    )
    output = objective({**{k: batch[k] for k in keys}, "caption_groups": ["tva"]})
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
    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "run",
        task="captioning",
        datasets=[{"name": "tiny", "path": str(tiny_corpus), "num_frames": 2, "caption_groups": ["tv"]}],
        data={"per_device_batch_size": 4, "cache_decoded": True, "cache_num_workers": 0},
        training={"max_steps": 2},
        scst={"enabled": True, "num_samples": 2, "max_new_tokens": 4},
    )
    result = train(config_from_dict(values))
    assert result.step == 2 and all(np.isfinite(result.losses))
    row = read_metrics(tmp_path / "run")[0]
    assert {"scst_reward", "scst_sample_cider", "scst_greedy_cider"} <= set(row)


# ------------------------------------------------------------------------------------------------- QA


def test_question_answering_trains_and_evaluates_accuracy(tiny_corpus, tiny_processor_dir, tmp_path):
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
    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "run",
        task="qa",
        datasets=[dataset],
        data={"per_device_batch_size": 8, "cache_decoded": True, "cache_num_workers": 0},
        optimizer={"learning_rate": 3e-3},
        training={"max_steps": 10},
        evaluation={"datasets": [{**dataset, "name": "qa_test", "annotation_file": str(test_file)}]},
    )
    config = config_from_dict(values)
    result = train(config)
    first, last = first_and_last(result.losses)
    assert last < first, result.losses
    model = ValorForConditionalGeneration.from_pretrained(result.final_dir)
    processor = ValorProcessor.from_pretrained(result.final_dir)
    metrics, predictions = evaluate_task("qa", model, processor, config.evaluation, tmp_path / "cache")
    assert metrics["qa_test"]["tva"]["count"] == 8 and 0.0 <= metrics["qa_test"]["tva"]["accuracy"] <= 1.0
    assert len(predictions["qa_test"]["tva"]) == 8


# ------------------------------------------------------------------------------------------------- DDP


@pytest.mark.parametrize("task", ["retrieval", "captioning"])
def test_two_process_ddp_fine_tuning_on_cpu(ddp_runs, task):
    # `examples/finetune_<task>.py` under torchrun (tests/distributed_training_worker.py): retrieval trains two
    # groups per step (one DDP forward scores both), captioning runs SCST; the main process then evaluates.
    output_dir = ddp_runs / task
    rows = read_metrics(output_dir)
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    expected_class = ValorForRetrieval if task == "retrieval" else ValorForConditionalGeneration
    assert isinstance(expected_class.from_pretrained(output_dir / "final"), expected_class)
    results = json.loads((output_dir / "eval_results.json").read_text())
    expected_key = ("tva", "t2va_R@1") if task == "retrieval" else ("tv", "BLEU-4")
    assert expected_key[1] in results["test"][expected_key[0]]
