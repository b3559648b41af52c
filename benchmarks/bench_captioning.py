"""Captioning throughput of the VALOR-B decoder against the machine's weight-streaming bound.

    python benchmarks/bench_captioning.py                 # batch 1, 8, 32; greedy and beam 3; the options
    python benchmarks/bench_captioning.py --quick         # batch 1 and 8, one repeat
    python benchmarks/bench_captioning.py --smoke         # a tiny decoder, seconds (checks the script runs)

What it prints, all from one run (the machine is shared: the load average is printed beside every timing):

1. The machine's limits, measured in the run: the read bandwidth (sum of a 1 GiB tensor) and the GEMM peak.
2. The weight-streaming bound of one cached decoding step at batch 1: every weight the step reads (12 decoder
   layers; of their cross-attention only the query and output projections, as the cache holds the media's keys
   and values; the MLM head with the tied 30,522 x 768 output matrix) read once from memory, bytes / bandwidth,
   counted from the modules a cached step runs (each multiplies 2 rows per sequence: the last token and the
   [MASK] slot VALOR reads the prediction from; the MLM head only the latter); the step's matrix products
   alone, replayed without anything between them, as the floor of the kernels; and the measured per-token time,
   `(time of 31 tokens - time of 1 token) / 30`, so that the first step, which also computes the cross-attention
   keys and values of the 650 media tokens, is left out.
3. Videos per second at batch 1, 8 and 32, greedy and beam 3, 30 new tokens, KV cache on (eager PyTorch, fp32).
4. The options, at batch 1 (per-token time) and batch 8 (videos/s): oneDNN kernels for the decoder's linear layers
   (`transformers_valor.onednn_linear.use_onednn_linear`, CPU only; "onednn packed" with the weights laid out for
   the 2 rows a step multiplies per sequence, `pack_for_rows=2`), `compile_valor` (inductor) and int8 dynamic
   quantization of the decoder's linear layers (`transformers_valor.quantization.quantize_dynamic_int8`, CPU only),
   each against its own bound (int8 weights are a quarter of the bytes) and with its token agreement with the
   fp32 eager captions of the same inputs.

The decoder's inputs are random `video_states` / `audio_states` (8 x 49 video + 2 x 129 audio tokens, VALOR-B's
layout) and its weights are random; generation never stops early (`min_new_tokens=30`), so every configuration
does the same number of steps.
"""

import argparse
import math
import os
import sys
import time
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_generation_and_pretraining import decoder_config  # noqa: E402
from machine import cpu_name, load  # noqa: E402
from transformers_valor import ValorConfig, ValorForConditionalGeneration, compile_valor  # noqa: E402
from transformers_valor.onednn_linear import use_onednn_linear  # noqa: E402
from transformers_valor.quantization import quantize_dynamic_int8  # noqa: E402

NEW_TOKENS = 30
MEDIA_TOKENS = 8 * 49 + 2 * 129  # 8 frames x 7x7 Video Swin tokens + 2 clips x (CLS + 4x32 patches)


def best_seconds(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def machine_limits(repeats: int, smoke: bool) -> dict:
    """Read bandwidth (GB/s, summing 1 GiB) and GEMM peak (GFLOP/s, a 4096^3 fp32 matmul)."""
    n, size = (512, 2**24) if smoke else (4096, 2**30)
    left, right = torch.randn(n, n), torch.randn(n, n)
    gemm = 2 * n**3 / best_seconds(lambda: left @ right, repeats) / 1e9
    big = torch.ones(size // 4)
    return {"read_gbps": size / best_seconds(big.sum, repeats) / 1e9, "gemm_gflops": gemm}


def weight_bytes(module: torch.nn.Module) -> dict:
    """Bytes of `module`'s own weights by storage: its parameters (a tied one counted once), or an int8 linear
    layer's packed weight (unpacked into a new tensor on every call, so keyed by the module)."""
    params = list(module.parameters(recurse=False))
    if params:
        return {p.data_ptr(): p.numel() * p.element_size() for p in params}
    if callable(getattr(module, "weight", None)):  # torch.ao's dynamically quantised Linear
        tensors = [module.weight(), *([module.bias()] if module.bias() is not None else [])]
        return {("int8 linear", id(module)): sum(t.numel() * t.element_size() for t in tensors)}
    return {}


def second_step_calls(model, inputs: dict, modules: list) -> list[tuple[torch.nn.Module, tuple]]:
    """The calls of `modules` in the second (cached) decoding step of `generate` on `inputs`, in order, each with
    the shape of its input."""
    calls = []
    record = lambda m, args, out: calls.append((m, tuple(args[0].shape)))  # noqa: E731
    hooks = [m.register_forward_hook(record) for m in modules]
    try:
        generate(model, inputs, 1, 1)
        first_step = len(calls)
        generate(model, inputs, 1, 2)
    finally:
        for hook in hooks:
            hook.remove()
    return calls[2 * first_step :]


def streamed_bytes(model: ValorForConditionalGeneration, inputs: dict) -> int:
    """Bytes of weights one cached decoding step reads: those of every module the second step runs (the decoder
    layers without the cross-attention key / value projections, whose outputs the cache holds since the first
    step; the MLM head with the tied word embedding read whole), counted once per storage; of the input
    embeddings only a row per token, which is left out."""
    text = model.valor.text_model
    owned = {m: weight_bytes(m) for part in (text.encoder, model.cls) for m in part.modules()}
    owned = {module: storages for module, storages in owned.items() if storages}
    read = {}
    for module, _ in second_step_calls(model, inputs, list(owned)):
        read.update(owned[module])
    return sum(read.values())


def linear_floor(model, inputs, repeats: int) -> dict[str, float]:
    """Seconds of a cached step's matrix products alone (each linear layer on a vector of its input's shape, in
    the step's order, nothing else between them), with PyTorch's `F.linear`, with oneDNN's kernel, and with
    oneDNN's kernel on weights packed for the call's rows: what no implementation of the step on these kernels
    can beat."""
    calls = second_step_calls(model, inputs, [m for m in model.modules() if isinstance(m, torch.nn.Linear)])
    vectors = {shape: torch.randn(shape) for _, shape in calls}
    onednn = torch.ops.mkldnn._linear_pointwise
    packed = [
        torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), math.prod(shape[:-1]))
        for layer, shape in calls
    ]
    kernels = {
        "F.linear": lambda x, layer, _: torch.nn.functional.linear(x, layer.weight, layer.bias),
        "oneDNN": lambda x, layer, _: onednn(x, layer.weight, layer.bias, "none", [], ""),
        "oneDNN packed": lambda x, layer, index: onednn(x, packed[index], layer.bias, "none", [], ""),
    }

    def replay(kernel):
        with torch.no_grad():
            for index, (layer, shape) in enumerate(calls):
                kernel(vectors[shape], layer, index)

    return {name: best_seconds(partial(replay, kernel), repeats) for name, kernel in kernels.items()}


def make_inputs(model, batch_size: int, media_tokens: int) -> dict:
    """Random decoder inputs: video and audio states of VALOR-B's shapes."""
    generator = torch.Generator().manual_seed(batch_size)
    hidden = model.config.text_config.hidden_size
    video = media_tokens * 392 // MEDIA_TOKENS
    return {
        "video_states": torch.randn(batch_size, video, hidden, generator=generator),
        "audio_states": torch.randn(batch_size, media_tokens - video, hidden, generator=generator),
    }


def generate(model, inputs, num_beams: int, tokens: int = NEW_TOKENS) -> torch.Tensor:
    """`tokens` new tokens, no early stop, KV cache on."""
    with torch.no_grad():
        return model.generate(
            **inputs, num_beams=num_beams, max_new_tokens=tokens, min_new_tokens=tokens, use_cache=True
        )


def per_token_seconds(model, inputs, repeats: int) -> float:
    """Cached greedy step time at the inputs' batch: (31 tokens - 1 token) / 30, the first step left out."""
    one = best_seconds(partial(generate, model, inputs, 1, 1), repeats)
    full = best_seconds(partial(generate, model, inputs, 1, NEW_TOKENS + 1), repeats)
    return (full - one) / NEW_TOKENS


def build_variant(name: str, config: ValorConfig) -> ValorForConditionalGeneration:
    """The fp32 eager decoder (seeded: every variant has the same weights), on oneDNN or int8; "compile" is
    applied later (`compile_valor`), after the bytes a step reads are counted on the eager modules."""
    torch.manual_seed(0)
    model = ValorForConditionalGeneration._from_config(config, attn_implementation="sdpa").eval()
    if name == "int8 dynamic":
        quantize_dynamic_int8(model)
    elif name == "onednn linear":
        use_onednn_linear(model)
    elif name == "onednn packed":
        use_onednn_linear(model, pack_for_rows=2)
    return model


def throughput_table(model, batch_sizes, media_tokens, repeats) -> dict:
    """Videos/s of the eager model per batch size and search; returns the greedy captions per batch size."""
    print("\n## Videos per second, eager fp32, KV cache, 30 new tokens")
    print("| batch | greedy (videos/s) | beam 3 (videos/s) | load |")
    print("|---|---|---|---|")
    captions = {}
    for batch in batch_sizes:
        inputs = make_inputs(model, batch, media_tokens)
        captions[batch] = generate(model, inputs, 1)
        rates = [batch / best_seconds(partial(generate, model, inputs, beams), repeats) for beams in (1, 3)]
        print(f"| {batch} | {rates[0]:.2f} | {rates[1]:.2f} | {load()} |")
    return captions


def options_table(config, variants, reference, read_gbps, batch, media_tokens, repeats) -> None:
    """Per-token time at batch 1 against each variant's own bound (the bytes its cached step reads / the measured
    read bandwidth), videos/s at `batch`, and agreement with `reference`."""
    print(
        f"\n## Options: per-token time at batch 1 against its own bound and greedy videos/s at batch {batch}"
    )
    print(
        "| variant | weights per step (MB) | bound (ms) | ms / token, batch 1 | share of the bound | videos/s "
        "| vs eager | token agreement | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base_rate = None
    for name in variants:
        model = build_variant(name, config)
        one = make_inputs(model, 1, media_tokens)
        weights = streamed_bytes(model, one)
        bound = weights / (read_gbps * 1e9)
        if name == "compile":
            compile_valor(model)
        step = per_token_seconds(model, one, repeats)
        inputs = make_inputs(model, batch, media_tokens)
        rate = batch / best_seconds(partial(generate, model, inputs, 1), repeats)
        base_rate = base_rate or rate
        agreement = (generate(model, inputs, 1) == reference).float().mean().item()
        print(
            f"| {name} | {weights / 1e6:.0f} | {1e3 * bound:.1f} | {1e3 * step:.1f} | {100 * bound / step:.0f} % | "
            f"{rate:.2f} | {rate / base_rate:.2f}x | {agreement:.3f} | {load()} |"
        )
        del model


def smoke_config() -> ValorConfig:
    """A tiny decoder for `--smoke`."""
    return ValorConfig(
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
        vision_config=dict(model_type="valor_video_swin", embed_dim=16, depths=[1, 1], num_heads=[2, 4]),
        audio_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=32),
    )


def main():
    """Limits, the bound and per-token time, the throughput table, the options table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="batch 1 and 8, one repeat")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny decoder and inputs: checks the script runs"
    )
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["eager", "onednn linear", "onednn packed", "compile", "int8 dynamic"],
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: torch's); 1 on a loaded machine"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick or args.smoke else 2
    batch_sizes = args.batch_sizes or ([1, 8] if args.quick or args.smoke else [1, 8, 32])
    config = smoke_config() if args.smoke else decoder_config()
    media_tokens = 20 if args.smoke else MEDIA_TOKENS
    print(f"{cpu_name()} ({torch.get_num_threads()} threads), fp32, torch {torch.__version__}; load {load()}")
    limits = machine_limits(repeats, args.smoke)
    print(
        f"machine limits: read {limits['read_gbps']:.1f} GB/s (1 GiB sum), GEMM {limits['gemm_gflops']:.1f} "
        f"GFLOP/s (4096^3); load {load()}"
    )
    model = build_variant("eager", config)
    one = make_inputs(model, 1, media_tokens)
    weights = streamed_bytes(model, one)
    bound = weights / (limits["read_gbps"] * 1e9)
    step = per_token_seconds(model, one, repeats)
    print(
        f"batch 1 greedy, cached: {1e3 * step:.1f} ms per token; weight-streaming bound {1e3 * bound:.1f} ms "
        f"({weights / 1e6:.0f} MB of weights per step / {limits['read_gbps']:.1f} GB/s): {100 * bound / step:.0f} % "
        f"of the bound; load {load()}"
    )
    floor = linear_floor(model, one, repeats)
    print(
        "the step's linear products alone, nothing between them: "
        + ", ".join(f"{name} {1e3 * s:.1f} ms ({weights / s / 1e9:.1f} GB/s)" for name, s in floor.items())
        + f"; load {load()}"
    )
    captions = throughput_table(model, batch_sizes, media_tokens, repeats)
    del model
    batch = 8 if 8 in captions else batch_sizes[-1]
    options_table(config, args.variants, captions[batch], limits["read_gbps"], batch, media_tokens, repeats)


if __name__ == "__main__":
    main()
