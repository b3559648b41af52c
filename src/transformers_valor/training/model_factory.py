"""The model a run trains: from scratch, from a VALOR checkpoint, or from pretrained single-modality encoders.

[`build_model`] creates an instance of the task's model class ([`TASK_MODEL_CLASSES`]); a from-scratch text tower
follows the processor's tokenizer ([`sync_text_config_with_tokenizer`]), and the task prompts' token ids are taken
from it when the config has none; [`check_processor_matches_model`] stops a run whose processor cannot feed the
model before any training step.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from ..configuration_valor import ValorConfig, tokenize_task_prompts
from ..conversion import init_from_encoders
from ..modeling_valor import ValorForConditionalGeneration, ValorForPreTraining, ValorForRetrieval
from ..modeling_video_swin import ValorVideoSwinModel
from ..processing_valor import ValorProcessor
from .config import ModelArguments

logger = logging.getLogger(__name__)

# The model class each task trains and saves.
TASK_MODEL_CLASSES: dict[str, type] = {
    "pretrain": ValorForPreTraining,
    "retrieval": ValorForRetrieval,
    "captioning": ValorForConditionalGeneration,
    "qa": ValorForConditionalGeneration,
}

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


def _special_ids(tokenizer) -> dict[str, int]:
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "mask_token_id": tokenizer.mask_token_id,
    }
    return {name: value for name, value in ids.items() if value is not None}


def sync_text_config_with_tokenizer(config, tokenizer, nested: bool = True) -> None:
    """
    Make a from-scratch text tower follow the tokenizer it is trained with: vocabulary size, special ids, and
    the first id that caption masking may draw as a random replacement.

    Args:
        config: a [`ValorConfig`] (`nested=True`) or its `text_config` (`nested=False`), changed in place.
        tokenizer: the processor's tokenizer.
    """
    text = config.text_config if nested else config
    text.vocab_size = len(tokenizer)
    ids = _special_ids(tokenizer)
    for name, value in ids.items():
        setattr(text, name, value)
    if not max(ids.values(), default=0) < text.random_token_start < text.vocab_size:
        # The BERT default (106) skips BERT's [unused] entries; a custom vocabulary starts right after its specials.
        text.random_token_start = max(tokenizer.all_special_ids) + 1


def _without_architecture(values: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The YAML's entries for a tower initialised from a checkpoint, minus those the checkpoint decides."""
    values = dict(values or {})
    ignored = sorted(set(values) & _ARCHITECTURE_FIELDS)
    if ignored:
        logger.warning(
            "%s: %s come from the pretrained encoder; the config's values are ignored.", name, ignored
        )
    return {k: v for k, v in values.items() if k not in _ARCHITECTURE_FIELDS}


def _from_encoders(
    args: ModelArguments, processor: ValorProcessor, values: dict[str, Any], model_class: type
):
    """A new model whose towers given as encoders are copied from them (`conversion.init_from_encoders`)."""
    features = processor.feature_extractor
    if args.text_encoder:
        text = _without_architecture(values.get("text_config"), "text_config")
        text.update(_special_ids(processor.tokenizer))
        values["text_config"] = text
    else:
        text_config = ValorConfig(**values).text_config
        sync_text_config_with_tokenizer(text_config, processor.tokenizer, nested=False)
        values["text_config"] = text_config.to_dict()
    if args.audio_encoder:
        audio = _without_architecture(values.get("audio_config"), "audio_config")
        audio.setdefault("image_size", [features.num_mel_bins, features.clip_length])
        values["audio_config"] = audio
    if args.vision_encoder:
        values.pop("vision_config", None)  # derived from the checkpoint
    encoders = {"text": args.text_encoder, "vision": args.vision_encoder, "audio": args.audio_encoder}
    model, report = init_from_encoders(
        **encoders,
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
    return model


def build_model(args: ModelArguments, processor: ValorProcessor, model_class: type = ValorForPreTraining):
    """
    Create the model to train, an instance of `model_class` (`ValorForPreTraining` by default; the fine-tuning
    tasks pass `ValorForRetrieval` or `ValorForConditionalGeneration`, whose weights load from a checkpoint of any
    VALOR head): a saved VALOR model, or a new one from `config`/`config_name_or_path` whose text
    vocabulary follows the processor's tokenizer, optionally initialised from pretrained single-modality encoders
    (through [`~transformers_valor.conversion.init_from_encoders`]; the sub-config of a tower given as an
    encoder is derived from that encoder, and the YAML's entries for it only update it, e.g. special ids).
    """
    if args.pretrained_model_name_or_path:
        model = model_class.from_pretrained(args.pretrained_model_name_or_path)
    else:
        if args.config_name_or_path:
            values = ValorConfig.from_pretrained(args.config_name_or_path).to_dict()
        else:
            values = copy.deepcopy(args.config or {})
        if args.text_encoder or args.vision_encoder or args.audio_encoder:
            model = _from_encoders(args, processor, values, model_class)
        else:
            config = ValorConfig(**values)
            sync_text_config_with_tokenizer(config, processor.tokenizer)
            model = model_class(ValorConfig(**config.to_dict()))
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if args.vision_frozen_stages >= 0:
        freeze_video_stages(model, args.vision_frozen_stages)
    if model.config.task_prompt_ids is None:
        model.config.set_task_prompt_ids(processor.tokenizer)
    check_processor_matches_model(processor, model.config)
    return model


def freeze_video_stages(model, num_stages: int) -> None:
    """`model.valor.vision_model.freeze_stages(num_stages)`; a ValueError names the tower when it is not a Video Swin."""
    tower = model.valor.vision_model
    if not isinstance(tower, ValorVideoSwinModel):
        raise ValueError(
            f"`model.vision_frozen_stages` applies to a Video Swin tower; this model's video tower is "
            f"{type(tower).__name__} (leave it at -1, or lower its rate with `optimizer.vision_learning_rate`)."
        )
    tower.freeze_stages(num_stages)


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
    tokenized = tokenize_task_prompts(processor.tokenizer, config.task_prompts)
    for name, ids in (config.task_prompt_ids or {}).items():
        if tokenized[name] != list(ids):
            problems.append(
                f"task prompt {name!r} is {ids} in the model but {tokenized[name]} for the tokenizer"
            )
    if problems:
        raise ValueError("The processor does not match the model: " + "; ".join(problems) + ".")
