"""Evaluation metrics for VALOR: text-video retrieval and captioning.

Two ways to use them:

- plain functions, no `evaluate` needed: [`compute_retrieval_metrics`], [`compute_text_video_retrieval_metrics`],
  [`compute_caption_metrics`], and the reusable CIDEr-D scorer [`CiderD`] for self-critical training;
- `evaluate` modules that ship inside this package and load without the Hub:
  `load_metric("valor_captioning")`, `load_metric("valor_retrieval")`, or
  `evaluate.load(metric_path("valor_captioning"))` (the module folder inside the package).

The code lives in one module per family, re-exported here:

- `retrieval`: [`retrieval_ranks`], [`compute_retrieval_metrics`], [`compute_text_video_retrieval_metrics`];
- `captioning`: [`ptb_tokenize`], [`compute_caption_metrics`], `CAPTION_METRICS` (the COCO caption toolkit's
  scores through `pycocoevalcap`; METEOR needs `java` on `PATH`);
- `cider_d`: [`CiderD`], the CIDEr-D reward of SCST fine-tuning;
- `evaluate_modules`: [`load_metric`] for the `evaluate` modules in `valor_captioning/` and `valor_retrieval/`.

See `docs/metrics.md`.
"""

from .captioning import CAPTION_METRICS, compute_caption_metrics, ptb_tokenize
from .captioning import CaptionMetric as CaptionMetric
from .cider_d import CiderD
from .evaluate_modules import load_metric, metric_path
from .retrieval import GroundTruth as GroundTruth
from .retrieval import compute_retrieval_metrics, compute_text_video_retrieval_metrics, retrieval_ranks

__all__ = [
    "CAPTION_METRICS",
    "CiderD",
    "compute_caption_metrics",
    "compute_retrieval_metrics",
    "compute_text_video_retrieval_metrics",
    "load_metric",
    "metric_path",
    "ptb_tokenize",
    "retrieval_ranks",
]
