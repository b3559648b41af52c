"""Time and peak memory of the fine-grained MGA scorer: naive (one B x B x t x v tensor) vs chunked.

    python benchmarks/bench_scorer.py                      # 1,000 x 1,000 and 8,000 x 8,000
    python benchmarks/bench_scorer.py --sizes 1000 2000

32 text tokens against 8 frames + 2 clips (the T-AV group), 512-d features. Each measurement runs in a fresh
subprocess so that its peak resident memory is its own; ratios are from the same run. The naive formulation
is skipped where its score tensor alone would not fit in memory (it is reported as infeasible).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TEXT_TOKENS, VIDEO_POSITIONS, DIM = 32, 8 + 2, 512


def _measure(num: int, mode: str) -> dict:
    import torch
    import torch.nn.functional as F

    from transformers_valor.losses import DEFAULT_MAX_BLOCK_ELEMENTS, fine_grained_similarity

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(num, TEXT_TOKENS, DIM, generator=generator), dim=-1).to(device)
    media = F.normalize(torch.randn(num, VIDEO_POSITIONS, DIM, generator=generator), dim=-1).to(device)
    text_mask = torch.ones(num, TEXT_TOKENS, device=device)
    text_mask[:, 20:] = 0
    media_mask = torch.ones(num, VIDEO_POSITIONS, device=device)
    weights_t = torch.randn(num, TEXT_TOKENS, generator=generator).to(device)
    weights_v = torch.randn(num, VIDEO_POSITIONS, generator=generator).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    block = None if mode == "naive" else DEFAULT_MAX_BLOCK_ELEMENTS
    start = time.perf_counter()
    with torch.no_grad():
        scores = fine_grained_similarity(text, text_mask, weights_t, media, media_mask, weights_v, block)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    return {"seconds": seconds, "peak_mb": peak_mb, "checksum": float(scores.double().sum())}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--memory_limit_gb", type=float, default=16.0, help="skip naive runs needing more")
    parser.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._worker:
        print(json.dumps(_measure(int(args._worker[0]), args._worker[1])))
        return
    print(f"texts x videos, {TEXT_TOKENS} text tokens vs {VIDEO_POSITIONS} frames+clips, dim {DIM}")
    print(
        "| size | naive (s) | naive peak (MB) | chunked (s) | chunked peak (MB) | time ratio | memory ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for num in args.sizes:
        results = {}
        for mode in ("naive", "chunked"):
            naive_gb = num * num * TEXT_TOKENS * VIDEO_POSITIONS * 4 * 3 / 2**30  # scores + masked copy + max
            if mode == "naive" and naive_gb > args.memory_limit_gb:
                results[mode] = None
                continue
            out = subprocess.run(
                [sys.executable, __file__, "--_worker", str(num), mode],
                capture_output=True,
                text=True,
                env={**os.environ},
                check=True,
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        naive, chunked = results["naive"], results["chunked"]
        if naive is None:
            need = num * num * TEXT_TOKENS * VIDEO_POSITIONS * 4 / 2**30
            print(
                f"| {num} | infeasible (needs > {need:.0f} GB) | - | {chunked['seconds']:.2f} | "
                f"{chunked['peak_mb']:.0f} | - | - |"
            )
        else:
            assert abs(naive["checksum"] - chunked["checksum"]) < 1e-3 * max(1.0, abs(naive["checksum"]))
            print(
                f"| {num} | {naive['seconds']:.2f} | {naive['peak_mb']:.0f} | {chunked['seconds']:.2f} | "
                f"{chunked['peak_mb']:.0f} | {naive['seconds'] / chunked['seconds']:.2f} | "
                f"{naive['peak_mb'] / max(chunked['peak_mb'], 1):.1f} |"
            )


if __name__ == "__main__":
    main()
