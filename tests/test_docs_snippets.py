"""Every Python snippet of README.md and docs/ runs: the blocks of each page are executed in order, in one namespace,
in a folder where the placeholder checkpoints ("path/to/valor", ...) are one tiny saved VALOR and the placeholder
videos are tiny media files. `<!-- snippet-setup ... -->` comments hold hidden setup code (a doctest's setup), run
where they stand. A block that cannot run offline is preceded by `<!-- snippet: skip (<reason>) ... -->`, and the
reason is checked against the block (a skip the block does not justify fails)."""

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from helpers import tiny_processor, tiny_valor_config
from media import write_video
from transformers_valor import ValorForConditionalGeneration

REPO = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))]
CHECKPOINTS = (
    "path/to/valor",
    "path/or/org/valor",
    "path/or/repo",
    "path/to/valor-checkpoint",
    "path/to/valor-qa-checkpoint",
)
VIDEOS = (
    "a.mp4",
    "b.mp4",
    "clip.mp4",
    "dog.mp4",
    "guitar.mp4",
    "rain.mp4",
    "videos/one.mp4",
    "videos/two.mp4",
)
BLOCK = re.compile(
    r"(?:<!-- snippet: skip \((?P<reason>[a-z-]+)\)[^>]*-->\n)?```python\n(?P<code>.*?)```"
    r"|<!-- snippet-setup\n(?P<setup>.*?)-->",
    re.S,
)
# Why a block may be skipped, and what in the block shows it.
SKIP_REASONS = {
    "network": re.compile(r"[\"'](?!path/)(?:[\w-]+/)[\w.-]+[\"']|push_to_hub\("),  # a Hub repo id / upload
    "original-checkpoint": re.compile(r"[\w./-]+\.pth?[\"']"),  # the original (unshipped) weights
    "signature": re.compile(r"^\s+\*\*kwargs,", re.M),  # a call signature, not a call
    # METEOR or the COCO toolkit's PTB tokenizer: a JVM (half a minute; the metric tests run them)
    "java": re.compile(r"tokenizer=\"ptb\"|compute\(predictions=\w+, references=\w+\)"),
    # torch.compile (minutes on the CPU; tests/test_compilation.py compiles every part)
    "compile": re.compile(r"\bcompile_valor\(|\btorch\.compile\("),
    # a full-size tower built from its default config (minutes of CPU time for one forward)
    "full-size": re.compile(r"\b\w+Config\(\)"),
}


def blocks(page: str) -> list[tuple[str, str | None, int]]:
    """`(code, skip reason or None, line)` of every Python block and setup comment of `page`, in order."""
    text = (REPO / page).read_text()
    found = []
    for match in BLOCK.finditer(text):
        line = text[: match.start()].count("\n") + 1
        if match["setup"] is not None:
            found.append((match["setup"], None, line))
        else:
            found.append((match["code"], match["reason"], line))
    return found


@pytest.fixture(scope="session")
def docs_workspace(tmp_path_factory):
    """A folder holding one tiny saved VALOR at every placeholder checkpoint path and the placeholder videos."""
    root = tmp_path_factory.mktemp("docs_workspace")
    torch.manual_seed(0)
    model = ValorForConditionalGeneration(tiny_valor_config())
    # [SEP] first: generated texts end after a token or two, which keeps the snippets fast.
    with torch.no_grad():
        model.cls.predictions.bias[model.config.text_config.eos_token_id] = 30.0
    processor = tiny_processor()
    model.config.set_task_prompt_ids(processor.tokenizer)
    first = root / CHECKPOINTS[0]
    model.save_pretrained(first)
    processor.save_pretrained(first)
    for name in CHECKPOINTS[1:]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(first, root / name)
    for name in VIDEOS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / name, num_frames=8, width=32, height=32)
    return root


@pytest.mark.parametrize("page", PAGES)
def test_every_skip_is_justified(page):
    for code, reason, line in blocks(page):
        if reason is not None:
            assert reason in SKIP_REASONS, f"{page}:{line}: unknown skip reason {reason!r}"
            assert SKIP_REASONS[reason].search(code), (
                f"{page}:{line}: the block does not need skipping ({reason})"
            )


@pytest.mark.parametrize("page", [p for p in PAGES if any(r is None for _, r, _ in blocks(p))])
def test_snippets_run(page, docs_workspace, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(docs_workspace, work, symlinks=True)
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__docs__"}
    for code, reason, line in blocks(page):
        if reason is None:
            exec(compile(code, f"{page}:{line}", "exec"), namespace)
