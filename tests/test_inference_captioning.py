"""Captioning media into JSONL (`inference.captioning`): the step, sharded resumable output, the merge in input
order with the failures, and the settings a resumed run must keep."""

import json

import pytest

from training_helpers import tiny_generator
from transformers_valor import ValorProcessor
from transformers_valor.inference import MediaDataset, list_media, read_shards
from transformers_valor.inference.captioning import (
    CAPTIONS_FILE,
    FAILURES_FILE,
    SHARD_DIR,
    caption_media,
    check_settings,
    merge_outputs,
    read_captions,
)

GENERATE = {"num_beams": 1, "max_new_tokens": 3}


@pytest.fixture(scope="module")
def captioner(tiny_processor_dir):
    return tiny_generator(tiny_processor_dir), ValorProcessor.from_pretrained(tiny_processor_dir)


@pytest.fixture
def clips(tiny_corpus, tmp_path):
    """The 4 test clips and a damaged file, in that order."""
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    return list_media([*sorted((tiny_corpus / "test").glob("*.mp4")), tmp_path / "broken.mp4"])


def _caption(captioner, items, output, **kwargs):
    model, processor = captioner
    dataset = MediaDataset(items, processor, "both")
    options = {"batch_size": 2, "shard_size": 1, "progress": False, "generate_kwargs": GENERATE, **kwargs}
    return caption_media(model, processor, dataset, output, "tva", **options)


def test_captions_are_the_models_and_failures_are_listed_by_path(captioner, clips, tmp_path):
    output = tmp_path / "out"
    summary = _caption(captioner, clips, output)
    assert summary.processed == 5 and [f["path"] for f in summary.failures] == [clips[4].path]
    assert merge_outputs(output, clips) == (4, 1)
    rows = [json.loads(line) for line in (output / CAPTIONS_FILE).read_text().splitlines()]
    assert [r["id"] for r in rows] == [c.id for c in clips[:4]] and rows[0]["path"] == clips[0].path
    model, processor = captioner
    inputs = MediaDataset(clips[1:2], processor, "both")[0]["inputs"]
    ids = model.generate(**{k: v[None] for k, v in inputs.items()}, modalities="both", **GENERATE)
    assert rows[1]["caption"] == processor.batch_decode(ids, skip_special_tokens=True)[0]
    failure = json.loads((output / FAILURES_FILE).read_text())
    assert failure["path"] == clips[4].path and "Error" in failure["error"]


def test_an_interrupted_run_resumes_with_the_unwritten_items_only(captioner, clips, tmp_path):
    output = tmp_path / "out"
    _caption(captioner, clips[:4], output)
    expected = (merge_outputs(output, clips[:4]), read_captions(output))
    # An interruption before the last shard's sidecar: that shard (a whole batch of 2) is not finished, its items
    # are captioned again.
    shards = read_shards(output / SHARD_DIR, "captions")
    assert [len(s.ids) for s in shards] == [2, 2]
    (output / SHARD_DIR / f"{shards[-1].name}.json").unlink()
    summary = _caption(captioner, clips[:4], output)
    assert (summary.skipped, summary.processed) == (2, 2)
    assert (merge_outputs(output, clips[:4]), read_captions(output)) == expected
    with pytest.raises(ValueError, match="resume=True"):
        _caption(captioner, clips[:4], output, resume=False)


def test_another_processes_share_is_merged_in_input_order(captioner, clips, tmp_path):
    output = tmp_path / "out"
    _caption(captioner, clips[1::2], output, rank=1)
    _caption(captioner, clips[0::2], output, rank=0)
    assert merge_outputs(output, clips) == (4, 1)
    assert list(read_captions(output)) == [c.id for c in clips[:4]]


def test_resuming_with_other_settings_is_refused(tmp_path):
    settings = {"model": "m", "group": "tva", "generate": {"num_beams": 3}}
    check_settings(tmp_path, settings)
    check_settings(tmp_path, dict(settings))
    with pytest.raises(ValueError, match=r"group: 'tva' -> 'tv'"):
        check_settings(tmp_path, {**settings, "group": "tv"})
