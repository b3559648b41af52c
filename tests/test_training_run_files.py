"""The `output_dir` guard and `metrics.jsonl` (`transformers_valor.training.run_files`), also through `train`."""

import json
import logging

import pytest

from training_helpers import read_metrics, reset_accelerate, tiny_run
from transformers_valor.training import OutputDirError, config_from_dict, train
from transformers_valor.training.run_files import MetricsLog, prepare_output_dir


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Every in-process run builds its own Accelerator; its state is a process-wide singleton."""
    yield
    reset_accelerate()


def test_truncate_keeps_the_steps_of_the_checkpoint(tmp_path, caplog):
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3, 4, 2, 3):  # steps 2-4 ran, were lost with the kill, and 2-3 ran again
        log.append({"step": step, "loss": float(step)})
    with open(log.path, "a") as handle:
        handle.write('{"step": 4, "lo')
    with caplog.at_level(logging.WARNING):
        assert log.truncate(1) == 1
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1]
    assert "dropped 5 row(s) of later steps and 1 unreadable line(s)" in caplog.text
    assert MetricsLog(tmp_path / "nothing").truncate(3) == 0


def test_output_dir_decisions(tmp_path, caplog):
    assert prepare_output_dir(tmp_path / "new", None, overwrite=False) == (None, False)
    with caplog.at_level(logging.WARNING):
        assert prepare_output_dir(tmp_path / "new", "latest", overwrite=False) == (None, False)
    assert "no checkpoint in" in caplog.text and "starting a fresh run" in caplog.text
    MetricsLog(tmp_path).append({"step": 1})
    with pytest.raises(
        OutputDirError, match=r"already holds a run \(metrics.jsonl\).*--resume_from_checkpoint latest"
    ):
        prepare_output_dir(tmp_path, None, overwrite=False)
    with pytest.raises(OutputDirError, match="no checkpoint to resume from"):
        prepare_output_dir(tmp_path, "latest", overwrite=False)
    assert prepare_output_dir(tmp_path, None, overwrite=True) == (None, True)


def test_a_second_run_into_a_used_output_dir(tiny_corpus, tiny_processor_dir, tmp_path):
    values = tiny_run(tiny_corpus, tiny_processor_dir, tmp_path, training={"max_steps": 2})
    train(config_from_dict(values))
    reset_accelerate()
    with pytest.raises(OutputDirError, match="final, checkpoints/checkpoint-2"):
        train(config_from_dict(values))
    values["training"]["overwrite_output_dir"] = True
    values["training"]["max_steps"] = 1
    reset_accelerate()
    train(config_from_dict(values))
    assert [row["step"] for row in read_metrics(tmp_path)] == [1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-1"]
