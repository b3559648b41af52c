"""`make demo`'s report: one self-contained HTML page (`report.html`, its images in `report_files/` beside it).

The page shows, for a sample of test clips, the strip of frames the model sees and the audio clip's fbank, the
reference caption and the captions generated from video, audio and both; for a few text queries the top-5
retrieved clips (text -> audio+video) with thumbnails and scores; the loss curves of every component of stage 0
(`unimodal_metrics.jsonl`) and stage 1 (`metrics.jsonl`); and the metric table. `report.png` is the same page
drawn as one image (the screenshot under docs/). Figures are drawn with matplotlib (the `demo` extra).
"""

from __future__ import annotations

import html
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPORT_FILE = "report.html"
IMAGE_DIR = "report_files"
SCREENSHOT_FILE = "report.png"
CAPTION_LABELS = {"tv": "video only", "ta": "audio only", "tva": "video + audio"}


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # an optional dependency: say which extra brings it
        raise ImportError(
            "The demo report draws with matplotlib: pip install 'transformers-valor[demo]'."
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class ClipMedia:
    """What the report shows of one clip: `frames` uint8 `(T, H, W, 3)` and the fbank `(mel, time)`."""

    frames: np.ndarray
    fbank: np.ndarray


def load_clip_media(processor, video: str | os.PathLike) -> ClipMedia:
    """The frames the model sees (middle of each segment, resized, not normalised) and the first fbank clip."""
    pixels = processor.video_processor(
        str(video), sampling="middle", do_rescale=False, do_normalize=False, return_tensors="pt"
    )["pixel_values_videos"][0]
    frames = pixels.permute(0, 2, 3, 1).clamp(0, 255).round().to(torch.uint8).numpy()
    fbank = processor.feature_extractor(str(video), sampling="middle")["input_features"][0, 0].numpy()
    return ClipMedia(frames=frames, fbank=fbank)


# ------------------------------------------------------------------------------------------------- figures
def _save(fig, path: Path) -> str:
    plt = _pyplot()
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path.name


def draw_frame_strip(frames: np.ndarray, path: Path) -> str:
    """The frames side by side; returns the file name."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(frames), figsize=(1.2 * len(frames), 1.3))
    for axis, frame in zip(np.atleast_1d(axes), frames):
        axis.imshow(frame)
        axis.axis("off")
    return _save(fig, path)


def draw_spectrogram(fbank: np.ndarray, path: Path) -> str:
    """The (mel x time) fbank clip, low frequencies at the bottom; returns the file name."""
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(3.2, 1.3))
    axis.imshow(fbank, origin="lower", aspect="auto", cmap="magma")
    axis.set_xlabel("frame", fontsize=7)
    axis.set_ylabel("mel bin", fontsize=7)
    axis.tick_params(labelsize=6)
    return _save(fig, path)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (an absent file has none); a line cut short is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def loss_components(rows: Sequence[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Every loss-like column of `metrics.jsonl` (`loss`, `mga`, `mgc`, each group's) as `(step, value)` series."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key in ("step", "lr", "learning_rate") or not isinstance(value, (int, float)):
                continue
            if key == "loss" or key.startswith(("mga", "mgc", "mlm", "loss")):
                series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def draw_loss_curves(stage1: Sequence[dict], stage0: Sequence[dict], path: Path) -> str:
    """Stage 0's loss per tower and stage 1's loss per component; returns the file name."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    for tower in ("video", "audio", "text"):
        points = [(row["step"], row["loss"]) for row in stage0 if row.get("tower") == tower]
        if points:
            left.plot(*zip(*points), label=tower, linewidth=1)
    left.set_title("stage 0: unimodal pretraining", fontsize=9)
    for name, points in sorted(loss_components(stage1).items()):
        right.plot(*zip(*points), label=name, linewidth=1 if name in ("loss", "mga", "mgc") else 0.6)
    right.set_title("stage 1: MGA + MGC", fontsize=9)
    for axis in (left, right):
        axis.set_xlabel("step", fontsize=8)
        axis.set_yscale("log")
        axis.tick_params(labelsize=7)
        if axis.lines:
            axis.legend(fontsize=6, ncol=2)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------- retrieval
@torch.no_grad()
def top_k_retrievals(model, processor, eval_set, texts: Sequence[str], k: int = 5, group: str = "tva"):
    """
    For every text, the `k` best clips of `eval_set` in `group`'s score (text -> audio+video by default):
    a list of `[(sample index, score), ...]` per text, best first.
    """
    from ..configuration_valor import get_modality_group
    from .evaluation import encode_media, encode_texts

    media = encode_media(model, eval_set, get_modality_group(group).modalities - {"text"})
    query, candidates = model.group_features(group, text=encode_texts(model, processor, texts), **media)
    scores = model.similarity(query, candidates).float().cpu()
    best = scores.topk(min(k, scores.shape[1]), dim=1)
    return [list(zip(i.tolist(), v.tolist())) for i, v in zip(best.indices, best.values)]


# ------------------------------------------------------------------------------------------------- the page
_STYLE = """body{font-family:sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}
th{background:#f2f2f2}.ok{color:#0a7d28}.bad{color:#b3261e}img{vertical-align:middle}
.hits td{text-align:center}.small{font-size:12px;color:#555}pre{background:#f7f7f7;padding:8px}"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _clip_section(clips: Sequence[dict[str, Any]]) -> str:
    rows = []
    for clip in clips:
        captions = "".join(
            f"<div><b>{_esc(label)}:</b> {_esc(text)}</div>" for label, text in clip["generated"].items()
        )
        rows.append(
            f"<tr><td>{_esc(clip['id'])}</td><td><img src='{IMAGE_DIR}/{clip['strip']}'></td>"
            f"<td><img src='{IMAGE_DIR}/{clip['spectrogram']}'></td>"
            f"<td><div><b>reference:</b> {_esc(clip['reference'])}</div>{captions}</td></tr>"
        )
    head = "<tr><th>clip</th><th>frames</th><th>audio (fbank)</th><th>captions</th></tr>"
    return f"<h2>Test clips</h2><table>{head}{''.join(rows)}</table>"


def _query_section(queries: Sequence[dict[str, Any]]) -> str:
    rows = []
    for query in queries:
        cells = "".join(
            f"<td class='{'ok' if hit['correct'] else 'bad'}'><img src='{IMAGE_DIR}/{hit['thumbnail']}' "
            f"width='64'><br>{_esc(hit['id'])}<br>{hit['score']:.3f}</td>"
            for hit in query["hits"]
        )
        rows.append(f"<tr><td>{_esc(query['text'])}</td>{cells}</tr>")
    head = "<tr><th>query</th>" + "".join(f"<th>#{i + 1}</th>" for i in range(5)) + "</tr>"
    return (
        "<h2>Text -> audio+video retrieval: top 5</h2>"
        "<p class='small'>green: the clip the query was written for.</p>"
        f"<table class='hits'>{head}{''.join(rows)}</table>"
    )


def render_html(title: str, table: str, clips, queries, curves: str, notes: Sequence[str] = ()) -> str:
    """The report page from its parts (image names relative to `report_files/`)."""
    notes_html = "".join(f"<p class='small'>{_esc(note)}</p>" for note in notes)
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{_esc(title)}</h1>{notes_html}"
        f"<h2>Metrics</h2><pre>{_esc(table)}</pre>{_clip_section(clips)}{_query_section(queries)}"
        f"<h2>Loss curves</h2><img src='{IMAGE_DIR}/{curves}' width='1000'></body></html>"
    )


def draw_screenshot(title: str, table: str, image_dir: Path, clips, curves: str, path: Path) -> str:
    """The page drawn as one PNG (header, metric table, the first clips with their captions, loss curves)."""
    plt = _pyplot()
    shown = clips[:3]
    fig = plt.figure(figsize=(11, 4.2 + 1.25 * len(shown) + 3.6))
    grid = fig.add_gridspec(2 + len(shown), 3, height_ratios=[3.2] + [1.25] * len(shown) + [3.6])
    header = fig.add_subplot(grid[0, :])
    header.axis("off")
    header.text(0, 1, title, fontsize=13, weight="bold", va="top")
    header.text(0, 0.82, table, family="monospace", fontsize=7.5, va="top")
    for row, clip in enumerate(shown, start=1):
        for column, name in enumerate((clip["strip"], clip["spectrogram"])):
            axis = fig.add_subplot(grid[row, column])
            axis.imshow(plt.imread(image_dir / name))
            axis.axis("off")
        text = fig.add_subplot(grid[row, 2])
        text.axis("off")
        lines = [f"reference: {clip['reference']}"] + [f"{k}: {v}" for k, v in clip["generated"].items()]
        text.text(0, 0.5, "\n".join(_wrap(line) for line in lines), fontsize=6.5, va="center")
    axis = fig.add_subplot(grid[-1, :])
    axis.imshow(plt.imread(image_dir / curves))
    axis.axis("off")
    return _save(fig, path)


def _wrap(line: str, width: int = 62) -> str:
    import textwrap

    return "\n   ".join(textwrap.wrap(line, width))


def _clip_entries(results, corpus: Path, processor, image_dir: Path, num_clips: int) -> list[dict[str, Any]]:
    """Frame strip, fbank and captions of the first `num_clips` test clips."""
    entries = []
    for row in results["rows"][:num_clips]:
        media = load_clip_media(processor, corpus / "test" / row["file_name"])
        generated = {
            CAPTION_LABELS[group]: captions.get(row["id"], "")
            for group, captions in results["predictions"].items()
        }
        entries.append(
            {
                "id": row["id"],
                "reference": row["caption"],
                "generated": generated,
                "strip": draw_frame_strip(media.frames, image_dir / f"{row['id']}_frames.png"),
                "spectrogram": draw_spectrogram(media.fbank, image_dir / f"{row['id']}_fbank.png"),
            }
        )
    return entries


def _query_entries(results, model, processor, corpus: Path, image_dir: Path, query_rows: Sequence[int]):
    """The top-5 clips of the captions of the test clips at `query_rows`, with thumbnails (middle frame)."""
    rows = results["rows"]
    texts = [rows[i]["caption"] for i in query_rows]
    rankings = top_k_retrievals(model, processor, results["eval_set"], texts)
    entries = []
    for row_index, text, ranking in zip(query_rows, texts, rankings):
        hits = []
        for index, score in ranking:
            clip = rows[index]
            thumbnail = image_dir / f"{clip['id']}_thumb.png"
            if not thumbnail.exists():
                frames = load_clip_media(processor, corpus / "test" / clip["file_name"]).frames
                _pyplot().imsave(thumbnail, frames[len(frames) // 2])
            hits.append(
                {"id": clip["id"], "score": score, "thumbnail": thumbnail.name, "correct": index == row_index}
            )
        entries.append({"text": text, "hits": hits})
    return entries


def write_demo_report(
    output_dir: str | os.PathLike,
    results: dict[str, Any],
    corpus: str | os.PathLike,
    model_dir: str | os.PathLike,
    table: str,
    seed: int = 0,
    num_clips: int = 6,
    num_queries: int = 4,
) -> Path:
    """
    Write `output_dir/report.html`, its images in `output_dir/report_files/` and `output_dir/report.png`.

    Args:
        results: what `examples/demo.py`'s `evaluate` returns: `rows` (test metadata in evaluation order),
            `predictions` (`{group: {clip id: caption}}`), `eval_set` (the decoded test split).
        corpus: the corpus root (`test/` holds the clips).
        model_dir: the trained VALOR (`ValorModel` and its processor load from it).
        table: the metric table as printed.
        seed: the demo's `--seed`, shown in the title.
        num_clips / num_queries: test clips shown / text queries (evenly spread over the test split).

    Returns:
        The path of `report.html`.
    """
    from ..modeling_valor import ValorModel
    from ..processing_valor import ValorProcessor

    out, corpus = Path(output_dir), Path(corpus)
    image_dir = out / IMAGE_DIR
    shutil.rmtree(image_dir, ignore_errors=True)
    image_dir.mkdir(parents=True)
    processor = ValorProcessor.from_pretrained(model_dir)
    model = ValorModel.from_pretrained(model_dir).eval()
    clips = _clip_entries(results, corpus, processor, image_dir, num_clips)
    count = len(results["rows"])
    query_rows = sorted({int(i * count / num_queries) for i in range(min(num_queries, count))})
    queries = _query_entries(results, model, processor, corpus, image_dir, query_rows)
    run_dir = Path(model_dir).parent
    curves = draw_loss_curves(
        read_jsonl(run_dir / "metrics.jsonl"),
        read_jsonl(out / "encoders" / "unimodal_metrics.jsonl"),
        image_dir / "loss_curves.png",
    )
    title = f"VALOR demo report (seed {seed}, {count} test clips)"
    notes = ["Stage 0: unimodal towers; stage 1: MGA + MGC from them (examples/demo.py)."]
    page = render_html(title, table, clips, queries, curves, notes)
    tmp = out / f".{REPORT_FILE}.partial"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out / REPORT_FILE)
    draw_screenshot(title, table, image_dir, clips, curves, out / SCREENSHOT_FILE)
    return out / REPORT_FILE
