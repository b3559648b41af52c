"""Pretrain VALOR with Hugging Face Accelerate.

    accelerate launch examples/pretrain.py --config examples/configs/demo.yaml
    accelerate launch --multi_gpu --num_processes 8 examples/pretrain.py --config examples/configs/valor_b_pretrain.yaml
    accelerate launch examples/pretrain.py --config cfg.yaml --resume_from_checkpoint latest
    accelerate launch examples/pretrain.py --config cfg.yaml --set training.max_steps=100 data.per_device_batch_size=16

The YAML schema is documented in docs/pretraining.md; the implementation lives in `transformers_valor.training`
(the command line in `training.cli.run_pretraining`).
"""

from transformers_valor.training.cli import run_pretraining

if __name__ == "__main__":
    run_pretraining()
