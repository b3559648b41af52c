"""Tests of transformers_valor.metrics.evaluate_modules: the package's `evaluate` modules load from their
files and compute offline, with the Hub and `evaluate` in offline mode, fresh caches and no network."""

import math
import socket
import sys

import pytest

from test_metrics_retrieval import SCORES
from transformers_valor.metrics import load_metric, metric_path


def _no_network(*args, **kwargs):
    raise AssertionError(f"network access while loading an evaluate module offline: {args!r}")


@pytest.fixture
def offline_evaluate(tmp_path, monkeypatch):
    """`evaluate` as a fresh process with `HF_HUB_OFFLINE=1`, `HF_EVALUATE_OFFLINE=1` and `HF_HOME` in
    `tmp_path` would see it, in this process: both offline flags on, module and metric caches in `tmp_path`,
    and any socket connection an error. Undone afterwards, including the dynamic modules imported meanwhile.

    This replaces a subprocess that spent nearly all of its ~9 s re-importing torch, transformers and
    transformers_valor; the offline flags are read by `evaluate` and `huggingface_hub` at call time.
    """
    import evaluate
    import huggingface_hub.constants

    dynamic = evaluate.config.MODULE_NAME_FOR_DYNAMIC_MODULES
    # Modules cached by earlier loads in this process must not be found instead of the fresh copies.
    for name in [m for m in sys.modules if m == dynamic or m.startswith(f"{dynamic}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(evaluate.config.HF_MODULES_CACHE)])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "modules")
    monkeypatch.setattr(evaluate.config, "HF_METRICS_CACHE", tmp_path / "metrics")
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    yield
    for name in [m for m in sys.modules if m == dynamic or m.startswith(f"{dynamic}.")]:
        del sys.modules[name]


def test_load_metric_offline(offline_evaluate, tmp_path):
    captioning = load_metric("valor_captioning")
    retrieval = load_metric("valor_retrieval")
    assert (tmp_path / "modules" / "evaluate_modules").is_dir()  # loaded from the fresh modules cache
    captioning.add_batch(predictions=["the cat sat on the mat"], references=[["the cat is on the mat"]])
    captioning.add_batch(predictions=["a cat sat"], references=[["a cat sat on the mat"]])
    out = captioning.compute(metrics=["BLEU", "ROUGE-L", "CIDEr"])
    single_reference = captioning.compute(
        predictions=["a cat sat"], references=["a cat sat on the mat"], metrics=["BLEU"]
    )
    retrieval_out = retrieval.compute(predictions=SCORES.tolist(), references=[[0], [1], [2], [3]], ks=[1, 5])
    assert captioning.name == "valor_captioning"
    assert out["BLEU-1"] == pytest.approx(math.exp(-1 / 3) * 8 / 9, abs=1e-6)
    assert out["ROUGE-L"] == pytest.approx((5 / 6 + 1.22 / 1.94) / 2, abs=1e-9)
    assert single_reference["BLEU-1"] == pytest.approx(math.exp(-1), abs=1e-6)
    assert retrieval_out == {"R@1": 25.0, "R@5": 100.0, "median_rank": 2.5, "mean_rank": 2.5}


def test_load_metric_unknown_name():
    with pytest.raises(ValueError, match="Unknown metric"):
        load_metric("bleu")


def test_evaluate_load_takes_the_module_folder(offline_evaluate):
    import evaluate

    captioning = evaluate.load(metric_path("valor_captioning"))
    out = captioning.compute(predictions=["a cat sat"], references=["a cat sat on the mat"], metrics=["BLEU"])
    assert captioning.name == "valor_captioning" and out["BLEU-1"] == pytest.approx(math.exp(-1), abs=1e-6)
    assert evaluate.load(metric_path("valor_retrieval")).name == "valor_retrieval"
    with pytest.raises(ValueError, match="Unknown metric"):
        metric_path("bleu")
