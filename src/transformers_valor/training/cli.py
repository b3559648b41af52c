"""The command lines of the example scripts: `examples/pretrain.py`, `examples/finetune_*.py` and
`examples/evaluate_finetuned.py` are thin wrappers around the entry points here; under a multi-process launch,
evaluation splits every test set between the processes (`evaluation`, `corpus_split`).

- [`run_pretraining`]: read a YAML run config (docs/pretraining.md) with `--set` overrides and train with
  `loop.train` (resume, `--stop_after_steps`).
- [`run_finetuning`]: the same for a downstream task (its `task` forced; docs/tasks/), then, when the config lists
  `evaluation.datasets`, evaluate the final model on every process, each on its share ([`evaluate_saved_model`]).
- [`run_evaluation`]: evaluate a saved model on a config's `evaluation.datasets`.

Results go to `<output_dir>/eval_results.json` and, for captioning and QA, the generated texts to
`<output_dir>/predictions.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from ..modelcard import add_eval_results
from ..processing_valor import ValorProcessor
from .config import RunConfig, load_config
from .corpus_split import ProcessShare
from .evaluation import evaluate_task
from .loop import TrainResult, train
from .model_factory import TASK_MODEL_CLASSES

logger = logging.getLogger(__name__)

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _parser(description: str, training: bool) -> argparse.ArgumentParser:
    """`--config` and `--set`, plus `--resume_from_checkpoint`, `--stop_after_steps` and `--overwrite_output_dir`
    for training scripts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--config", required=True, help="YAML config (see docs/pretraining.md and docs/tasks/)."
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="Override config values, e.g. training.max_steps=100 (values are parsed as YAML).",
    )
    if training:
        parser.add_argument(
            "--resume_from_checkpoint",
            default=None,
            help="A checkpoint folder, or 'latest' for the newest one in training.output_dir.",
        )
        parser.add_argument(
            "--stop_after_steps",
            type=int,
            default=None,
            help="Checkpoint and exit after this many steps (for time-boxed jobs); resume later.",
        )
        parser.add_argument(
            "--overwrite_output_dir",
            action="store_true",
            help="Start afresh in an output_dir that holds an earlier run, deleting its checkpoints, final model "
            "and metrics.jsonl (same as training.overwrite_output_dir: true).",
        )
    return parser


def _train_from_args(
    args: argparse.Namespace, overrides: list[str], release_processes: bool = True
) -> tuple[RunConfig, TrainResult]:
    logging.basicConfig(format=_LOG_FORMAT, level=logging.INFO)
    config = load_config(args.config, overrides)
    if args.overwrite_output_dir:
        config.training.overwrite_output_dir = True
    result = train(
        config,
        resume_from_checkpoint=args.resume_from_checkpoint,
        stop_after_steps=args.stop_after_steps,
        release_processes=release_processes,
    )
    if result.final_dir is not None:
        logger.info("Saved the trained model and processor to %s", result.final_dir)
    return config, result


def _release_processes() -> PartialState:
    """Tear the process group down before exit: gloo aborts processes that exit with it still alive."""
    state = PartialState()
    state.destroy_process_group()
    return state


def evaluate_saved_model(
    config: RunConfig,
    model_path: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    share: ProcessShare | None = None,
) -> dict[str, Any]:
    """
    Evaluate the saved model at `model_path` on `config.evaluation.datasets` for `config.task`; write
    `eval_results.json` (and `predictions.json` for captioning/QA) into `output_dir` (default
    `config.training.output_dir`) and return the metrics. With `share` (every process of a launch calls it), each
    process evaluates its block of every set on its own device and rank 0 writes the files.
    """
    if config.task == "pretrain":
        raise ValueError("Evaluation needs a downstream task: retrieval, captioning or qa.")
    if not config.evaluation.datasets:
        raise ValueError("The config lists no `evaluation.datasets`.")
    output_dir = Path(output_dir or config.training.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_path = Path(model_path)
    processor_source = (
        model_path if (model_path / "processor_config.json").is_file() else config.model.processor
    )
    processor = ValorProcessor.from_pretrained(processor_source)
    model = TASK_MODEL_CLASSES[config.task].from_pretrained(model_path)
    split = share is not None and share.world_size > 1
    device = PartialState().device if split else ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    cache_dir = config.evaluation.cache_dir or output_dir / "eval_cache"
    metrics, predictions = evaluate_task(config.task, model, processor, config.evaluation, cache_dir, share)
    if share is None or share.rank == 0:
        (output_dir / "eval_results.json").write_text(json.dumps(metrics, indent=2))
        if (model_path / "README.md").is_file():  # the card of a folder this project saved states the results
            add_eval_results(model, model_path, config.task, metrics)
        if predictions:
            (output_dir / "predictions.json").write_text(json.dumps(predictions, indent=2))
        logger.info("Evaluation of %s: %s", model_path, json.dumps(metrics))
    return metrics


def run_pretraining(argv: list[str] | None = None) -> None:
    """Entry point of `examples/pretrain.py`: train as the config says (its `task`, `pretrain` by default)."""
    parser = _parser("Pretrain VALOR (MGA + MGC) on a mix of video-text datasets.", training=True)
    args = parser.parse_args(argv)
    _train_from_args(args, args.set)
    _release_processes()


def run_finetuning(task: str, argv: list[str] | None = None) -> None:
    """Entry point of `examples/finetune_<task>.py`: fine-tune (with resume), then evaluate on the test sets."""
    parser = _parser(f"Fine-tune VALOR for {task} with Accelerate.", training=True)
    parser.add_argument("--skip_eval", action="store_true", help="Do not evaluate after training.")
    args = parser.parse_args(argv)
    config, result = _train_from_args(args, [*args.set, f"task={task}"], release_processes=False)
    # Every process evaluates its share of the test sets, then the process group is released.
    if result.final_dir is not None and config.evaluation.datasets and not args.skip_eval:
        evaluate_saved_model(config, result.final_dir, share=ProcessShare.current())
    _release_processes()


def run_evaluation(argv: list[str] | None = None) -> None:
    """Entry point of `examples/evaluate_finetuned.py`: evaluate a saved model on the config's `evaluation.datasets`."""
    parser = _parser("Evaluate a fine-tuned VALOR model (retrieval, captioning or QA).", training=False)
    parser.add_argument(
        "--task", choices=["retrieval", "captioning", "qa"], default=None, help="Override `task`."
    )
    parser.add_argument("--model", default=None, help="Saved model folder (default: <output_dir>/final).")
    parser.add_argument("--output_dir", default=None, help="Where results go (default: training.output_dir).")
    args = parser.parse_args(argv)
    logging.basicConfig(format=_LOG_FORMAT, level=logging.INFO)
    overrides = [*args.set] + ([f"task={args.task}"] if args.task else [])
    config = load_config(args.config, overrides)
    model = args.model or os.path.join(config.training.output_dir, "final")
    state = PartialState()  # under `accelerate launch`, the process group every process evaluates with
    metrics = evaluate_saved_model(config, model, args.output_dir, share=ProcessShare.current())
    if state.is_main_process:
        print(json.dumps(metrics, indent=2))
    _release_processes()
