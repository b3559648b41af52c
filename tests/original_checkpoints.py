"""Tiny state dicts with the ORIGINAL VALOR key layout, shared by the conversion tests.

The state dicts are built here, key by key, as the reference implementation names them (Video Swin for VALOR-B,
OpenAI CLIP for VALOR-L, the shared BERT under both `multimodal_encoder.` and `txt_encoder.`, the original audio
encoder, MGA heads, adapters and the MLM head).
"""

import math

import torch

from transformers_valor import ValorVideoSwinConfig, ValorVideoSwinModel
from transformers_valor.conversion import convert_checkpoint

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


def convert_tiny(variant, tmp_path):
    """Save the tiny `variant` checkpoint under `tmp_path` and convert it (with the parity check)."""
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
