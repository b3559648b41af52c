"""Fine-tune VALOR for text-to-video, text-to-audio or text-to-audiovisual retrieval (MGA) with Accelerate.

    accelerate launch examples/finetune_retrieval.py --config examples/configs/finetune_retrieval_msrvtt.yaml
    accelerate launch --multi_gpu --num_processes 8 examples/finetune_retrieval.py --config my.yaml
    accelerate launch examples/finetune_retrieval.py --config my.yaml --resume_from_checkpoint latest
    accelerate launch examples/finetune_retrieval.py --config my.yaml --set training.max_steps=100 --skip_eval

The training loop is the pretraining one (`transformers_valor.training.loop`, with `task: retrieval`); the test sets of the
config's `evaluation:` section are evaluated after training. See docs/tasks/.
"""

from transformers_valor.training.cli import run_finetuning

if __name__ == "__main__":
    run_finetuning("retrieval")
