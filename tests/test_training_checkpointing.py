"""Checkpoints, exact resume and the final model (`transformers_valor.training.checkpointing`)."""

import copy
import shutil
from pathlib import Path

import pytest
import torch

from training_helpers import losses_by_step, reset_accelerate
from transformers_valor import ValorForConditionalGeneration, ValorForPreTraining, ValorModel, ValorProcessor
from transformers_valor.training import config_from_dict, list_checkpoints, resolve_checkpoint, train


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every in-process run builds its own Accelerator; its state is a process-wide singleton."""
    yield
    reset_accelerate()


def test_resume_gives_the_same_losses(pretraining_run, tmp_path):
    # The shared run decodes every batch: random frame/clip sampling, caption choice, masking and dropout are all
    # in play. Its step-15 checkpoint is the starting point of a run that is preempted and resumed.
    reference_run, values = pretraining_run
    reference_dir = Path(values["training"]["output_dir"])
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(
        reference_dir / "checkpoints" / "checkpoint-15", resumed_dir / "checkpoints" / "checkpoint-15"
    )
    reference_lines = (reference_dir / "metrics.jsonl").read_text().splitlines()
    (resumed_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in reference_lines[:15]))
    resumed = copy.deepcopy(values)
    resumed["training"]["output_dir"] = str(resumed_dir)

    first = train(config_from_dict(resumed), resume_from_checkpoint="latest", stop_after_steps=18)
    assert first.final_dir is None and [p.name for p in list_checkpoints(resumed_dir)] == [
        "checkpoint-15",
        "checkpoint-18",
    ]
    shutil.rmtree(resumed_dir / "checkpoints" / "checkpoint-18")  # preempted before step 18 was saved
    (resumed_dir / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()[:15])
    )
    reset_accelerate()
    second = train(config_from_dict(resumed), resume_from_checkpoint="latest")
    assert second.step == 20 and second.final_dir is not None
    reference, result = losses_by_step(reference_dir), losses_by_step(resumed_dir)
    assert sorted(result) == list(range(1, 21)) and reference_run.step == 20
    for step in range(16, 21):
        assert result[step] == pytest.approx(reference[step], abs=1e-6), (step, reference, result)


def test_checkpoints_are_listed_oldest_first_and_resolved(pretraining_run, tmp_path):
    _, values = pretraining_run
    output_dir = Path(values["training"]["output_dir"])
    found = list_checkpoints(output_dir)
    assert [p.name for p in found] == ["checkpoint-15", "checkpoint-20"]
    assert resolve_checkpoint(output_dir, "latest") == found[-1]
    assert resolve_checkpoint(output_dir, str(found[0])) == found[0]
    assert resolve_checkpoint(tmp_path, "latest") is None and resolve_checkpoint(output_dir, None) is None
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(output_dir, str(tmp_path / "missing"))


def test_trained_folder_loads_into_every_head(pretraining_run, tiny_corpus):
    result, _ = pretraining_run
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
