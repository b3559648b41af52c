"""Throughput of ValorProcessor's decoding + preprocessing on 10-second 360p clips.

Writes synthetic 640x360, 30 fps H.264 clips with a 44.1 kHz stereo AAC soundtrack (moving content, so the decoder
does real work), then decodes and preprocesses each one into 8 frames of 224x224 and 2 audio clips of 64x512,
as a data loader would, with decord and with PyAV, in 1 and 2 worker processes (one torch thread each).
Reports clips/second and the peak resident memory of each worker.

    .venv/bin/python benchmarks/bench_processor.py [--clips 24] [--workers 1 2] [--backends decord pyav]

Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_clip(
    path: Path, seconds: float = 10.0, fps: int = 30, width: int = 640, height: int = 360, seed: int = 0
):
    """A moving-gradient video with a noisy two-tone stereo soundtrack."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        vstream.options = {"preset": "veryfast"}
        astream = container.add_stream("aac", rate=44100)
        astream.layout = "stereo"
        for i in range(int(seconds * fps)):
            r = (xx + 3 * i) % 256
            g = (yy + 2 * i) % 256
            b = ((xx + yy) // 2 + i + seed * 17) % 256
            frame = np.stack([r, g, b], axis=-1).astype(np.uint8)
            for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        t = np.arange(int(seconds * 44100)) / 44100
        audio = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]) * 0.3
        audio = (audio + 0.02 * rng.standard_normal(audio.shape)).astype(np.float32)
        resampler = av.AudioResampler(format=astream.codec_context.format.name, layout="stereo", rate=44100)
        for start in range(0, audio.shape[1], 4096):
            block = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio[:, start : start + 4096]), format="fltp", layout="stereo"
            )
            block.sample_rate, block.pts, block.time_base = 44100, start, Fraction(1, 44100)
            for out in resampler.resample(block):
                for packet in astream.encode(out):
                    container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)


def worker(paths: list[str], backend: str, barrier, results) -> None:
    """Process `paths` one clip at a time (a data loader's __getitem__), then report count, time and peak RSS."""
    import torch

    torch.set_num_threads(1)
    from transformers_valor import ValorFeatureExtractor, ValorVideoProcessor

    video_processor = ValorVideoProcessor(num_frames=8, video_backend=backend)
    feature_extractor = ValorFeatureExtractor(num_clips=2)
    video_processor(paths[0])  # warm-up (imports, filter banks)
    feature_extractor(paths[0])
    barrier.wait()
    start = time.perf_counter()
    for path in paths:
        pixels = video_processor(path)["pixel_values_videos"]
        audio = feature_extractor(path)["input_features"]
        assert pixels.shape == (1, 8, 3, 224, 224) and audio.shape == (1, 2, 64, 512)
    elapsed = time.perf_counter() - start
    results.put((len(paths), elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def run(paths: list[str], backend: str, num_workers: int) -> tuple[float, list[float]]:
    """Wall-clock clips/second over all workers and each worker's peak RSS in MiB."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(num_workers + 1)
    results = ctx.Queue()
    shards = [paths[i::num_workers] for i in range(num_workers)]
    procs = [ctx.Process(target=worker, args=(shard, backend, barrier, results)) for shard in shards]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    reports = [results.get() for _ in procs]
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    return sum(r[0] for r in reports) / wall, [r[2] for r in reports]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24, help="clips processed per configuration")
    parser.add_argument(
        "--distinct", type=int, default=4, help="distinct files written (re-used round-robin)"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backends", nargs="+", default=["decord", "pyav"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        files = []
        for i in range(args.distinct):
            files.append(Path(tmp) / f"clip{i}.mp4")
            write_clip(files[-1], seed=i)
        print(
            f"wrote {args.distinct} 10 s 640x360 30 fps H.264+AAC clips in {time.perf_counter() - t0:.1f} s "
            f"({os.path.getsize(files[0]) / 1e6:.1f} MB each)"
        )
        paths = [str(files[i % len(files)]) for i in range(args.clips)]
        print(f"{'backend':8s} {'workers':>7s} {'clips/s':>8s}  peak RSS per worker (MiB)")
        for backend in args.backends:
            for n in args.workers:
                rate, rss = run(paths, backend, n)
                print(f"{backend:8s} {n:7d} {rate:8.2f}  {', '.join(f'{r:.0f}' for r in rss)}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
