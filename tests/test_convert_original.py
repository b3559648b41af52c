"""Tests of `transformers_valor.convert_original` on tiny state dicts with the ORIGINAL VALOR key layout.

The state dicts are built here, key by key, as the reference implementation names them (Video Swin for VALOR-B,
OpenAI CLIP for VALOR-L, the shared BERT under both `multimodal_encoder.` and `txt_encoder.`, the original audio
encoder, MGA heads, adapters and the MLM head). Besides the converter's own parity check, the converted model's
outputs are compared with values computed here from the original tensors with other implementations
(`transformers.BertModel` for the text tower, a hand-written pre-norm ViT for the audio tower).
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from transformers import BertConfig, BertModel

from transformers_valor import (
    ValorForPreTraining,
    ValorForRetrieval,
    ValorVideoSwinConfig,
    ValorVideoSwinModel,
)
from transformers_valor.convert_original import (
    ConversionError,
    convert_checkpoint,
    convert_state_dict,
    infer_config,
    main,
)

TEXT, FF, VOCAB, POSITIONS, LAYERS, HEADS = 24, 37, 99, 64, 2, 4
AUDIO, AUDIO_PATCH, MEL, FRAMES = 24, 8, 16, 32
SWIN = dict(
    image_size=32, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=[2, 4, 4], patch_size=[2, 4, 4]
)
CLIP_WIDTH, CLIP_PATCH, CLIP_LAYERS, CLIP_SOURCE_GRID, IMAGE = 32, 8, 2, 6, 32
PROJ = 16

OVERRIDES = {
    "text_config": {
        "num_attention_heads": HEADS,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "mask_token_id": 3,
        "random_token_start": 5,
    },
    "audio_config": {"num_attention_heads": HEADS, "image_size": [MEL, FRAMES]},
}


def _fill(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=generator)
    leaf = key.rsplit(".", 1)[-1]
    is_norm = any(n in key for n in ("LayerNorm", "layernorm", "norm", "ln_")) or key.startswith(
        "hidden_trans_video_multimodal.1"
    )
    if leaf == "bias":
        return 0.1 * noise
    if is_norm and leaf == "weight":
        return 1.0 + 0.1 * noise
    return noise / math.sqrt(shape[-1])


def _bert_shapes(prefix: str) -> dict[str, tuple]:
    shapes = {
        f"{prefix}embeddings.word_embeddings.weight": (VOCAB, TEXT),
        f"{prefix}embeddings.position_embeddings.weight": (POSITIONS, TEXT),
        f"{prefix}embeddings.token_type_embeddings.weight": (2, TEXT),
        f"{prefix}embeddings.prompt_embedding.weight": (1, TEXT),
        f"{prefix}embeddings.LayerNorm.weight": (TEXT,),
        f"{prefix}embeddings.LayerNorm.bias": (TEXT,),
        f"{prefix}pooler.dense.weight": (TEXT, TEXT),
        f"{prefix}pooler.dense.bias": (TEXT,),
    }
    for i in range(LAYERS):
        p = f"{prefix}encoder.layer.{i}."
        for block in ("attention.self.", "cross_attn.cross."):
            for name in ("query", "key", "value"):
                shapes[f"{p}{block}{name}.weight"] = (TEXT, TEXT)
                shapes[f"{p}{block}{name}.bias"] = (TEXT,)
        for block in ("attention.output.", "cross_attn.output."):
            shapes[f"{p}{block}dense.weight"] = (TEXT, TEXT)
            shapes[f"{p}{block}dense.bias"] = (TEXT,)
            shapes[f"{p}{block}LayerNorm.weight"] = (TEXT,)
            shapes[f"{p}{block}LayerNorm.bias"] = (TEXT,)
        shapes.update(
            {
                f"{p}intermediate.dense.weight": (FF, TEXT),
                f"{p}intermediate.dense.bias": (FF,),
                f"{p}output.dense.weight": (TEXT, FF),
                f"{p}output.dense.bias": (TEXT,),
                f"{p}output.LayerNorm.weight": (TEXT,),
                f"{p}output.LayerNorm.bias": (TEXT,),
            }
        )
    return shapes


def _audio_shapes() -> dict[str, tuple]:
    patches = (MEL // AUDIO_PATCH) * (FRAMES // AUDIO_PATCH)
    shapes = {
        "audio_embeddings.cls_token": (1, 1, AUDIO),
        "audio_embeddings.first_conv.weight": (AUDIO, 1, AUDIO_PATCH, AUDIO_PATCH),
        "audio_embeddings.first_conv.bias": (AUDIO,),
        "audio_embeddings.position_embeddings.weight": (patches + 1, AUDIO),
        "audio_encoder.last_layernorm.weight": (AUDIO,),
        "audio_encoder.last_layernorm.bias": (AUDIO,),
    }
    for i in range(LAYERS):
        p = f"audio_encoder.layer.{i}."
        for j in range(4):
            shapes[f"{p}attention.linears.{j}.weight"] = (AUDIO, AUDIO)
            shapes[f"{p}attention.linears.{j}.bias"] = (AUDIO,)
        shapes.update(
            {
                f"{p}ff_layer.linear1.weight": (FF, AUDIO),
                f"{p}ff_layer.linear1.bias": (FF,),
                f"{p}ff_layer.linear2.weight": (AUDIO, FF),
                f"{p}ff_layer.linear2.bias": (AUDIO,),
                f"{p}layernorm1.weight": (AUDIO,),
                f"{p}layernorm1.bias": (AUDIO,),
                f"{p}layernorm2.weight": (AUDIO,),
                f"{p}layernorm2.bias": (AUDIO,),
            }
        )
    return shapes


def _swin_shapes() -> dict[str, tuple]:
    """The reference SwinTransformer3D names (this project keeps them), plus its relative_position_index buffers."""
    tower = ValorVideoSwinModel(ValorVideoSwinConfig(**SWIN))
    shapes = {f"video_encoder.{k}": tuple(v.shape) for k, v in tower.state_dict().items()}
    tokens = math.prod(SWIN["window_size"])
    for stage, depth in enumerate(SWIN["depths"]):
        for block in range(depth):
            shapes[f"video_encoder.layers.{stage}.blocks.{block}.attn.relative_position_index"] = (
                tokens,
                tokens,
            )
    return shapes


def _clip_shapes() -> dict[str, tuple]:
    w, visual = CLIP_WIDTH, "clip_model.visual."
    shapes = {
        f"{visual}conv1.weight": (w, 3, CLIP_PATCH, CLIP_PATCH),
        f"{visual}class_embedding": (w,),
        f"{visual}positional_embedding": (CLIP_SOURCE_GRID**2 + 1, w),
        f"{visual}ln_pre.weight": (w,),
        f"{visual}ln_pre.bias": (w,),
        f"{visual}ln_post.weight": (w,),
        f"{visual}ln_post.bias": (w,),
        f"{visual}proj": (w, PROJ),
        "clip_model.logit_scale": (),
        # CLIP text tower: present in the checkpoint, unused by VALOR
        "clip_model.token_embedding.weight": (50, 16),
        "clip_model.positional_embedding": (8, 16),
        "clip_model.ln_final.weight": (16,),
        "clip_model.ln_final.bias": (16,),
        "clip_model.text_projection": (16, PROJ),
        "clip_model.prompt_embedding.weight": (1, 16),
        "clip_model.transformer.resblocks.0.attn.in_proj_weight": (48, 16),
        "clip_model.transformer.resblocks.0.attn.in_proj_bias": (48,),
    }
    for i in range(CLIP_LAYERS):
        p = f"{visual}transformer.resblocks.{i}."
        shapes.update(
            {
                f"{p}attn.in_proj_weight": (3 * w, w),
                f"{p}attn.in_proj_bias": (3 * w,),
                f"{p}attn.out_proj.weight": (w, w),
                f"{p}attn.out_proj.bias": (w,),
                f"{p}ln_1.weight": (w,),
                f"{p}ln_1.bias": (w,),
                f"{p}mlp.c_fc.weight": (4 * w, w),
                f"{p}mlp.c_fc.bias": (4 * w,),
                f"{p}mlp.c_proj.weight": (w, 4 * w),
                f"{p}mlp.c_proj.bias": (w,),
                f"{p}ln_2.weight": (w,),
                f"{p}ln_2.bias": (w,),
            }
        )
    return shapes


def original_state_dict(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny VALOR-B (Video Swin) or VALOR-L (CLIP) state dict with the reference implementation's key names."""
    video_width = 32 if variant == "valor-b" else CLIP_WIDTH
    shapes = {
        **_bert_shapes("multimodal_encoder."),
        **_audio_shapes(),
        **(_swin_shapes() if variant == "valor-b" else _clip_shapes()),
        "cls.dense.weight": (TEXT, TEXT),
        "cls.dense.bias": (TEXT,),
        "cls.layernorm.weight": (TEXT,),
        "cls.layernorm.bias": (TEXT,),
        "cls.decoder.bias": (VOCAB,),
        "contra_head_t.linear.weight": (PROJ, TEXT),
        "contra_head_v.linear.weight": (PROJ, video_width),
        "contra_head_a.linear.weight": (PROJ, AUDIO),
        "video_type_embeddings": (1, 1, TEXT),
        "audio_type_embeddings": (1, 1, TEXT),
        "video_frame_embedding": (1, 32, TEXT),
        "audio_frame_embedding": (1, 32, TEXT),
        "hidden_trans_video_multimodal.0.weight": (TEXT, video_width),
        "hidden_trans_video_multimodal.0.bias": (TEXT,),
        "hidden_trans_video_multimodal.1.weight": (TEXT,),
        "hidden_trans_video_multimodal.1.bias": (TEXT,),
        "contra_temp": (),
    }
    for name in ("text", "video", "audio"):
        shapes.update(
            {
                f"{name}_fine_weight.0.weight": (PROJ, PROJ),
                f"{name}_fine_weight.0.bias": (PROJ,),
                f"{name}_fine_weight.2.weight": (1, PROJ),
                f"{name}_fine_weight.2.bias": (1,),
            }
        )
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in shapes.items():
        if key.endswith("relative_position_index"):
            state_dict[key] = torch.randint(0, 10, shape, generator=generator)
        elif shape == ():
            state_dict[key] = torch.tensor(0.05 if key == "contra_temp" else math.log(1 / 0.05))
        else:
            state_dict[key] = _fill(key, shape, generator)
    # The shared BERT appears under both names; the MLM decoder is tied to the word embeddings.
    for key in list(state_dict):
        if key.startswith("multimodal_encoder."):
            state_dict["txt_encoder." + key[len("multimodal_encoder.") :]] = state_dict[key].clone()
    state_dict["cls.decoder.weight"] = state_dict[
        "multimodal_encoder.embeddings.word_embeddings.weight"
    ].clone()
    return state_dict


def overrides_for(variant: str) -> dict:
    """Config values that are not in the tensor shapes of the tiny checkpoints."""
    overrides = {k: dict(v) for k, v in OVERRIDES.items()}
    if variant == "valor-b":
        overrides["vision_config"] = {"window_size": SWIN["window_size"]}
    else:
        overrides["vision_config"] = {"num_attention_heads": HEADS}
    return overrides


def write_vocab(path) -> str:
    """A 99-entry WordPiece vocabulary ([PAD] [CLS] [SEP] [MASK] [UNK] + words)."""
    words = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [f"word{i}" for i in range(VOCAB - 5)]
    path.write_text("\n".join(words) + "\n")
    return str(path)


def _converted(variant, tmp_path):
    state_dict = original_state_dict(variant)
    checkpoint = tmp_path / f"{variant}.pt"
    torch.save(state_dict, checkpoint)
    out = tmp_path / "converted"
    report = convert_checkpoint(
        checkpoint,
        variant,
        out,
        vocab=write_vocab(tmp_path / "vocab.txt"),
        image_size=IMAGE,
        config_overrides=overrides_for(variant),
    )
    return state_dict, out, report


def _inputs(seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (3, 6), generator=generator)
    ids[:, 0] = 1
    ids[2, 4:] = 0
    return {
        "input_ids": ids,
        "pixel_values_videos": torch.randn(3, 2, 3, IMAGE, IMAGE, generator=generator),
        "input_features": torch.randn(3, 1, MEL, FRAMES, generator=generator),
    }


def _bert_text_states(state_dict, ids):
    """The bidirectional text encoder with transformers' own BertModel on the original `multimodal_encoder.*`."""
    bert = BertModel(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=TEXT,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=FF,
            max_position_embeddings=POSITIONS,
            layer_norm_eps=1e-12,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        add_pooling_layer=False,
    ).eval()
    weights = {
        k[len("multimodal_encoder.") :]: v
        for k, v in state_dict.items()
        if k.startswith("multimodal_encoder.")
        and "cross_attn" not in k
        and "pooler" not in k
        and "prompt_embedding" not in k
    }
    bert.load_state_dict(weights, strict=True)
    return bert(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state


def _audio_cls(state_dict, spec):
    """Hand-written pre-norm ViT (original audio encoder) -> per-clip CLS `(B, clips, H)`."""
    sd = state_dict
    x = F.conv2d(
        spec.flatten(0, 1)[:, None],
        sd["audio_embeddings.first_conv.weight"],
        sd["audio_embeddings.first_conv.bias"],
        stride=AUDIO_PATCH,
    )
    x = x.flatten(2).transpose(1, 2)  # (N, patches, H), row-major over (mel, time)
    x = torch.cat([sd["audio_embeddings.cls_token"].expand(len(x), 1, -1), x], 1)
    x = x + sd["audio_embeddings.position_embeddings.weight"]
    head_dim = AUDIO // HEADS
    for i in range(LAYERS):
        p = f"audio_encoder.layer.{i}."

        def lin(h, j, p=p):
            return F.linear(h, sd[f"{p}attention.linears.{j}.weight"], sd[f"{p}attention.linears.{j}.bias"])

        h = F.layer_norm(x, (AUDIO,), sd[p + "layernorm1.weight"], sd[p + "layernorm1.bias"], eps=1e-12)
        q, k, v = (lin(h, j).view(len(x), -1, HEADS, head_dim).transpose(1, 2) for j in range(3))
        attn = ((q @ k.transpose(-1, -2)) / math.sqrt(head_dim)).softmax(-1) @ v
        x = x + lin(attn.transpose(1, 2).reshape(len(x), -1, AUDIO), 3)
        h = F.layer_norm(x, (AUDIO,), sd[p + "layernorm2.weight"], sd[p + "layernorm2.bias"], eps=1e-12)
        h = F.linear(h, sd[p + "ff_layer.linear1.weight"], sd[p + "ff_layer.linear1.bias"])
        x = x + F.linear(F.gelu(h), sd[p + "ff_layer.linear2.weight"], sd[p + "ff_layer.linear2.bias"])
    x = F.layer_norm(
        x,
        (AUDIO,),
        sd["audio_encoder.last_layernorm.weight"],
        sd["audio_encoder.last_layernorm.bias"],
        eps=1e-12,
    )
    return x[:, 0].view(*spec.shape[:2], AUDIO)


def _weights(state_dict, name, feats):
    sd = state_dict
    h = F.relu(F.linear(feats, sd[f"{name}_fine_weight.0.weight"], sd[f"{name}_fine_weight.0.bias"]))
    return F.linear(h, sd[f"{name}_fine_weight.2.weight"], sd[f"{name}_fine_weight.2.bias"])[..., 0]


@pytest.mark.parametrize("variant", ["valor-b", "valor-l"])
def test_conversion_writes_a_loadable_folder(variant, tmp_path):
    torch.manual_seed(0)
    state_dict, out, report = _converted(variant, tmp_path)
    for name in ("model.safetensors", "config.json", "README.md", "tokenizer.json", "processor_config.json"):
        assert (out / name).exists(), name
    # Every original key is either mapped or dropped on purpose.
    used = {source.split(" [")[0] for source in report.mapped.values()}
    assert used | set(report.dropped) == set(state_dict)
    assert report.verification and max(report.verification.values()) < 1e-4
    assert {"caption_logits", "retrieval_scores_tva", "retrieval_logits_ta"} <= set(report.verification)

    model = ValorForPreTraining.from_pretrained(out)
    weights = model.state_dict()
    assert torch.equal(
        weights["valor.text_model.encoder.layer.1.crossattention.self.key.weight"],
        state_dict["multimodal_encoder.encoder.layer.1.cross_attn.cross.key.weight"],
    )
    assert torch.equal(weights["cls.predictions.bias"], state_dict["cls.decoder.bias"])
    assert torch.equal(weights["cls.predictions.decoder.weight"], state_dict["cls.decoder.weight"])
    assert torch.equal(
        weights["valor.audio_model.layers.1.attention.v_proj.weight"],
        state_dict["audio_encoder.layer.1.attention.linears.2.weight"],
    )
    assert torch.equal(
        weights["valor.video_adapter.projection.1.bias"], state_dict["hidden_trans_video_multimodal.1.bias"]
    )
    if variant == "valor-b":
        assert model.config.logit_scale_type == "temperature"
        assert weights["valor.temperature"].item() == pytest.approx(0.05)
        assert "video_encoder.layers.0.blocks.0.attn.relative_position_index" in report.dropped
    else:
        assert model.config.logit_scale_type == "log_scale" and model.config.use_task_prompt
        assert torch.equal(weights["valor.logit_scale"], state_dict["clip_model.logit_scale"])
        assert "clip_model.transformer.resblocks.0.attn.in_proj_weight" in report.dropped
        in_proj = state_dict["clip_model.visual.transformer.resblocks.1.attn.in_proj_weight"]
        for index, name in enumerate("qkv"):
            target = weights[f"valor.vision_model.encoder.layers.1.self_attn.{name}_proj.weight"]
            assert torch.equal(target, in_proj[index * CLIP_WIDTH : (index + 1) * CLIP_WIDTH])
        # 6 x 6 source grid -> 4 x 4 at 32 px, CLS position kept: compare with an independent interpolation.
        source = state_dict["clip_model.visual.positional_embedding"]
        grid = source[1:].reshape(CLIP_SOURCE_GRID, CLIP_SOURCE_GRID, -1).permute(2, 0, 1)[None]
        resized = F.interpolate(grid, size=(4, 4), mode="bilinear", align_corners=False)[0]
        expected = torch.cat([source[:1], resized.permute(1, 2, 0).reshape(16, -1)])
        torch.testing.assert_close(
            weights["valor.vision_model.embeddings.position_embedding.weight"], expected
        )
    card = ModelCard.load(out / "README.md")
    assert "valor" in card.data.tags and card.data.library_name == "transformers"


@pytest.mark.parametrize("variant", ["valor-b", "valor-l"])
def test_converted_outputs_match_independent_computation(variant, tmp_path):
    torch.manual_seed(0)
    state_dict, out, _ = _converted(variant, tmp_path)
    model = ValorForRetrieval.from_pretrained(out).eval()
    inputs = _inputs()
    ids = inputs["input_ids"]
    with torch.no_grad():
        text = model.valor.get_text_features(ids)
        audio = model.valor.get_audio_features(inputs["input_features"])
        scores = model(**inputs, group="ta").scores

        # Text: transformers' BertModel on the original weights, then the original contrastive head.
        hidden = _bert_text_states(state_dict, ids)
        text_embeds = F.normalize(hidden @ state_dict["contra_head_t.linear.weight"].t(), dim=-1)
        valid = ids != 0
        torch.testing.assert_close(text.embeds[valid], text_embeds[valid], atol=1e-5, rtol=1e-4)

        # Audio: a hand-written pre-norm ViT on the original weights.
        audio_embeds = F.normalize(
            _audio_cls(state_dict, inputs["input_features"]) @ state_dict["contra_head_a.linear.weight"].t(),
            dim=-1,
        )
        torch.testing.assert_close(audio.embeds, audio_embeds, atol=1e-5, rtol=1e-4)

        # Text-audio fine-grained score (VALOR_SPEC section 2), from the independent features.
        wa = _weights(state_dict, "text", text_embeds).masked_fill(~valid, float("-inf")).softmax(-1)
        wb = _weights(state_dict, "audio", audio_embeds).softmax(-1)
        sim = torch.einsum("itd,jvd->ijtv", text_embeds, audio_embeds) * valid[:, None, :, None]
        expected = 0.5 * ((sim.amax(-1) * wa[:, None]).sum(-1) + (sim.amax(-2) * wb[None]).sum(-1))
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-4)


def test_unknown_key_is_refused(tmp_path):
    state_dict = original_state_dict("valor-b")
    state_dict["video_encoder.head.weight"] = torch.zeros(3, 3)
    state_dict["some_new_module.weight"] = torch.zeros(2)
    config = infer_config(state_dict, "valor-b", image_size=IMAGE, overrides=overrides_for("valor-b"))
    with pytest.raises(ConversionError, match="cannot place") as error:
        convert_state_dict(state_dict, config, "valor-b")
    assert "video_encoder.head.weight" in str(error.value)
    assert "some_new_module.weight" in str(error.value)


def test_wrong_shape_is_refused():
    state_dict = original_state_dict("valor-l")
    state_dict["contra_head_a.linear.weight"] = torch.zeros(PROJ, AUDIO + 1)
    config = infer_config(state_dict, "valor-l", image_size=IMAGE, overrides=overrides_for("valor-l"))
    with pytest.raises(ConversionError, match="shape mismatch") as error:
        convert_state_dict(state_dict, config, "valor-l")
    assert "contra_head_a.linear.weight" in str(error.value) and f"({PROJ}, {AUDIO + 1})" in str(error.value)


def test_missing_weight_and_unshared_text_encoder_are_refused():
    state_dict = original_state_dict("valor-b")
    del state_dict["audio_fine_weight.2.bias"]
    state_dict["txt_encoder.encoder.layer.0.output.dense.bias"] += 1.0
    config = infer_config(state_dict, "valor-b", image_size=IMAGE, overrides=overrides_for("valor-b"))
    with pytest.raises(ConversionError) as error:
        convert_state_dict(state_dict, config, "valor-b")
    message = str(error.value)
    assert "valor.audio_weight_mlp.2.bias" in message and "not filled" in message
    assert "txt_encoder.encoder.layer.0.output.dense.bias" in message


def test_variant_and_window_mismatches_are_refused():
    state_dict = original_state_dict("valor-b")
    with pytest.raises(ConversionError, match="does not match"):
        infer_config(state_dict, "valor-l")
    # Without the tiny window override the relative-position tables do not fit the default (8, 7, 7) window.
    with pytest.raises(ConversionError, match="window"):
        infer_config(state_dict, "valor-b", image_size=IMAGE, overrides=OVERRIDES)


def test_command_line(tmp_path):
    import json

    state_dict = original_state_dict("valor-b", seed=3)
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"model": state_dict}, checkpoint)  # a wrapped state dict is unwrapped
    out = tmp_path / "cli"
    main(
        [
            "--checkpoint",
            str(checkpoint),
            "--variant",
            "valor-b",
            "--vocab",
            write_vocab(tmp_path / "vocab.txt"),
            "--output_dir",
            str(out),
            "--image_size",
            str(IMAGE),
            "--config_overrides",
            json.dumps(overrides_for("valor-b")),
        ]
    )
    assert os.path.exists(out / "model.safetensors") and os.path.exists(out / "conversion_report.json")
