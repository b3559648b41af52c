"""Cost of the decoded cache's content fingerprint (`data.collator.file_fingerprint`) against the alternatives.

The cache key hashes one fingerprint per video. Measured in ONE run, on files written here (hot in the page
cache, so storage latency is NOT included: on a cold disk the sampled fingerprint costs two small random reads per
file, the full hash a sequential read of every byte):

- `stat` (size + mtime, the key before: misses a same-size file restored with its old mtime);
- the sampled fingerprint (size + first and last MiB, XXH3-128, what the cache uses);
- a full-file XXH3-128 hash, and a full-file SHA-256 (a cryptographic hash, for scale).

Beside each figure: the machine's own limits measured in the same run, reading the same files without hashing
(page-cache bandwidth) and XXH3 over an in-memory buffer (hash speed); `limit ms` is the time to read and
XXH3-hash that many bytes at those limits.

    python benchmarks/bench_cache_fingerprint.py [--files 48] [--mib 8]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import xxhash

from transformers_valor.data.collator import FINGERPRINT_CHUNK, file_fingerprint


def timed(fn, paths: list[Path], repeats: int = 3) -> float:
    """Best-of-`repeats` seconds for `fn` over every path."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            fn(path)
        best = min(best, time.perf_counter() - start)
    return best


def full_hash(path: Path, new=xxhash.xxh3_128) -> str:
    digest = new()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def full_sha256(path: Path) -> str:
    return full_hash(path, hashlib.sha256)


def read_all(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(len(block) for block in iter(lambda: handle.read(1 << 22), b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--mib", type=int, default=8, help="size of each file in MiB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(args.files):
            paths.append(Path(folder) / f"clip{i:04d}.mp4")
            paths[-1].write_bytes(os.urandom(args.mib << 20))
        total_mib = args.files * args.mib
        buffer = os.urandom(64 << 20)
        start = time.perf_counter()
        xxhash.xxh3_128(buffer).hexdigest()
        hash_speed = 64 / (time.perf_counter() - start)  # MiB/s
        read_s = timed(read_all, paths)
        stat_s = timed(os.stat, paths)
        sampled_s = timed(file_fingerprint, paths)
        full_s = timed(full_hash, paths)
        sha_s = timed(full_sha256, paths)

    rows = [
        ("stat (size + mtime)", stat_s, 0),
        ("sampled XXH3 (size + 2 MiB)", sampled_s, min(args.mib, 2 * FINGERPRINT_CHUNK / (1 << 20))),
        ("full XXH3", full_s, args.mib),
        ("full SHA-256", sha_s, args.mib),
    ]
    per_file = {name: seconds / args.files * 1e3 for name, seconds, _ in rows}
    read_speed = total_mib / read_s
    print(
        f"{args.files} files of {args.mib} MiB ({total_mib} MiB), hot page cache, {os.cpu_count()} CPU cores"
    )
    print(f"machine limits: page-cache read {read_speed:,.0f} MiB/s, XXH3 in memory {hash_speed:,.0f} MiB/s")
    print(
        f"{'key per file':<30}{'ms/file':>9}{'MiB read':>10}{'x stat':>9}{'x full XXH3':>13}{'limit ms':>10}"
    )
    for name, _, mib in rows:
        limit = mib / min(read_speed, hash_speed) * 1e3  # reading and hashing that many bytes at the limits
        print(
            f"{name:<30}{per_file[name]:>9.3f}{mib:>10.0f}{per_file[name] / per_file[rows[0][0]]:>9.0f}"
            f"{per_file[name] / per_file['full XXH3']:>13.3f}{limit:>10.3f}"
        )
    for corpus in (2_000, 1_000_000):
        sampled, full = (
            corpus * per_file[name] / 1e3 for name in ("sampled XXH3 (size + 2 MiB)", "full XXH3")
        )
        print(
            f"{corpus:>9,} videos of {args.mib} MiB: sampled {sampled:,.1f} s, full XXH3 {full:,.1f} s (hot cache)"
        )


if __name__ == "__main__":
    main()
