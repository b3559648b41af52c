"""Correctness of the VALOR models on a CUDA device: bf16 training step, eager vs SDPA, cached generation.

    python benchmarks/gpu_check.py

Prints one line per check and exits non-zero if any fails. Sizes are tiny except the VALOR-B bf16 step.
"""

import sys

import torch

sys.path.insert(0, "tests")
from helpers import ValorInputsTester, tiny_valor_config  # noqa: E402
from transformers_valor import ValorConfig, ValorForConditionalGeneration, ValorForPreTraining  # noqa: E402
from transformers_valor.data.masking import CaptionMaskingConfig, mask_captions  # noqa: E402


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


def main():
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
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
