"""Stage 0 of VALOR's recipe: each tower pretrained alone before VALOR pretraining starts.

VALOR never trains its encoders from scratch: BERT comes from masked-language pretraining, Video Swin from
Kinetics action recognition and the audio ViT from AudioSet classification; MGA + MGC then start from them. This
module is that stage for the synthetic corpus (`data/synthetic.py`), on clips rendered straight to arrays from a
random stream of their own (disjoint from the corpus's train and test clips):

- the video tower ([`ValorVideoSwinModel`]) as a classifier of the visual content (colour, shape, direction),
  one linear head per attribute applied to every temporal slot's token mean (what MGA reads);
- the audio tower as a sound classifier: an `ASTForAudioClassification` (the class of AudioSet checkpoints);
- the text tower as a `BertForMaskedLM` on caption-like text (15 % masking, `DataCollatorForLanguageModeling`).

Each is saved with `save_pretrained` as a standard checkpoint of its own class (the classification heads of the
video tower are dropped, as Kinetics heads are), i.e. what `conversion.init_from_encoders` takes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    ASTConfig,
    ASTForAudioClassification,
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
)

from ..configuration_valor import ValorVideoSwinConfig
from ..data.synthetic import COLORS, DIRECTIONS, SHAPES, SOUNDS, render_clip_arrays, select_video_codec
from ..modeling_video_swin import ValorVideoSwinModel
from ..processing_valor import ValorProcessor
from .config import OptimizerArguments, _build, _parse_yaml, apply_overrides
from .config_types import require_at_least
from .cpu_memory import keep_freed_cpu_memory
from .optimization import build_optimizer, build_scheduler

VISUAL_LABELS: dict[str, tuple[str, ...]] = {"color": COLORS, "shape": SHAPES, "direction": DIRECTIONS}
METRICS_FILE = "unimodal_metrics.jsonl"
SUMMARY_FILE = "unimodal_summary.json"


@dataclass
class TowerTrainingArguments:
    """
    How one tower is pretrained (a tower section of the stage-0 YAML).

    Args:
        config (`dict`): the tower's configuration keyword arguments (`ValorVideoSwinConfig`, `ASTConfig` or
            `BertConfig`; the vocabulary size and the label sets are filled in).
        steps (`int`, defaults to 200): optimizer steps.
        batch_size (`int`, defaults to 32).
        learning_rate (`float`, defaults to 1e-3): AdamW peak rate (VALOR's betas and weight-decay rule).
        weight_decay (`float`, defaults to 0.01).
        warmup_ratio (`float`, defaults to 0.1): linear warm-up share, then linear decay.
        max_grad_norm (`float`, defaults to 5.0): gradient-norm clipping (0 disables it).
    """

    config: dict[str, Any] = field(default_factory=dict)
    steps: int = 200
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 5.0

    def __post_init__(self):
        require_at_least("tower", {"steps": self.steps, "batch_size": self.batch_size}, 1)

    def optimizer_arguments(self) -> OptimizerArguments:
        """The AdamW + schedule settings of this tower."""
        return OptimizerArguments(
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            max_grad_norm=self.max_grad_norm,
        )


@dataclass
class VideoTowerArguments(TowerTrainingArguments):
    """
    The video section of the stage-0 YAML: a [`TowerTrainingArguments`] plus how the attribute heads read
    the tower.

    Args:
        head_pooling (`"mean"` or `"max"`, defaults to `"mean"`): the heads classify every temporal slot from the
            mean (`pooler_output`, what MGA scores) or the maximum of its spatial tokens. With `"max"` the gradient
            reaches the few tokens a small shape covers instead of being spread over the background; the saved
            tower is the same class either way (the heads are dropped).
        horizontal_flip (`bool`, defaults to `False`): mirror a random half of every batch left to right, with
            `left` and `right` swapped in its direction labels. Colours and the three shapes (the triangle points
            up) are unchanged by the mirror, so the labels stay exact while the clips seen double.
    """

    head_pooling: Literal["mean", "max"] = "mean"
    horizontal_flip: bool = False


@dataclass
class CorpusArguments:
    """
    The stage-0 clips (the YAML's `corpus:` section).

    Args:
        num_clips (`int`, defaults to 1200): clips rendered for the video and audio towers (their captions, all
            templates, are the text tower's corpus).
        num_heldout (`int`, defaults to 200): of those, clips kept out of training to measure each classifier.
        motion_trail (`int`, defaults to 3): as the corpus's `--motion_trail`.
        compress_video (`bool`, defaults to `True`): pass the frames through the corpus's video encoding
            (`synthetic.compress_frames`: yuv420p and H.264 with `select_video_codec`), so that the tower learns
            on frames like the decoded ones it later sees; `False` trains on the raw renders.
    """

    num_clips: int = 1200
    num_heldout: int = 200
    motion_trail: int = 3
    compress_video: bool = True

    def __post_init__(self):
        require_at_least("corpus", {"num_heldout": self.num_heldout, "motion_trail": self.motion_trail}, 0)
        require_at_least("corpus", {"num_clips": self.num_clips}, self.num_heldout + 1)


@dataclass
class UnimodalConfig:
    """The stage-0 YAML (`examples/configs/demo_unimodal.yaml`): `corpus`, `video`, `audio`, `text`."""

    corpus: CorpusArguments = field(default_factory=CorpusArguments)
    video: VideoTowerArguments = field(default_factory=VideoTowerArguments)
    audio: TowerTrainingArguments = field(default_factory=TowerTrainingArguments)
    text: TowerTrainingArguments = field(default_factory=TowerTrainingArguments)


def load_unimodal_config(path: str | os.PathLike, overrides: list[str] | None = None) -> UnimodalConfig:
    """
    Read and check a stage-0 YAML file; `overrides` are `section.key=value` strings (as `--set` of a training
    run, e.g. `video.steps=20`). Unknown keys and wrongly typed values are errors naming them.
    """
    with open(path, encoding="utf-8") as handle:
        values = _parse_yaml(handle) or {}  # the training configs' loader: `1e-4` is a float
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(values).__name__}.")
    apply_overrides(values, overrides or [])
    unknown = sorted(set(values) - {"corpus", "video", "audio", "text"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; expected corpus, video, audio, text.")
    return UnimodalConfig(
        corpus=_build(CorpusArguments, values.get("corpus"), "corpus"),
        video=_build(VideoTowerArguments, values.get("video"), "video"),
        **{tower: _build(TowerTrainingArguments, values.get(tower), tower) for tower in ("audio", "text")},
    )


# ------------------------------------------------------------------------------------------------- the loop
def train_steps(
    module: nn.Module,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    num_examples: int,
    args: TowerTrainingArguments,
    seed: int,
    log: Callable[[int, float], None] | None = None,
) -> list[float]:
    """
    Train `module` for `args.steps` AdamW steps; `batch_loss(indices)` returns the loss of the examples at
    `indices` (epochs of a seeded permutation of `range(num_examples)`). Returns the loss of every step.
    """
    optimizer_args = args.optimizer_arguments()
    optimizer = build_optimizer(module, optimizer_args)
    scheduler = build_scheduler(optimizer, optimizer_args, args.steps)
    generator = torch.Generator().manual_seed(seed)
    order, position, losses = torch.randperm(num_examples, generator=generator), 0, []
    module.train()
    for step in range(1, args.steps + 1):
        if position + args.batch_size > num_examples:
            order, position = torch.randperm(num_examples, generator=generator), 0
        indices = order[position : position + args.batch_size]
        position += args.batch_size
        loss = batch_loss(indices)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"stage-0 loss is {loss.item()} at step {step}.")
        loss.backward()
        if args.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(module.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log is not None:
            log(step, losses[-1])
    module.eval()
    return losses


def _label_tensor(rows: list[dict[str, Any]], attribute: str, values: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([values.index(row[attribute]) for row in rows])


# ------------------------------------------------------------------------------------------------- video
class VideoAttributeClassifier(nn.Module):
    """
    A [`ValorVideoSwinModel`] with one linear head per visual attribute, applied to every temporal slot: each
    slot must name the attributes. `pooling="mean"` classifies the slot's token mean (`pooler_output`, the
    per-frame feature MGA scores), `"max"` the maximum over its spatial tokens.
    """

    def __init__(
        self,
        config: ValorVideoSwinConfig,
        labels: dict[str, tuple[str, ...]] = VISUAL_LABELS,
        pooling: Literal["mean", "max"] = "mean",
    ):
        super().__init__()
        if pooling not in ("mean", "max"):
            raise ValueError(f"`pooling` must be 'mean' or 'max', got {pooling!r}.")
        self.pooling = pooling
        self.tower = ValorVideoSwinModel(config)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(config.hidden_size, len(v)) for name, v in labels.items()}
        )

    def forward(self, pixel_values_videos: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits `(batch, temporal_slots, classes)` per attribute."""
        output = self.tower(pixel_values_videos, return_dict=True)
        if self.pooling == "max":
            pooled = output.last_hidden_state.amax(dim=2)  # (B, T', tokens, C) -> (B, T', C)
        else:
            pooled = output.pooler_output  # (B, T', C)
        return {name: head(pooled) for name, head in self.heads.items()}


def _slot_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every temporal slot's logits `(B, T', K)` against the clip's label."""
    return nn.functional.cross_entropy(logits.flatten(0, 1), labels.repeat_interleave(logits.shape[1]))


class _MirroredBatches:
    """Mirror a seeded random half of each batch left to right, swapping the `left` / `right` labels."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed + 17)
        swap = {"left": "right", "right": "left"}
        self.direction_map = torch.tensor([DIRECTIONS.index(swap.get(d, d)) for d in DIRECTIONS])

    def __call__(self, pixels: torch.Tensor, labels: dict[str, torch.Tensor]):
        flip = torch.rand(len(pixels), generator=self.generator) < 0.5
        pixels = torch.where(flip[:, None, None, None, None], pixels.flip(-1), pixels)
        direction = labels["direction"]
        return pixels, {**labels, "direction": torch.where(flip, self.direction_map[direction], direction)}


def train_video_tower(
    pixels: torch.Tensor,
    rows: list[dict[str, Any]],
    args: VideoTowerArguments,
    num_heldout: int,
    seed: int,
    log,
) -> tuple[ValorVideoSwinModel, dict[str, float]]:
    """Train the Video Swin attribute classifier; returns the tower and its held-out accuracy per attribute."""
    torch.manual_seed(seed)
    model = VideoAttributeClassifier(ValorVideoSwinConfig(**args.config), pooling=args.head_pooling)
    labels = {name: _label_tensor(rows, name, values) for name, values in VISUAL_LABELS.items()}
    num_train = len(rows) - num_heldout

    mirror = _MirroredBatches(seed) if args.horizontal_flip else None

    def batch_loss(indices):
        inputs, targets = pixels[indices], {name: values[indices] for name, values in labels.items()}
        if mirror is not None:
            inputs, targets = mirror(inputs, targets)
        logits = model(inputs)
        return sum(_slot_loss(logits[name], targets[name]) for name in logits) / len(logits)

    train_steps(model, batch_loss, num_train, args, seed, log)
    with torch.no_grad():
        logits = {name: [] for name in VISUAL_LABELS}
        for start in range(num_train, len(rows), 64):
            for name, value in model(pixels[start : start + 64]).items():
                logits[name].append(value.mean(dim=1))
    accuracy = {
        name: (torch.cat(value).argmax(-1) == labels[name][num_train:]).float().mean().item()
        for name, value in logits.items()
    }
    return model.tower, accuracy


# ------------------------------------------------------------------------------------------------- audio
def ast_classifier_config(args: TowerTrainingArguments, processor: ValorProcessor) -> ASTConfig:
    """An `ASTConfig` for the processor's fbank clips (non-overlapping 16 x 16 patches, as VALOR) and the sounds."""
    features = processor.feature_extractor
    values = {
        "num_mel_bins": features.num_mel_bins,
        "max_length": features.clip_length,
        "frequency_stride": args.config.get("patch_size", 16),
        "time_stride": args.config.get("patch_size", 16),
        **args.config,
    }
    return ASTConfig(
        **values,
        id2label=dict(enumerate(SOUNDS)),
        label2id={sound: index for index, sound in enumerate(SOUNDS)},
    )


def train_audio_tower(
    features: torch.Tensor, rows: list[dict[str, Any]], args, processor, num_heldout: int, seed: int, log
) -> tuple[ASTForAudioClassification, dict[str, float]]:
    """
    Train an AST sound classifier on `(clips, mel, time)` fbank clips (AST reads `(time, mel)`); returns it and
    its held-out accuracy.
    """
    torch.manual_seed(seed)
    model = ASTForAudioClassification(ast_classifier_config(args, processor))
    inputs = features.transpose(1, 2).contiguous()  # (N, time, mel)
    labels = _label_tensor(rows, "sound", SOUNDS)
    num_train = len(rows) - num_heldout

    def batch_loss(indices):
        return model(input_values=inputs[indices], labels=labels[indices]).loss

    train_steps(model, batch_loss, num_train, args, seed, log)
    with torch.no_grad():
        logits = torch.cat(
            [model(input_values=inputs[s : s + 64]).logits for s in range(num_train, len(rows), 64)]
        )
    return model, {"sound": (logits.argmax(-1) == labels[num_train:]).float().mean().item()}


# ------------------------------------------------------------------------------------------------- text
def train_text_tower(
    texts: list[str],
    heldout: list[str],
    args: TowerTrainingArguments,
    processor: ValorProcessor,
    seed: int,
    log,
) -> tuple[BertForMaskedLM, dict[str, float]]:
    """Masked-language pretraining of a BERT on `texts`; returns it and its masked-token accuracy on `heldout`."""
    tokenizer = processor.tokenizer
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **args.config)
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, return_tensors="pt")
    length = processor.max_text_length + 2

    def encode(batch_texts):
        return tokenizer(list(batch_texts), padding="max_length", truncation=True, max_length=length)[
            "input_ids"
        ]

    train_ids, heldout_ids = encode(texts), encode(heldout)

    def batch_loss(indices):
        batch = collator([{"input_ids": train_ids[i]} for i in indices.tolist()])
        attention = (batch["input_ids"] != tokenizer.pad_token_id).long()
        return model(input_ids=batch["input_ids"], attention_mask=attention, labels=batch["labels"]).loss

    train_steps(model, batch_loss, len(train_ids), args, seed, log)
    torch.manual_seed(seed + 1)
    batch = collator([{"input_ids": ids} for ids in heldout_ids])
    with torch.no_grad():
        attention = (batch["input_ids"] != tokenizer.pad_token_id).long()
        predicted = model(input_ids=batch["input_ids"], attention_mask=attention).logits.argmax(-1)
    masked = batch["labels"] != -100
    return model, {"masked_token": (predicted[masked] == batch["labels"][masked]).float().mean().item()}


# ------------------------------------------------------------------------------------------------- stage 0
def render_inputs(config: CorpusArguments, processor: ValorProcessor, seed: int):
    """
    The stage-0 clips as model inputs: `(rows, pixel_values_videos, fbank clips (N, mel, time))`, rendered with
    `render_clip_arrays` at the processor's frame size and preprocessed by the processor (middle frames).
    """
    video_processor, features = processor.video_processor, processor.feature_extractor
    rows, frames, audio = render_clip_arrays(
        config.num_clips,
        seed,
        image_size=video_processor.size["height"],
        sample_rate=features.sampling_rate,
        motion_trail=config.motion_trail,
        video_codec=select_video_codec() if config.compress_video else None,
    )
    pixels = video_processor(list(frames), sampling="middle", return_tensors="pt")["pixel_values_videos"]
    fbank = features(list(audio), sampling_rate=features.sampling_rate, num_clips=1, sampling="middle")
    return rows, pixels, fbank["input_features"][:, 0]


def _save_atomic(folder: Path, *objects) -> Path:
    """`save_pretrained` of every object into `folder`, written beside it first and renamed once complete."""
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    for item in objects:
        item.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def run_unimodal_pretraining(
    config: UnimodalConfig, processor: ValorProcessor, output_dir: str | os.PathLike, seed: int = 0
) -> dict[str, Path]:
    """
    Stage 0: render the clips, train the three towers, save each with `save_pretrained` under
    `output_dir/{video,audio,text}` (the text folder also holds the tokenizer). Every step's loss goes to
    `unimodal_metrics.jsonl`, the held-out accuracies to `unimodal_summary.json`. Returns the three folders.
    Trains on the CPU, with glibc's allocator keeping freed memory ([`keep_freed_cpu_memory`]).
    """
    keep_freed_cpu_memory()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / METRICS_FILE
    metrics_path.unlink(missing_ok=True)
    rows, pixels, fbank = render_inputs(config.corpus, processor, seed)
    heldout = config.corpus.num_heldout
    train_rows = rows[: len(rows) - heldout]

    with open(metrics_path, "a", encoding="utf-8") as handle:

        def logger(tower):
            def write(step, loss):
                handle.write(json.dumps({"tower": tower, "step": step, "loss": loss}) + "\n")
                handle.flush()  # the file doubles as the progress report of a long stage

            return write

        seconds, start = {}, time.perf_counter()
        video, video_acc = train_video_tower(pixels, rows, config.video, heldout, seed, logger("video"))
        seconds["video"], start = time.perf_counter() - start, time.perf_counter()
        audio, audio_acc = train_audio_tower(
            fbank, rows, config.audio, processor, heldout, seed, logger("audio")
        )
        seconds["audio"], start = time.perf_counter() - start, time.perf_counter()
        texts = [caption for row in train_rows for caption in row["captions"]]
        heldout_texts = [row["caption"] for row in rows[len(train_rows) :]] or texts[:64]
        text, text_acc = train_text_tower(texts, heldout_texts, config.text, processor, seed, logger("text"))
        seconds["text"] = time.perf_counter() - start

    folders = {
        "video": _save_atomic(out / "video", video),
        "audio": _save_atomic(out / "audio", audio),
        "text": _save_atomic(out / "text", text, processor.tokenizer),
    }
    summary = {"heldout_accuracy": {"video": video_acc, "audio": audio_acc, "text": text_acc}, "seed": seed}
    summary["num_clips"], summary["num_heldout"] = len(rows), heldout
    summary["training_seconds"] = {tower: round(value, 1) for tower, value in seconds.items()}
    tmp = out / f".{SUMMARY_FILE}.partial"
    tmp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    os.replace(tmp, out / SUMMARY_FILE)
    return folders


__all__ = [
    "CorpusArguments",
    "TowerTrainingArguments",
    "UnimodalConfig",
    "VideoAttributeClassifier",
    "VideoTowerArguments",
    "load_unimodal_config",
    "run_unimodal_pretraining",
    "train_audio_tower",
    "train_steps",
    "train_text_tower",
    "train_video_tower",
]
