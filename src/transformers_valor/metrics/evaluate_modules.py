"""Offline loading of the `evaluate` modules that ship inside this package (`valor_captioning/`,
`valor_retrieval/`): they load from their local files, without the Hugging Face Hub. See `docs/metrics.md`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import evaluate

__all__ = ["load_metric", "metric_path"]

_METRICS_DIR = Path(__file__).resolve().parent
_MODULES = ("valor_captioning", "valor_retrieval")


def metric_path(name: Literal["valor_captioning", "valor_retrieval"]) -> str:
    """The folder of one of this package's `evaluate` modules, to pass to `evaluate.load` as any local module:
    `evaluate.load(metric_path("valor_captioning"))` (a bare name, `evaluate.load("valor_captioning")`, is looked
    up on the Hugging Face Hub, where these modules are not published)."""
    if name not in _MODULES:
        raise ValueError(f"Unknown metric {name!r}: expected one of {', '.join(_MODULES)}.")
    return str(_METRICS_DIR / name)


def load_metric(
    name: Literal["valor_captioning", "valor_retrieval"], **kwargs: Any
) -> evaluate.EvaluationModule:
    """Load one of this package's `evaluate` modules from its file inside the package.

    The module is loaded from a local path, so nothing is fetched from the Hugging Face Hub: it works with
    `HF_HUB_OFFLINE=1` and `HF_EVALUATE_OFFLINE=1`.

    Args:
        name: `"valor_captioning"` (BLEU-1..4, METEOR, ROUGE-L, CIDEr) or `"valor_retrieval"` (R@K, ranks).
        **kwargs: passed to `evaluate.load` (for example `experiment_id` or `keep_in_memory`).

    Returns:
        The loaded `evaluate.EvaluationModule`.

    Example:

    ```python
    >>> from transformers_valor.metrics import load_metric
    >>> bleu_etc = load_metric("valor_captioning")
    >>> bleu_etc.compute(predictions=["a dog runs"], references=[["a dog is running"]], metrics=["BLEU"])
    ```
    """
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)
