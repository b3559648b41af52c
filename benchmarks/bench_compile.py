"""Pretraining steps/s with `compile_valor` (torch.compile, inductor) against eager, in one run.

    python benchmarks/bench_compile.py                   # the demo's model at its per-process batch of 16
    python benchmarks/bench_compile.py --valor_b         # also VALOR-B at batch 2 (compiling takes many minutes)
    python benchmarks/bench_compile.py --smoke           # a tiny model, Dynamo's aot_eager backend (checks the script)

A step is forward + backward + AdamW on a seeded batch (4 frames, 1 audio clip, MGA and MGC over tva/tv/ta), dropout
off so that every mode computes the same function: the first-step losses are printed with their largest difference.
Three modes. The baseline is the step as main ran it when the performance work began: eager, AdamW's per-parameter
loop (PyTorch's default on the CPU, before `build_optimizer` asked for its `foreach` and then its fused kernel), the
Video Swin's shifted windows masked with the reference's -100 (whose denormal weights slow the CPU's products; the
model now masks with -1e4, the same function to float32's rounding) and glibc's allocator at its defaults, in a
process of its own. Eager is the training loop's step now, in this process: AdamW's fused kernel (the same update to
float rounding; a single parameter group here, where the training loop has VALOR's decay groups) and the allocator
keeping freed memory (`training.keep_freed_cpu_memory`); compiled is that step with `compile_valor`. Compilation
happens in the two warm-up steps, whose time is printed apart (the baseline's includes starting its process;
inductor's on-disk cache makes a repeat run's compilation shorter). The timed steps of the modes are interleaved
(the order reversed every other round; one process waits while the other steps), and each speed-up is the median of
the per-round ratios, so that the shared machine's changing load falls on all modes alike. The 1-minute load average
is printed at the end of each case.
"""

import argparse
import multiprocessing
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from bench_generation_and_pretraining import pretraining_batch  # noqa: E402
from machine import cpu_name, load  # noqa: E402
from transformers_valor import (  # noqa: E402
    ValorConfig,
    ValorForPreTraining,
    compile_valor,
    modeling_video_swin,
)
from transformers_valor.training.cpu_memory import keep_freed_cpu_memory  # noqa: E402

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


REFERENCE_MASK = modeling_video_swin.REFERENCE_SHIFTED_WINDOW_MASK_VALUE
# (compiled, AdamW's fused kernel (else its per-parameter loop), shifted-window mask value; None: the model's)
MODES = {
    "baseline": (False, False, REFERENCE_MASK),
    "eager": (False, True, None),
    "compiled": (True, True, None),
}


class Trainer:
    """One model and its AdamW, seeded so that every instance starts from the same weights."""

    def __init__(self, config, batch, compiled: bool, fused: bool, backend: str, mask_value=None):
        torch.manual_seed(0)
        self.mask_value = mask_value
        self.model = ValorForPreTraining._from_config(config, attn_implementation="sdpa").train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=fused, foreach=False)
        self.batch = batch
        if compiled:
            compile_valor(self.model, backend=backend)

    def step(self) -> float:
        """Forward, backward and AdamW on the batch (the Video Swin's shifted windows masked with `mask_value`
        when it is set); returns the loss."""
        model_value = modeling_video_swin.SHIFTED_WINDOW_MASK_VALUE
        if self.mask_value is not None:
            modeling_video_swin.SHIFTED_WINDOW_MASK_VALUE = self.mask_value
        try:
            loss = self.model(**self.batch).loss
            loss.backward()
        finally:
            modeling_video_swin.SHIFTED_WINDOW_MASK_VALUE = model_value
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def timed_step(self) -> float:
        """Wall seconds of one step."""
        start = time.perf_counter()
        self.step()
        return time.perf_counter() - start


def _serve_trainer(connection, trainer_args: dict) -> None:
    """A worker process's loop: build the Trainer, then run the method each message names until "stop"."""
    torch.set_num_threads(trainer_args.pop("threads"))
    trainer = Trainer(**trainer_args)
    while (command := connection.recv()) != "stop":
        connection.send(getattr(trainer, command)())


class TrainerProcess:
    """A [`Trainer`] in a spawned process of its own, where glibc's allocator keeps its defaults (main's training
    loop before `keep_freed_cpu_memory`); its steps are timed inside that process."""

    def __init__(self, **trainer_args):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        trainer_args["threads"] = torch.get_num_threads()
        self.process = context.Process(target=_serve_trainer, args=(child, trainer_args), daemon=True)
        self.process.start()

    def step(self) -> float:
        self.connection.send("step")
        return self.connection.recv()

    def timed_step(self) -> float:
        self.connection.send("timed_step")
        return self.connection.recv()

    def close(self) -> None:
        self.connection.send("stop")
        self.process.join()


def median(values: list[float]) -> float:
    """The middle value (the upper one of an even count)."""
    return sorted(values)[len(values) // 2]


def measure(config, batch, backend: str, steps: int) -> dict:
    """First-step loss and warm-up time (2 steps, compilation included) of every mode, then `steps` rounds of one
    timed step per mode; the median step of each mode and the median per-round speed-ups (over the baseline,
    and of compiled over eager)."""
    runs, first, warmup = {}, {}, {}
    for mode, (compiled, fused, mask_value) in MODES.items():
        kind = TrainerProcess if mode == "baseline" else Trainer
        runs[mode] = kind(
            config=config, batch=batch, compiled=compiled, fused=fused, backend=backend, mask_value=mask_value
        )
        start = time.perf_counter()
        first[mode] = runs[mode].step()
        runs[mode].step()
        warmup[mode] = time.perf_counter() - start
    times = {mode: [] for mode in MODES}
    for index in range(steps):
        for mode in list(MODES) if index % 2 == 0 else list(MODES)[::-1]:
            times[mode].append(runs[mode].timed_step())
    runs["baseline"].close()
    torch._dynamo.reset()
    return {
        "loss": first,
        "warmup": warmup,
        "step": {mode: median(values) for mode, values in times.items()},
        "speedup": {
            mode: median([b / t for b, t in zip(times["baseline"], values)]) for mode, values in times.items()
        },
        "compiled_over_eager": median([e / c for e, c in zip(times["eager"], times["compiled"])]),
        "load": load(),
    }


def main():
    """The three modes per case; one table."""
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
    keep_freed_cpu_memory()  # what the training loop does on the CPU; the baseline's process keeps the defaults
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = "aot_eager" if args.smoke else "inductor"
    cases = [("tiny", smoke_config(), 4, 32)] if args.smoke else [("demo", demo_config(), 16, 64)]
    if args.valor_b:
        cases.append(("VALOR-B", ValorConfig(text_config=NO_DROPOUT, audio_config=NO_DROPOUT), 2, 224))
    print(
        f"{cpu_name()} ({torch.get_num_threads()} threads), fp32, torch {torch.__version__}, backend {backend}"
    )
    print(
        "| model | batch | baseline step (s) | eager step (s) | compiled step (s) | eager / baseline steps/s "
        "| compiled / baseline | compiled / eager | warm-up baseline / eager / compiled (s) | first loss "
        "(largest difference) | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, config, batch_size, image_size in cases:
        batch = pretraining_batch(
            config, batch_size, 4, 1, image_size, torch.device("cpu"), torch.float32, 24
        )
        result = measure(config, batch, backend, args.steps)
        step, speedup, warmup, loss = (result[key] for key in ("step", "speedup", "warmup", "loss"))
        spread = max(loss.values()) - min(loss.values())
        print(
            f"| {name} | {batch_size} | {step['baseline']:.3f} | {step['eager']:.3f} | {step['compiled']:.3f} | "
            f"{speedup['eager']:.2f}x | {speedup['compiled']:.2f}x | {result['compiled_over_eager']:.2f}x | "
            f"{warmup['baseline']:.1f} / {warmup['eager']:.1f} / {warmup['compiled']:.1f} | "
            f"{loss['baseline']:.5f} ({spread:.1e}) | {result['load']} |"
        )


if __name__ == "__main__":
    main()
