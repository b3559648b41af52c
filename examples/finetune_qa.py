"""Fine-tune VALOR for open-ended question answering with Hugging Face Accelerate (the question is the
decoder prompt, the answer is generated).

    accelerate launch examples/finetune_qa.py --config examples/configs/finetune_qa.yaml
    accelerate launch --multi_gpu --num_processes 8 examples/finetune_qa.py --config my.yaml
    accelerate launch examples/finetune_qa.py --config my.yaml --resume_from_checkpoint latest
    accelerate launch examples/finetune_qa.py --config my.yaml --set training.max_steps=100 --skip_eval

The training loop is the pretraining one (`transformers_valor.training.loop`, with `task: qa`); the test sets of the
config's `evaluation:` section are evaluated after training. See docs/tasks/.
"""

from transformers_valor.training.cli import run_finetuning

if __name__ == "__main__":
    run_finetuning("qa")
