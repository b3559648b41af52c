"""The fine-grained MGA scorer against the machine's limits: naive vs blocked time and peak memory, the blocked
scorer's GFLOP/s as a share of the GEMM peak measured in the same run, and its max abs difference to the naive
formulation.

    python benchmarks/bench_scorer.py                      # 1,000 x 1,000 and 8,000 x 8,000
    python benchmarks/bench_scorer.py --quick              # 1,000 x 1,000 only (about a minute on 2 cores)
    python benchmarks/bench_scorer.py --sizes 1000 2000

32 text tokens against 8 frames + 2 clips (the T-AV group), 512-d features: 2 * 32 * 10 * 512 FLOP per pair of
sequences. The machine's limits are measured before and after the scorer, in the same run: a 4096^3 matmul
(GFLOP/s) and the sum of a 1 GiB tensor (GB/s). The blocked scorer runs in calls of 1,000 texts against all
videos with one 4096^3 matmul (a GEMM probe) after each, so the GEMM rate the machine gave during the scorer is
known too: the share of peak is printed against the highest GEMM figure of the run and against the probes' median. Each
measurement runs in a fresh subprocess so that its peak memory is its own. The naive formulation (the original
code's full `(a, b, t, v)` tensor) is skipped where it would not fit in memory; the max abs difference is then
taken on the first 1,000 x 1,000 scores, which the blocked worker recomputes naively after its timed run.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TEXT_TOKENS, VIDEO_POSITIONS, DIM = 32, 8 + 2, 512
DIFF_CORNER = 1000  # the naive formulation checks the blocked scores on at most this many rows and columns
CHUNK_ROWS = 1000  # texts per scorer call of the blocked run; a GEMM probe runs after each call


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_seconds(fn, device, repeats=3) -> float:
    """Best wall time of `repeats` calls after one warm-up call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _limits(device, dtype) -> dict:
    """The machine's limits: GFLOP/s of a 4096^3 matmul and GB/s of summing 1 GiB."""
    import torch

    n = 4096
    left, right = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    gemm = 2 * n**3 / _best_seconds(lambda: left @ right, device) / 1e9
    big = torch.ones(2**30 // 4, device=device)  # 1 GiB of float32, pages touched
    read = 2**30 / _best_seconds(big.sum, device) / 1e9
    return {"gemm_gflops": gemm, "sum_gbps": read}


def _inputs(num, device, dtype):
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(num, TEXT_TOKENS, DIM, generator=generator), dim=-1)
    media = F.normalize(torch.randn(num, VIDEO_POSITIONS, DIM, generator=generator), dim=-1)
    text_mask = (
        torch.arange(TEXT_TOKENS) < torch.randint(4, TEXT_TOKENS + 1, (num, 1), generator=generator)
    ).long()
    media_mask = torch.ones(num, VIDEO_POSITIONS, dtype=torch.long)
    media_mask[::3, 8:] = 0  # a third of the videos without sound
    weights_t = torch.randn(num, TEXT_TOKENS, generator=generator)
    weights_v = torch.randn(num, VIDEO_POSITIONS, generator=generator)
    tensors = (text, text_mask, weights_t, media, media_mask, weights_v)
    return [x.to(device, dtype) if x.is_floating_point() else x.to(device) for x in tensors]


def _peak_mb(device, baseline_kb) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024


def _gemm_probe(probe, device) -> float:
    """GFLOP/s of one 4096^3 matmul into a preallocated output (no allocation: peak memory stays the scorer's)."""
    import torch

    left, right, out = probe
    start = time.perf_counter()
    torch.matmul(left, right, out=out)
    _sync(device)
    return 2 * left.shape[0] ** 3 / (time.perf_counter() - start) / 1e9


def _blocked_in_row_chunks(args, probe, device) -> tuple:
    """
    The blocked scorer over chunks of `CHUNK_ROWS` texts against all videos (the scorer blocks rows itself, so
    the work is the same), with a GEMM probe before the first chunk and after each: the GEMM rate the machine
    gave while the scorer ran. Returns the scores, the scorer's seconds (probes excluded) and the probes.
    """
    import torch

    from transformers_valor.losses import fine_grained_similarity

    text, text_mask, weights_t, media, media_mask, weights_v = args
    num = text.shape[0]
    scores = torch.empty(num, media.shape[0], device=device, dtype=text.dtype)
    peaks, seconds = [_gemm_probe(probe, device)], 0.0
    for first in range(0, num, CHUNK_ROWS):
        rows = slice(first, first + CHUNK_ROWS)
        start = time.perf_counter()
        scores[rows] = fine_grained_similarity(
            text[rows], text_mask[rows], weights_t[rows], media, media_mask, weights_v
        )
        _sync(device)
        seconds += time.perf_counter() - start
        peaks.append(_gemm_probe(probe, device))
    return scores, seconds, peaks


def _measure(num: int, mode: str, device, dtype) -> dict:
    """Time and peak memory of the scorer on `num` x `num` sequences (`naive`: one call; `blocked`: row chunks
    with GEMM probes between them, see `_blocked_in_row_chunks`)."""
    import torch

    from transformers_valor.losses import fine_grained_similarity, naive_fine_grained_similarity

    args = _inputs(num, device, dtype)
    scorer = naive_fine_grained_similarity if mode == "naive" else fine_grained_similarity
    probe = [torch.randn(4096, 4096, device=device, dtype=dtype) for _ in range(3)]
    with torch.no_grad():
        scorer(*(x[:64] for x in args))  # warm-up: library initialisation, thread pools
        _gemm_probe(probe, device)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if mode == "blocked":
            scores, seconds, peaks = _blocked_in_row_chunks(args, probe, device)
            result = {"seconds": seconds, "probe_gflops": peaks}
        else:
            start = time.perf_counter()
            scores = scorer(*args)
            _sync(device)
            result = {"seconds": time.perf_counter() - start}
        result["peak_mb"] = _peak_mb(device, baseline)
        if mode == "blocked":
            corner = min(num, DIFF_CORNER)
            text, text_mask, weights_t, media, media_mask, weights_v = args
            naive = naive_fine_grained_similarity(
                text[:corner], text_mask[:corner], weights_t[:corner],
                media[:corner], media_mask[:corner], weights_v[:corner],
            )  # fmt: skip
            result["max_abs_diff"] = float((scores[:corner, :corner].float() - naive.float()).abs().max())
            result["diff_corner"] = corner
    return result


def _worker(job: list[str], device_name: str, dtype_name: str, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    if job[0] == "limits":
        return _limits(device, dtype)
    return _measure(int(job[1]), job[0], device, dtype)


def _run(job: list[str], args) -> dict:
    threads = ["--threads", str(args.threads)] if args.threads else []
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--device",
            args.device,
            "--dtype",
            args.dtype,
            *threads,
            "--_worker",
            *job,
        ],
        capture_output=True,
        text=True,
        env={**os.environ},
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _print_limits(when: str, limits: dict):
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine limits {when}: GEMM 4096^3 {limits['gemm_gflops']:.1f} GFLOP/s, 1 GiB sum "
        f"{limits['sum_gbps']:.1f} GB/s (load average {load})"
    )


def _row(num: int, naive: dict | None, blocked: dict, peak_gflops: float) -> str:
    flop = 2 * num * num * TEXT_TOKENS * VIDEO_POSITIONS * DIM
    gflops = flop / blocked["seconds"] / 1e9
    if naive is None:
        need = num * num * TEXT_TOKENS * VIDEO_POSITIONS * 4 / 2**30
        naive_cells = f"infeasible (needs > {need:.0f} GB) | - | -"
    else:
        naive_cells = (
            f"{naive['seconds']:.2f} | {naive['peak_mb']:.0f} | {naive['seconds'] / blocked['seconds']:.1f}x"
        )
    corner = blocked["diff_corner"]
    probes = sorted(blocked["probe_gflops"])
    median, best = probes[len(probes) // 2], max(probes[-1], peak_gflops)
    return (
        f"| {num} | {flop:.2e} | {naive_cells} | {blocked['seconds']:.2f} | {blocked['peak_mb']:.0f} | "
        f"{gflops:.1f} | {100 * gflops / best:.0f} % | {median:.1f} ({probes[0]:.0f}-{probes[-1]:.0f}) | "
        f"{100 * gflops / median:.0f} % | {blocked['max_abs_diff']:.1e} ({corner} x {corner}) |"
    )


def main():
    """Measure the limits, every size naive and blocked, the limits again; print one table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000], help="texts = videos")
    parser.add_argument("--quick", action="store_true", help="1,000 x 1,000 only")
    parser.add_argument("--memory_limit_gb", type=float, default=16.0, help="skip naive runs needing more")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of every measurement (default: torch's); 1 keeps a loaded machine's thread-pool "
        "stalls out of the many small reductions",
    )
    parser.add_argument("--_worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args._worker:
        print(json.dumps(_worker(args._worker, args.device, args.dtype, args.threads)))
        return
    import torch

    sizes = [1000] if args.quick else args.sizes
    threads = (
        f"{args.threads or torch.get_num_threads()} threads"
        if args.device == "cpu"
        else torch.cuda.get_device_name()
    )
    print(
        f"device {args.device} ({threads}), {args.dtype}, torch {torch.__version__}; texts x videos, "
        f"{TEXT_TOKENS} text tokens vs {VIDEO_POSITIONS} frames+clips, dim {DIM}"
    )
    before = _run(["limits"], args)
    _print_limits("before", before)
    rows = []
    for num in sizes:
        naive_gb = num * num * TEXT_TOKENS * VIDEO_POSITIONS * 4 * 3 / 2**30  # scores + masked copy + max
        naive = None if naive_gb > args.memory_limit_gb else _run(["naive", str(num)], args)
        rows.append((num, naive, _run(["blocked", str(num)], args)))
    after = _run(["limits"], args)
    _print_limits("after", after)
    peak = max(before["gemm_gflops"], after["gemm_gflops"])
    print(
        f"share of peak: against the highest GEMM figure of the run ({peak:.1f} GFLOP/s before/after, or a higher "
        f"probe), and against the median of the GEMM probes run between the scorer's {CHUNK_ROWS}-text chunks"
    )
    print(
        "| size | FLOP | naive (s) | naive peak (MB) | speed-up | blocked (s) | blocked peak (MB) | "
        "blocked GFLOP/s | share of highest GEMM | GEMM probes median (range) | share of probe median | "
        "max abs diff to naive |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for num, naive, blocked in rows:
        print(_row(num, naive, blocked, peak))


if __name__ == "__main__":
    main()
