"""Run configs on the tiny corpus and small utilities shared by the training tests (tests/test_training_*.py)."""

import json
import os
import sys
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, GradientState, PartialState

from transformers_valor import ValorConfig, ValorForConditionalGeneration, ValorProcessor
from transformers_valor.training import sync_text_config_with_tokenizer

REPO = Path(__file__).resolve().parent.parent
# `examples/caption_videos.py` options of the 2-process run (tests/conftest.py `ddp_runs`) and of the one-process
# run it is compared with (tests/test_inference_cli.py).
CAPTION_VIDEOS_SETTINGS = {
    "group": "tva",
    "batch_size": 2,
    "num_workers": 0,
    "shard_size": 1,
    "num_beams": 2,
    "max_new_tokens": 4,
}
# `accelerate launch` arguments that run a shipped multi-node config as a user of this machine would: one
# machine, two processes.
ONE_MACHINE_TWO_PROCESSES = (
    "--num_machines",
    "1",
    "--num_processes",
    "2",
    "--machine_rank",
    "0",
    "--main_process_port",
    "0",
)
# examples/encode_videos.py settings of the 2-process check and its one-process comparison.
ENCODE_VIDEOS_SETTINGS = {"group": "tva", "batch_size": 2, "num_workers": 0, "shard_size": 2, "index": "flat"}


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
    """A complete training config (plain data) on the tiny corpus; `sections` update its parts (a dict updates
    the section, anything else replaces it; `task`, `scst` and `evaluation` are set as given)."""
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
        if isinstance(update, dict) and section in values:
            values[section].update(update)
        else:
            values[section] = update
    return values


def no_dropout_model_config() -> dict:
    """`tiny_model_config` without dropout (a smooth loss when the whole corpus is one batch)."""
    config = tiny_model_config()
    config["text_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config["audio_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return config


def reset_accelerate() -> None:
    """The Accelerator state is a process-wide singleton; every in-process run builds its own."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def read_metrics(output_dir: Path) -> list[dict]:
    """The rows of a run's `metrics.jsonl`, one per optimizer step."""
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def losses_by_step(output_dir: Path) -> dict[int, float]:
    """`{step: loss}` from a run's `metrics.jsonl`."""
    return {row["step"]: row["loss"] for row in read_metrics(output_dir)}


def first_and_last(losses: list[float], n: int = 3) -> tuple[float, float]:
    """Mean of the first and of the last `n` losses."""
    return sum(losses[:n]) / n, sum(losses[-n:]) / n


def torchrun_command(script: Path, *args: str, nproc: int = 2) -> list[str]:
    """A `torchrun` launch of `script` on a free port (`--standalone` rendezvous on localhost:0)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--standalone", "--nproc_per_node", str(nproc), str(script), *args]


def subprocess_env(**extra: str) -> dict:
    """The environment of a launched worker: one thread per process, tests/ importable."""
    tests = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path, **extra)


def tiny_generator(processor_dir: Path, **overrides) -> ValorForConditionalGeneration:
    """A randomly initialised tiny captioner whose vocabulary follows the tiny processor."""
    processor = ValorProcessor.from_pretrained(processor_dir)
    config = ValorConfig(**{**tiny_model_config(), **overrides})
    sync_text_config_with_tokenizer(config, processor.tokenizer)
    torch.manual_seed(0)
    return ValorForConditionalGeneration(ValorConfig(**config.to_dict())).eval()


def write_qa_set(corpus: Path, split: str, target: Path) -> Path:
    """A QA metadata file over the corpus: 'which color is the shape' -> its colour, two questions per video."""
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


def accelerate_config_env(config_file: Path, *launch_args: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file config_file *launch_args script.py` gives the script:
    Accelerate's own parsing of the config into `ACCELERATE_*` / `FSDP_*` variables (what it would add to ours)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_file), *launch_args, "script.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_")) and os.environ.get(k) != v}
