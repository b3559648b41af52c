"""Fine-tune VALOR for video, audio or audiovisual captioning (MGC, optionally SCST) with Accelerate.

    accelerate launch examples/finetune_captioning.py --config examples/configs/finetune_captioning_msrvtt.yaml
    accelerate launch --multi_gpu --num_processes 8 examples/finetune_captioning.py --config my.yaml
    accelerate launch examples/finetune_captioning.py --config my.yaml --resume_from_checkpoint latest
    accelerate launch examples/finetune_captioning.py --config my.yaml --set training.max_steps=100 --skip_eval

The training loop is the pretraining one (`transformers_valor.training.loop`, with `task: captioning`); the test sets of the
config's `evaluation:` section are evaluated after training. See docs/tasks/.
"""

from transformers_valor.training.cli import run_finetuning

if __name__ == "__main__":
    run_finetuning("captioning")
