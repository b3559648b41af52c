"""Evaluate a fine-tuned VALOR model on the test sets of a config's `evaluation:` section.

    python examples/evaluate_finetuned.py --config examples/configs/finetune_retrieval_msrvtt.yaml
    python examples/evaluate_finetuned.py --config my.yaml --model outputs/run/final --output_dir outputs/run/eval
    python examples/evaluate_finetuned.py --config my.yaml --task captioning --set evaluation.num_beams=1

Retrieval prints R@1/5/10, median and mean rank in both directions per group; captioning BLEU, ROUGE-L, CIDEr
(METEOR with Java); QA accuracy. See docs/tasks/.
"""

from transformers_valor.training.cli import run_evaluation

if __name__ == "__main__":
    run_evaluation()
