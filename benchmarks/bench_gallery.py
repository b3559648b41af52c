"""Gallery search at scale: two-stage (faiss first stage + exact fine-grained re-rank) vs exhaustive fine scoring.

    python benchmarks/bench_gallery.py --model outputs/gallery_bench/run/final

From one run it prints:

1. the encoding of a 100k-item gallery: synthetic clips (`data.synthetic`, rendered exactly as the corpus
   generator renders them but straight to arrays, no mp4 round trip; seed 1, which the model was not trained on),
   decoded by `ValorProcessor` in DataLoader workers and encoded by the trained model (`retrieval.encode_gallery`;
   resumable, and reused by a later run);
2. the exhaustive fine-grained top-10 of 100 queries (captions of other held-out clips, seed 2) per group;
3. which first-stage vectors keep that top-10, with exact search, per group and number of candidates `k`: the
   library's `mean` and `positions` vectors (`retrieval.index`) and the model's pooled vectors;
4. recall@10 of the two-stage search (`retrieval.two_stage_search`) against the exhaustive top-10, single-query
   latency and build time per faiss index type (flat, IVF, HNSW);
5. for the index kept, recall@10 and latency (p50 / p95) per `k` against the exhaustive latency at 100k;
6. a 1M-item gallery derived from the 100k (nine perturbed copies, see `derive_features`): build time (writing
   the float16 shards, then the indexes), disk size, and, in a fresh process that loads it, resident memory,
   latency two-stage vs exhaustive per `k`, and recall@10 on the queries scored exhaustively.

Every figure is printed with the machine's own limit beside it: the fp32 matmul throughput measured in the same
run, the memory, the thread count. Latencies are of the search (`two_stage_search` / `exhaustive_search` on
encoded queries); the text encoding of a query is printed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from transformers_valor import ValorModel, ValorProcessor
from transformers_valor.configuration_valor import RETRIEVAL_GROUPS, get_modality_group
from transformers_valor.data.synthetic import plan_metadata, render_audio, render_frames
from transformers_valor.inference import MediaDataset, MediaItem, ShardedWriter
from transformers_valor.modeling_valor import ValorFeatures
from transformers_valor.retrieval import (
    GalleryIndex,
    VideoGallery,
    encode_gallery,
    exhaustive_search,
    query_vectors,
    require_faiss,
    two_stage_search,
)
from transformers_valor.retrieval.index import DEFAULT_VECTORS, FIRST_STAGE_VECTORS

GALLERY_SEED, QUERY_SEED = 1, 2


class SyntheticClips(MediaDataset):
    """Synthetic clips rendered to arrays in the DataLoader workers (frames and waveform, no video file)."""

    def __init__(self, count: int, processor, motion_trail: int = 3, seed: int = GALLERY_SEED):
        self.rows = {row["id"]: (i, row) for i, row in enumerate(plan_metadata("test", count, seed))}
        items = [MediaItem(id=f"s{seed}_{row_id}", path=f"synthetic:{row_id}") for row_id in self.rows]
        super().__init__(items, processor, "both")
        self.seed, self.motion_trail = seed, motion_trail

    def media(self, item: MediaItem) -> dict:
        index, row = self.rows[item.path.partition(":")[2]]
        rng = np.random.default_rng([self.seed, 1, 1, index])  # the corpus generator's per-clip stream
        frames = render_frames(row["color"], row["shape"], row["direction"], rng, 64, 16, self.motion_trail)
        audio = render_audio(row["sound"], row["loudness"], rng, 16000, 2.0)
        return {"videos": [frames], "audio": [audio]}


def matmul_gflops(threads: int) -> float:
    """The machine's fp32 matmul throughput now (2048^3, best of 3): the ceiling of any exact scorer."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best / 1e9


def rss_mb() -> tuple[float, float]:
    """This process's resident and peak resident memory (MB)."""
    status = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def load_note() -> str:
    """The 1-minute load average now (other engineers share the 2 cores), for beside the timings."""
    return f"load average {os.getloadavg()[0]:.1f}"


def folder_mb(path: Path) -> float:
    """Bytes of every file below `path`, in MB."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def percentiles(seconds: list[float]) -> str:
    """`p50 / p95` in milliseconds."""
    return f"{np.percentile(seconds, 50) * 1e3:.1f} / {np.percentile(seconds, 95) * 1e3:.1f} ms"


def encode_queries(model, processor, captions: list[str]) -> ValorFeatures:
    """Text features of the query captions (one batch)."""
    tokens = processor(text=captions, return_tensors="pt")
    with torch.no_grad():
        return model.get_text_features(tokens["input_ids"], tokens["attention_mask"])


def one_query(text: ValorFeatures, i: int) -> ValorFeatures:
    """Query `i` alone."""
    return ValorFeatures(**{k: v[i : i + 1] for k, v in text.items() if k != "last_hidden_state"})


def build_gallery(model, processor, args) -> VideoGallery:
    """Phase 1: encode (or resume encoding) the 100k-item gallery and print the throughput."""
    path = Path(args.work_dir) / f"gallery_{args.num_items}"
    before = len(ShardedWriter(path / "shards").done_ids()) if (path / "shards").is_dir() else 0  # resumed
    start = time.perf_counter()
    gallery = encode_gallery(
        model,
        processor,
        SyntheticClips(args.num_items, processor),
        path=path,
        batch_size=64,
        num_workers=args.num_workers,
        shard_size=8192,
    )
    seconds = time.perf_counter() - start
    encoded = len(gallery) - before
    rate = f"{encoded / seconds:.1f} items/s" if encoded else "reused"
    print(
        f"gallery: {len(gallery)} items ({encoded} encoded now in {seconds:.0f} s, {rate}; "
        f"{args.num_workers} decoding workers + the encoder on {args.threads} threads), {folder_mb(path):.0f} MB"
    )
    return gallery


def exhaustive_top10(model, gallery, text, groups) -> dict[str, torch.Tensor]:
    """Phase 2: the exhaustive fine-grained top-10 of every query and group, `(queries, 10)` rows."""
    truth = {}
    for group in groups:
        start = time.perf_counter()
        hits = exhaustive_search(model, gallery, text, group, top_k=10)
        truth[group] = torch.stack([h.rows for h in hits])
        print(f"  exhaustive top-10, {group}: {len(hits)} queries in {time.perf_counter() - start:.1f} s")
    return truth


def pooled_vectors(gallery, text, group, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's pooled vectors ([CLS] text; mean frame / clip; for tva the normalised sum of both)."""
    spec = get_modality_group(group, "retrieval")
    pooled = sum(gallery.features(m, rows).pooler_output for m in spec.candidates)
    return text.pooler_output, torch.nn.functional.normalize(pooled, dim=-1)


def containment(candidates: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean fraction of each query's exhaustive top-10 that is among its candidates (the re-ranked recall@10)."""
    return float(
        np.mean([len(set(c.tolist()) & set(t.tolist())) / t.numel() for c, t in zip(candidates, truth)])
    )


def compare_first_stages(gallery, text, truth, ks: list[int]) -> None:
    """Phase 3: recall@10 after the re-rank per first-stage representation, with exact (flat) search: the
    library's `mean` and `positions` vectors, and the model's pooled vectors."""
    faiss = require_faiss()
    print("first-stage vectors (exact search): recall@10 of the exhaustive top-10 after the re-rank, per k")
    print("  group  vectors      " + "  ".join(f"k={k:<6}" for k in ks))
    for group, top10 in truth.items():
        for vectors in FIRST_STAGE_VECTORS:
            found = GalleryIndex.build(gallery, group, "flat", vectors=vectors).search(
                query_vectors(text), max(ks)
            )
            row = [containment(found[:, :k], top10) for k in ks]
            print(f"  {group:<6} {vectors:<12} " + "  ".join(f"{r:<8.3f}" for r in row))
        queries, items = pooled_vectors(gallery, text, group, slice(0, len(gallery)))
        index = faiss.IndexFlatIP(items.shape[1])
        index.add(np.ascontiguousarray(items.numpy()))
        found = torch.from_numpy(index.search(np.ascontiguousarray(queries.numpy()), max(ks))[1])
        print(
            f"  {group:<6} {'model pooled':<12} "
            + "  ".join(f"{containment(found[:, :k], top10):<8.3f}" for k in ks)
        )


def time_two_stage(model, gallery, text, group: str, k: int, count: int) -> list[float]:
    """Single-query two-stage search times (top-10, `k` candidates) of the first `count` queries."""
    seconds = []
    for i in range(min(count, text.embeds.shape[0])):
        start = time.perf_counter()
        two_stage_search(model, gallery, one_query(text, i), group, 10, k)
        seconds.append(time.perf_counter() - start)
    return seconds


def two_stage_recall(model, gallery, text, group: str, k: int, truth: torch.Tensor) -> float:
    """recall@10 of the two-stage top-10 against the exhaustive top-10 (the queries of `truth`)."""
    count = truth.shape[0]
    hits = two_stage_search(
        model, gallery, ValorFeatures(**{n: v[:count] for n, v in text.items()}), group, 10, k
    )
    return containment([h.rows for h in hits], truth)


def compare_indexes(model, gallery, text, truth, args) -> None:
    """Phase 4: two-stage recall@10, latency and build time per faiss index type, at `args.num_candidates`."""
    configs = {"flat": {}, "ivf": {"nprobe": args.nprobe}, "hnsw": {"hnsw_m": 32}}
    configs = {name: configs[name] for name in args.compare_index_types}
    k = args.num_candidates
    print(f"index types at {len(gallery)} items, k={k}, vectors {DEFAULT_VECTORS} ({load_note()}):")
    for index_type, params in configs.items():
        for group in truth:
            start = time.perf_counter()
            with building(args):
                gallery.build_index(group, index_type=index_type, **params)
            built = time.perf_counter() - start
            recall = two_stage_recall(model, gallery, text, group, k, truth[group])
            seconds = time_two_stage(model, gallery, text, group, k, args.latency_queries)
            print(
                f"  {index_type:<5} {group:<4} recall@10 {recall:.3f}  latency p50/p95 {percentiles(seconds)}  "
                f"(built in {built:.1f} s)"
            )


def set_threads(threads: int, faiss_threads: int) -> None:
    """torch's and faiss's thread counts. faiss ships its own OpenMP runtime: when both pools have several
    threads, each one's idle threads spin while the other works, which slows a single query several-fold on
    2 cores (measured: `--faiss_threads`)."""
    torch.set_num_threads(threads)
    require_faiss().omp_set_num_threads(faiss_threads)


@contextmanager
def building(args):
    """Index builds (k-means, adding) use every thread; searches `--faiss_threads`."""
    require_faiss().omp_set_num_threads(args.threads)
    try:
        yield
    finally:
        require_faiss().omp_set_num_threads(args.faiss_threads)


def latencies(model, gallery, text, args, ks: list[int], exhaustive_count: int) -> dict[str, list[float]]:
    """Single-query search times per thread count, group and k (and exhaustive), keyed `<threads>/<group>/<k>`."""
    out = {}
    for threads in args.latency_threads:
        set_threads(threads, min(threads, args.faiss_threads))
        for group in RETRIEVAL_GROUPS:
            out[f"{threads}/{group}/exhaustive"] = exhaustive_latency(
                model, gallery, text, [group], exhaustive_count
            )[group]
            for k in ks:
                out[f"{threads}/{group}/{k}"] = time_two_stage(
                    model, gallery, text, group, k, args.latency_queries
                )
    set_threads(args.threads, args.faiss_threads)
    return out


def recalls(model, gallery, text, truth: dict, ks: list[int]) -> dict[str, float]:
    """recall@10 of the two-stage search per group and k, keyed `<group>/<k>`."""
    return {
        f"{group}/{k}": two_stage_recall(model, gallery, text, group, k, truth[group])
        for group in RETRIEVAL_GROUPS
        for k in ks
    }


def print_sweep(times: dict, recall: dict, args, ks: list[int], note: str) -> None:
    """One line per group, k and thread count: recall, two-stage vs exhaustive latency."""
    for group in RETRIEVAL_GROUPS:
        for k in ks:
            cells = []
            for threads in args.latency_threads:
                staged, exact = times[f"{threads}/{group}/{k}"], times[f"{threads}/{group}/exhaustive"]
                cells.append(
                    f"{threads} thr: {percentiles(staged)} vs exhaustive {percentiles(exact)} "
                    f"({np.median(exact) / np.median(staged):.0f}x)"
                )
            print(f"  {group:<4} k={k:<6} recall@10 {recall[f'{group}/{k}']:.3f}{note}  " + "; ".join(cells))


def exhaustive_latency(model, gallery, text, groups, count: int) -> dict[str, list[float]]:
    """Single-query exhaustive search times (top-10) of the first `count` queries, per group."""
    out = {}
    for group in groups:
        out[group] = []
        for i in range(min(count, text.embeds.shape[0])):
            start = time.perf_counter()
            exhaustive_search(model, gallery, one_query(text, i), group, top_k=10)
            out[group].append(time.perf_counter() - start)
    return out


@torch.no_grad()
def derive_features(model, features: ValorFeatures, modality: str, copy: int, start: int, sigma: float):
    """A perturbed copy of real items: every position embedding moved by Gaussian noise of norm ~`sigma` and
    re-normalised; weight logits recomputed by the model's weight MLP from the new embeddings (as the model
    does), pooled vector = the normalised mean of the new embeddings; masks kept. Copy 0 is the original."""
    if copy == 0:
        return features
    generator = torch.Generator().manual_seed(1000 * copy + start)
    dim = features.embeds.shape[-1]
    noise = torch.randn(features.embeds.shape, generator=generator) * (sigma / dim**0.5)
    embeds = torch.nn.functional.normalize(features.embeds + noise, dim=-1)
    mlp = getattr(model, f"{modality}_weight_mlp")
    return ValorFeatures(
        embeds=embeds,
        mask=features.mask,
        weight_logits=mlp(embeds).squeeze(-1),
        pooler_output=torch.nn.functional.normalize(embeds.mean(1), dim=-1),
    )


def build_large(model, source: VideoGallery, args) -> tuple[Path, dict[str, float]]:
    """Phase 5: the derived gallery of `args.num_large` items (float16 shards) and its indexes, timed."""
    path = Path(args.work_dir) / f"gallery_{args.num_large}"
    if (path / "gallery.json").is_file():
        print(f"derived gallery: reusing {path}")
        return path, {}
    timings = {}
    start = time.perf_counter()
    gallery = VideoGallery.create(model, path=path, dtype="float16", shard_size=8192)
    for copy in range(-(-args.num_large // len(source))):
        for block in source.blocks(8192):
            rows = slice(block.start, min(block.stop, block.start + args.num_large - len(gallery)))
            if rows.stop <= rows.start:
                break
            media = {
                m: derive_features(model, source.features(m, rows), m, copy, rows.start, args.sigma)
                for m in source.modalities
            }
            ids = [f"{i}~{copy}" for i in source.ids[rows]]
            gallery.add(ids, paths=[f"{p}~{copy}" for p in source.paths[rows]], **media)
    timings["features (derive + write)"] = time.perf_counter() - start
    for group in RETRIEVAL_GROUPS:
        start = time.perf_counter()
        with building(args):
            gallery.build_index(group, **index_params(args))
        timings[f"{group} index"] = time.perf_counter() - start
    return path, timings


def index_params(args) -> dict:
    """The chosen index type and its parameters."""
    params = {"index_type": args.index_type}
    if args.index_type == "ivf":
        params.update(nprobe=args.nprobe, ivf_lists=args.ivf_lists)
    if args.index_type == "hnsw":
        params.update(hnsw_m=32)
    return params


@torch.no_grad()
def serve(args) -> None:
    """Phase 6 (a fresh process): load the derived gallery, time the queries two-stage for every k and a few
    exhaustively, measure recall on `exhaustive_queries`; print one JSON line with the figures and memory."""
    set_threads(args.threads, args.faiss_threads)
    model = ValorModel.from_pretrained(args.model).eval()
    processor = ValorProcessor.from_pretrained(args.model)
    report = {"rss_model_mb": rss_mb()[0], "load_start": os.getloadavg()[0]}
    start = time.perf_counter()
    gallery = VideoGallery.load(args.serve, model=model)
    report.update(load_s=time.perf_counter() - start, rss_loaded_mb=rss_mb()[0])
    captions = json.loads((Path(args.work_dir) / "queries.json").read_text())
    text = encode_queries(model, processor, captions)
    start = time.perf_counter()
    encode_queries(model, processor, captions[:1])
    report["text_encoding_s"] = time.perf_counter() - start
    for group in RETRIEVAL_GROUPS:
        time_two_stage(model, gallery, text, group, max(args.sweep_large), args.latency_queries)
    report["rss_two_stage_mb"] = rss_mb()[0]
    report["times"] = latencies(
        model, gallery, text, args, args.sweep_large, exhaustive_count=args.exhaustive_latency_large
    )
    subset = ValorFeatures(**{n: v[: args.exhaustive_queries] for n, v in text.items()})
    truth = {
        group: torch.stack([h.rows for h in exhaustive_search(model, gallery, subset, group, top_k=10)])
        for group in RETRIEVAL_GROUPS
    }
    report["recall"] = recalls(model, gallery, subset, truth, args.sweep_large)
    report["rss_end_mb"], report["rss_peak_mb"] = rss_mb()
    report["load_end"] = os.getloadavg()[0]
    print("SERVE " + json.dumps(report))


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="outputs/gallery_bench/run/final", help="A trained VALOR folder.")
    parser.add_argument("--work_dir", default="outputs/gallery_bench/bench", help="Galleries are kept here.")
    parser.add_argument("--num_items", type=int, default=100_000)
    parser.add_argument("--num_large", type=int, default=1_000_000)
    parser.add_argument("--num_queries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--num_workers", type=int, default=2, help="Decoding workers of the gallery encoding."
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    parser.add_argument("--num_candidates", type=int, default=1000, help="k of the index-type comparison.")
    parser.add_argument("--sweep", type=int, nargs="+", default=[1000, 4000, 16000], help="k swept at 100k.")
    parser.add_argument(
        "--sweep_large", type=int, nargs="+", default=[4000, 16000, 64000], help="k swept at 1M."
    )
    parser.add_argument("--index_type", default="ivf", choices=["flat", "ivf", "hnsw"], help="The one kept.")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--ivf_lists", type=int, default=1024)
    parser.add_argument("--sigma", type=float, default=0.3, help="Noise norm of the derived copies.")
    parser.add_argument("--latency_queries", type=int, default=20, help="Queries timed one by one.")
    parser.add_argument(
        "--exhaustive_latency_large", type=int, default=3, help="Queries timed exhaustively at 1M items."
    )
    parser.add_argument(
        "--compare_index_types", nargs="+", default=["flat", "ivf", "hnsw"], choices=["flat", "ivf", "hnsw"]
    )
    parser.add_argument("--exhaustive_queries", type=int, default=20, help="Exhaustive queries at 1M items.")
    parser.add_argument(
        "--faiss_threads", type=int, default=1, help="faiss threads while searching (builds use --threads)."
    )
    parser.add_argument("--latency_threads", type=int, nargs="+", default=[2, 1], help="Thread counts timed.")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def print_large(path: Path, timings: dict, report: dict, args, gflops: float) -> None:
    """The 1M-item figures: build, disk, memory, latency, recall."""
    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    print(
        f"derived gallery of {args.num_large} items: {path} (served in a fresh process; load average "
        f"{report['load_start']:.1f} at its start, {report['load_end']:.1f} at its end)"
    )
    if timings:
        print("  build: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(
        f"  disk: {folder_mb(path):.0f} MB ({folder_mb(path / 'shards'):.0f} MB float16 feature shards, "
        f"{folder_mb(path / 'index'):.0f} MB indexes)"
    )
    print(
        f"  load {report['load_s']:.1f} s; resident memory (machine {total_ram:.0f} MB): model "
        f"{report['rss_model_mb']:.0f} MB, gallery and indexes loaded {report['rss_loaded_mb']:.0f} MB, after "
        f"two-stage queries {report['rss_two_stage_mb']:.0f} MB, after everything {report['rss_end_mb']:.0f} MB "
        f"(peak {report['rss_peak_mb']:.0f} MB: exhaustive search pages in every shard)"
    )
    print(
        f"  text encoding of one query: {report['text_encoding_s'] * 1e3:.1f} ms (not in the latencies below)"
    )
    print_sweep(
        report["times"], report["recall"], args, args.sweep_large, f" ({args.exhaustive_queries} queries)"
    )
    flops = 2 * report["tokens"] * 5 * report["dim"] * args.num_large
    print(
        f"  exhaustive tva needs {flops / 1e9:.1f} GFLOP per query ({report['tokens']} tokens x 5 positions x "
        f"{report['dim']}-d x {args.num_large} items): at least {flops / gflops / 1e9 * 1e3:.0f} ms at the "
        f"{gflops:.0f} GFLOP/s measured now"
    )


def main(argv=None) -> None:
    """Run every phase and print the figures."""
    args = parse_args(argv)
    if args.serve:
        return serve(args)
    set_threads(args.threads, args.faiss_threads)
    gflops = matmul_gflops(args.threads)
    print(
        f"machine: {os.cpu_count()} cores, fp32 matmul {gflops:.0f} GFLOP/s on {args.threads} threads measured now; "
        f"load average {os.getloadavg()[0]:.1f} (the machine is shared: other jobs ran meanwhile)"
    )
    model = ValorModel.from_pretrained(args.model).eval()
    processor = ValorProcessor.from_pretrained(args.model)
    gallery = build_gallery(model, processor, args)
    captions = [row["caption"] for row in plan_metadata("test", args.num_queries, QUERY_SEED)]
    Path(args.work_dir, "queries.json").write_text(json.dumps(captions))
    text = encode_queries(model, processor, captions)
    print(f"queries: {len(captions)} captions of other held-out clips, e.g. {captions[0]!r}")
    truth = exhaustive_top10(model, gallery, text, RETRIEVAL_GROUPS)
    compare_first_stages(gallery, text, truth, args.ks)
    compare_indexes(model, gallery, text, truth, args)
    print(f"at {len(gallery)} items, {args.index_type} index, single queries (p50 / p95; {load_note()}):")
    with building(args):
        for group in RETRIEVAL_GROUPS:
            gallery.build_index(group, **index_params(args))
    times = latencies(model, gallery, text, args, args.sweep, exhaustive_count=args.latency_queries)
    print_sweep(times, recalls(model, gallery, text, truth, args.sweep), args, args.sweep, "")
    path, timings = build_large(model, gallery, args)
    command = [sys.executable, __file__, "--serve", str(path), *(argv if argv is not None else sys.argv[1:])]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    report = json.loads(output.split("SERVE ", 1)[1])
    report.update(tokens=int(text.mask.sum(1).float().mean().round()), dim=model.config.projection_dim)
    print_large(path, timings, report, args, gflops)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
