"""`evaluate` module: COCO-toolkit captioning metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) for VALOR.

Load it offline with `transformers_valor.metrics.load_metric("valor_captioning")`.
"""

import datasets
import evaluate

from transformers_valor.metrics.captioning import compute_caption_metrics

_DESCRIPTION = """\
BLEU-1..4, METEOR, ROUGE-L and CIDEr (CIDEr-D) of generated captions, computed as the COCO caption evaluation
toolkit computes them: captions are lower-cased, PTB-tokenised and stripped of punctuation, then scored with
the toolkit's scorers from the `pycocoevalcap` package. BLEU is corpus-level with the closest reference
length; ROUGE-L (beta 1.2) and CIDEr-D (n = 1..4, sigma 6, clipping, x10, document frequencies from the
references of the evaluated set) are averages over samples; METEOR 1.5 runs in Java and needs `java` on PATH.
Scores are on the toolkit's scale (fractions); VALOR's tables multiply them by 100.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list[str]`): one generated caption per sample.
    references (`list[list[str]]` or `list[str]`): the reference captions of every sample.
    metrics (`list[str]`, optional): some of "BLEU", "METEOR", "ROUGE-L", "CIDEr"; all by default. METEOR
        raises a RuntimeError when `java` is not on PATH.
    tokenizer (`str`, optional): "python" (default, pure-Python PTB rules), "ptb" (the toolkit's Java
        tokenizer) or "none" (already tokenised text).
Returns:
    dict with "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr" (those asked for).
Examples:
    >>> metric = load_metric("valor_captioning")
    >>> metric.compute(predictions=["a cat sat"], references=[["a cat sat on the mat"]], metrics=["BLEU"])
"""

_CITATION = """\
@article{chen2023valor,
  title={VALOR: Vision-Audio-Language Omni-Perception Pretraining Model and Dataset},
  author={Chen, Sihan and He, Xingjian and Guo, Longteng and Zhu, Xinxin and Wang, Weining and Tang, Jinhui
          and Liu, Jing},
  journal={arXiv preprint arXiv:2304.08345},
  year={2023}
}
@article{chen2015microsoft,
  title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh
          and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
@inproceedings{vedantam2015cider,
  title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR},
  year={2015}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ValorCaptioning(evaluate.Metric):
    """COCO caption toolkit metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) as an `evaluate.Metric`."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
            ],
            reference_urls=[
                "https://github.com/tylin/coco-caption",
                "https://pypi.org/project/pycocoevalcap/",
            ],
        )

    def _compute(self, predictions, references, metrics=None, tokenizer="python"):
        references = [[r] if isinstance(r, str) else list(r) for r in references]
        return compute_caption_metrics(predictions, references, metrics=metrics, tokenizer=tokenizer)
