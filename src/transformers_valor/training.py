"""VALOR training with Hugging Face Accelerate: YAML config, model initialisation, optimizer, schedule, loop.

One loop serves pretraining and the downstream tasks: the YAML's `task:` (`pretrain`, `retrieval`, `captioning`,
`qa`) picks the model class and the objective (see `transformers_valor.finetuning`); data, optimizer, schedule,
checkpoints, exact resume and the NaN guard are shared. The pieces are reusable by any VALOR training script:

- [`PretrainConfig`] (and its parts) and [`load_config`]: the YAML schema (documented in docs/pretraining.md);
- [`build_model`]: from scratch (a `ValorConfig`), from a VALOR checkpoint, or from pretrained single-modality
  encoders (a BERT, a CLIP vision tower or Video Swin, an AST) via `initialization.init_from_encoders`;
- [`build_optimizer`] (AdamW, VALOR's betas (0.9, 0.98) and weight decay 0.01; no decay on biases, normalisation
  weights and the scalar temperature) and [`build_scheduler`] (warm-up then linear decay);
- [`build_dataloader`]: the dataset mix, optional decoded cache, per-process batch sampler and collator;
- [`train`]: the loop (gradient accumulation, clipping at 5.0, NaN guard, atomic `save_state` checkpoints,
  exact resume, trackers, progress bar), ending with `save_pretrained` of the model and the processor.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    ProjectConfiguration,
    gather_object,
    set_seed,
)
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_scheduler

from .configuration_valor import ValorConfig
from .data.collator import ValorPretrainingCollator, build_decoded_cache, model_inputs, truncate_batch
from .data.datasets import DatasetConfig, MixedBatchSampler, MixedVideoTextDataset, load_mixture
from .data.masking import CaptionMaskingConfig
from .evaluation import EvaluationArguments
from .finetuning import TASK_MODEL_CLASSES, TASKS, SCSTArguments, ValorFinetuningModule
from .initialization import init_from_encoders
from .metrics import CiderD
from .modeling_valor import ValorForPreTraining, ValorPreTrainingOutput
from .processing_valor import ValorProcessor

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """
    How the model and the processor are created (the YAML's `model:` section).

    Args:
        processor (`str`): folder or Hub id of a saved [`ValorProcessor`] (tokenizer + video processor + feature
            extractor). Required.
        config (`dict`, *optional*): keyword arguments of [`ValorConfig`] for a model built from scratch
            (sub-configs as nested dicts). The vocabulary size and special token ids are taken from the tokenizer.
        config_name_or_path (`str`, *optional*): a saved `ValorConfig` (folder or Hub id) instead of `config`.
        pretrained_model_name_or_path (`str`, *optional*): a saved VALOR model to continue training from.
        text_encoder (`str`, *optional*): a BERT checkpoint (`BertModel`, `BertForMaskedLM`, `BertForPreTraining`)
            whose weights initialise the text encoder/decoder (and the MLM head when present); `text_config` is
            derived from it (YAML entries only update it).
        vision_encoder (`str`, *optional*): a `CLIPVisionModel`/`CLIPModel` or a `ValorVideoSwinModel` checkpoint;
            `vision_config` is derived from it, with the processor's frame size.
        audio_encoder (`str`, *optional*): an `ASTModel` checkpoint (distillation token dropped, position grid
            resized to the processor's clip geometry, which sets `audio_config.image_size`).
        gradient_checkpointing (`bool`, defaults to `False`): trade compute for memory.
    """

    processor: str = ""
    config: dict[str, Any] | None = None
    config_name_or_path: str | None = None
    pretrained_model_name_or_path: str | None = None
    text_encoder: str | None = None
    vision_encoder: str | None = None
    audio_encoder: str | None = None
    gradient_checkpointing: bool = False


@dataclass
class OptimizerArguments:
    """
    AdamW and the learning-rate schedule (the YAML's `optimizer:` section). Defaults are VALOR-B's.

    Args:
        learning_rate (`float`, defaults to 1e-4).
        betas (`list[float]`, defaults to `[0.9, 0.98]`).
        eps (`float`, defaults to 1e-8).
        weight_decay (`float`, defaults to 0.01): not applied to biases, normalisation weights and the scalar
            temperature / logit scale.
        learning_rate_overrides (`dict[str, float]`, *optional*): learning rate per parameter-name prefix, e.g.
            `{"valor.vision_model": 8e-6}` (VALOR-L's CLIP tower).
        lr_scheduler (`str`, defaults to `"linear"`): any `transformers.get_scheduler` name.
        warmup_ratio (`float`, defaults to 0.1): share of the steps used for warm-up (unless `warmup_steps`).
        warmup_steps (`int`, *optional*): absolute warm-up steps.
        max_grad_norm (`float`, defaults to 5.0): gradient-norm clipping; 0 disables it.
    """

    learning_rate: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 0.01
    learning_rate_overrides: dict[str, float] = field(default_factory=dict)
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None
    max_grad_norm: float = 5.0


@dataclass
class DataArguments:
    """
    Data loading (the YAML's `data:` section; the datasets themselves are listed under `datasets:`).

    Args:
        per_device_batch_size (`int`, defaults to 8): samples per process and micro-batch. The MGA negatives of
            a step are the whole global micro-batch (`per_device_batch_size * num_processes`).
        num_workers (`int`, defaults to 2): DataLoader workers per process (decoding happens there).
        max_text_length (`int`, *optional*): word pieces per caption (default: the processor's, 40 in VALOR).
        batches_per_epoch (`int`, *optional*): micro-batches in an epoch of the mix; default: all rows of all
            datasets divided by the global batch size.
        max_failed_share (`float`, defaults to 0.05): stop when more than this share of the samples seen so far
            could not be decoded.
        min_samples_for_failure_check (`int`, defaults to 200): samples to see before that check applies.
        cache_decoded (`bool`, defaults to `False`): decode every dataset once (middle frames/clips) and train
            from the stored tensors (see `collator.build_decoded_cache`); no random frame/clip choice then.
        cache_dir (`str`, *optional*): where decoded caches live (default `<output_dir>/decoded_cache`).
        cache_dtype (`str`, defaults to `"float16"`): storage type of the cached tensors.
        cache_num_workers (`int`, *optional*): processes decoding the cache (default: one per CPU core).
    """

    per_device_batch_size: int = 8
    num_workers: int = 2
    max_text_length: int | None = None
    batches_per_epoch: int | None = None
    max_failed_share: float = 0.05
    min_samples_for_failure_check: int = 200
    cache_decoded: bool = False
    cache_dir: str | None = None
    cache_dtype: Literal["float16", "float32"] = "float16"
    cache_num_workers: int | None = None


@dataclass
class TrainingArguments:
    """
    The loop (the YAML's `training:` section).

    Args:
        output_dir (`str`): receives `checkpoints/`, `logs/` (trackers), `metrics.jsonl` and `final/`.
        seed (`int`, defaults to 42): model initialisation, data order, masking and dropout.
        max_steps (`int`, *optional*): optimizer steps; otherwise `num_epochs` epochs of the mix.
        num_epochs (`float`, defaults to 1.0).
        gradient_accumulation_steps (`int`, defaults to 1).
        mixed_precision (`str`, *optional*): `"no"`, `"fp16"` or `"bf16"`; default: what `accelerate launch`
            (or its config file) says.
        log_every (`int`, defaults to 10): steps between tracker logs.
        checkpoint_every (`int`, *optional*): steps between `save_state` checkpoints (none when unset; one is
            always written at the end).
        save_total_limit (`int`, *optional*): keep only the newest checkpoints.
        report_to (`list[str]`, defaults to `["tensorboard"]`): Accelerate trackers (`tensorboard`, `wandb`, ...,
            or `[]`).
        run_name (`str`, defaults to `"valor_pretrain"`): tracker project name.
        progress_bar (`bool`, defaults to `True`).
        find_unused_parameters (`bool`, defaults to `True`): DDP's unused-parameter detection. Needed whenever a
            step leaves parameters unused: a video-only dataset's batches skip the audio tower, and the prompt
            embedding is unused without a task prompt.
    """

    output_dir: str = "outputs/valor_pretrain"
    seed: int = 42
    max_steps: int | None = None
    num_epochs: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str | None = None
    log_every: int = 10
    checkpoint_every: int | None = None
    save_total_limit: int | None = None
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    run_name: str = "valor_pretrain"
    progress_bar: bool = True
    find_unused_parameters: bool = True


@dataclass
class PretrainConfig:
    """
    The whole YAML file: `task`, `model`, `datasets`, `data`, `optimizer`, `training`, and for fine-tuning `scst`
    (captioning) and `evaluation` (the test sets).

    `task` (defaults to `"pretrain"`): `pretrain`, `retrieval`, `captioning` or `qa` (see
    `transformers_valor.finetuning`).
    """

    model: ModelArguments
    datasets: list[DatasetConfig]
    data: DataArguments = field(default_factory=DataArguments)
    optimizer: OptimizerArguments = field(default_factory=OptimizerArguments)
    training: TrainingArguments = field(default_factory=TrainingArguments)
    task: str = "pretrain"
    scst: SCSTArguments = field(default_factory=SCSTArguments)
    evaluation: EvaluationArguments = field(default_factory=EvaluationArguments)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what is logged to the trackers and saved beside the checkpoints)."""
        return dataclasses.asdict(self)


def _build(cls, values: dict[str, Any] | None, where: str):
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in `{where}`; expected some of {sorted(known)}.")
    return cls(**values)


def config_from_dict(values: dict[str, Any], base_dir: str | os.PathLike | None = None) -> PretrainConfig:
    """
    Build a [`PretrainConfig`] from plain data (a parsed YAML). Unknown keys raise a ValueError naming them.
    Relative dataset paths and the processor path are resolved against `base_dir` when they exist there.
    """
    sections = ("task", "model", "datasets", "data", "optimizer", "training", "scst", "evaluation")
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise ValueError(f"Unknown top-level key(s) {unknown}; expected some of {', '.join(sections)}.")
    task = values.get("task", "pretrain")
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {list(TASKS)}, got {task!r}.")
    if not values.get("datasets"):
        raise ValueError("The config lists no `datasets`.")
    model = _build(ModelArguments, values.get("model"), "model")
    if not model.processor:
        raise ValueError("`model.processor` (a saved ValorProcessor) is required.")
    dataset_configs = [_build(DatasetConfig, d, f"datasets[{i}]") for i, d in enumerate(values["datasets"])]
    evaluation_values = dict(values.get("evaluation") or {})
    eval_datasets = [
        _build(DatasetConfig, d, f"evaluation.datasets[{i}]")
        for i, d in enumerate(evaluation_values.pop("datasets", None) or [])
    ]
    evaluation = _build(EvaluationArguments, evaluation_values, "evaluation")
    evaluation.datasets = eval_datasets
    if base_dir is not None:
        for d in dataset_configs + eval_datasets:
            candidate = Path(base_dir) / d.path
            if d.format != "hub" and not Path(d.path).is_absolute() and candidate.exists():
                d.path = str(candidate)
    scst = _build(SCSTArguments, values.get("scst"), "scst")
    if scst.enabled and task != "captioning":
        raise ValueError(f"`scst.enabled` applies to `task: captioning`, not {task!r}.")
    if task == "qa" and any(d.question_column is None for d in dataset_configs):
        raise ValueError(
            "`task: qa` needs `question_column` on every dataset (the question is the decoder prompt)."
        )
    return PretrainConfig(
        model=model,
        datasets=dataset_configs,
        data=_build(DataArguments, values.get("data"), "data"),
        optimizer=_build(OptimizerArguments, values.get("optimizer"), "optimizer"),
        training=_build(TrainingArguments, values.get("training"), "training"),
        task=task,
        scst=scst,
        evaluation=evaluation,
    )


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that `1e-4` is a float as in YAML 1.2 (YAML 1.1 reads it as a string)."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _parse_yaml(text) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> PretrainConfig:
    """
    Read a YAML training config; `overrides` are `section.key=value` strings (value parsed as YAML), e.g.
    `training.max_steps=100` or `data.per_device_batch_size=16`. Numbers in exponent notation without a dot
    (`1e-4`) are floats.
    """
    with open(path, encoding="utf-8") as handle:
        values = _parse_yaml(handle) or {}
    for override in overrides or []:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ValueError(f"Override {override!r} must look like section.key=value.")
        target = values
        *parents, leaf = key.split(".")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        target[leaf] = _parse_yaml(raw)
    return config_from_dict(values)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def _special_ids(tokenizer) -> dict[str, int]:
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "mask_token_id": tokenizer.mask_token_id,
    }
    return {name: value for name, value in ids.items() if value is not None}


def _sync_text_config_with_tokenizer(config, tokenizer, nested: bool = True) -> None:
    """Vocabulary size and special ids of a from-scratch text tower follow the tokenizer it is trained with."""
    text = config.text_config if nested else config
    text.vocab_size = len(tokenizer)
    ids = _special_ids(tokenizer)
    for name, value in ids.items():
        setattr(text, name, value)
    if not max(ids.values(), default=0) < text.random_token_start < text.vocab_size:
        # The BERT default (106) skips BERT's [unused] entries; a custom vocabulary starts right after its specials.
        text.random_token_start = max(tokenizer.all_special_ids) + 1


# Sub-config fields that a pretrained encoder's checkpoint decides (its weights have these shapes).
_ARCHITECTURE_FIELDS = frozenset(
    {
        "model_type",
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "patch_size",
        "qkv_bias",
        "num_channels",
    }
)


def _without_architecture(values: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The YAML's entries for a tower initialised from a checkpoint, minus those the checkpoint decides."""
    values = dict(values or {})
    ignored = sorted(set(values) & _ARCHITECTURE_FIELDS)
    if ignored:
        logger.warning(
            "%s: %s come from the pretrained encoder; the config's values are ignored.", name, ignored
        )
    return {k: v for k, v in values.items() if k not in _ARCHITECTURE_FIELDS}


def build_model(args: ModelArguments, processor: ValorProcessor, model_class: type = ValorForPreTraining):
    """
    Create the model to train, an instance of `model_class` (`ValorForPreTraining` by default; the fine-tuning
    tasks pass `ValorForRetrieval` or `ValorForConditionalGeneration`, whose weights load from a checkpoint of any
    VALOR head): a saved VALOR model, or a new one from `config`/`config_name_or_path` whose text
    vocabulary follows the processor's tokenizer, optionally initialised from pretrained single-modality encoders
    (through [`~transformers_valor.initialization.init_from_encoders`]; the sub-config of a tower given as an
    encoder is derived from that encoder, and the YAML's entries for it only update it, e.g. special ids).
    """
    if args.pretrained_model_name_or_path:
        model = model_class.from_pretrained(args.pretrained_model_name_or_path)
    else:
        if args.config_name_or_path:
            values = ValorConfig.from_pretrained(args.config_name_or_path).to_dict()
        else:
            values = copy.deepcopy(args.config or {})
        encoders = {"text": args.text_encoder, "vision": args.vision_encoder, "audio": args.audio_encoder}
        if not any(encoders.values()):
            config = ValorConfig(**values)
            _sync_text_config_with_tokenizer(config, processor.tokenizer)
            model = model_class(ValorConfig(**config.to_dict()))
        else:
            features = processor.feature_extractor
            if args.text_encoder:
                text = _without_architecture(values.get("text_config"), "text_config")
                text.update(_special_ids(processor.tokenizer))
                values["text_config"] = text
            else:
                text_config = ValorConfig(**values).text_config
                _sync_text_config_with_tokenizer(text_config, processor.tokenizer, nested=False)
                values["text_config"] = text_config.to_dict()
            if args.audio_encoder:
                audio = _without_architecture(values.get("audio_config"), "audio_config")
                audio.setdefault("image_size", [features.num_mel_bins, features.clip_length])
                values["audio_config"] = audio
            if args.vision_encoder:
                values.pop("vision_config", None)  # derived from the checkpoint
            model, report = init_from_encoders(
                text=args.text_encoder,
                vision=args.vision_encoder,
                audio=args.audio_encoder,
                image_size=processor.video_processor.size["height"],
                model_class=model_class,
                **values,
            )
            logger.info(
                "Initialised from encoders %s: %d weights copied, %d new",
                encoders,
                len(report.copied),
                len(report.new),
            )
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    check_processor_matches_model(processor, model.config)
    return model


def check_processor_matches_model(processor: ValorProcessor, config: ValorConfig) -> None:
    """Raise a ValueError naming the setting when the processor's outputs cannot feed the model."""
    problems = []
    if len(processor.tokenizer) > config.text_config.vocab_size:
        problems.append(
            f"tokenizer has {len(processor.tokenizer)} tokens, the model {config.text_config.vocab_size}"
        )
    features = processor.feature_extractor
    expected = (
        list(config.audio_config.image_size)
        if isinstance(config.audio_config.image_size, (list, tuple))
        else None
    )
    if expected is not None and expected != [features.num_mel_bins, features.clip_length]:
        problems.append(
            f"audio clips are (mel {features.num_mel_bins}, time {features.clip_length}) but audio_config.image_size is "
            f"{expected}"
        )
    size = processor.video_processor.size
    if not config.is_clip_vision and size["height"] != size["width"]:
        problems.append(f"frames are {size}, Video Swin expects square frames")
    if problems:
        raise ValueError("The processor does not match the model: " + "; ".join(problems) + ".")


# ----------------------------------------------------------------------------------------------------------------
# Optimizer and schedule
# ----------------------------------------------------------------------------------------------------------------


def _no_decay_names(model: nn.Module) -> set[str]:
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    names = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if param_name == "bias" or isinstance(module, norm_types) or param.dim() == 0:
                names.add(full)
    return names


def build_optimizer(model: nn.Module, args: OptimizerArguments) -> torch.optim.AdamW:
    """
    AdamW with VALOR's settings: betas (0.9, 0.98), weight decay 0.01 on weight matrices and embeddings only,
    i.e. no decay on biases, LayerNorm (and other normalisation) weights and the scalar temperature; optional
    per-prefix learning rates (`learning_rate_overrides`).
    """
    no_decay = _no_decay_names(model)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = args.learning_rate
        for prefix, override in sorted(args.learning_rate_overrides.items(), key=lambda kv: -len(kv[0])):
            if name.startswith(prefix):
                lr = override
                break
        decay = 0.0 if name in no_decay else args.weight_decay
        groups.setdefault((lr, decay), []).append(param)
    param_groups = [
        {"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()
    ]
    return torch.optim.AdamW(param_groups, lr=args.learning_rate, betas=tuple(args.betas), eps=args.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, args: OptimizerArguments, num_training_steps: int):
    """Warm-up (`warmup_steps` or `warmup_ratio` of the steps) then `lr_scheduler` decay (linear by default)."""
    warmup = (
        args.warmup_steps
        if args.warmup_steps is not None
        else math.ceil(args.warmup_ratio * num_training_steps)
    )
    return get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=num_training_steps
    )


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def build_dataloader(
    config: PretrainConfig,
    processor: ValorProcessor,
    model_config: ValorConfig,
    accelerator: Accelerator,
) -> tuple[DataLoader, MixedBatchSampler, MixedVideoTextDataset]:
    """
    The training DataLoader: the dataset mix (decoded cache attached when `data.cache_decoded`), a
    [`MixedBatchSampler`] giving this process its slice of every global batch, and the collator.

    The DataLoader has its own `torch.Generator`, so creating its iterator never consumes the global RNG (which
    drives dropout): a resumed run keeps the same random stream as the uninterrupted one.
    """
    data = config.data
    mix, summary = load_mixture(config.datasets)
    logger.info("Training mix: %s", summary)
    if data.cache_decoded:
        cache_dir = data.cache_dir or os.path.join(config.training.output_dir, "decoded_cache")
        with accelerator.main_process_first():
            for index, dataset_config in enumerate(config.datasets):
                cache = build_decoded_cache(
                    mix._rows[index],
                    dataset_config,
                    processor,
                    cache_dir,
                    num_workers=data.cache_num_workers
                    if data.cache_num_workers is not None
                    else os.cpu_count() or 1,
                    dtype=data.cache_dtype,
                    progress=accelerator.is_local_main_process,
                )
                mix.attach_cache(index, cache)
    sampler = MixedBatchSampler(
        mix.sizes,
        [d.ratio for d in config.datasets],
        data.per_device_batch_size,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
        seed=config.training.seed,
        batches_per_epoch=data.batches_per_epoch,
    )
    masking = CaptionMaskingConfig.from_model_config(model_config.text_config)
    collator = ValorPretrainingCollator(
        processor,
        config.datasets,
        masking,
        max_text_length=data.max_text_length,
        caption_objective=model_config.caption_objective,
        training=True,
    )
    loader = DataLoader(
        mix,
        batch_sampler=sampler,
        collate_fn=collator,
        num_workers=data.num_workers,
        generator=torch.Generator().manual_seed(config.training.seed),
        persistent_workers=False,
    )
    return loader, sampler, mix


# ----------------------------------------------------------------------------------------------------------------
# Loop
# ----------------------------------------------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
    """Raised when the loss is NaN or infinite; the message names the step and the batch's sample ids."""


class DecodeFailureError(RuntimeError):
    """Raised when more than `data.max_failed_share` of the samples could not be decoded."""


@dataclass
class TrainState:
    """Progress saved with every checkpoint (registered with `accelerator.register_for_checkpointing`)."""

    step: int = 0
    batches_consumed: int = 0
    samples_seen: int = 0
    samples_failed: int = 0

    def state_dict(self) -> dict[str, int]:
        """Plain-data state for `save_state`."""
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore from `state_dict()`."""
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainResult:
    """What [`train`] returns: the final step, the per-step losses and where things were written."""

    step: int
    losses: list[float]
    final_dir: Path | None
    last_checkpoint: Path | None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `<output_dir>/checkpoints`, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """`"latest"` -> the newest checkpoint in `output_dir` (None when there is none); a path -> itself."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint folder {path}.")
    return path


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, step: int, limit: int | None
) -> Path:
    """
    `accelerator.save_state` into `checkpoints/.tmp-checkpoint-<step>`, then rename it to `checkpoint-<step>`:
    a crash while saving never leaves a checkpoint that looks complete. Older checkpoints beyond `limit` are
    deleted.
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if limit:
            for old in list_checkpoints(output_dir)[:-limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(values, dict):
        for key, value in values.items():
            out.update(_flatten(value, f"{prefix}{key}/"))
    elif isinstance(values, list) and values and all(isinstance(v, dict) for v in values):
        for i, value in enumerate(values):
            out.update(_flatten(value, f"{prefix}{i}/"))
    else:
        out[prefix.rstrip("/")] = values if isinstance(values, (int, float, str, bool)) else str(values)
    return out


def create_accelerator(config: PretrainConfig) -> Accelerator:
    """
    An Accelerator set up from the config (accumulation, precision, trackers, project dir).

    Fine-tuning always runs DDP with `find_unused_parameters=True`: retrieval leaves the decoder's cross-attention
    unused, captioning and QA the MGA projections, weight MLPs and temperature.
    """
    args = config.training
    kwargs: dict[str, Any] = {}
    if args.mixed_precision is not None:
        kwargs["mixed_precision"] = args.mixed_precision
    find_unused = args.find_unused_parameters
    if config.task != "pretrain" and not find_unused:
        logger.warning(
            "task %r leaves parameters unused: DDP's find_unused_parameters is turned on.", config.task
        )
        find_unused = True
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=list(args.report_to) or None,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
        # Without a GPU, run on CPU (with gloo when launched with several processes).
        cpu=not torch.cuda.is_available(),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
        **kwargs,
    )


def train(
    config: PretrainConfig,
    resume_from_checkpoint: str | None = None,
    stop_after_steps: int | None = None,
    accelerator: Accelerator | None = None,
) -> TrainResult:
    """
    Pretrain or fine-tune VALOR as configured (`config.task`), under Accelerate (single process, DDP, FSDP or
    DeepSpeed per `accelerate launch`).

    Args:
        config ([`PretrainConfig`]): the run.
        resume_from_checkpoint (`str`, *optional*): a checkpoint folder or `"latest"`; model, optimizer,
            scheduler, RNG states and progress are restored and the data continues with the next batch the
            uninterrupted run would have used.
        stop_after_steps (`int`, *optional*): save a checkpoint and return after this many optimizer steps
            (time-boxed jobs, tests of preemption); the final model is then not written.
        accelerator (`Accelerator`, *optional*): an existing one (default: [`create_accelerator`]).

    Returns:
        [`TrainResult`]. Writes `<output_dir>/metrics.jsonl` (one line per step), checkpoints, tracker logs and,
        when training completes, `<output_dir>/final` (model + processor, `save_pretrained` format).

    Raises:
        NonFiniteLossError: the loss became NaN/inf (after a checkpoint of the last good state is written).
        DecodeFailureError: too many undecodable samples.
    """
    args = config.training
    accelerator = accelerator or create_accelerator(config)
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    processor = ValorProcessor.from_pretrained(config.model.processor)
    model = build_model(config.model, processor, TASK_MODEL_CLASSES[config.task])
    loader, sampler, mix = build_dataloader(config, processor, model.config, accelerator)
    if config.task != "pretrain":
        # The task's model and objective in one module, so that DDP sees one forward per backward.
        scorer = None
        if config.scst.enabled:
            # CIDEr-D document frequencies from every training reference, computed once.
            references = [captions for rows in mix._rows for captions in rows["captions"]]
            scorer = CiderD(references, sigma=config.scst.cider_sigma)
        model = ValorFinetuningModule(model, config.task, config.scst, scorer, processor.tokenizer)

    accumulation = args.gradient_accumulation_steps
    if args.max_steps is not None:
        total_steps = args.max_steps
    else:
        total_steps = max(1, math.ceil(args.num_epochs * len(sampler) / accumulation))
    optimizer = build_optimizer(model, config.optimizer)
    scheduler = build_scheduler(optimizer, config.optimizer, total_steps)

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        if ds_config.get("train_micro_batch_size_per_gpu") in (None, "auto"):
            # DeepSpeed reads the micro-batch size from a prepared DataLoader; ours is per-process by design.
            ds_config["train_micro_batch_size_per_gpu"] = config.data.per_device_batch_size
    model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler is stepped once per optimizer step by this loop (not per process, as a prepared one would be).
    accelerator.register_for_checkpointing(scheduler)
    state = TrainState()
    accelerator.register_for_checkpointing(state)

    checkpoint = resolve_checkpoint(args.output_dir, resume_from_checkpoint)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        logger.info("Resumed from %s at step %d", checkpoint, state.step)
    if accelerator.is_main_process:
        config_for_trackers = _flatten(config.to_dict())
        accelerator.init_trackers(args.run_name, config=config_for_trackers)

    metrics_file = output_dir / "metrics.jsonl"
    losses: list[float] = []
    progress = None
    if args.progress_bar and accelerator.is_local_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=total_steps, initial=state.step, desc=config.task, unit="step", dynamic_ncols=True
        )
    data = config.data
    window: dict[str, float] = {}
    window_count = 0
    step_sum: dict[str, float] = {}
    step_micro = 0
    samples_in_window = 0
    window_start = time.perf_counter()
    last_checkpoint: Path | None = None
    batches_per_epoch = len(sampler)
    model.train()

    while state.step < total_steps:
        epoch, offset = divmod(state.batches_consumed, batches_per_epoch)
        sampler.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, offset) if offset else loader
        for batch in epoch_loader:
            state.batches_consumed += 1
            kept = len(batch["sample_ids"])
            # Every process must agree on the batch size (the MGA gather) and on stopping.
            stats = accelerator.gather(
                torch.tensor([[len(batch["failures"]), batch["num_items"], kept]], device=accelerator.device)
            )
            failed, seen, smallest = int(stats[:, 0].sum()), int(stats[:, 1].sum()), int(stats[:, 2].min())
            state.samples_failed += failed
            state.samples_seen += seen
            if failed and accelerator.is_main_process:
                logger.warning(
                    "step %d: skipped %d undecodable sample(s) (%d of %d so far): %s",
                    state.step + 1,
                    failed,
                    state.samples_failed,
                    state.samples_seen,
                    "; ".join(str(f) for f in batch["failures"]),
                )
            if (
                state.samples_seen >= data.min_samples_for_failure_check
                and state.samples_failed > data.max_failed_share * state.samples_seen
            ):
                raise DecodeFailureError(
                    f"{state.samples_failed} of {state.samples_seen} samples ({state.samples_failed / state.samples_seen:.1%}) "
                    f"could not be decoded, more than data.max_failed_share={data.max_failed_share:.1%}; check the "
                    "logged paths (missing or damaged video files, or a wrong video_dir / file extension)."
                )
            if smallest == 0:
                continue
            if kept > smallest:
                batch = truncate_batch(batch, smallest)
            inputs = {
                k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v
                for k, v in model_inputs(batch).items()
            }
            if config.task != "pretrain":
                inputs["references"] = batch["references"]

            with accelerator.accumulate(model):
                output = model(**inputs)
                loss = output.loss
                finite = accelerator.reduce(torch.isfinite(loss.detach()).float().reshape(1), "sum")
                if int(finite.item()) != accelerator.num_processes:
                    _stop_on_nan(accelerator, args, state, batch, loss)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.optimizer.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), config.optimizer.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad()

            components = _loss_components(output, loss)
            for key, value in components.items():
                step_sum[key] = step_sum.get(key, 0.0) + float(value)
            step_micro += 1
            samples_in_window += smallest * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue

            # One optimizer step done: average its micro-batches over processes and log.
            state.step += 1
            keys = sorted(step_sum)
            local = torch.tensor([step_sum[k] / step_micro for k in keys], device=accelerator.device)
            mean = accelerator.reduce(local, "mean").tolist()
            step_values = dict(zip(keys, mean))
            step_sum, step_micro = {}, 0
            losses.append(step_values["loss"])
            for key, value in step_values.items():
                window[key] = window.get(key, 0.0) + value
            window_count += 1
            if accelerator.is_main_process:
                with open(metrics_file, "a", encoding="utf-8") as handle:
                    handle.write(
                        json.dumps({"step": state.step, **step_values, "lr": scheduler.get_last_lr()[0]})
                        + "\n"
                    )
            if state.step % args.log_every == 0 or state.step == total_steps:
                elapsed = time.perf_counter() - window_start
                logs = {f"train/{k}": v / window_count for k, v in window.items()}
                logs["train/learning_rate"] = scheduler.get_last_lr()[0]
                logs["train/samples_per_second"] = samples_in_window / max(elapsed, 1e-9)
                logs["train/temperature"] = float(
                    1.0 / _valor_model(accelerator, model).get_logit_scale().detach()
                )
                logs["train/decode_failures"] = state.samples_failed
                accelerator.log(logs, step=state.step)
                if progress is not None:
                    progress.set_postfix(
                        loss=f"{logs['train/loss']:.3f}",
                        mga=f"{logs.get('train/mga', float('nan')):.3f}",
                        mgc=f"{logs.get('train/mgc', float('nan')):.3f}",
                        samples_s=f"{logs['train/samples_per_second']:.1f}",
                    )
                window, window_count, samples_in_window = {}, 0, 0
                window_start = time.perf_counter()
            if progress is not None:
                progress.update(1)
            done = state.step >= total_steps
            stop = stop_after_steps is not None and state.step >= stop_after_steps
            if (args.checkpoint_every and state.step % args.checkpoint_every == 0) or done or stop:
                last_checkpoint = save_checkpoint(accelerator, output_dir, state.step, args.save_total_limit)
            if done or stop:
                break
        else:
            continue
        break

    if progress is not None:
        progress.close()
    final_dir = None
    if state.step >= total_steps:
        final_dir = save_final_model(accelerator, model, processor, output_dir / "final")
    accelerator.end_training()
    return TrainResult(step=state.step, losses=losses, final_dir=final_dir, last_checkpoint=last_checkpoint)


def _loss_components(output, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """The logged parts of a step's loss: pretraining's `mga`, `mgc` and per-group losses, or a task's components."""
    components = {"loss": loss.detach()}
    if isinstance(output, ValorPreTrainingOutput):
        if output.contrastive_loss is not None:
            components["mga"] = output.contrastive_loss.detach()
        if output.caption_loss is not None:
            components["mgc"] = output.caption_loss.detach()
        components.update({k: v.detach() for k, v in output.group_losses.items()})
    else:
        components.update({k: v.detach() for k, v in output.components.items()})
    return components


def _valor_model(accelerator: Accelerator, model):
    """The `ValorModel` inside a prepared training model (pretraining head or fine-tuning module)."""
    unwrapped = accelerator.unwrap_model(model)
    if isinstance(unwrapped, ValorFinetuningModule):
        unwrapped = unwrapped.model
    return unwrapped.valor


def _stop_on_nan(accelerator: Accelerator, args: TrainingArguments, state: TrainState, batch, loss) -> None:
    """Save the last good state (before this step's update) and raise NonFiniteLossError on every process."""
    sample_ids = [sid for ids in gather_object([batch["sample_ids"]]) for sid in ids]
    path = save_checkpoint(accelerator, args.output_dir, state.step, None)
    raise NonFiniteLossError(
        f"Non-finite loss ({float(loss.detach()):.4g} on process {accelerator.process_index}) at step {state.step + 1}, "
        f"dataset {batch['dataset']!r}; batch sample ids: {sample_ids}. The last good state (after step {state.step}) "
        f"is saved in {path}."
    )


def save_final_model(accelerator: Accelerator, model, processor: ValorProcessor, final_dir: Path) -> Path:
    """
    `save_pretrained` of the trained model (full state dict gathered under FSDP/DeepSpeed) and the processor; a
    fine-tuning module saves the task's model (e.g. a `ValorForRetrieval` folder).
    """
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if isinstance(unwrapped, ValorFinetuningModule):
            unwrapped = unwrapped.model
            state_dict = {k[len("model.") :]: v for k, v in state_dict.items() if k.startswith("model.")}
        unwrapped.save_pretrained(final_dir, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(final_dir)
    accelerator.wait_for_everyone()
    return final_dir
