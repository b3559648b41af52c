"""The YAML schema of a training run (documented in docs/pretraining.md and docs/tasks/) and its loader.

A run file has the sections `task`, `model`, `datasets`, `data`, `optimizer`, `training` and, for fine-tuning,
`scst` and `evaluation`; each section is a dataclass here (`datasets` entries are
`data.datasets.DatasetConfig`s). [`load_config`] reads a file with `--set section.key=value` overrides and
[`config_from_dict`] validates plain data: unknown keys are an error that names them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from ..data.datasets import DatasetConfig
from .config_types import check_fields, require, require_at_least
from .evaluation import EvaluationArguments
from .scst import SCSTArguments

Task = Literal["pretrain", "retrieval", "captioning", "qa"]
TASKS: tuple[str, ...] = get_args(Task)
FLOAT_CACHE_DTYPES: tuple[str, ...] = ("float16", "bfloat16", "float32")
SECTIONS: tuple[str, ...] = (
    "task",
    "model",
    "datasets",
    "data",
    "optimizer",
    "training",
    "scst",
    "evaluation",
)


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
        vision_frozen_stages (`int`, defaults to -1): Video Swin's `frozen_stages` for the video tower: `0`
            freezes its patch embedding, `k > 0` also its first `k` stages, `-1` nothing (see
            [`ValorVideoSwinModel.freeze_stages`]). The frozen layers get no gradients and no optimizer state.
    """

    processor: str = ""
    config: dict[str, Any] | None = None
    config_name_or_path: str | None = None
    pretrained_model_name_or_path: str | None = None
    text_encoder: str | None = None
    vision_encoder: str | None = None
    audio_encoder: str | None = None
    gradient_checkpointing: bool = False
    vision_frozen_stages: int = -1

    def __post_init__(self):
        require(
            self.vision_frozen_stages >= -1, "model.vision_frozen_stages", self.vision_frozen_stages, ">= -1"
        )


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
        learning_rate_overrides (`dict[str, float]`, *optional*): learning rate per parameter-name prefix of the
            task's model, e.g. `{"valor.vision_model": 8e-6}` (VALOR-L's CLIP tower). A prefix given here wins
            over the tower rates below.
        text_learning_rate (`float`, *optional*): learning rate of the text tower (`text_model`, the shared
            encoder/decoder with its cross-attention, and the MLM head `cls`) under any head; default
            `learning_rate`.
        vision_learning_rate (`float`, *optional*): learning rate of the video tower (`vision_model`).
        audio_learning_rate (`float`, *optional*): learning rate of the audio tower (`audio_model`).
        lr_scheduler (`str`, defaults to `"linear"`): any `transformers.get_scheduler` name.
        warmup_ratio (`float`, defaults to 0.1): share of the steps used for warm-up (unless `warmup_steps`).
        warmup_steps (`int`, *optional*): absolute warm-up steps.
        max_grad_norm (`float`, defaults to 5.0): gradient-norm clipping; 0 disables it.
        fused (`bool`, defaults to `True`): AdamW's fused kernel, one pass over each parameter and its state
            (`torch.optim.AdamW(fused=True)`, `transformers`' default `adamw_torch_fused`); `False`: its `foreach`
            kernels, one call per operation over all parameters, with the per-parameter loop's exact arithmetic.
    """

    learning_rate: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    weight_decay: float = 0.01
    learning_rate_overrides: dict[str, float] = field(default_factory=dict)
    text_learning_rate: float | None = None
    vision_learning_rate: float | None = None
    audio_learning_rate: float | None = None
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.1
    warmup_steps: int | None = None
    max_grad_norm: float = 5.0
    fused: bool = True

    def __post_init__(self):
        require(self.learning_rate > 0, "optimizer.learning_rate", self.learning_rate, "> 0")
        betas = self.betas
        require(
            len(betas) == 2 and all(0 <= b < 1 for b in betas),
            "optimizer.betas",
            betas,
            "two numbers in [0, 1)",
        )
        require(self.eps > 0, "optimizer.eps", self.eps, "> 0")
        require(0 <= self.warmup_ratio <= 1, "optimizer.warmup_ratio", self.warmup_ratio, "in [0, 1]")
        require_at_least(
            "optimizer", {"weight_decay": self.weight_decay, "max_grad_norm": self.max_grad_norm}, 0
        )
        require_at_least("optimizer", {"warmup_steps": self.warmup_steps}, 0, optional=True)
        for prefix, rate in self.learning_rate_overrides.items():
            require(rate > 0, f"optimizer.learning_rate_overrides.{prefix}", rate, "> 0")
        for tower in ("text", "vision", "audio"):
            rate = getattr(self, f"{tower}_learning_rate")
            require(rate is None or rate > 0, f"optimizer.{tower}_learning_rate", rate, "> 0 (or unset)")


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
        cache_dtype (`str`, defaults to `"float16"`): storage type of the cached tensors: `"float16"`, `"bfloat16"`
            or `"float32"` (a floating type: integers would round the normalised frames and fbanks).
        cache_num_workers (`int`, *optional*): processes decoding the cache (default: one per CPU core).
        shuffle_buffer (`int`, defaults to 64): streamed datasets (`format: webdataset`): samples read into the
            shuffle window of every (process, worker) stream; memory per worker is this many encoded videos.
    """

    per_device_batch_size: int = 8
    num_workers: int = 2
    max_text_length: int | None = None
    batches_per_epoch: int | None = None
    max_failed_share: float = 0.05
    min_samples_for_failure_check: int = 200
    cache_decoded: bool = False
    cache_dir: str | None = None
    cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    cache_num_workers: int | None = None
    shuffle_buffer: int = 64

    def __post_init__(self):
        require_at_least(
            "data",
            {"per_device_batch_size": self.per_device_batch_size, "shuffle_buffer": self.shuffle_buffer},
            1,
        )
        counts = {
            "num_workers": self.num_workers,
            "min_samples_for_failure_check": self.min_samples_for_failure_check,
        }
        require_at_least("data", counts, 0)
        limits = {"max_text_length": self.max_text_length, "batches_per_epoch": self.batches_per_epoch}
        require_at_least("data", limits, 1, optional=True)
        require_at_least("data", {"cache_num_workers": self.cache_num_workers}, 0, optional=True)
        share = self.max_failed_share
        require(0 <= share <= 1, "data.max_failed_share", share, "in [0, 1]")
        dtypes = list(FLOAT_CACHE_DTYPES)
        require(
            self.cache_dtype in dtypes,
            "data.cache_dtype",
            self.cache_dtype,
            f"a floating type, one of {dtypes}",
        )


@dataclass
class LoopArguments:
    """
    The training loop (the YAML's `training:` section).

    Args:
        output_dir (`str`): receives `checkpoints/`, `logs/` (trackers), `metrics.jsonl` and `final/`.
        seed (`int`, defaults to 42): model initialisation, data order, masking and dropout.
        max_steps (`int`, *optional*): optimizer steps; otherwise `num_epochs` epochs of the mix.
        num_epochs (`float`, defaults to 1.0).
        gradient_accumulation_steps (`int`, defaults to 1).
        mixed_precision (`str`, *optional*): `"no"`, `"fp16"` or `"bf16"`; default: what `accelerate launch`
            (or its config file) says.
        log_every (`int`, defaults to 10): steps between tracker logs.
        checkpoint_every (`int`, *optional*): steps between checkpoints, at least 1 (none when unset; one is
            always written at the end).
        save_total_limit (`int`, *optional*): keep only the newest checkpoints.
        report_to (`list[str]`, defaults to `["tensorboard"]`): Accelerate trackers (`tensorboard`, `wandb`, ...,
            or `[]`).
        run_name (`str`, defaults to `"valor_pretrain"`): tracker project name.
        progress_bar (`bool`, defaults to `True`).
        find_unused_parameters (`bool`, defaults to `True`): DDP's unused-parameter detection. Needed whenever a
            step leaves parameters unused: a video-only dataset's batches skip the audio tower, and the prompt
            embedding is unused without a task prompt.
        overwrite_output_dir (`bool`, defaults to `False`): start afresh in an `output_dir` that holds an earlier
            run, deleting its `checkpoints/`, `final/` and `metrics.jsonl` (without it such a run is refused unless
            it is resumed).
        torch_compile (`bool`, defaults to `False`): compile the towers, the text encoder / decoder and the MLM head
            with `torch.compile` (inductor; `transformers_valor.compile_valor`) before training. The first steps
            compile (minutes for VALOR-B); checkpoints and the saved model are the same as without it.
        keep_freed_cpu_memory (`bool`, defaults to `True`): on the CPU, make glibc's allocator keep the memory a step
            frees for the next one instead of handing it back and page-faulting it in again
            (`transformers_valor.training.cpu_memory`); the process's resident memory stays at the step's peak.
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
    overwrite_output_dir: bool = False
    torch_compile: bool = False
    keep_freed_cpu_memory: bool = True

    def __post_init__(self):
        positive = {
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "log_every": self.log_every,
        }
        require_at_least("training", positive, 1)
        # 0 would silently mean "never": unset is the way to checkpoint only at the end.
        optional = {
            "max_steps": self.max_steps,
            "checkpoint_every": self.checkpoint_every,
            "save_total_limit": self.save_total_limit,
        }
        require_at_least("training", optional, 1, optional=True)
        require(self.num_epochs > 0, "training.num_epochs", self.num_epochs, "> 0")
        choices = [None, "no", "fp16", "bf16"]
        require(
            self.mixed_precision in choices,
            "training.mixed_precision",
            self.mixed_precision,
            f"one of {choices}",
        )


@dataclass
class RunConfig:
    """
    The whole YAML file of a pretraining or fine-tuning run: `task`, `model`, `datasets`, `data`, `optimizer`,
    `training`, and for fine-tuning `scst` (captioning) and `evaluation` (the test sets).

    `task` (defaults to `"pretrain"`): `pretrain`, `retrieval`, `captioning` or `qa`; it picks the model class
    (`model_factory.TASK_MODEL_CLASSES`) and the objective (`objectives.build_objective`).
    """

    model: ModelArguments
    datasets: list[DatasetConfig]
    data: DataArguments = field(default_factory=DataArguments)
    optimizer: OptimizerArguments = field(default_factory=OptimizerArguments)
    training: LoopArguments = field(default_factory=LoopArguments)
    task: Task = "pretrain"
    scst: SCSTArguments = field(default_factory=SCSTArguments)
    evaluation: EvaluationArguments = field(default_factory=EvaluationArguments)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what is saved beside the checkpoints as `train_config.yaml`)."""
        return dataclasses.asdict(self)

    def to_flat_dict(self) -> dict[str, Any]:
        """The config as `section/key` -> scalar pairs (what the trackers accept as hyper-parameters)."""
        return _flatten(self.to_dict())


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


def _build(cls, values: dict[str, Any] | None, where: str):
    """`cls(**values)` after checking the keys and the type of every value (errors name `where.key`)."""
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"`{where}` must be a mapping of settings, got {values!r}.")
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in `{where}`; expected some of {sorted(known)}.")
    return cls(**check_fields(cls, values, where))


def _build_datasets(entries: list[dict[str, Any]] | None, where: str) -> list[DatasetConfig]:
    return [_build(DatasetConfig, d, f"{where}[{i}]") for i, d in enumerate(entries or [])]


def _build_evaluation(values: dict[str, Any] | None) -> EvaluationArguments:
    values = dict(values or {})
    datasets = _build_datasets(values.pop("datasets", None), "evaluation.datasets")
    evaluation = _build(EvaluationArguments, values, "evaluation")
    evaluation.datasets = datasets
    return evaluation


def _check_task_settings(task: str, scst: SCSTArguments, datasets: list[DatasetConfig]) -> None:
    if scst.enabled and task != "captioning":
        raise ValueError(f"`scst.enabled` applies to `task: captioning`, not {task!r}.")
    if task == "qa" and any(d.question_column is None for d in datasets):
        raise ValueError(
            "`task: qa` needs `question_column` on every dataset (the question is the decoder prompt)."
        )
    with_mlm = [d.name for d in datasets if d.mlm_groups]
    if with_mlm and task != "pretrain":
        raise ValueError(f"`mlm_groups` (datasets {with_mlm}) apply to `task: pretrain`, not {task!r}.")


def config_from_dict(values: dict[str, Any], base_dir: str | os.PathLike | None = None) -> RunConfig:
    """
    Build a [`RunConfig`] from plain data (a parsed YAML). Unknown keys raise a ValueError naming them.
    Relative dataset paths are resolved against `base_dir` when they exist there.
    """
    if not isinstance(values, dict):
        raise ValueError(f"A run config is a mapping of sections ({', '.join(SECTIONS)}), got {values!r}.")
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise ValueError(f"Unknown top-level key(s) {unknown}; expected some of {', '.join(SECTIONS)}.")
    task = values.get("task", "pretrain")
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {list(TASKS)}, got {task!r}.")
    if not values.get("datasets"):
        raise ValueError("The config lists no `datasets`.")
    if not isinstance(values["datasets"], list):
        raise ValueError(f"`datasets` must be a list of dataset entries, got {values['datasets']!r}.")
    model = _build(ModelArguments, values.get("model"), "model")
    if not model.processor:
        raise ValueError("`model.processor` (a saved ValorProcessor) is required.")
    datasets = _build_datasets(values["datasets"], "datasets")
    evaluation = _build_evaluation(values.get("evaluation"))
    if base_dir is not None:
        for d in datasets + evaluation.datasets:
            candidate = Path(base_dir) / d.path
            if d.format != "hub" and not Path(d.path).is_absolute() and candidate.exists():
                d.path = str(candidate)
    scst = _build(SCSTArguments, values.get("scst"), "scst")
    _check_task_settings(task, scst, datasets)
    return RunConfig(
        model=model,
        datasets=datasets,
        data=_build(DataArguments, values.get("data"), "data"),
        optimizer=_build(OptimizerArguments, values.get("optimizer"), "optimizer"),
        training=_build(LoopArguments, values.get("training"), "training"),
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


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """
    Set `section.key=value` overrides (values parsed as YAML; list entries by index, e.g. `datasets.0.ratio=2`)
    in the parsed YAML `values`, in place; returns `values`.
    """
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep:
            raise ValueError(f"Override {override!r} must look like section.key=value.")
        target = values
        *parents, leaf = key.split(".")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        target[leaf] = _parse_yaml(raw)
    return values


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """
    Read a YAML training config; `overrides` are `section.key=value` strings (value parsed as YAML), e.g.
    `training.max_steps=100` or `data.per_device_batch_size=16`. Numbers in exponent notation without a dot
    (`1e-4`) are floats.
    """
    with open(path, encoding="utf-8") as handle:
        values = _parse_yaml(handle) or {}
    return config_from_dict(apply_overrides(values, overrides or []))
