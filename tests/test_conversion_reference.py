"""Tests of `transformers_valor.conversion.reference` and of the converted models' numerics.

Besides the converter's own parity check (`verify_conversion` against `OriginalValorReference`), the converted
model's outputs, and the reference itself, are compared with values computed here from the original tensors
with other implementations (`transformers.BertModel` for the text tower, a hand-written pre-norm ViT for the
audio tower).
"""

import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from helpers import raw_retrieval_scores
from original_checkpoints import (
    AUDIO,
    AUDIO_PATCH,
    FF,
    FRAMES,
    HEADS,
    IMAGE,
    LAYERS,
    MEL,
    POSITIONS,
    TEXT,
    VOCAB,
    convert_tiny,
    original_state_dict,
    overrides_for,
)
from transformers_valor import ValorForPreTraining, ValorForRetrieval
from transformers_valor.conversion import (
    ConversionError,
    OriginalValorReference,
    infer_config,
    verify_conversion,
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """`variant -> (original state dict, converted folder, report)`, each converted once for the module."""
    cache = {}

    def get(variant):
        if variant not in cache:
            torch.manual_seed(0)
            cache[variant] = convert_tiny(variant, tmp_path_factory.mktemp(variant))
        return cache[variant]

    return get


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


def _bert_text_states(state_dict, ids, prompt=None):
    """
    The bidirectional text encoder with transformers' own BertModel on the original `multimodal_encoder.*`. With a
    `prompt`, BertModel's encoder runs over `[text ; prompt]` embedded as `model/bert.py` does (positions from 0,
    the prompt embedding as the prompt's token type), every non-padding token seeing every other one.
    """
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
    if prompt is None:
        return bert(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    text = bert.embeddings(input_ids=ids)
    prompt_type = state_dict["multimodal_encoder.embeddings.prompt_embedding.weight"]
    words = (
        bert.embeddings.word_embeddings(prompt)
        + bert.embeddings.position_embeddings.weight[: prompt.shape[1]]
    )
    prompt_states = bert.embeddings.LayerNorm(words + prompt_type)
    mask = torch.cat([ids != 0, prompt != 0], dim=1).long()
    hidden = torch.cat([text, prompt_states], dim=1)
    extended = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min  # (B, 1, 1, L + P)
    return bert.encoder(hidden, attention_mask=extended).last_hidden_state[:, : ids.shape[1]]


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
def test_converted_outputs_match_independent_computation(variant, converted):
    state_dict, out, _ = converted(variant)
    model = ValorForRetrieval.from_pretrained(out).eval()
    inputs = _inputs()
    ids = inputs["input_ids"]
    with torch.no_grad():
        text = model.valor.get_text_features(ids)
        audio = model.valor.get_audio_features(inputs["input_features"])
        scores = raw_retrieval_scores(model(**inputs, group="ta"), "ta")

        # Text: transformers' BertModel on the original weights (VALOR-L: with the retrieval prompt appended, as the
        # reference's text encoder runs), then the original contrastive head.
        prompt = None
        if model.config.use_task_prompt:
            prompt = torch.tensor(model.config.task_prompt_ids["retrieval"]).repeat(len(ids), 1)
        hidden = _bert_text_states(state_dict, ids, prompt)
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


@torch.no_grad()
def test_reference_matches_other_implementations():
    """`OriginalValorReference`'s text and audio towers agree with BertModel and the hand-written ViT."""
    state_dict = original_state_dict("valor-b")
    config = infer_config(state_dict, "valor-b", image_size=IMAGE, overrides=overrides_for("valor-b"))
    reference = OriginalValorReference(state_dict, config, "valor-b")
    inputs = _inputs()
    ids, valid = inputs["input_ids"], inputs["input_ids"] != 0
    torch.testing.assert_close(
        reference.text_states(ids)[valid], _bert_text_states(state_dict, ids)[valid], atol=1e-5, rtol=1e-4
    )
    spec = inputs["input_features"]
    torch.testing.assert_close(
        reference.audio_tokens(spec)[:, :, 0], _audio_cls(state_dict, spec), atol=1e-5, rtol=1e-4
    )
    assert reference.logit_scale().item() == pytest.approx(1 / 0.05)


@torch.no_grad()
def test_verify_conversion_detects_a_wrong_weight(converted, tmp_path):
    state_dict, out, report = converted("valor-b")
    results = verify_conversion(state_dict, out, "valor-b")
    assert results == report.verification
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    model = ValorForPreTraining.from_pretrained(broken)
    model.valor.audio_projection.weight.add_(0.1)
    model.save_pretrained(broken)
    with pytest.raises(ConversionError, match="Parity check failed"):
        verify_conversion(state_dict, broken, "valor-b")


@torch.no_grad()
def test_verify_conversion_checks_valor_l_text_features_with_the_prompt(converted, tmp_path):
    """The VALOR-L parity check covers the text encoder with the retrieval prompt: a converted folder whose
    config drops the task prompts fails it, on the text features among others."""
    state_dict, out, report = converted("valor-l")
    assert report.verification["text_features"] < 1e-4
    broken = tmp_path / "no_prompt"
    shutil.copytree(out, broken)
    model = ValorForPreTraining.from_pretrained(broken)
    model.config.use_task_prompt = False
    model.save_pretrained(broken)
    with pytest.raises(ConversionError, match="text_features"):
        verify_conversion(state_dict, broken, "valor-l")
