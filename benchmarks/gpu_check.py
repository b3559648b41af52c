"""Correctness and performance of the VALOR models on a CUDA device, in one run of under 8 minutes.

    python benchmarks/gpu_check.py                 # checks, then the performance tables
    python benchmarks/gpu_check.py --checks_only   # the correctness checks only
    python benchmarks/gpu_check.py --smoke         # everything on a tiny config (runs on a CPU in minutes)

Checks (one PASS/FAIL line each; the exit status is non-zero if any fails): eager vs SDPA, cached vs uncached
generation, a VALOR-B bf16 step. Sizes are tiny except the VALOR-B step.

Performance (VALOR-B, bf16, SDPA; 4 frames of 224 px + 1 audio clip + 32 text tokens per sample, the pretraining
recipe): the pretraining step (forward + backward + fused AdamW) eager and under `compile_valor` (inductor) at
per-device batch 8, 32 and 64, with its model FLOP utilisation (MFU): the FLOPs of one forward + backward counted
by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention; no recomputation) over the step
time, against the device's dense bf16 peak (datasheet, when the device is known) and against a bf16 GEMM measured
in the same run. Then captioning videos/s at batch 64 (VALOR-B decoder, 8 x 49 video + 2 x 129 audio states,
greedy, 30 tokens) with and without the KV cache. A batch that does not fit is retried with gradient
checkpointing (its MFU then excludes the recomputation); a time budget (`--budget_s`) skips what is left.

`--smoke` runs the same code on a tiny config with batches 2 and 4, a 512^2 GEMM and Dynamo's `aot_eager`
backend instead of inductor (compiling with inductor on a small CPU takes many minutes); it checks that the script
runs end to end, its figures mean nothing.
"""

import argparse
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, "tests")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_generation_and_pretraining import decoder_config, pretraining_batch  # noqa: E402
from helpers import ValorInputsTester, tiny_valor_config  # noqa: E402
from transformers_valor import (  # noqa: E402
    ValorConfig,
    ValorForConditionalGeneration,
    ValorForPreTraining,
    compile_valor,
)
from transformers_valor.data.masking import CaptionMaskingConfig, mask_captions  # noqa: E402

# Dense bf16 peaks (FLOP/s) from the datasheets, by a substring of `torch.cuda.get_device_name()`.
BF16_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def to(inputs, device, dtype):
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in inputs.items()}


def masked_inputs(config, device, dtype, **tester_kwargs):
    inputs = ValorInputsTester(**tester_kwargs).prepare_inputs()
    masking = CaptionMaskingConfig.from_model_config(config.text_config)
    inputs["caption_input_ids"], inputs["labels"] = mask_captions(
        inputs["input_ids"], masking, torch.Generator().manual_seed(0)
    )
    return to(inputs, device, dtype)


def check_attention_implementations(config, device, check) -> None:
    """Eager and SDPA give the same fp32 pretraining loss."""
    losses = {}
    for attn in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = ValorForPreTraining._from_config(config, attn_implementation=attn).to(device).eval()
        with torch.no_grad():
            losses[attn] = model(**masked_inputs(config, device, torch.float32)).loss
    diff = (losses["eager"] - losses["sdpa"]).abs().item()
    check("eager == sdpa (fp32 loss)", diff < 1e-4, f"|diff|={diff:.2e}")


def check_cached_generation(config, device, check) -> None:
    """Cached and uncached generation agree (required in fp32, reported in bf16)."""
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model = ValorForConditionalGeneration._from_config(config, attn_implementation="sdpa")
        model = model.to(device, dtype).eval()
        inputs = masked_inputs(config, device, dtype)
        for beams in (1, 3):
            kwargs = dict(num_beams=beams, max_new_tokens=12, min_new_tokens=12)
            a = model.generate(
                inputs["pixel_values_videos"], inputs["input_features"], use_cache=True, **kwargs
            )
            b = model.generate(
                inputs["pixel_values_videos"], inputs["input_features"], use_cache=False, **kwargs
            )
            agree = (a == b).float().mean().item()
            if dtype == torch.float32:
                check(
                    f"cache == no cache (fp32, beams {beams})",
                    torch.equal(a, b),
                    f"token agreement {agree:.2f}",
                )
            else:
                # bf16 rounds incremental and full-sequence attention differently; report, do not require.
                print(f"INFO cache vs no cache (bf16, beams {beams}): token agreement {agree:.2f}")


def check_valor_b_step(device, check) -> None:
    """A VALOR-B bf16 training step on real sizes: finite loss and gradients."""
    torch.manual_seed(0)
    big = ValorConfig()
    model = (
        ValorForPreTraining._from_config(big, attn_implementation="sdpa").to(device, torch.bfloat16).train()
    )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(1000, 2000, (4, 32))
    ids[:, 0], ids[:, -1] = 101, 102
    caption_ids, labels = mask_captions(
        ids, CaptionMaskingConfig.from_model_config(big.text_config), torch.Generator().manual_seed(0)
    )
    batch = {
        "input_ids": ids.to(device),
        "caption_input_ids": caption_ids.to(device),
        "labels": labels.to(device),
        "pixel_values_videos": torch.randn(4, 4, 3, 224, 224, device=device, dtype=torch.bfloat16),
        "input_features": torch.randn(4, 1, 64, 512, device=device, dtype=torch.bfloat16),
    }
    torch.cuda.reset_peak_memory_stats()
    out = model(**batch)
    out.loss.backward()
    grads_finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    check(
        "VALOR-B bf16 step (batch 4, 4 frames, 1 clip, checkpointing)",
        bool(torch.isfinite(out.loss)) and grads_finite,
        f"loss {out.loss.item():.3f}, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, "
        + ", ".join(f"{k} {v.item():.2f}" for k, v in out.group_losses.items()),
    )


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `repeats` calls after `warmup` calls (compilation happens in the warm-up)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def gemm_peak(device, dtype, n: int) -> float:
    """FLOP/s of an `n`^3 matmul in `dtype`, measured now."""
    left, right = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / median_seconds(lambda: left @ right, device, repeats=10)


class PerfSetup:
    """What the performance tables run on: VALOR-B on the device in bf16, or `--smoke`'s tiny config."""

    def __init__(self, device, smoke: bool, budget_s: float):
        self.device, self.smoke, self.deadline = device, smoke, time.monotonic() + budget_s
        self.dtype = torch.bfloat16
        self.config = tiny_valor_config() if smoke else ValorConfig()
        self.caption_config = tiny_valor_config() if smoke else decoder_config()
        self.frames, self.clips = 4, 1
        self.image_size = 32 if smoke else 224
        self.batch_sizes = (2, 4) if smoke else (8, 32, 64)
        self.caption_batch = 4 if smoke else 64
        self.backend = "aot_eager" if smoke else "inductor"
        self.repeats = 2 if smoke else 5
        name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
        self.datasheet_peak = next((peak for key, peak in BF16_PEAKS.items() if key in name), None)
        self.measured_peak = gemm_peak(device, self.dtype, 512 if smoke else 8192)

    def time_left(self) -> bool:
        return time.monotonic() < self.deadline

    def batch(self, batch_size: int) -> dict:
        """A masked pretraining batch (the tiny tester's vocabulary and sizes under `--smoke`)."""
        if self.smoke:
            return masked_inputs(self.config, self.device, self.dtype, batch_size=batch_size)
        return pretraining_batch(
            self.config, batch_size, self.frames, self.clips, self.image_size, self.device, self.dtype
        )


def step_flops(model, batch) -> int:
    """FLOPs of one forward + backward, counted by torch's FLOP counter on the eager model."""
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def pretraining_model(setup: PerfSetup, compiled: bool, checkpointing: bool):
    torch.manual_seed(0)
    model = ValorForPreTraining._from_config(setup.config, attn_implementation="sdpa")
    model = model.to(setup.device, setup.dtype).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=setup.device.type == "cuda")
    if compiled:
        compile_valor(model, backend=setup.backend)
    return model, optimizer


def time_pretraining_step(setup: PerfSetup, batch_size: int, compiled: bool, checkpointing: bool) -> dict:
    """Step time and FLOPs of one configuration (raises the device's out-of-memory error)."""
    model, optimizer = pretraining_model(setup, compiled, checkpointing)
    batch = setup.batch(batch_size)
    flops = step_flops(model, batch) if not compiled else None

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = median_seconds(step, setup.device, setup.repeats)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if setup.device.type == "cuda" else float("nan")
    return {"seconds": seconds, "flops": flops, "peak_gib": peak_gib}


def run_pretraining_case(setup: PerfSetup, batch_size: int, compiled: bool) -> dict | None:
    """One table row's measurement; on out-of-memory retried with gradient checkpointing."""
    for checkpointing in (False, True):
        try:
            if setup.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            return {
                **time_pretraining_step(setup, batch_size, compiled, checkpointing),
                "ckpt": checkpointing,
            }
        except torch.OutOfMemoryError:
            torch._dynamo.reset()
        finally:
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
    return None


def report_pretraining(setup: PerfSetup) -> None:
    """The pretraining step table: eager and compiled at each per-device batch, MFU from the eager FLOP count."""
    peaks = f"measured bf16 GEMM {setup.measured_peak / 1e12:.3g} TFLOP/s"
    if setup.datasheet_peak:
        peaks += f", datasheet dense bf16 {setup.datasheet_peak / 1e12:.0f} TFLOP/s"
    print(f"\n## Pretraining step, bf16, SDPA, forward + backward + AdamW ({peaks})")
    print(
        "| batch | mode | step (s) | samples/s | TFLOP / step | MFU (datasheet) | MFU (measured GEMM) | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for batch_size in setup.batch_sizes:
        flops = None
        for compiled in (False, True):
            mode = f"compile ({setup.backend})" if compiled else "eager"
            if not setup.time_left():
                print(f"| {batch_size} | {mode} | skipped: time budget spent | | | | | |")
                continue
            result = run_pretraining_case(setup, batch_size, compiled)
            if result is None:
                print(f"| {batch_size} | {mode} | out of memory, with checkpointing too | | | | | |")
                continue
            flops = result["flops"] or flops
            mode += " + checkpointing" if result["ckpt"] else ""
            rate = flops / result["seconds"] if flops else float("nan")
            datasheet = f"{100 * rate / setup.datasheet_peak:.1f} %" if setup.datasheet_peak else "-"
            print(
                f"| {batch_size} | {mode} | {result['seconds']:.3f} | {batch_size / result['seconds']:.1f} | "
                f"{(flops or float('nan')) / 1e12:.3g} | {datasheet} | {100 * rate / setup.measured_peak:.1f} % | "
                f"{result['peak_gib']:.1f} |"
            )


def report_captioning(setup: PerfSetup) -> None:
    """Captioning videos/s at the caption batch, greedy, 30 tokens, with and without the KV cache."""
    print(f"\n## Captioning, batch {setup.caption_batch}, greedy, 30 new tokens, bf16, SDPA")
    print("| KV cache | videos/s |")
    print("|---|---|")
    torch.manual_seed(0)
    model = ValorForConditionalGeneration._from_config(setup.caption_config, attn_implementation="sdpa")
    model = model.to(setup.device, setup.dtype).eval()
    # VALOR-B's decoder inputs: 8 frames x 7x7 tokens and 2 clips x (CLS + 4x32 patches).
    videos, audios = (12, 10) if setup.smoke else (8 * 49, 2 * 129)
    hidden, generator = model.config.text_config.hidden_size, torch.Generator().manual_seed(0)
    states = {
        name: torch.randn(setup.caption_batch, tokens, hidden, generator=generator).to(
            setup.device, setup.dtype
        )
        for name, tokens in (("video_states", videos), ("audio_states", audios))
    }
    for use_cache in (True, False):
        if not setup.time_left():
            print(f"| {use_cache} | skipped: time budget spent |")
            continue

        def caption(use_cache=use_cache):
            with torch.no_grad():
                model.generate(
                    **states, num_beams=1, max_new_tokens=30, min_new_tokens=30, use_cache=use_cache
                )

        seconds = median_seconds(caption, setup.device, repeats=3, warmup=1)
        print(f"| {use_cache} | {setup.caption_batch / seconds:.1f} |")


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny config, runs anywhere (checks the script)")
    parser.add_argument("--checks_only", action="store_true", help="skip the performance tables")
    parser.add_argument(
        "--budget_s",
        type=float,
        default=None,
        help="time for the performance tables (default 420; none with --smoke)",
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else "CPU (dry run: the VALOR-B step is skipped)"
    )
    print(f"device: {name}, torch {torch.__version__}")
    failures = []

    def check(name, ok, detail=""):
        print(f"{'PASS' if ok else 'FAIL'} {name} {detail}")
        if not ok:
            failures.append(name)

    config = tiny_valor_config()
    check_attention_implementations(config, device, check)
    check_cached_generation(config, device, check)
    if device.type == "cuda":
        check_valor_b_step(device, check)
    if not args.checks_only and (device.type == "cuda" or args.smoke):
        budget = args.budget_s if args.budget_s is not None else (float("inf") if args.smoke else 420.0)
        setup = PerfSetup(device, args.smoke, budget)
        report_pretraining(setup)
        report_captioning(setup)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
