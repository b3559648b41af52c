"""Checkpoints, exact resume and the final model (`transformers_valor.training.checkpointing`)."""

import copy
import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from training_helpers import read_metrics, reset_accelerate, tiny_run
from transformers_valor import ValorForConditionalGeneration, ValorForPreTraining, ValorModel, ValorProcessor
from transformers_valor.training import (
    CheckpointError,
    CheckpointWriteError,
    checkpointing,
    config_from_dict,
    list_checkpoints,
    resolve_checkpoint,
    safe_state,
    train,
)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every in-process run builds its own Accelerator; its state is a process-wide singleton."""
    yield
    reset_accelerate()


def test_resume_after_a_kill_is_exact_and_logs_each_step_once(pretraining_run, tmp_path):
    # The shared run decodes every batch: random frame/clip sampling, caption choice, masking and dropout are all
    # in play. Its step-15 checkpoint and its whole metrics.jsonl stand for a run killed after step 20 was logged
    # but before it was checkpointed; it is resumed, preempted again after step 18 (whose checkpoint is lost),
    # and resumed once more.
    reference_run, values = pretraining_run
    reference_dir = Path(values["training"]["output_dir"])
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(
        reference_dir / "checkpoints" / "checkpoint-15", resumed_dir / "checkpoints" / "checkpoint-15"
    )
    shutil.copy(reference_dir / "metrics.jsonl", resumed_dir / "metrics.jsonl")
    with open(resumed_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 21, "lo')  # a line cut short by the kill
    resumed = copy.deepcopy(values)
    resumed["training"]["output_dir"] = str(resumed_dir)

    first = train(config_from_dict(resumed), resume_from_checkpoint="latest", stop_after_steps=18)
    assert first.final_dir is None and [p.name for p in list_checkpoints(resumed_dir)] == [
        "checkpoint-15",
        "checkpoint-18",
    ]
    assert [row["step"] for row in read_metrics(resumed_dir)] == list(range(1, 19))
    shutil.rmtree(resumed_dir / "checkpoints" / "checkpoint-18")  # preempted before step 18 was saved
    reset_accelerate()
    second = train(config_from_dict(resumed), resume_from_checkpoint="latest")
    assert second.step == 20 and second.final_dir is not None and reference_run.step == 20
    rows, reference = read_metrics(resumed_dir), read_metrics(reference_dir)
    assert [row["step"] for row in rows] == list(range(1, 21))
    assert rows == reference  # bit-identical losses, every component and the learning rate
    ours, theirs = (
        load_file(second.final_dir / "model.safetensors"),
        load_file(reference_run.final_dir / "model.safetensors"),
    )
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


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


def test_checkpoint_holds_no_pickle(pretraining_run):
    _, values = pretraining_run
    folder = Path(values["training"]["output_dir"]) / "checkpoints" / "checkpoint-15"
    names = sorted(p.name for p in folder.iterdir())
    assert all(name.endswith((".json", ".safetensors")) for name in names), names
    manifest = json.loads((folder / "checkpoint.json").read_text())
    assert manifest["step"] == 15 and manifest["num_processes"] == 1
    assert sorted(manifest["files"]) == sorted(set(names) - {"checkpoint.json"})


class WritesMarker:
    """Pickles to a call that creates `marker` when unpickled: what a tampered checkpoint file could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.mark.parametrize(
    "planted, match",
    [
        (
            "custom_checkpoint_1.pkl",
            "does not list.*custom_checkpoint_1.pkl",
        ),  # TrainState's file in Accelerate
        ("custom_checkpoint_0.pkl", "does not list.*custom_checkpoint_0.pkl"),  # the scheduler's
        ("train_state.json", "train_state.json is not a valid state file"),  # a payload under our own name
    ],
)
def test_planted_pickle_payload_never_runs(pretraining_run, tmp_path, planted, match):
    _, values = pretraining_run
    run_dir = tmp_path / "run"
    shutil.copytree(
        Path(values["training"]["output_dir"]) / "checkpoints" / "checkpoint-15",
        run_dir / "checkpoints" / "checkpoint-15",
    )
    marker = tmp_path / "code_ran"
    torch.save(
        {"step": WritesMarker(marker), "batches_consumed": 0},
        run_dir / "checkpoints" / "checkpoint-15" / planted,
    )
    tampered = copy.deepcopy(values)
    tampered["training"]["output_dir"] = str(run_dir)
    with pytest.raises(CheckpointError, match=match):
        train(config_from_dict(tampered), resume_from_checkpoint="latest")
    assert not marker.exists()


def test_checkpoint_of_an_earlier_version_is_refused(tmp_path):
    folder = tmp_path / "checkpoints" / "checkpoint-3"
    folder.mkdir(parents=True)
    (folder / "random_states_0.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="no checkpoint.json.*pickle"):
        checkpointing.read_manifest(folder)
    (folder / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid checkpoint manifest"):
        checkpointing.read_manifest(folder)


@pytest.mark.parametrize(
    "full_disk",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # What safetensors itself raises on a full disk (seen on a 256 kB tmpfs).
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
)
def test_full_disk_keeps_the_last_good_checkpoint(
    tiny_corpus, tiny_processor_dir, tmp_path, monkeypatch, full_disk
):
    real_save_file = safe_state.save_file

    def save_file(tensors, path):
        if "checkpoint-2" in path:
            raise full_disk
        real_save_file(tensors, path)

    monkeypatch.setattr(safe_state, "save_file", save_file)
    values = tiny_run(
        tiny_corpus, tiny_processor_dir, tmp_path, training={"max_steps": 3, "checkpoint_every": 1}
    )
    with pytest.raises(CheckpointWriteError, match=r"no space left on device.*checkpoint-1\) is kept"):
        train(config_from_dict(values))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-1"]  # no .tmp left
    assert not (tmp_path / "final").exists()


def test_pruning_never_leaves_a_half_deleted_checkpoint(
    tiny_corpus, tiny_processor_dir, tmp_path, monkeypatch
):
    def rmtree_killed_midway(path, ignore_errors=False):
        # Deletes one file and stops, as a kill during the deletion would.
        files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else []
        if files:
            files[0].unlink()

    values = tiny_run(
        tiny_corpus,
        tiny_processor_dir,
        tmp_path,
        training={"max_steps": 3, "checkpoint_every": 1, "save_total_limit": 1},
    )
    monkeypatch.setattr(checkpointing.shutil, "rmtree", rmtree_killed_midway)
    train(config_from_dict(values))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3"]
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert all(name == "checkpoint-3" or name.startswith(".deleting-") for name in left), left


def test_final_model_is_written_atomically(tiny_corpus, tiny_processor_dir, tmp_path, monkeypatch):
    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ValorProcessor, "save_pretrained", no_space)
    values = tiny_run(tiny_corpus, tiny_processor_dir, tmp_path, training={"max_steps": 1})
    with pytest.raises(CheckpointWriteError, match="final.*no space left on device"):
        train(config_from_dict(values))
    assert not (tmp_path / "final").exists() and not (tmp_path / ".tmp-final").exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1"]


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
