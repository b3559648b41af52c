"""The training loop (`transformers_valor.training.loop`): learning, trackers, undecodable samples, the NaN guard,
dataset mixtures and two-process DDP."""

import logging
import shutil
from pathlib import Path

import pytest
import torch

from training_helpers import (
    first_and_last,
    losses_by_step,
    no_dropout_model_config,
    read_metrics,
    reset_accelerate,
    tiny_run,
)
from transformers_valor import ValorForPreTraining
from transformers_valor.data.datasets import load_mixture
from transformers_valor.training import (
    DecodeFailureError,
    LoopArguments,
    NonFiniteLossError,
    config_from_dict,
    list_checkpoints,
    train,
)
from transformers_valor.training.loop import num_training_steps


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every in-process run builds its own Accelerator; its state is a process-wide singleton."""
    yield
    reset_accelerate()


def test_twenty_steps_lower_the_loss(pretraining_run):
    result, values = pretraining_run
    output_dir = Path(values["training"]["output_dir"])
    assert result.step == 20 and len(result.losses) == 20
    first, last = first_and_last(result.losses)
    assert last < first - 0.5, result.losses
    assert list((output_dir / "logs").rglob("events.out.tfevents*")), "no TensorBoard event file"
    rows = read_metrics(output_dir)
    assert [row["step"] for row in rows] == list(range(1, 21))
    assert {"loss", "mga", "mgc", "mga_tva", "mgc_ta", "lr"} <= set(rows[0])
    assert [row["loss"] for row in rows] == pytest.approx(result.losses)


def test_number_of_steps_from_epochs():
    assert num_training_steps(LoopArguments(max_steps=7), 100) == 7
    assert num_training_steps(LoopArguments(num_epochs=1.5, gradient_accumulation_steps=2), 10) == 8


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

    reset_accelerate()
    values["data"]["max_failed_share"] = 0.05
    values["training"]["output_dir"] = str(tmp_path / "run2")
    with pytest.raises(DecodeFailureError, match=r"1 of 8 samples .*max_failed_share"):
        train(config_from_dict(values))


def test_nan_loss_stops_with_step_and_sample_ids(tiny_corpus, tiny_processor_dir, tmp_path, monkeypatch):
    original = ValorForPreTraining.compute_losses
    calls = {"n": 0}

    def compute_losses(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(ValorForPreTraining, "compute_losses", compute_losses)
    values = tiny_run(tiny_corpus, tiny_processor_dir, tmp_path / "run", training={"max_steps": 5})
    with pytest.raises(NonFiniteLossError, match=r"at step 3.*train_000\d\d") as error:
        train(config_from_dict(values))
    assert "checkpoint-2" in str(error.value)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]


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
    rows = read_metrics(tmp_path / "mix")
    assert result.step == 4
    seen = {("mga_ta" in row) for row in rows}
    assert seen <= {True, False} and all("mga_tv" in row for row in rows)


def test_two_process_ddp_on_cpu(ddp_runs):
    # `examples/pretrain.py` under torchrun (tests/distributed_training_worker.py), 3 steps, checkpoint every 2.
    metrics = losses_by_step(ddp_runs / "pretrain")
    assert sorted(metrics) == [1, 2, 3] and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert [p.name for p in list_checkpoints(ddp_runs / "pretrain")] == ["checkpoint-2", "checkpoint-3"]
    assert (ddp_runs / "pretrain" / "checkpoints" / "checkpoint-3" / "rng_state_1.safetensors").is_file()
    assert ValorForPreTraining.from_pretrained(ddp_runs / "pretrain" / "final") is not None


def test_torch_compile_trains_the_compiled_parts_with_eager_losses(
    tiny_corpus, tiny_processor_dir, tmp_path, monkeypatch
):
    """`training.torch_compile: true` compiles the towers, decoder and MLM head before the first step (here
    through AOT autograd without inductor, to keep the test fast; inductor's numerics are covered by
    tests/test_compilation.py), and trains with the eager run's losses."""
    import transformers_valor.training.loop as loop_module
    from transformers_valor.compilation import compile_valor, compiled_parts, is_compiled

    compiled = []

    def compile_without_inductor(model, **kwargs):
        compiled.append(model)
        return compile_valor(model, backend="eager", **kwargs)

    monkeypatch.setattr(loop_module, "compile_valor", compile_without_inductor)
    losses = {}
    for flag in (False, True):
        reset_accelerate()
        torch._dynamo.reset()
        values = tiny_run(
            tiny_corpus,
            tiny_processor_dir,
            tmp_path / f"compile_{flag}",
            model={"processor": str(tiny_processor_dir), "config": no_dropout_model_config()},
            training={"max_steps": 2, "torch_compile": flag},
        )
        losses[flag] = train(config_from_dict(values)).losses
    torch._dynamo.reset()
    assert len(compiled) == 1 and all(is_compiled(part) for part in compiled_parts(compiled[0]).values())
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
