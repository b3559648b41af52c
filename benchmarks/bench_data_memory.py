"""Resident memory of one training process's data, map-style tables vs streamed WebDataset shards, by corpus size.

    python benchmarks/bench_data_memory.py                       # 10k, 100k and 1M metadata rows
    python benchmarks/bench_data_memory.py --rows 10000 100000   # fewer sizes

For every size and path a fresh process imports the package, records its resident set (RSS, `psutil`), builds what
the training loop holds for that path and draws 50 batches of 8 samples from it, then records RSS again; the
difference is what the data costs that process (every DataLoader worker forked from it inherits the map-style
tables, and Python's reference counting copies the pages it touches):

- map-style: a `metadata.jsonl` of N rows (`{"file_name", "caption"}`, captions of 12-20 words, as VALOR-1M's),
  loaded by `data.datasets.load_mixture` (an Arrow table plus the plain lists `MixedVideoTextDataset` keeps), batches
  from `MixedBatchSampler`;
- streaming: the same N rows as `shards.json` over N / 1000 tar shards (`data.shards`), read by
  `data.streaming.StreamingMixture` (shuffle window 64). Media bytes are never decoded here (the collator's cost
  does not depend on the corpus), so the samples carry a 16-byte placeholder payload, and the shards of a size are
  links to one real shard of 1000 samples: the streaming path holds the index (one count per shard) and one
  window per stream, whatever the shards contain.

Printed: RSS after import, the data's RSS delta for each path, the ratio map / streaming, and the machine's total
memory beside each figure. Results: benchmarks/results/cpu_data_memory.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

SHARD_SAMPLES = 1000
BATCHES, BATCH_SIZE = 50, 8
WORDS = (
    "a man woman dog child plays guitar runs across the field while music sounds loudly near river".split()
)


def _caption(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(12 + i % 9))


def write_metadata(folder: Path, rows: int) -> None:
    """`metadata.jsonl` with `rows` rows (the video files are not needed to load the table)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.jsonl", "w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"file_name": f"v{i:07d}.mp4", "caption": _caption(i)}) + "\n")


def write_shards(folder: Path, rows: int, template: Path) -> None:
    """`shards.json` for `rows` samples in shards of 1000, each shard a link to the template shard."""
    from transformers_valor.data.shards import INDEX_FORMAT, INDEX_NAME, INDEX_VERSION

    folder.mkdir(parents=True, exist_ok=True)
    count = rows // SHARD_SAMPLES
    names = [f"bench-{k:06d}.tar" for k in range(count)]
    for name in names:
        os.symlink(template, folder / name)
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "name": "bench",
        "samples": count * SHARD_SAMPLES,
        "shards": [{"file": name, "samples": SHARD_SAMPLES} for name in names],
        "skipped": [],
    }
    (folder / INDEX_NAME).write_text(json.dumps(index))


def template_shard(root: Path) -> Path:
    """One real shard of 1000 samples with 16-byte placeholder media."""
    from transformers_valor.data.shards import pack_rows

    media = root / "placeholder.mp4"
    media.write_bytes(b"\0" * 16)
    rows = ({"sample_id": f"s{i}", "video_path": str(media), "captions": [_caption(i)]} for i in range(1000))
    index = pack_rows(rows, root / "template", "template", SHARD_SAMPLES, progress=False)
    return Path(index.paths()[0])


def child(path: str, folder: str) -> None:
    """In a fresh process: RSS after imports, build the data of `path`, draw the batches, RSS again."""
    import gc

    from transformers_valor.data.datasets import DatasetConfig, MixedBatchSampler, load_mixture
    from transformers_valor.data.shards import read_shard_index
    from transformers_valor.data.streaming import StreamingMixture

    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    if path == "map":
        dataset, summary = load_mixture([DatasetConfig(name="bench", path=folder)])
        sampler = iter(MixedBatchSampler(summary.sizes, [1.0], BATCH_SIZE, seed=0))
        batches = [[dataset[ref] for ref in next(sampler)] for _ in range(BATCHES)]
    else:
        config = DatasetConfig(name="bench", path=folder, format="webdataset")
        index = read_shard_index(folder)
        mixture = StreamingMixture([index], [config], BATCH_SIZE, index.num_samples // BATCH_SIZE)
        stream = iter(mixture)
        batches = [next(stream)["items"] for _ in range(BATCHES)]
    assert all(len(b) == BATCH_SIZE for b in batches)
    gc.collect()
    print(json.dumps({"before": before, "after": process.memory_info().rss}))


def measure(path: str, folder: Path) -> dict[str, int]:
    """Run `child` in a fresh interpreter; its RSS figures."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", path, str(folder)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Measure every size and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--child", nargs=2, metavar=("PATH", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    total = psutil.virtual_memory().total
    mib = 2**20
    print(
        f"machine: {psutil.cpu_count()} CPUs, {total / 2**30:.1f} GiB memory (the limit beside each figure)"
    )
    print(f"{'rows':>9} {'path':>9} {'RSS after import':>17} {'data RSS delta':>15} {'share of memory':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        template = template_shard(root)
        for rows in args.rows:
            write_metadata(root / f"map_{rows}", rows)
            write_shards(root / f"stream_{rows}", rows, template)
            deltas = {}
            for path in ("map", "stream"):
                figures = measure(path, root / f"{path}_{rows}")
                deltas[path] = figures["after"] - figures["before"]
                print(
                    f"{rows:>9} {path:>9} {figures['before'] / mib:>13.0f} MiB {deltas[path] / mib:>11.1f} MiB "
                    f"{deltas[path] / total:>15.3%}"
                )
            ratio = deltas["map"] / max(deltas["stream"], 1)
            print(f"{rows:>9} map-style / streaming: {ratio:.1f}x")


if __name__ == "__main__":
    main()
