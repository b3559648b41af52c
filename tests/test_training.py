"""Pretraining pipeline: data loading and mixing, the collator, the Accelerate loop, resume, DDP, saved models."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState, GradientState, PartialState

from transformers_valor import ValorForConditionalGeneration, ValorForPreTraining, ValorModel, ValorProcessor
from transformers_valor.data.datasets import (
    DatasetConfig,
    MixedBatchSampler,
    load_mixture,
    load_video_text_dataset,
)
from transformers_valor.training import (
    DecodeFailureError,
    ModelArguments,
    NonFiniteLossError,
    build_model,
    build_optimizer,
    config_from_dict,
    list_checkpoints,
    load_config,
    train,
)

REPO = Path(__file__).resolve().parent.parent


def tiny_model_config() -> dict:
    """A VALOR small enough for a training step in a few milliseconds."""
    return {
        "projection_dim": 16,
        "max_video_frames": 4,
        "max_audio_clips": 2,
        "text_config": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "max_position_embeddings": 32,
        },
        "vision_config": {
            "model_type": "valor_video_swin",
            "image_size": 32,
            "patch_size": [2, 4, 4],
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [2, 2],
            "window_size": [2, 4, 4],
            "drop_path_rate": 0.0,
        },
        "audio_config": {
            "model_type": "vit",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "image_size": [32, 64],
            "patch_size": 16,
            "num_channels": 1,
        },
    }


def tiny_run(corpus: Path, processor_dir: Path, output_dir: Path, **sections) -> dict:
    """A complete training config (plain data) on the tiny corpus; `sections` update its parts."""
    values = {
        "model": {"processor": str(processor_dir), "config": tiny_model_config()},
        "datasets": [{"name": "tiny", "path": str(corpus), "num_frames": 2, "num_clips": 1}],
        "data": {"per_device_batch_size": 4, "num_workers": 0, "min_samples_for_failure_check": 1},
        "optimizer": {"learning_rate": 1e-3, "warmup_steps": 2},
        "training": {
            "output_dir": str(output_dir),
            "seed": 0,
            "max_steps": 20,
            "log_every": 5,
            "report_to": [],
            "progress_bar": False,
        },
    }
    for section, update in sections.items():
        if isinstance(update, dict):
            values[section].update(update)
        else:
            values[section] = update
    return values


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every in-process run builds its own Accelerator; its state is a process-wide singleton."""
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def read_metrics(output_dir: Path) -> dict[int, float]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row["loss"] for row in map(json.loads, lines)}


@pytest.fixture(scope="module")
def trained(tiny_corpus, tiny_processor_dir, tmp_path_factory):
    """20 steps on the tiny corpus from the decoded cache, with the TensorBoard tracker on."""
    output_dir = tmp_path_factory.mktemp("trained")
    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        output_dir,
        data={"per_device_batch_size": 8, "cache_decoded": True, "cache_num_workers": 0},
        optimizer={"learning_rate": 3e-3},
        training={"report_to": ["tensorboard"]},
    )
    result = train(config_from_dict(values))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    return result, output_dir


# ---------------------------------------------------------------------------------------------------- data


def test_metadata_and_valor_json_formats(tiny_corpus, tmp_path):
    table = load_video_text_dataset(DatasetConfig(name="m", path=str(tiny_corpus)))
    assert sorted(table.column_names) == ["captions", "sample_id", "video_path"]
    assert len(table) == 8 and len(table[0]["captions"]) == 8 and os.path.isfile(table[0]["video_path"])

    entries = [
        {"video_id": "train_00000", "desc": "a red circle"},
        {"video_id": "train_00001", "desc": ["x", "y"]},
    ]
    (tmp_path / "desc.json").write_text(json.dumps(entries))
    config = DatasetConfig(
        name="v",
        path=str(tmp_path),
        format="valor_json",
        annotation_file="desc.json",
        video_dir=str(tiny_corpus / "train"),
    )
    table = load_video_text_dataset(config)
    assert table["sample_id"] == ["train_00000", "train_00001"]
    assert table["captions"] == [["a red circle"], ["x", "y"]]
    assert table["video_path"][0] == str(tiny_corpus / "train" / "train_00000.mp4")


def test_dataset_groups_follow_modality():
    assert DatasetConfig(name="a", path=".").contrastive_groups == ["tva", "tv", "ta"]
    video_only = DatasetConfig(name="w", path=".", modality="video")
    assert video_only.contrastive_groups == ["tv"] and video_only.caption_groups == ["tv"]
    assert DatasetConfig(name="c", path=".", modality="image", num_frames=4).num_frames == 1
    with pytest.raises(ValueError, match="audio groups"):
        DatasetConfig(name="w", path=".", modality="video", contrastive_groups=["tva"])


def test_mixed_sampler_is_homogeneous_deterministic_and_split_across_ranks():
    sizes, ratios = [40, 100], [1.0, 3.0]
    ranks = [MixedBatchSampler(sizes, ratios, batch_size=4, num_replicas=2, rank=r, seed=7) for r in (0, 1)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(ranks[0]) == 140 // 8
    for b0, b1 in zip(*batches):
        assert {r.dataset_index for r in b0 + b1} == {b0[0].dataset_index}  # one dataset per global batch
        assert not {r.row_index for r in b0} & {r.row_index for r in b1}  # disjoint slices
    assert [[(r.dataset_index, r.row_index) for r in b] for b in batches[0]] == [
        [(r.dataset_index, r.row_index) for r in b] for b in ranks[0]
    ]
    ranks[0].set_epoch(1)
    assert [r.row_index for r in next(iter(ranks[0]))] != [r.row_index for r in batches[0][0]]
    share = sum(b[0].dataset_index for b in batches[0]) / len(batches[0])
    assert share > 0.5  # the second dataset has three times the weight


def test_config_rejects_unknown_keys_and_applies_overrides(tmp_path):
    values = tiny_run(Path("corpus"), Path("proc"), tmp_path)
    values["training"]["epochs"] = 3
    with pytest.raises(ValueError, match="epochs"):
        config_from_dict(values)
    del values["training"]["epochs"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values))
    config = load_config(path, ["training.max_steps=7", "datasets.0.ratio=0.5"])
    assert config.training.max_steps == 7 and config.datasets[0].ratio == 0.5


def test_config_reads_exponent_notation_as_float(tmp_path):
    # PyYAML (YAML 1.1) would return the string "2e-4" for both of these.
    values = tiny_run(Path("corpus"), Path("proc"), tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values).replace("learning_rate:", "learning_rate: 2e-4 #"))
    assert load_config(path).optimizer.learning_rate == 2e-4
    config = load_config(path, ["optimizer.learning_rate=3e-3", "optimizer.weight_decay=1E-2"])
    assert config.optimizer.learning_rate == 3e-3 and config.optimizer.weight_decay == 0.01
    assert load_config(path, ["training.output_dir=1e3x"]).training.output_dir == "1e3x"


def test_optimizer_has_no_decay_on_biases_norms_and_temperature(tiny_processor_dir):
    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    model = build_model(
        ModelArguments(processor=str(tiny_processor_dir), config=tiny_model_config()), processor
    )
    optimizer = build_optimizer(
        model, config_from_dict(tiny_run(Path("."), tiny_processor_dir, Path("."))).optimizer
    )
    assert optimizer.defaults["betas"] == (0.9, 0.98)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay_of[id(named["valor.temperature"])] == 0.0
    assert decay_of[id(named["valor.text_model.embeddings.LayerNorm.weight"])] == 0.0
    assert decay_of[id(named["valor.text_projection.weight"])] == 0.01
    assert model.config.text_config.vocab_size == len(processor.tokenizer)


# ---------------------------------------------------------------------------------------------------- training


def test_twenty_steps_lower_the_loss(trained):
    result, output_dir = trained
    assert result.step == 20 and len(result.losses) == 20
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < first - 0.5, result.losses
    assert list((output_dir / "logs").rglob("events.out.tfevents*")), "no TensorBoard event file"
    assert list((output_dir / "decoded_cache").glob("tiny-*.safetensors"))


def test_trained_folder_loads_into_every_head(trained, tiny_corpus):
    result, _ = trained
    final = result.final_dir
    pretraining = ValorForPreTraining.from_pretrained(final)
    base = ValorModel.from_pretrained(final)
    captioner = ValorForConditionalGeneration.from_pretrained(final)
    weight = pretraining.valor.text_projection.weight
    assert torch.equal(base.text_projection.weight, weight)
    assert torch.equal(captioner.valor.text_projection.weight, weight)
    assert torch.equal(
        captioner.cls.predictions.transform.dense.weight, pretraining.cls.predictions.transform.dense.weight
    )
    processor = ValorProcessor.from_pretrained(final)
    inputs = processor(videos=str(tiny_corpus / "test" / "test_00000.mp4"), num_frames=2)
    ids = captioner.generate(**inputs, max_new_tokens=5, num_beams=1)
    assert ids.shape[0] == 1


def test_resume_gives_the_same_losses(tiny_corpus, tiny_processor_dir, tmp_path):
    # Random frame/clip sampling, caption choice, masking and dropout are all in play (no cache).
    values = dict(training={"max_steps": 6, "checkpoint_every": 3, "log_every": 1})
    full = tiny_run(tiny_corpus, tiny_processor_dir, tmp_path / "full", **values)
    train(config_from_dict(full))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()

    interrupted = tiny_run(tiny_corpus, tiny_processor_dir, tmp_path / "resumed", **values)
    first = train(config_from_dict(interrupted), stop_after_steps=4)
    assert first.final_dir is None and [p.name for p in list_checkpoints(tmp_path / "resumed")] == [
        "checkpoint-3",
        "checkpoint-4",
    ]
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "checkpoint-4")  # preempted before step 4 was saved
    (tmp_path / "resumed" / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()[:3])
    )
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    second = train(config_from_dict(interrupted), resume_from_checkpoint="latest")
    assert second.step == 6 and second.final_dir is not None
    reference, resumed = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "resumed")
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), (step, reference, resumed)


def test_corrupt_file_is_skipped_and_reported(tiny_corpus, tiny_processor_dir, tmp_path, caplog):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    broken = corpus / "train" / "train_00003.mp4"
    broken.write_bytes(b"this is not an mp4 file")
    values = tiny_run(
        corpus,
        tiny_processor_dir,
        tmp_path / "run",
        data={"per_device_batch_size": 8, "max_failed_share": 0.5},
        training={"max_steps": 2},
    )
    with caplog.at_level(logging.WARNING):
        result = train(config_from_dict(values))
    assert result.step == 2
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert "train_00003" in messages and str(broken) in messages

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    values["data"]["max_failed_share"] = 0.05
    values["training"]["output_dir"] = str(tmp_path / "run2")
    with pytest.raises(DecodeFailureError, match=r"1 of 8 samples .*max_failed_share"):
        train(config_from_dict(values))


def test_nan_loss_stops_with_step_and_sample_ids(tiny_corpus, tiny_processor_dir, tmp_path, monkeypatch):
    original = ValorForPreTraining.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(ValorForPreTraining, "forward", forward)
    values = tiny_run(tiny_corpus, tiny_processor_dir, tmp_path / "run", training={"max_steps": 5})
    with pytest.raises(NonFiniteLossError, match=r"at step 3.*train_000\d\d") as error:
        train(config_from_dict(values))
    assert "checkpoint-2" in str(error.value)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]


def test_two_process_ddp_on_cpu(tiny_corpus, tiny_processor_dir, tmp_path):
    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "ddp",
        data={"per_device_batch_size": 2, "cache_decoded": True, "cache_num_workers": 0},
        training={"max_steps": 3, "checkpoint_every": 2},
    )
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(values))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        str(REPO / "examples" / "pretrain.py"),
        "--config",
        str(config),
    ]
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    metrics = read_metrics(tmp_path / "ddp")
    assert sorted(metrics) == [1, 2, 3] and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert (tmp_path / "ddp" / "checkpoints" / "checkpoint-3" / "random_states_1.pkl").is_file()
    assert ValorForPreTraining.from_pretrained(tmp_path / "ddp" / "final") is not None


def test_mixture_of_audiovisual_and_video_only_datasets(tiny_corpus, tiny_processor_dir, tmp_path):
    datasets = [
        {"name": "av", "path": str(tiny_corpus), "num_frames": 2, "ratio": 1.0},
        {"name": "silent", "path": str(tiny_corpus), "split": "test", "modality": "video", "num_frames": 1},
    ]
    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        tmp_path / "mix",
        datasets=datasets,
        training={"max_steps": 4, "log_every": 1},
    )
    mix, summary = load_mixture(config_from_dict(values).datasets)
    assert mix.sizes == [8, 4] and "silent: 4 samples" in str(summary)
    result = train(config_from_dict(values))
    rows = [json.loads(line) for line in (tmp_path / "mix" / "metrics.jsonl").read_text().splitlines()]
    assert result.step == 4
    seen = {("mga_ta" in row) for row in rows}
    assert seen <= {True, False} and all("mga_tv" in row for row in rows)


def test_initialisation_from_pretrained_single_modality_encoders(tiny_processor_dir, tmp_path):
    from transformers import ASTConfig, ASTModel, BertConfig, BertForMaskedLM

    from transformers_valor import ValorVideoSwinConfig, ValorVideoSwinModel

    processor = ValorProcessor.from_pretrained(tiny_processor_dir)
    torch.manual_seed(0)
    bert = BertForMaskedLM(
        BertConfig(
            vocab_size=len(processor.tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    ast = ASTModel(
        ASTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=37,
            num_mel_bins=32,
            max_length=64,
        )
    )
    ast.save_pretrained(tmp_path / "ast")
    swin = ValorVideoSwinModel(
        ValorVideoSwinConfig(**{**tiny_model_config()["vision_config"], "model_type": None})
    )
    swin.save_pretrained(tmp_path / "swin")

    args = ModelArguments(
        processor=str(tiny_processor_dir),
        config=tiny_model_config(),
        text_encoder=str(tmp_path / "bert"),
        vision_encoder=str(tmp_path / "swin"),
        audio_encoder=str(tmp_path / "ast"),
    )
    model = build_model(args, processor)
    valor = model.valor
    assert torch.equal(
        valor.text_model.encoder.layer[1].attention.self.query.weight,
        bert.bert.encoder.layer[1].attention.self.query.weight,
    )
    assert torch.equal(
        model.cls.predictions.transform.dense.weight, bert.cls.predictions.transform.dense.weight
    )
    audio_state, ast_state = valor.audio_model.state_dict(), ast.state_dict()
    layer_keys = [k for k in ast_state if k.startswith("layers.")]
    assert layer_keys and all(torch.equal(audio_state[k], ast_state[k]) for k in layer_keys)
    assert torch.equal(audio_state["embeddings.cls_token"], ast_state["embeddings.cls_token"])
    assert valor.audio_model.embeddings.position_embeddings.shape[1] == 1 + (32 // 16) * (64 // 16)
    first_swin = next(iter(swin.state_dict().items()))
    assert torch.equal(valor.vision_model.state_dict()[first_swin[0]], first_swin[1])
