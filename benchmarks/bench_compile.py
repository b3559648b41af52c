"""Pretraining steps/s with `compile_valor` (torch.compile, inductor) against eager, in one run.

    python benchmarks/bench_compile.py                   # the demo's model at its per-process batch of 16
    python benchmarks/bench_compile.py --valor_b         # also VALOR-B at batch 2 (compiling takes many minutes)
    python benchmarks/bench_compile.py --smoke           # a tiny model, Dynamo's aot_eager backend (checks the script)

A step is forward + backward + AdamW on a seeded batch (4 frames, 1 audio clip, MGA and MGC over tva/tv/ta),
dropout off so that eager and compiled compute the same function: the first-step losses of both are printed with
their difference. Compilation happens in the two warm-up steps, whose time is printed apart; the steps/s are the
median of the timed steps. The 1-minute load average is printed beside every figure (the machine is shared).
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from bench_generation_and_pretraining import pretraining_batch  # noqa: E402
from transformers_valor import ValorConfig, ValorForPreTraining, compile_valor  # noqa: E402

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def demo_config() -> ValorConfig:
    """The model `make demo` trains (examples/configs/demo_unimodal.yaml's towers, demo.yaml's heads)."""
    return ValorConfig(
        text_config=dict(
            vocab_size=400,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            max_position_embeddings=64,
            **NO_DROPOUT,
        ),
        vision_config=dict(
            model_type="valor_video_swin",
            image_size=64,
            patch_size=[2, 4, 4],
            embed_dim=32,
            depths=[2, 2, 2],
            num_heads=[2, 4, 8],
            window_size=[2, 4, 4],
            drop_path_rate=0.0,
        ),
        audio_config=dict(
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=256,
            patch_size=16,
            image_size=[64, 208],
            **NO_DROPOUT,
        ),
        projection_dim=128,
        max_video_frames=8,
        max_audio_clips=4,
    )


def smoke_config() -> ValorConfig:
    """The tests' tiny model (tests/helpers.py) without dropout, for `--smoke`."""
    from helpers import tiny_audio_config, tiny_text_config, tiny_valor_config

    return tiny_valor_config(
        text_config=tiny_text_config(**NO_DROPOUT), audio_config=tiny_audio_config(**NO_DROPOUT)
    )


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def measure(config, batch, compiled: bool, backend: str, steps: int) -> dict:
    """First-step loss, warm-up time (2 steps, compilation included) and median step time of one mode."""
    torch.manual_seed(0)
    model = ValorForPreTraining._from_config(config, attn_implementation="sdpa").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if compiled:
        compile_valor(model, backend=backend)

    def step() -> float:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    start = time.perf_counter()
    first_loss = step()
    step()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    torch._dynamo.reset()
    return {"loss": first_loss, "warmup": warmup, "step": sorted(times)[len(times) // 2], "load": load()}


def main():
    """Eager then compiled, per case; one table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--valor_b", action="store_true", help="also VALOR-B at batch 2")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, aot_eager backend")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: torch's); 1 on a loaded machine"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = "aot_eager" if args.smoke else "inductor"
    cases = [("tiny", smoke_config(), 4, 32)] if args.smoke else [("demo", demo_config(), 16, 64)]
    if args.valor_b:
        cases.append(("VALOR-B", ValorConfig(text_config=NO_DROPOUT, audio_config=NO_DROPOUT), 2, 224))
    print(f"CPU ({torch.get_num_threads()} threads), fp32, torch {torch.__version__}, backend {backend}")
    print(
        "| model | batch | eager step (s) | compiled step (s) | compiled / eager steps/s | warm-up eager / compiled (s) "
        "| first loss eager / compiled (abs diff) | load |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, config, batch_size, image_size in cases:
        batch = pretraining_batch(
            config, batch_size, 4, 1, image_size, torch.device("cpu"), torch.float32, 24
        )
        eager = measure(config, batch, False, backend, args.steps)
        compiled = measure(config, batch, True, backend, args.steps)
        print(
            f"| {name} | {batch_size} | {eager['step']:.3f} | {compiled['step']:.3f} | "
            f"{eager['step'] / compiled['step']:.2f}x | {eager['warmup']:.1f} / {compiled['warmup']:.1f} | "
            f"{eager['loss']:.5f} / {compiled['loss']:.5f} ({abs(eager['loss'] - compiled['loss']):.1e}) | "
            f"{eager['load']} / {compiled['load']} |"
        )


if __name__ == "__main__":
    main()
