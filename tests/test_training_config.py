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


def test_mlm_groups_are_typed_per_dataset_fields_of_pretraining(tiny_processor_dir):
    values = tiny_run(Path("."), tiny_processor_dir, Path("."))
    values["datasets"][0]["mlm_groups"] = ["tv"]  # VALOR-L's `pt_contra%tv_caption%tv_mlm%tv`
    assert config_from_dict(values).datasets[0].mlm_groups == ["tv"]
    values["task"] = "retrieval"
    with pytest.raises(ValueError, match="`mlm_groups`.*apply to `task: pretrain`"):
        config_from_dict(values)


@pytest.mark.parametrize(
    "override, match",
    [
        (
            "training.max_steps='ten'",
            r"`training\.max_steps`: expected an integer or null, got 'ten' \(str\)",
        ),
        ("training.max_steps=2.5", r"`training\.max_steps`: expected an integer or null, got 2\.5 \(float\)"),
        ("optimizer.learning_rate=fast", r"`optimizer\.learning_rate`: expected a number, got 'fast'"),
        ("optimizer.betas=[0.9]", r"`optimizer\.betas` must be two numbers in \[0, 1\), got \[0\.9\]"),
        ("optimizer.betas=[0.9, b]", r"`optimizer\.betas`: expected a list of numbers, got \[0\.9, 'b'\]"),
        ("data.per_device_batch_size=0", r"`data\.per_device_batch_size` must be >= 1, got 0"),
        (
            "training.report_to=tensorboard",
            r"`training\.report_to`: expected a list of strings, got 'tensorboard'",
        ),
        ("training.checkpoint_every=0", r"`training\.checkpoint_every` must be >= 1 \(or unset\), got 0"),
        ("training.progress_bar=1", r"`training\.progress_bar`: expected true or false, got 1 \(int\)"),
        (
            "data.cache_dtype=int8",
            r"`data\.cache_dtype`: expected one of \['float16', 'bfloat16', 'float32'\]",
        ),
        ("datasets.0.num_frames=two", r"`datasets\[0\]\.num_frames`: expected an integer, got 'two'"),
        ("scst.temperature=hot", r"`scst\.temperature`: expected a number, got 'hot'"),
        ("training=7", r"`training` must be a mapping of settings, got 7"),
    ],
)
def test_config_values_of_the_wrong_type_fail_at_load_time(tmp_path, override, match):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(tiny_run(Path("corpus"), Path("proc"), tmp_path)))
    with pytest.raises(ValueError, match=match):
        load_config(path, [override])


def test_config_accepts_integers_for_floats_and_float_caches(tmp_path):
    values = tiny_run(Path("corpus"), Path("proc"), tmp_path, optimizer={"learning_rate": 1})
    config = config_from_dict(values)
    assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)
    values["data"]["cache_dtype"] = "bfloat16"
    assert config_from_dict(values).data.cache_dtype == "bfloat16"
    with pytest.raises(ValueError, match="checkpoint_every"):
        LoopArguments(checkpoint_every=0)  # also when built in Python
