"""Caption generation with and without the KV cache, VALOR's beam ranking against `transformers`' beam search, and
one pretraining step with eager vs SDPA attention.

Prints ratios measured within one run (the machine is shared and noisy), never asserts wall-clock times.

    python benchmarks/bench_generation_and_pretraining.py            # CPU, fp32
    python benchmarks/bench_generation_and_pretraining.py --quick    # fewer repeats

On a CUDA device the same tables run in bf16 with SDPA (and eager for the comparison).
"""

import argparse
import time
from functools import partial

import torch

from transformers_valor import ValorConfig, ValorForConditionalGeneration, ValorForPreTraining
from transformers_valor.data.masking import CaptionMaskingConfig, mask_captions

VIDEO_TOKENS = (8, 49)  # 8 frames x 7x7 Video Swin tokens
AUDIO_TOKENS = (2, 129)  # 2 clips x (CLS + 4x32 patches)


def timed(fn, device, repeats):
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def decoder_config():
    """VALOR-B's text decoder (BERT-base) with small encoders: the decoder is what generation costs."""
    return ValorConfig(
        vision_config=dict(model_type="valor_video_swin", embed_dim=16, depths=[1, 1], num_heads=[2, 4]),
        audio_config=dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64),
    )


def bench_generation(device, dtype, repeats, batch_size):
    print(
        f"\n## Caption generation, VALOR-B text decoder, batch {batch_size}, 30 new tokens, "
        f"{VIDEO_TOKENS[0]}x{VIDEO_TOKENS[1]} video + {AUDIO_TOKENS[0]}x{AUDIO_TOKENS[1]} audio tokens"
    )
    print("| attention | search | no cache (s/video) | cache (s/video) | speed-up |")
    print("|---|---|---|---|---|")
    for attn in ["sdpa"] if device.type == "cpu" else ["sdpa", "eager"]:
        torch.manual_seed(0)
        model = ValorForConditionalGeneration._from_config(decoder_config(), attn_implementation=attn)
        model = model.to(device=device, dtype=dtype).eval()
        hidden = model.config.text_config.hidden_size
        video = torch.randn(batch_size, VIDEO_TOKENS[0] * VIDEO_TOKENS[1], hidden, device=device, dtype=dtype)
        audio = torch.randn(batch_size, AUDIO_TOKENS[0] * AUDIO_TOKENS[1], hidden, device=device, dtype=dtype)
        for beams in (1, 3):
            results = {}
            for use_cache in (False, True):
                run = partial(
                    model.generate,
                    video_states=video,
                    audio_states=audio,
                    num_beams=beams,
                    max_new_tokens=30,
                    min_new_tokens=30,
                    use_cache=use_cache,
                )
                results[use_cache] = timed(run, device, repeats) / batch_size
            name = "greedy" if beams == 1 else f"beam {beams}"
            print(
                f"| {attn} | {name} | {results[False]:.3f} | {results[True]:.3f} | "
                f"{results[False] / results[True]:.1f}x |"
            )


def bench_beam_ranking(device, dtype, repeats, batch_size):
    """Beam 3 over 30 tokens (cache on): `generation_valor.valor_beam_search` vs `transformers`' beam search."""
    print(
        f"\n## Beam search ranking, VALOR-B text decoder, batch {batch_size}, beam 3, 30 new tokens, cache on"
    )
    print("| attention | valor ranking (s/video) | transformers ranking (s/video) | valor / transformers |")
    print("|---|---|---|---|")
    torch.manual_seed(0)
    model = ValorForConditionalGeneration._from_config(decoder_config(), attn_implementation="sdpa")
    model = model.to(device=device, dtype=dtype).eval()
    hidden = model.config.text_config.hidden_size
    video = torch.randn(batch_size, VIDEO_TOKENS[0] * VIDEO_TOKENS[1], hidden, device=device, dtype=dtype)
    audio = torch.randn(batch_size, AUDIO_TOKENS[0] * AUDIO_TOKENS[1], hidden, device=device, dtype=dtype)
    results = {}
    for ranking in ("valor", "transformers"):
        run = partial(
            model.generate,
            video_states=video,
            audio_states=audio,
            num_beams=3,
            max_new_tokens=30,
            min_new_tokens=30,
            length_penalty=0.0,
            beam_ranking=ranking,
        )
        results[ranking] = timed(run, device, repeats) / batch_size
    print(
        f"| sdpa | {results['valor']:.3f} | {results['transformers']:.3f} | "
        f"{results['valor'] / results['transformers']:.2f}x |"
    )


def pretraining_batch(config, batch_size, frames, clips, image_size, device, dtype, text_length=32):
    """A seeded, masked pretraining batch: random token ids within the vocabulary, random frames and fbank clips."""
    generator = torch.Generator().manual_seed(0)
    text = config.text_config
    ids = torch.randint(5, min(2000, text.vocab_size), (batch_size, text_length), generator=generator)
    ids[:, 0], ids[:, -1] = text.bos_token_id, text.eos_token_id
    masking = CaptionMaskingConfig.from_model_config(config.text_config)
    caption_ids, labels = mask_captions(ids, masking, generator)
    mel, time_frames = config.audio_config.image_size
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "caption_input_ids": caption_ids.to(device),
        "labels": labels.to(device),
        "pixel_values_videos": torch.randn(
            batch_size, frames, 3, image_size, image_size, generator=generator
        ).to(device, dtype),
        "input_features": torch.randn(batch_size, clips, mel, time_frames, generator=generator).to(
            device, dtype
        ),
    }


def _train_step(model, batch):
    model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)


def bench_pretraining(device, dtype, repeats):
    tiny = ValorConfig(
        text_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
        vision_config=dict(
            model_type="valor_video_swin",
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 4],
            window_size=[2, 4, 4],
        ),
        audio_config=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=[16, 64],
            patch_size=8,
        ),
        projection_dim=32,
    )
    cases = [("tiny", tiny, 8, 4, 1, 32), ("VALOR-B", ValorConfig(), 2, 4, 1, 224)]
    print("\n## One pretraining step (forward + backward, MGA tva/tv/ta + MGC tva/tv/ta)")
    print("| model | batch | eager (s) | sdpa (s) | eager / sdpa |")
    print("|---|---|---|---|---|")
    for name, config, batch_size, frames, clips, image_size in cases:
        results = {}
        for attn in ("eager", "sdpa"):
            torch.manual_seed(0)
            model = (
                ValorForPreTraining._from_config(config, attn_implementation=attn).to(device, dtype).train()
            )
            batch = pretraining_batch(config, batch_size, frames, clips, image_size, device, dtype)

            results[attn] = timed(partial(_train_step, model, batch), device, repeats)
            del model
        print(
            f"| {name} | {batch_size} | {results['eager']:.3f} | {results['sdpa']:.3f} | "
            f"{results['eager'] / results['sdpa']:.2f}x |"
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one timed repeat instead of three")
    parser.add_argument("--skip_pretraining", action="store_true")
    parser.add_argument("--skip_generation", action="store_true")
    parser.add_argument("--skip_beam_ranking", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    repeats = 1 if args.quick else 3
    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {name}, dtype: {dtype}, torch {torch.__version__}")
    batch_size = 1 if device.type == "cpu" else 8
    if not args.skip_generation:
        bench_generation(device, dtype, repeats, batch_size=batch_size)
    if not args.skip_beam_ranking:
        bench_beam_ranking(device, dtype, repeats, batch_size=batch_size)
    if not args.skip_pretraining:
        bench_pretraining(device, dtype, repeats)


if __name__ == "__main__":
    main()
