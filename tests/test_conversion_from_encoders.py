"""Tests of `transformers_valor.conversion.from_encoders` (`init_from_encoders`): VALOR built from tiny BERT /
CLIP / Video Swin / AST checkpoints saved locally."""

import re

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    ASTConfig,
    ASTModel,
    BertConfig,
    BertForPreTraining,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
)

from transformers_valor import (
    ValorConfig,
    ValorForPreTraining,
    ValorModel,
    ValorVideoSwinConfig,
    ValorVideoSwinModel,
)
from transformers_valor.conversion import NEW_WEIGHT_PATTERNS, ast_patch_grid, init_from_encoders
from transformers_valor.conversion.from_encoders import _derive_config, _load_encoders

BERT = dict(
    vocab_size=99,
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)
SPECIAL_IDS = dict(bos_token_id=1, eos_token_id=2, mask_token_id=3, random_token_start=5)
CLIP_VISION = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, patch_size=8
)
# AST on 32 mel bins x 64 frames, patch 8, stride 4 -> a 7 x 15 (frequency, time) patch grid.
AST = dict(
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    patch_size=8,
    num_mel_bins=32,
    max_length=64,
    frequency_stride=4,
    time_stride=4,
)
# A tiny audio tower for models whose audio is not under test.
TINY_AUDIO = dict(
    hidden_size=24, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, patch_size=8
)
AUDIO_IMAGE = [16, 32]  # the tiny VALOR's audio input: a 2 x 4 grid of 8-px patches
SWIN = dict(image_size=32, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=[2, 4, 4])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("encoders")
    models = {
        "bert_pretraining": BertForPreTraining(BertConfig(**BERT)),
        "bert_model": BertModel(BertConfig(**BERT)),
        "clip_vision": CLIPVisionModel(CLIPVisionConfig(image_size=48, **CLIP_VISION)),
        "clip": CLIPModel(
            CLIPConfig(
                text_config=dict(
                    hidden_size=16, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4
                ),
                vision_config=dict(image_size=48, **CLIP_VISION),
                projection_dim=16,
                logit_scale_init_value=3.0,
            )
        ),
        "ast": ASTModel(ASTConfig(**AST)),
        "swin": ValorVideoSwinModel(ValorVideoSwinConfig(**SWIN)),
    }
    paths = {}
    for name, model in models.items():
        # Non-trivial values everywhere (some weights start at 0 or 1), so that copies are distinguishable.
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
        model.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths, models


def _assert_only_documented_new(report, prefix="valor.", extra_prefixes=()):
    allowed = [re.compile(re.escape(prefix) + pattern) for pattern in NEW_WEIGHT_PATTERNS]
    for key in report.new:
        assert any(r.match(key) for r in allowed) or key.startswith(tuple(extra_prefixes)), key


def _resized(grid_positions, old, new):
    """Independent bilinear resize of a row-major (H*W, C) position grid."""
    width = grid_positions.shape[-1]
    grid = grid_positions.reshape(*old, width).permute(2, 0, 1)[None]
    out = F.interpolate(grid, size=new, mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).reshape(-1, width)


def test_bert_clip_ast(checkpoints):
    paths, models = checkpoints
    model, report = init_from_encoders(
        text=paths["bert_pretraining"],
        vision=paths["clip_vision"],
        audio=paths["ast"],
        image_size=32,
        text_config=SPECIAL_IDS,
        audio_config={"image_size": AUDIO_IMAGE},
    )
    assert isinstance(model, ValorForPreTraining)
    _assert_only_documented_new(report)
    weights = model.state_dict()
    bert, clip, ast = models["bert_pretraining"], models["clip_vision"], models["ast"]

    # Text: body and MLM head copied; the decoder stays tied to the word embeddings; cross-attention is new.
    assert torch.equal(
        weights["valor.text_model.encoder.layer.1.attention.self.key.weight"],
        bert.bert.encoder.layer[1].attention.self.key.weight,
    )
    assert torch.equal(
        weights["valor.text_model.embeddings.position_embeddings.weight"],
        bert.bert.embeddings.position_embeddings.weight,
    )
    assert torch.equal(
        weights["cls.predictions.transform.dense.weight"], bert.cls.predictions.transform.dense.weight
    )
    assert torch.equal(weights["cls.predictions.bias"], bert.cls.predictions.bias)
    assert torch.equal(weights["cls.predictions.decoder.weight"], bert.bert.embeddings.word_embeddings.weight)
    assert "valor.text_model.encoder.layer.0.crossattention.self.query.weight" in report.new
    assert not any(key.startswith("cls.") for key in report.new)
    assert model.config.text_config.bos_token_id == 1

    # CLIP: 48-px weights (6 x 6 grid) resized for 32-px frames (4 x 4 grid), CLS position kept.
    assert model.config.vision_config.image_size == 32
    assert torch.equal(
        weights["valor.vision_model.encoder.layers.1.self_attn.q_proj.weight"],
        clip.encoder.layers[1].self_attn.q_proj.weight,
    )
    assert torch.equal(weights["valor.vision_model.post_layernorm.bias"], clip.post_layernorm.bias)
    source = clip.embeddings.position_embedding.weight.detach()
    expected = torch.cat([source[:1], _resized(source[1:], (6, 6), (4, 4))])
    torch.testing.assert_close(weights["valor.vision_model.embeddings.position_embedding.weight"], expected)
    assert "valor.logit_scale" in report.new  # a CLIPVisionModel has no logit_scale

    # AST: distillation token dropped, 7 x 15 (frequency, time) grid resized to VALOR's 2 x 4 (mel, time) grid.
    assert ast_patch_grid(ast.config) == (7, 15)
    assert not any("distillation" in key for key in weights)
    assert "audio.embeddings.distillation_token" in report.dropped
    positions = ast.embeddings.position_embeddings.detach()[0]
    expected = torch.cat([positions[:1], _resized(positions[2:], (7, 15), (2, 4))])[None]
    torch.testing.assert_close(weights["valor.audio_model.embeddings.position_embeddings"], expected)
    assert torch.equal(weights["valor.audio_model.embeddings.cls_token"], ast.embeddings.cls_token)
    assert torch.equal(
        weights["valor.audio_model.embeddings.patch_embeddings.projection.weight"],
        ast.embeddings.patch_embeddings.projection.weight,
    )
    assert torch.equal(
        weights["valor.audio_model.layers.1.attention.k_proj.weight"], ast.layers[1].attention.k_proj.weight
    )
    assert torch.equal(weights["valor.audio_model.layernorm.weight"], ast.layernorm.weight)

    # The model runs on VALOR-shaped inputs.
    with torch.no_grad():
        audio = model.valor.get_audio_features(torch.randn(2, 1, *AUDIO_IMAGE))
        video = model.valor.get_video_features(torch.randn(2, 2, 3, 32, 32))
    assert audio.embeds.shape == (2, 1, 512) and video.embeds.shape == (2, 2, 512)


@pytest.fixture(scope="module")
def clip_valor(checkpoints):
    """A `ValorModel` initialised from the full CLIPModel alone, built once for the tests that read it. The towers
    not given (text, audio) are tiny: at their default (BERT-base, ViT-B) size building them takes seconds, and
    `test_towers_not_given_take_the_default_config` checks the default-config path without building."""
    paths, _ = checkpoints
    return init_from_encoders(
        vision=paths["clip"],
        image_size=32,
        model_class=ValorModel,
        text_config={**BERT, **SPECIAL_IDS},
        audio_config={**TINY_AUDIO, "image_size": AUDIO_IMAGE},
    )


def test_clip_model_gives_the_temperature(checkpoints, clip_valor):
    _, models = checkpoints
    model, report = clip_valor
    clip = models["clip"]
    assert model.config.logit_scale_type == "log_scale"
    assert torch.equal(model.logit_scale.detach(), clip.logit_scale.detach().reshape(1))  # 0-d -> (1,)
    assert torch.equal(
        model.vision_model.encoder.layers[0].mlp.fc1.weight,
        clip.vision_model.encoder.layers[0].mlp.fc1.weight,
    )
    assert "logit_scale" in report.copied and "logit_scale" not in report.new
    # Towers that were not given keep their initialisation.
    _assert_only_documented_new(report, prefix="", extra_prefixes=("text_model.", "audio_model."))


def test_clip_model_vision_tower_is_resized(checkpoints, clip_valor):
    """From a full CLIPModel: only its vision tower is used, its 6 x 6 grid resized to 4 x 4 for 32-px frames."""
    _, models = checkpoints
    model, report = clip_valor
    clip = models["clip"]
    assert model.config.vision_config.image_size == 32
    source = clip.vision_model.embeddings.position_embedding.weight.detach()
    expected = torch.cat([source[:1], _resized(source[1:], (6, 6), (4, 4))])
    torch.testing.assert_close(model.vision_model.embeddings.position_embedding.weight.detach(), expected)
    assert {origin for origin in report.copied.values()} == {"vision", "vision (CLIP logit_scale)"}
    assert any(key.startswith("text_model.") for key in report.new)
    assert any(key.startswith("audio_model.") for key in report.new)


def test_towers_not_given_take_the_default_config(checkpoints):
    _, models = checkpoints
    config = _derive_config(_load_encoders(None, models["clip"], None), 32, {})
    default = ValorConfig()
    assert config.text_config.to_dict() == default.text_config.to_dict()
    assert config.audio_config.to_dict() == default.audio_config.to_dict()
    assert (
        config.vision_config.image_size == 32
        and config.vision_config.hidden_size == CLIP_VISION["hidden_size"]
    )


def test_bert_without_mlm_head_and_video_swin(checkpoints):
    paths, models = checkpoints
    model, report = init_from_encoders(
        text=paths["bert_model"],
        vision=paths["swin"],
        text_config=SPECIAL_IDS,
        audio_config={"image_size": AUDIO_IMAGE},
    )
    weights = model.state_dict()
    swin = models["swin"].state_dict()
    for key, tensor in swin.items():
        assert torch.equal(weights[f"valor.vision_model.{key}"], tensor), key
    assert model.config.vision_config.depths == SWIN["depths"]
    assert model.config.logit_scale_type == "temperature"
    # BertModel has no MLM head: it is new (its decoder tied to the copied word embeddings).
    assert "cls.predictions.transform.dense.weight" in report.new
    assert torch.equal(
        weights["cls.predictions.decoder.weight"],
        weights["valor.text_model.embeddings.word_embeddings.weight"],
    )
    assert "bert.pooler.dense.weight" in report.dropped
    _assert_only_documented_new(report, extra_prefixes=("cls.", "valor.audio_model."))


def test_ast_patch_order_is_valor_order(checkpoints):
    """A band of mel bins constant over time, in AST's (time, frequency) input, lights whole ROWS of the patch
    sequence read row-major as (frequency, time): AST's order is VALOR's (mel, time) order, no permutation."""
    _, models = checkpoints
    ast = models["ast"]
    spectrogram = torch.zeros(AST["max_length"], AST["num_mel_bins"])  # AST layout: (time, frequency)
    spectrogram[:, 20:28] = 1.0
    with torch.no_grad():
        patches = ast.embeddings.patch_embeddings(spectrogram[None])[0]  # (F*T, C)
        bias = ast.embeddings.patch_embeddings.projection.bias
    frequency, time = ast_patch_grid(ast.config)
    lit = ((patches - bias).abs().sum(-1) > 1e-6).reshape(frequency, time)
    # Frequency patches i cover bins [4i, 4i + 8): rows 4, 5 and 6 overlap the band, at every time step.
    assert lit[4:7].all() and not lit[:4].any() and not lit[7:].any()


def test_errors(checkpoints):
    paths, _ = checkpoints
    with pytest.raises(TypeError, match="BERT"):
        init_from_encoders(text=CLIPVisionModel(CLIPVisionConfig(image_size=32, **CLIP_VISION)))
    config = ValorConfig(
        text_config={**BERT, "hidden_size": 32, **SPECIAL_IDS},
        vision_config=dict(model_type="valor_video_swin", **SWIN),
    )
    with pytest.raises(ValueError, match="do not fit"):
        init_from_encoders(config, text=paths["bert_model"])
