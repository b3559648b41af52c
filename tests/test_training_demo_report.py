"""The demo's report (`training/demo_report.py`): a self-contained page built from a tiny run's outputs."""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from transformers_valor import ValorModel, ValorProcessor
from transformers_valor.data.datasets import DatasetConfig
from transformers_valor.data.synthetic import load_metadata
from transformers_valor.training.demo_report import (
    loss_components,
    read_jsonl,
    top_k_retrievals,
    write_demo_report,
)
from transformers_valor.training.evaluation import decode_evaluation_set, evaluate_retrieval


class _Page(HTMLParser):
    """Collects image sources and text, and checks that every opened table cell structure closes."""

    def __init__(self):
        super().__init__()
        self.images, self.text, self.open_tags = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in ("meta", "br"):
            self.open_tags.append(tag)

    def handle_endtag(self, tag):
        assert self.open_tags and self.open_tags[-1] == tag, f"</{tag}> closes {self.open_tags[-1:]}"
        self.open_tags.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def tiny_results(pretraining_run, tiny_corpus, tmp_path_factory):
    """What demo.py's `evaluate` returns, for the tiny pretraining run (captions written by hand)."""
    _, values = pretraining_run
    model_dir = Path(values["training"]["output_dir"]) / "final"
    processor = ValorProcessor.from_pretrained(model_dir)
    test_split = DatasetConfig(
        name="tiny_test", path=str(tiny_corpus), split="test", num_frames=2, num_clips=1
    )
    eval_set = decode_evaluation_set(test_split, processor, tmp_path_factory.mktemp("report_cache"))
    rows_by_id = {row["id"]: row for row in load_metadata(tiny_corpus / "test")}
    rows = [rows_by_id[sample_id] for sample_id in eval_set.sample_ids]
    predictions = {
        group: {row["id"]: f"{group} says {row['color']}" for row in rows} for group in ("tv", "ta", "tva")
    }
    return model_dir, {"rows": rows, "predictions": predictions, "eval_set": eval_set}


def test_report_is_a_self_contained_page_of_a_tiny_run(tiny_results, tiny_corpus, tmp_path):
    model_dir, results = tiny_results
    out = tmp_path / "demo"
    (out / "encoders").mkdir(parents=True)
    stage0 = [
        {"tower": tower, "step": step, "loss": 2.0 / step} for tower in ("video", "text") for step in (1, 2)
    ]
    (out / "encoders" / "unimodal_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stage0))

    report = write_demo_report(
        out, results, tiny_corpus, model_dir, "THE TABLE", seed=3, num_clips=2, num_queries=2
    )
    page = _Page()
    page.feed(report.read_text(encoding="utf-8"))
    page.close()
    assert page.open_tags == []  # html, head and body all closed
    text = " ".join(page.text)
    assert "seed 3" in text and "THE TABLE" in text
    for row in results["rows"][:2]:
        assert row["caption"] in text
        assert all(results["predictions"][g][row["id"]] in text for g in ("tv", "ta", "tva"))
    # Every image is a file beside the page: 2 frame strips, 2 spectrograms, thumbnails, the loss curves.
    assert page.images and all((out / src).is_file() for src in page.images)
    assert sum("_frames.png" in src for src in page.images) == 2
    assert sum("_thumb.png" in src for src in page.images) == 2 * 4  # 2 queries x top-4 of the 4 test clips
    assert "report_files/loss_curves.png" in page.images
    import matplotlib.pyplot as plt

    assert plt.imread(out / "report.png").ndim == 3


def test_top_k_ranking_agrees_with_the_retrieval_metrics(tiny_results):
    model_dir, results = tiny_results
    model = ValorModel.from_pretrained(model_dir).eval()
    processor = ValorProcessor.from_pretrained(model_dir)
    texts = [row["caption"] for row in results["rows"]]
    rankings = top_k_retrievals(model, processor, results["eval_set"], texts, k=3)
    assert all(len(r) == 3 and [s for _, s in r] == sorted((s for _, s in r), reverse=True) for r in rankings)
    metrics = evaluate_retrieval(model, processor, results["eval_set"], ["tva"], queries=[[t] for t in texts])
    top1 = sum(ranking[0][0] == query for query, ranking in enumerate(rankings)) / len(texts)
    assert metrics["tva"]["t2va_R@1"] == pytest.approx(100 * top1)


def test_loss_components_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 3.0, "mga": 1.0, "mgc_tv": 2.0, "lr": 1e-3, "samples_per_second": 9.0}]
    path.write_text(json.dumps(rows[0]) + "\n" + '{"step": 2, "loss"')  # the second line was cut by a kill
    assert read_jsonl(path) == rows
    assert read_jsonl(tmp_path / "absent.jsonl") == []
    assert loss_components(rows) == {"loss": [(1, 3.0)], "mga": [(1, 1.0)], "mgc_tv": [(1, 2.0)]}
