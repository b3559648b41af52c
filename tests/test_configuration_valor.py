"""ValorConfig and its sub-configs, and the one table of modality groups."""

import pytest
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import AutoConfig, CLIPVisionConfig, ViTConfig

from helpers import tiny_audio_config, tiny_valor_config
from transformers_valor import (
    MODALITY_GROUPS,
    ValorAudioConfig,
    ValorConfig,
    ValorVideoSwinConfig,
    get_modality_group,
)
from transformers_valor.configuration_valor import CAPTION_GROUPS, CONTRASTIVE_GROUPS, RETRIEVAL_GROUPS


def test_defaults_reproduce_valor_b():
    config = ValorConfig()
    text, vision, audio = config.text_config, config.vision_config, config.audio_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.vocab_size) == (
        768,
        12,
        12,
        30522,
    )
    assert isinstance(vision, ValorVideoSwinConfig) and vision.hidden_size == 1024
    assert (vision.depths, vision.num_heads, vision.window_size, vision.embed_dim) == (
        [2, 2, 18, 2],
        [4, 8, 16, 32],
        [8, 7, 7],
        128,
    )
    assert (
        audio.model_type == "valor_audio" and list(audio.image_size) == [64, 512] and audio.num_channels == 1
    )
    assert (audio.patch_size, audio.hidden_size, audio.layer_norm_eps) == (16, 768, 1e-12)
    assert config.projection_dim == 512 and config.contrastive_type == "fine"
    assert config.contrastive_loss_weight == 1.5 and config.temperature_init == 0.07
    assert config.logit_scale_type == "temperature" and config.caption_objective == "unimlm"


def test_valor_l_with_clip_vision_config(tmp_path):
    clip = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        patch_size=14,
        image_size=224,
    )
    config = ValorConfig(vision_config=clip, use_task_prompt=True)
    assert config.is_clip_vision and config.logit_scale_type == "log_scale"
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ValorConfig) and isinstance(loaded.vision_config, CLIPVisionConfig)
    assert loaded.vision_config.patch_size == 14 and loaded.use_task_prompt


def test_config_round_trip(tmp_path):
    config = tiny_valor_config(contrastive_type="coarse", cross_attention_layout="parallel")
    config.save_pretrained(tmp_path)
    loaded = ValorConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.text_config.cross_attention_layout == "parallel"


@pytest.mark.parametrize(
    "field, value",
    [
        ("contrastive_type", "medium"),
        ("caption_objective", "mlm"),
        ("cross_attention_layout", "sideways"),
        ("logit_scale_type", "linear"),
        ("contrastive_groups", ["tv", "xy"]),
        ("caption_groups", ["va"]),
        ("projection_dim", 0),
        ("temperature_init", -1.0),
        ("max_video_frames", 0),
        ("label_smoothing", 1.5),
        ("contrastive_loss_weight", -1.0),
    ],
)
def test_invalid_config_values_name_the_field(field, value):
    # Enumerated fields are typed with Literal, so huggingface_hub's strict dataclass check names them.
    with pytest.raises((ValueError, StrictDataclassFieldValidationError), match=field):
        tiny_valor_config(**{field: value})


def test_wrong_sub_config_types():
    with pytest.raises(ValueError, match="vision_config"):
        ValorConfig(vision_config={"model_type": "vit"})
    with pytest.raises(ValueError, match="audio_config"):
        ValorConfig(audio_config={"model_type": "valor_video_swin"})


def test_earlier_vit_audio_config_still_loads():
    legacy = {**tiny_audio_config(), "model_type": "vit"}
    config = tiny_valor_config(audio_config=legacy)
    assert isinstance(config.audio_config, ValorAudioConfig) and config.audio_config.hidden_size == 32
    from_instance = tiny_valor_config(audio_config=ViTConfig(**tiny_audio_config(), num_channels=1))
    assert isinstance(from_instance.audio_config, ValorAudioConfig)
    assert from_instance.audio_config.num_channels == 1


# ------------------------------------------------------------------------------------------- modality groups
def test_group_table_is_consistent():
    assert CONTRASTIVE_GROUPS == ("tv", "ta", "tva", "va", "vta", "atv")
    assert CAPTION_GROUPS == ("tv", "ta", "tva") and RETRIEVAL_GROUPS == ("tv", "ta", "tva")
    for name, group in MODALITY_GROUPS.items():
        assert group.name == name
        letters = {"t": "text", "v": "video", "a": "audio"}
        # The name spells the query side first, then the candidates.
        assert tuple(letters[c] for c in name) == group.query + group.candidates
        if group.decoder_modalities is not None:
            assert group.query == ("text",) and group.decoder_modalities == group.candidates
    assert MODALITY_GROUPS["tva"].metric_names == ("t2va", "va2t")
    assert [MODALITY_GROUPS[g].media for g in ("tv", "ta", "tva", "va")] == ["video", "audio", "both", "both"]


def test_unknown_group_names_the_allowed_ones():
    assert get_modality_group("tv", "caption").decoder_modalities == ("video",)
    with pytest.raises(ValueError, match=r"caption group 'va'; choose one of \['tv', 'ta', 'tva'\]"):
        get_modality_group("va", "caption")
    with pytest.raises(ValueError, match="contrastive group 'xy'"):
        get_modality_group("xy")


def test_task_prompts_defaults_ids_and_validation(tmp_path):
    from transformers import BertTokenizerFast
    from transformers.models.bert.tokenization_bert import load_vocab

    from transformers_valor.configuration_valor import DEFAULT_TASK_PROMPTS

    config = tiny_valor_config()
    assert config.task_prompts == DEFAULT_TASK_PROMPTS and config.task_prompt_ids is None
    assert config.task_prompts["retrieval"] == "project language in common space"
    assert config.task_prompts["qa"] == "answer the question"
    assert config.mlm_groups == ["tva", "tv", "ta"] and not config.use_task_prompt
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
        {w for text in DEFAULT_TASK_PROMPTS.values() for w in text.split()}
    )
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizerFast(vocab=load_vocab(str(vocab)), do_lower_case=True)
    ids = config.set_task_prompt_ids(tokenizer)
    index = {w: i for i, w in enumerate(words)}
    assert ids["captioning"] == [index["[CLS]"]] + [
        index[w] for w in DEFAULT_TASK_PROMPTS["captioning"].split()
    ] + [index["[SEP]"]]
    config.save_pretrained(tmp_path / "saved")
    assert ValorConfig.from_pretrained(tmp_path / "saved").task_prompt_ids == ids
    legacy = ValorConfig(**{**tiny_valor_config().to_dict(), "task_prompts": None, "task_prompt": "say it"})
    assert legacy.task_prompts["captioning"] == "say it"  # an earlier config's single captioning prompt
    with pytest.raises(ValueError, match="unknown names"):
        tiny_valor_config(task_prompts={"translation": "go"})
    with pytest.raises(ValueError, match="at least 3 ints"):
        tiny_valor_config(task_prompt_ids={"qa": [1, 2]})
    with pytest.raises(StrictDataclassFieldValidationError, match="mlm_groups"):
        tiny_valor_config(mlm_groups=["va"])
