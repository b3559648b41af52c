"""`evaluate` module: retrieval recall at K, median and mean rank for VALOR.

Load it offline with `transformers_valor.metrics.load_metric("valor_retrieval")`.
"""

import datasets
import evaluate
import numpy as np

from transformers_valor.metrics.retrieval import compute_retrieval_metrics

_DESCRIPTION = """\
Recall at K (percent of queries whose correct candidate is among the K best scored), median and mean rank
(1-based) of a retrieval score matrix, as VALOR reports text-to-video / video-to-text retrieval. Each
prediction is the row of scores of one query over all candidates (higher is better); each reference lists
the indices of that query's correct candidates. Ties count against the query: a wrong candidate scored equal
to the best correct one ranks above it.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list[list[float]]`): one row of candidate scores per query, all rows of equal length.
    references (`list[list[int]]`): the indices of the correct candidates of every query.
    ks (`list[int]`, optional): the cut-offs K; (1, 5, 10) by default.
Returns:
    dict with "R@1", "R@5", "R@10" (percent), "median_rank" and "mean_rank".
Examples:
    >>> metric = load_metric("valor_retrieval")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[[0], [1]])
"""

_CITATION = """\
@article{chen2023valor,
  title={VALOR: Vision-Audio-Language Omni-Perception Pretraining Model and Dataset},
  author={Chen, Sihan and He, Xingjian and Guo, Longteng and Zhu, Xinxin and Wang, Weining and Tang, Jinhui
          and Liu, Jing},
  journal={arXiv preprint arXiv:2304.08345},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ValorRetrieval(evaluate.Metric):
    """Retrieval R@K, median rank and mean rank as an `evaluate.Metric` (one score row per query)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, ks=(1, 5, 10)):
        lengths = {len(row) for row in predictions}
        if len(lengths) > 1:
            raise ValueError(
                f"All score rows must have the same number of candidates, got lengths {sorted(lengths)}."
            )
        scores = np.asarray(predictions, dtype=np.float64)
        return compute_retrieval_metrics(scores, ground_truth=[list(r) for r in references], ks=ks)
