"""The run config (`transformers_valor.training.config`): unknown keys, `--set` overrides, YAML numbers, tasks."""

from pathlib import Path

import pytest
import yaml

from training_helpers import tiny_run
from transformers_valor.training import LoopArguments, RunConfig, config_from_dict, load_config


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
    assert isinstance(config, RunConfig) and isinstance(config.training, LoopArguments)


def test_config_reads_exponent_notation_as_float(tmp_path):
    # PyYAML (YAML 1.1) would return the string "2e-4" for both of these.
    values = tiny_run(Path("corpus"), Path("proc"), tmp_path)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values).replace("learning_rate:", "learning_rate: 2e-4 #"))
    assert load_config(path).optimizer.learning_rate == 2e-4
    config = load_config(path, ["optimizer.learning_rate=3e-3", "optimizer.weight_decay=1E-2"])
    assert config.optimizer.learning_rate == 3e-3 and config.optimizer.weight_decay == 0.01
    assert load_config(path, ["training.output_dir=1e3x"]).training.output_dir == "1e3x"


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
