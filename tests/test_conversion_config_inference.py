"""Tests of `transformers_valor.conversion.config_inference` on tiny state dicts with the original key layout."""

import pytest

from original_checkpoints import (
    AUDIO,
    CLIP_LAYERS,
    CLIP_WIDTH,
    FF,
    FRAMES,
    IMAGE,
    LAYERS,
    MEL,
    OVERRIDES,
    PROJ,
    SWIN,
    TEXT,
    VOCAB,
    original_state_dict,
    overrides_for,
)
from transformers_valor.conversion import ConversionError, detect_variant, infer_config


def test_variant_and_window_mismatches_are_refused():
    state_dict = original_state_dict("valor-b")
    with pytest.raises(ConversionError, match="does not match"):
        infer_config(state_dict, "valor-l")
    # Without the tiny window override the relative-position tables do not fit the default (8, 7, 7) window.
    with pytest.raises(ConversionError, match="window"):
        infer_config(state_dict, "valor-b", image_size=IMAGE, overrides=OVERRIDES)


def test_detect_variant():
    assert detect_variant(original_state_dict("valor-b")) == "valor-b"
    assert detect_variant(original_state_dict("valor-l")) == "valor-l"
    with pytest.raises(ConversionError, match="Cannot tell"):
        detect_variant({**original_state_dict("valor-b"), **original_state_dict("valor-l")})
    with pytest.raises(ValueError, match="must be one of"):
        infer_config(original_state_dict("valor-b"), "valor-x")


@pytest.mark.parametrize("variant", ["valor-b", "valor-l"])
def test_config_is_read_from_the_shapes(variant):
    config = infer_config(
        original_state_dict(variant), variant, image_size=IMAGE, overrides=overrides_for(variant)
    )
    text, vision, audio = config.text_config, config.vision_config, config.audio_config
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (
        VOCAB,
        TEXT,
        LAYERS,
        FF,
    )
    assert text.add_cross_attention and config.cross_attention_layout == "concat"
    assert (audio.hidden_size, audio.num_hidden_layers, list(audio.image_size)) == (
        AUDIO,
        LAYERS,
        [MEL, FRAMES],
    )
    assert config.projection_dim == PROJ and config.contrastive_type == "fine"
    assert config.max_video_frames == 32 and config.max_audio_clips == 32
    if variant == "valor-b":
        assert vision.model_type == "valor_video_swin" and config.logit_scale_type == "temperature"
        assert list(vision.depths) == SWIN["depths"] and list(vision.num_heads) == SWIN["num_heads"]
        assert vision.embed_dim == SWIN["embed_dim"] and list(vision.patch_size) == SWIN["patch_size"]
        assert not config.use_task_prompt
    else:
        assert vision.model_type == "clip_vision_model" and config.logit_scale_type == "log_scale"
        assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size) == (
            CLIP_WIDTH,
            CLIP_LAYERS,
            IMAGE,
        )
        assert config.use_task_prompt


def test_split_cross_attention_needs_a_layout():
    state_dict = {
        key.replace(".cross_attn.", ".cross_attn_v."): value
        for key, value in original_state_dict("valor-b").items()
    }
    with pytest.raises(ConversionError, match="cross_attention_layout"):
        infer_config(state_dict, "valor-b", image_size=IMAGE, overrides=overrides_for("valor-b"))
    overrides = {**overrides_for("valor-b"), "cross_attention_layout": "video_first"}
    config = infer_config(state_dict, "valor-b", image_size=IMAGE, overrides=overrides)
    assert config.cross_attention_layout == "video_first"
