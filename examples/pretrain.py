"""Pretrain VALOR with Hugging Face Accelerate.

    accelerate launch examples/pretrain.py --config examples/configs/demo.yaml
    accelerate launch --multi_gpu --num_processes 8 examples/pretrain.py --config examples/configs/valor_b_pretrain.yaml
    accelerate launch examples/pretrain.py --config cfg.yaml --resume_from_checkpoint latest
    accelerate launch examples/pretrain.py --config cfg.yaml --set training.max_steps=100 data.per_device_batch_size=16

The YAML schema is documented in docs/pretraining.md; the implementation lives in `transformers_valor.training`.
"""

from __future__ import annotations

import argparse
import logging

from accelerate import PartialState

from transformers_valor.training import load_config, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description="Pretrain VALOR (MGA + MGC) on a mix of video-text datasets."
    )
    parser.add_argument("--config", required=True, help="YAML training config (see docs/pretraining.md).")
    parser.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="A checkpoint folder, or 'latest' for the newest one in training.output_dir.",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="Override config values, e.g. training.max_steps=100 (values are parsed as YAML).",
    )
    parser.add_argument(
        "--stop_after_steps",
        type=int,
        default=None,
        help="Checkpoint and exit after this many steps (for time-boxed jobs); resume later.",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    config = load_config(args.config, args.set)
    result = train(
        config, resume_from_checkpoint=args.resume_from_checkpoint, stop_after_steps=args.stop_after_steps
    )
    if result.final_dir is not None:
        logging.getLogger("pretrain").info("Saved the trained model and processor to %s", result.final_dir)
    # Tear the process group down before exit: gloo aborts processes that exit with it still alive.
    PartialState().destroy_process_group()


if __name__ == "__main__":
    main()
