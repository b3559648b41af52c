"""Why the demo does not learn the direction of motion: linear probes on Video Swin features.

Needs a finished `make demo` (its corpus, processor and decoded cache under `outputs/demo`). Two modes:

- `--probe_model DIR`: probe a trained model's video features (per-frame token means, their concatenation, all
  final tokens in their spatial layout) for direction, shape and colour, on the first 1,000 training clips.

      python benchmarks/diagnose_direction.py --probe_model outputs/demo/run/final

- otherwise: train the demo's model from scratch in one process on 1,800 cached training clips with a chosen mix
  of objectives, and every `--eval_every` steps probe the per-frame token means for direction on 200 held-out
  clips (and report text-to-video R@1 on them).

      python benchmarks/diagnose_direction.py --steps 300                        # MGA + MGC, as in the demo
      python benchmarks/diagnose_direction.py --steps 300 --mgc_groups ""        # MGA only
      python benchmarks/diagnose_direction.py --steps 300 --mga_groups ""        # MGC only
      python benchmarks/diagnose_direction.py --steps 800 --mga_groups "" --mgc_groups tv --visual_captions
      python benchmarks/diagnose_direction.py --steps 200 --direction_supervision only
      python benchmarks/diagnose_direction.py --steps 300 --direction_supervision added

`--direction_supervision` adds a linear direction head on the mean per-frame feature trained with the labels
(`only`: that loss alone; `added`: on top of MGA + MGC), to show what the encoder can learn when asked directly.
"""

import argparse
import glob
import json
import os
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from transformers_valor import ValorModel, ValorProcessor
from transformers_valor.data.masking import CaptionMaskingConfig, mask_captions
from transformers_valor.training import build_model, build_optimizer, build_scheduler, load_config
from transformers_valor.training.evaluation import encode_texts, retrieval_metrics

NUM_FIT = 1800


def parse_args() -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo_dir", default="outputs/demo")
    parser.add_argument("--config", default="examples/configs/demo.yaml")
    parser.add_argument("--probe_model", default=None, help="Probe this trained model instead of training.")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--mga_groups", default="tva,tv,ta", help="Comma-separated; empty for none.")
    parser.add_argument("--mgc_groups", default="tva,tv,ta", help="Comma-separated; empty for none.")
    parser.add_argument("--visual_captions", action="store_true", help='Train on "a red circle moves left".')
    parser.add_argument("--direction_supervision", choices=["none", "only", "added"], default="none")
    parser.add_argument("--set", nargs="*", default=[], help="Config overrides, as for pretrain.py.")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def latest_cache(demo_dir: str) -> dict[str, torch.Tensor]:
    """The most recent decoded cache of the demo run (frames, audio clips, audio mask)."""
    files = glob.glob(os.path.join(demo_dir, "run", "decoded_cache", "*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"No decoded cache under {demo_dir}/run/decoded_cache; run `make demo` first."
        )
    return load_file(max(files, key=os.path.getmtime))


def linear_probe(features: torch.Tensor, labels: torch.Tensor, num_fit: int) -> float:
    """Held-out accuracy of a linear classifier fitted on the first `num_fit` standardised feature rows."""
    mean, std = features[:num_fit].mean(0), features[:num_fit].std(0) + 1e-5
    features = (features - mean) / std
    head = torch.nn.Linear(features.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(200):
        loss = F.cross_entropy(head(features[:num_fit]), labels[:num_fit])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (head(features[num_fit:]).argmax(-1) == labels[num_fit:]).float().mean().item()


def labels_of(rows: list[dict], attribute: str) -> torch.Tensor:
    """Integer labels of one attribute (values sorted by name)."""
    names = sorted({row[attribute] for row in rows})
    return torch.tensor([names.index(row[attribute]) for row in rows])


@torch.no_grad()
def encode(model: ValorModel, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Final Video Swin tokens `(N, T, tokens, C)` and per-frame token means `(N, T, C)`, in batches of 100."""
    tokens, means = zip(
        *(model.encode_video(frames[i : i + 100].float()) for i in range(0, len(frames), 100))
    )
    return torch.cat(tokens), torch.cat(means)


def probe_model(args: argparse.Namespace, rows: list[dict], cache: dict[str, torch.Tensor]) -> None:
    """Probe a trained model's video features for every visual attribute."""
    model = ValorModel.from_pretrained(args.probe_model).eval()
    tokens, means = encode(model, cache["pixel_values_videos"][:1000])
    for attribute in ("direction", "shape", "color"):
        labels = labels_of(rows[:1000], attribute)
        results = {
            "frame means": linear_probe(means.mean(1), labels, 800),
            "frame means, concatenated": linear_probe(means.flatten(1), labels, 800),
            "all tokens, spatial layout": linear_probe(tokens.flatten(1), labels, 800),
        }
        print(attribute, "  ".join(f"{name}: {acc:.3f}" for name, acc in results.items()))


def batch_captions(rows: list[dict], batch: list[int], visual_only: bool, generator) -> list[str]:
    """One caption per clip: a random paraphrase, or the visual attributes alone (`--visual_captions`)."""
    if visual_only:
        return [f"a {rows[i]['color']} {rows[i]['shape']} moves {rows[i]['direction']}" for i in batch]
    picks = [int(torch.randint(len(rows[i]["captions"]), (1,), generator=generator)) for i in batch]
    return [rows[i]["captions"][c] for i, c in zip(batch, picks)]


def train_and_probe(args: argparse.Namespace, rows: list[dict], cache: dict[str, torch.Tensor]) -> None:
    """Train from scratch on the cache with the chosen objectives and probe the direction as it goes."""
    torch.manual_seed(0)
    config = load_config(args.config, args.set)
    processor = ValorProcessor.from_pretrained(os.path.join(args.demo_dir, "processor"))
    model = build_model(config.model, processor)
    direction_head = torch.nn.Linear(model.config.vision_config.hidden_size, 4)
    optimizer = build_optimizer(model, config.optimizer)
    optimizer.add_param_group({"params": direction_head.parameters(), "weight_decay": 0.0})
    scheduler = build_scheduler(optimizer, config.optimizer, args.steps)
    masking = CaptionMaskingConfig.from_model_config(model.config.text_config)
    generator = torch.Generator().manual_seed(0)
    frames, audio, audio_mask = (
        cache["pixel_values_videos"],
        cache["input_features"],
        cache["input_features_mask"],
    )
    directions = labels_of(rows, "direction")
    mga = [g for g in args.mga_groups.split(",") if g]
    mgc = [g for g in args.mgc_groups.split(",") if g]
    use_audio = not args.visual_captions
    start = time.time()

    def evaluate(step: int) -> None:
        model.eval()
        _, means = encode(model.valor, frames[: len(rows)])
        with torch.no_grad():
            features = {
                "text": encode_texts(model.valor, processor, [row["caption"] for row in rows[NUM_FIT:]]),
                "video": model.valor.video_features_from_frames(means[NUM_FIT:]),
            }
        recall = retrieval_metrics(model.valor, features, groups=("tv",))["tv"]["t2v_R@1"] / 100
        probe = linear_probe(means.mean(1), directions, NUM_FIT)
        print(
            f"step {step}: direction probe {probe:.3f}, text->video R@1 {recall:.3f}, {time.time() - start:.0f} s"
        )
        model.train()

    model.train()
    step = 0
    while step < args.steps:
        order = torch.randperm(NUM_FIT, generator=generator)
        for begin in range(0, NUM_FIT - args.batch_size + 1, args.batch_size):
            batch = order[begin : begin + args.batch_size].tolist()
            captions = batch_captions(rows, batch, args.visual_captions, generator)
            text = processor(text=captions, padding="max_length", return_tensors="pt")
            caption_ids, labels = mask_captions(text["input_ids"], masking, generator)
            loss = 0.0
            if args.direction_supervision != "only":
                loss = model(
                    input_ids=text["input_ids"],
                    attention_mask=text["attention_mask"],
                    pixel_values_videos=frames[batch].float(),
                    input_features=audio[batch].float() if use_audio else None,
                    input_features_mask=audio_mask[batch] if use_audio else None,
                    caption_input_ids=caption_ids,
                    labels=labels if mgc else None,
                    contrastive_groups=mga,
                    caption_groups=mgc or None,
                ).loss
            if args.direction_supervision != "none":
                _, means = model.valor.encode_video(frames[batch].float())
                loss = loss + F.cross_entropy(direction_head(means.mean(1)), directions[batch])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % args.eval_every == 0:
                evaluate(step)
            if step >= args.steps:
                break


def main() -> None:
    """Run the chosen diagnostic and print its numbers."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    cache = latest_cache(args.demo_dir)
    with open(os.path.join(args.demo_dir, "corpus", "train", "metadata.jsonl"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    if args.probe_model:
        probe_model(args, rows, cache)
    else:
        train_and_probe(args, rows[: NUM_FIT + 200], cache)


if __name__ == "__main__":
    main()
